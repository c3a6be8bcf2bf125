"""Batch-normalised pre-activation ResNet: the baseline NF networks are compared to."""
from __future__ import annotations

import functools
from typing import Sequence

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets_jax.models import layers
from nfnets_jax.models.nfresnet import resnet_stages


class ResBlock(hk.Module):
  """Pre-activation bottleneck block (He et al. 2016, "Identity mappings")."""

  def __init__(self, in_ch: int, out_ch: int, stride: int = 1,
               stochdepth_rate: float = 0.0, *, bottleneck_ratio: float = 0.25,
               batch_norm=hk.BatchNorm, name: str | None = None):
    super().__init__(name=name)
    self.stochdepth_rate = stochdepth_rate
    width = int(out_ch * bottleneck_ratio)
    conv = functools.partial(hk.Conv2D, with_bias=False)
    self.bn0, self.bn1, self.bn2 = (batch_norm(name=f"bn{i}") for i in range(3))
    self.conv0 = conv(width, 1, name="conv0")
    self.conv1 = conv(width, 3, stride=stride, name="conv1")
    self.conv2 = conv(out_ch, 1, name="conv2")
    self.use_projection = stride > 1 or in_ch != out_ch
    if self.use_projection:
      self.conv_shortcut = conv(out_ch, 1, stride=stride, name="conv_shortcut")

  def __call__(self, x, is_training: bool):
    out = jax.nn.relu(self.bn0(x, is_training))
    shortcut = self.conv_shortcut(out) if self.use_projection else x
    out = self.conv0(out)
    out = self.conv1(jax.nn.relu(self.bn1(out, is_training)))
    out = self.conv2(jax.nn.relu(self.bn2(out, is_training)))
    res_var = layers.residual_variance(out)
    out = layers.stochastic_depth(out, self.stochdepth_rate, is_training)
    return out + shortcut, res_var


class ResNet(hk.Module):
  """Batch-normalised pre-activation ResNet with the NF-ResNet's depths and widths.

  Uses Haiku state (BatchNorm moving statistics): build it inside
  `hk.transform_with_state`. Returns the same dict as `NFResNet`.
  """

  def __init__(self, num_classes: int, variant: str = "ResNet50", width: float = 4,
               stochdepth_rate: float = 0.0, drop_rate: float = 0.0,
               stage_depths: Sequence[int] | None = None, bn_decay: float = 0.9,
               bn_axis_name: str | None = None, fc_init=None, name: str = "ResNet"):
    """Args:
      num_classes: classifier outputs.
      variant: 'ResNet50' ... 'ResNet600' (see `nfresnet.RESNET_DEPTHS`).
      width: multiplier of the base stage widths (64, 128, 256, 512).
      stochdepth_rate: stochastic-depth rate of the last block (linear ramp).
      drop_rate: dropout before the classifier.
      stage_depths: overrides the variant's blocks per stage (small models).
      bn_decay: decay of the BatchNorm moving averages.
      bn_axis_name: pmap axis to compute batch statistics across devices;
        None keeps them per device.
      fc_init: classifier weight initialiser; default N(0, 0.01).
      name: module name.
    """
    super().__init__(name=name)
    depths, widths = resnet_stages(variant, width, stage_depths)
    stem_width = int(16 * width)
    self.drop_rate = drop_rate
    batch_norm = functools.partial(
        hk.BatchNorm, create_scale=True, create_offset=True, decay_rate=bn_decay,
        cross_replica_axis=bn_axis_name)
    self.initial_conv = hk.Conv2D(stem_width, 7, stride=2, with_bias=False,
                                  name="initial_conv")
    # alpha = 1 (beta unused): BatchNorm does the downscaling NF nets do by hand.
    self.blocks = [
        ResBlock(s.in_ch, s.out_ch, s.stride, s.stochdepth_rate,
                 batch_norm=batch_norm, name="res_block")
        for s in layers.block_specs(depths, widths, stem_width, 1.0, stochdepth_rate)]
    self.final_bn = batch_norm(name="final_bn")
    self.fc = hk.Linear(num_classes, w_init=fc_init or hk.initializers.RandomNormal(0.01))

  def __call__(self, x, is_training: bool = True, return_metrics: bool = False):
    out = layers.max_pool(self.initial_conv(x), 3, 2)
    out, outputs = layers.apply_blocks(out, self.blocks, is_training, return_metrics)
    out = jax.nn.relu(self.final_bn(out, is_training))
    return layers.classify(jnp.mean(out, axis=(1, 2)), self.fc, self.drop_rate,
                           is_training, outputs)
