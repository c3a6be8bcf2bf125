"""Model registry: build any of the package's networks by name."""
from __future__ import annotations

from typing import Any

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets_jax.nfnet import NFNet
from nfnets_jax.nfresnet import NFResNet
from nfnets_jax.resnet import ResNet

MODELS: dict[str, type[hk.Module]] = {"NFNet": NFNet, "NFResNet": NFResNet, "ResNet": ResNet}


def create_model(name: str, num_classes: int, **kwargs: Any) -> hk.Module:
  """Instantiates model `name` (call inside a Haiku transform)."""
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; choose one of {list(MODELS)}.")
  return MODELS[name](num_classes, **kwargs)


def transform(name: str, num_classes: int, **kwargs: Any) -> hk.TransformedWithState:
  """`hk.transform_with_state` of `forward(images, is_training, return_metrics=False)`.

  Every model goes through the same interface; NF networks simply have an
  empty state.
  """
  def forward(images, is_training: bool, return_metrics: bool = False):
    model = create_model(name, num_classes, **kwargs)
    return model(images, is_training=is_training, return_metrics=return_metrics)
  return hk.transform_with_state(forward)


def abstract_init(name: str, num_classes: int, resolution: int = 64, **kwargs: Any):
  """(transformed model, param shapes, state shapes, input shape), nothing allocated.

  Parameter shapes do not depend on the resolution; it only sets the input.
  """
  net = transform(name, num_classes, **kwargs)
  image = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
  # is_training=True: BatchNorm creates its statistics only in training mode.
  params, state = jax.eval_shape(
      lambda x: net.init(jax.random.PRNGKey(0), x, is_training=True), image)
  return net, params, state, image
