"""Input pipelines: TFDS / image folders / offline digits -> batches for jax.pmap.

    config = nfnets_jax.data.default_config()        # offline digits
    info = nfnets_jax.data.dataset_info(config)
    batches = nfnets_jax.data.train_iterator(config, global_batch_size=256, seed=0)

The pipeline's names load on first use: importing TensorFlow takes seconds,
which configs, `--help` and flag errors need not wait for.
"""
import importlib
from typing import Any

from nfnets_jax.data.config import default_config, imagenet_config

_PIPELINE_NAMES = ("DatasetInfo", "dataset_info", "eval_iterator", "train_iterator")

__all__ = ["default_config", "imagenet_config", *_PIPELINE_NAMES]


def __getattr__(name: str) -> Any:
  if name in _PIPELINE_NAMES:
    return getattr(importlib.import_module("nfnets_jax.data.pipeline"), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
