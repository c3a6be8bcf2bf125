"""Inference with every weight standardisation computed once per set of weights.

A `layers.WSConv2D` standardises its weight on every call, although the
result depends on the weights alone. Evaluation runs many batches with the
same weights, so it can standardise them once (`standardized_params`) and
run convolutions on the result (`apply_standardized`), as inference folds
BatchNorm into the preceding convolution; the evaluation step does this
(`train_step.make_eval_step`). Networks without `WSConv2D` (the BatchNorm
ResNet) pass through unchanged.
"""
from __future__ import annotations

from typing import Any, Callable

import haiku as hk
import jax

from nfnets_jax.models import layers

_STANDARDIZE = "standardized_weight"


def _is_standardization(context: hk.MethodContext) -> bool:
  return (isinstance(context.module, layers.WSConv2D)
          and context.method_name == _STANDARDIZE)


def standardized_params(forward: hk.TransformedWithState, params: hk.Params,
                        model_state: hk.State, images: jax.Array) -> hk.Params:
  """`params` with each `WSConv2D`'s `w` replaced by the weight it convolves with.

  That weight is the standardised, gained (and gamma-scaled) kernel; its
  `gain` is dropped, so passing the result to `forward.apply` by mistake fails
  on the missing parameter instead of standardising twice. Pure: jit or pmap
  it. `images` (any batch the model accepts) only fixes the shapes of the
  trace; under jit, XLA removes the unused forward pass.

  Returns:
    Parameters for `apply_standardized`.
  """
  weights = {}

  def record(next_fn: Callable, args: Any, kwargs: Any,
             context: hk.MethodContext) -> jax.Array:
    out = next_fn(*args, **kwargs)
    if _is_standardization(context):
      weights[context.module.module_name] = out
    return out

  with hk.intercept_methods(record):
    forward.apply(params, model_state, None, images, is_training=False)
  folded = dict(params)
  for name, weight in weights.items():
    module = {k: v for k, v in params[name].items() if k != "gain"}
    folded[name] = {**module, "w": weight}
  return folded


def apply_standardized(forward: hk.TransformedWithState, params: hk.Params,
                       model_state: hk.State, images: jax.Array) -> dict[str, jax.Array]:
  """The eval-mode outputs of `forward` from `standardized_params`' weights."""
  def use_as_given(next_fn: Callable, args: Any, kwargs: Any,
                   context: hk.MethodContext) -> jax.Array:
    if _is_standardization(context):
      return args[0]  # The kernel, already standardised.
    return next_fn(*args, **kwargs)

  with hk.intercept_methods(use_as_given):
    out, _ = forward.apply(params, model_state, None, images, is_training=False)
  return out
