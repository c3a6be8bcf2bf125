r"""Batch-normalised ResNet baseline on ImageNet, same recipe as the NF-ResNet.

    python -m nfnets_jax.train --config=experiments/resnet_imagenet.py:ResNet50 \
        --workdir=/tmp/resnet50

Identical to experiments/nfresnet_imagenet.py except the model (BatchNorm,
statistics per device, averaged across devices after each step) and no AGC:
BatchNorm networks train stably at large batch without it.
"""
import importlib.util
import os

from ml_collections.config_dict import placeholder


def _nfresnet_config(variant):
  # Config files are loaded by path, not as a package: load the sibling file.
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "nfresnet_imagenet.py")
  spec = importlib.util.spec_from_file_location("nfresnet_imagenet", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def get_config(variant: str = "ResNet50"):
  config = _nfresnet_config(variant or "ResNet50")
  config.model.name = "ResNet"
  config.model.kwargs = dict(variant=variant or "ResNet50", width=4.0,
                             stochdepth_rate=0.0, drop_rate=0.25,
                             stage_depths=placeholder(tuple))
  config.optimizer.clipping = 0.0
  return config
