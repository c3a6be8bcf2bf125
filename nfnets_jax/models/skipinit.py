"""SkipInit ResNets (De & Smith 2020): the release's unnormalised baseline.

A pre-activation ResNet with neither normalisation nor weight
standardisation; a learnable scalar `skip_gain`, initialised at 0, ends each
residual branch so that every block starts as the identity. The release's
`SkipInit_ResNet`, with its module and parameter names: plain convolutions
(`w`, and `b` inside blocks), unscaled activations, alpha = beta = 1.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import haiku as hk
import jax.numpy as jnp

from nfnets_jax.models import layers
from nfnets_jax.models.nfresnet import NFResNet


class SkipInitResNet(NFResNet):
  """SkipInit ResNet; returns the same dict as `NFResNet`."""

  def __init__(self, num_classes: int, variant: str = "ResNet50", width: float = 4,
               stochdepth_rate: float = 0.1, drop_rate: float = 0.0,
               activation: str = "relu", skipinit_gain: Callable = jnp.zeros,
               stage_depths: Sequence[int] | None = None,
               stage_widths: Sequence[int] | None = None, fc_init=jnp.zeros,
               name: str = "SkipInit_ResNet"):
    """Args:
      num_classes: classifier outputs.
      variant: a key of `nfresnet.RESNET_DEPTHS`.
      width: multiplier of the base stage widths (64, 128, 256, 512).
      stochdepth_rate: stochastic-depth rate of the last block (linear ramp).
      drop_rate: dropout before the classifier.
      activation: name of the (unscaled) non-linearity.
      skipinit_gain: initialiser of each block's `skip_gain` (zeros: SkipInit).
      stage_depths, stage_widths: override the variant's (small models).
      fc_init: classifier weight initialiser; the release's zeros.
      name: module name (part of the checkpoint format).
    """
    super().__init__(num_classes, variant, width, alpha=1.0,
                     stochdepth_rate=stochdepth_rate, drop_rate=drop_rate,
                     activation=activation, skipinit_gain=skipinit_gain,
                     stage_depths=stage_depths,
                     stage_widths=stage_widths, fc_init=fc_init, name=name)

  def _activation_and_convs(self, activation: str, gamma_in: str, **conv_kwargs):
    del gamma_in, conv_kwargs  # No scaled activations, no standardisation.
    layers.check_activation(activation)
    return (layers.ACTIVATIONS[activation], hk.Conv2D,
            functools.partial(hk.Conv2D, with_bias=False))

  def _block_specs(self, *args) -> list[layers.BlockSpec]:
    # Unscaled inputs: batch statistics never reach the blocks, beta = 1.
    return [s._replace(beta=1.0) for s in layers.block_specs(*args)]
