"""Fixup ResNets (Zhang, Dauphin & Ma 2019): the release's other unnormalised baseline.

A post-activation ResNet without normalisation whose residual branches start
at zero (their last conv is zero-initialised) with the other convs scaled
down by `L ** -0.25` for L blocks, and scalar biases before every conv and
activation plus a scalar multiplier per branch. The release's `FixUp_ResNet`,
with its module and parameter names.
"""
from __future__ import annotations

import functools
from typing import Sequence

import haiku as hk
import jax.numpy as jnp

from nfnets_jax.models import layers
from nfnets_jax.models.nfresnet import resnet_stages


def _scalar(name: str, dtype, init=jnp.zeros):
  return hk.get_parameter(name, (), dtype, init=init)


class FixupBlock(hk.Module):
  """Post-activation bottleneck block with Fixup's scalar biases and scale."""

  def __init__(self, in_ch: int, out_ch: int, stride: int, stochdepth_rate: float,
               num_blocks: int, *, activation, bottleneck_ratio: float = 0.25,
               name: str | None = None):
    super().__init__(name=name)
    self.activation = activation
    self.stochdepth_rate = stochdepth_rate
    width = int(out_ch * bottleneck_ratio)
    conv = functools.partial(hk.Conv2D, with_bias=False)
    normal = hk.initializers.RandomNormal
    depth_scale = num_blocks ** -0.25
    self.conv0 = conv(width, 1, w_init=normal((2 / width) ** 0.5 * depth_scale), name="conv0")
    self.conv1 = conv(width, 3, stride=stride,
                      w_init=normal((2 / (width * 9)) ** 0.5 * depth_scale), name="conv1")
    self.conv2 = conv(out_ch, 1, w_init=jnp.zeros, name="conv2")
    self.use_projection = stride > 1 or in_ch != out_ch
    if self.use_projection:
      self.conv_shortcut = conv(out_ch, 1, stride=stride,
                                w_init=normal((2 / out_ch) ** 0.5), name="conv_shortcut")

  def __call__(self, x, is_training: bool):
    dtype = x.dtype
    bias1a, bias1b, bias2a, bias2b, bias3a, bias3b = (
        _scalar(n, dtype) for n in ("bias1a", "bias1b", "bias2a", "bias2b", "bias3a", "bias3b"))
    scale = _scalar("scale", dtype, jnp.ones)
    out = x + bias1a
    shortcut = self.conv_shortcut(out) if self.use_projection else out
    out = self.activation(self.conv0(out) + bias1b)
    out = self.activation(self.conv1(out + bias2a) + bias2b)
    out = self.conv2(out + bias3a) * scale + bias3b
    res_var = layers.residual_variance(out)
    out = layers.stochastic_depth(out, self.stochdepth_rate, is_training)
    return self.activation(out + shortcut), res_var


class FixupResNet(hk.Module):
  """Fixup ResNet; returns the same dict as `NFResNet`."""

  def __init__(self, num_classes: int, variant: str = "ResNet50", width: float = 4,
               stochdepth_rate: float = 0.1, drop_rate: float = 0.0,
               activation: str = "relu", stage_depths: Sequence[int] | None = None,
               stage_widths: Sequence[int] | None = None, fc_init=jnp.zeros,
               name: str = "FixUp_ResNet"):
    """Args: as `SkipInitResNet`'s, but Fixup has no skip gains."""
    super().__init__(name=name)
    depths, widths = resnet_stages(variant, width, stage_depths, stage_widths)
    stem_width = int(16 * width)
    layers.check_activation(activation)
    self.activation = layers.ACTIVATIONS[activation]
    self.drop_rate = drop_rate
    self.initial_conv = hk.Conv2D(stem_width, 7, stride=2, with_bias=False, name="initial_conv")
    specs = layers.block_specs(depths, widths, stem_width, 1.0, stochdepth_rate)
    self.blocks = [
        FixupBlock(s.in_ch, s.out_ch, s.stride, s.stochdepth_rate, len(specs),
                   activation=self.activation, name="res_block")
        for s in specs]
    self.fc = hk.Linear(num_classes, w_init=fc_init)

  def __call__(self, x, is_training: bool = True, return_metrics: bool = False):
    out = self.activation(self.initial_conv(x) + _scalar("bias1", x.dtype))
    out = layers.max_pool(out, 3, 2)
    out, outputs = layers.apply_blocks(out, self.blocks, is_training, return_metrics)
    pool = jnp.mean(out, axis=(1, 2))
    bias2 = _scalar("bias2", pool.dtype)
    return layers.classify(pool, lambda h: self.fc(h + bias2), self.drop_rate,
                           is_training, outputs)
