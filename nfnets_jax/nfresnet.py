"""NF-ResNets: Brock, De, Smith, ICLR 2021 (normalizer-free pre-activation ResNets)."""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import haiku as hk
import jax.numpy as jnp

from nfnets_jax import layers

RESNET_DEPTHS: dict[str, tuple[int, ...]] = {
    "ResNet50": (3, 4, 6, 3),
    "ResNet101": (3, 4, 23, 3),
    "ResNet152": (3, 8, 36, 3),
    "ResNet200": (3, 24, 36, 3),
    "ResNet288": (24, 24, 24, 24),
    "ResNet600": (50, 50, 50, 50),
}
RESNET_WIDTHS = (64, 128, 256, 512)


def resnet_stages(variant: str, width: float,
                  stage_depths: Sequence[int] | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(depths, output widths) of the four stages of a ResNet variant."""
  if variant not in RESNET_DEPTHS:
    raise ValueError(
        f"Unknown ResNet variant {variant!r}; choose one of {list(RESNET_DEPTHS)}.")
  depths = tuple(stage_depths or RESNET_DEPTHS[variant])
  return depths, tuple(int(w * width) for w in RESNET_WIDTHS)


class NFResBlock(hk.Module):
  """Normalizer-free pre-activation bottleneck block."""

  def __init__(self, in_ch: int, out_ch: int, stride: int = 1,
               beta: float = 1.0, stochdepth_rate: float = 0.0, *,
               bottleneck_ratio: float = 0.25, alpha: float = 0.2,
               activation=None, skipinit_gain: Callable = jnp.zeros,
               use_se: bool = False, se_ratio: float = 0.25,
               conv=layers.WSConv2D, name: str | None = None):
    super().__init__(name=name)
    self.beta, self.alpha = beta, alpha
    self.activation = activation
    self.skipinit_gain = skipinit_gain
    self.stochdepth_rate = stochdepth_rate
    width = int(out_ch * bottleneck_ratio)
    self.conv0 = conv(width, 1, name="conv0")
    self.conv1 = conv(width, 3, stride=stride, name="conv1")
    self.conv2 = conv(out_ch, 1, name="conv2")
    self.use_projection = stride > 1 or in_ch != out_ch
    if self.use_projection:
      self.conv_shortcut = conv(out_ch, 1, stride=stride, name="conv_shortcut")
    self.se = layers.SqueezeExcite(out_ch, out_ch, se_ratio) if use_se else None

  def __call__(self, x, is_training: bool):
    out = self.activation(x) * self.beta
    shortcut = self.conv_shortcut(out) if self.use_projection else x
    out = self.conv0(out)
    out = self.conv1(self.activation(out))
    out = self.conv2(self.activation(out))
    if self.se is not None:
      out = 2 * self.se(out) * out
    res_var = layers.residual_variance(out)
    out = layers.stochastic_depth(out, self.stochdepth_rate, is_training)
    out = out * hk.get_parameter("skip_gain", (), out.dtype, init=self.skipinit_gain)
    return out * self.alpha + shortcut, res_var


class NFResNet(hk.Module):
  """Normalizer-Free ResNet.

  `model(images, is_training, return_metrics=False)` returns a dict with
  `logits`, `pool` and, with `return_metrics`, the per-block signal metrics
  (`avg_sq_mean_i`, `avg_var_i` with i = 0 after the stem, `res_avg_var_i`).
  """

  def __init__(self, num_classes: int, variant: str = "ResNet50", width: float = 4,
               alpha: float = 0.2, stochdepth_rate: float = 0.1,
               drop_rate: float = 0.0, activation: str = "relu",
               skipinit_gain: Callable = jnp.zeros, use_se: bool = False,
               se_ratio: float = 0.25, stage_depths: Sequence[int] | None = None,
               weight_standardization: bool = True, fc_init=None,
               name: str = "NF_ResNet"):
    """Args:
      num_classes: classifier outputs.
      variant: 'ResNet50', 'ResNet101', 'ResNet152', 'ResNet200', 'ResNet288'
        or 'ResNet600'.
      width: multiplier of the base stage widths (64, 128, 256, 512).
      alpha: residual branch scale.
      stochdepth_rate: stochastic-depth rate of the last block (linear ramp).
      drop_rate: dropout before the classifier.
      activation: name of the non-linearity (see `layers.ACTIVATIONS`).
      skipinit_gain: initialiser of each block's scalar `skip_gain`.
      use_se: add Squeeze-Excite to every block.
      se_ratio: Squeeze-Excite hidden width ratio.
      stage_depths: overrides the variant's blocks per stage (small models).
      weight_standardization: False gives plain convolutions (for the signal
        propagation study of mean shift).
      fc_init: classifier weight initialiser; default N(0, 0.01).
      name: module name (part of the checkpoint format).
    """
    super().__init__(name=name)
    depths, widths = resnet_stages(variant, width, stage_depths)
    stem_width = int(16 * width)
    self.drop_rate = drop_rate
    self.activation = layers.scaled_activation(activation)
    conv = functools.partial(layers.WSConv2D, standardize=weight_standardization)
    self.initial_conv = conv(stem_width, 7, stride=2, name="initial_conv")
    self.blocks = [
        NFResBlock(*s, alpha=alpha, activation=self.activation,
                   skipinit_gain=skipinit_gain, use_se=use_se, se_ratio=se_ratio,
                   conv=conv, name="nf_res_block")
        for s in layers.block_specs(depths, widths, stem_width, alpha, stochdepth_rate)]
    self.fc = hk.Linear(num_classes, w_init=fc_init or hk.initializers.RandomNormal(0.01))

  def __call__(self, x, is_training: bool = True, return_metrics: bool = False):
    out = hk.max_pool(self.initial_conv(x), (1, 3, 3, 1), (1, 2, 2, 1), "SAME")
    out, outputs = layers.apply_blocks(out, self.blocks, is_training, return_metrics)
    return layers.classify(jnp.mean(self.activation(out), axis=(1, 2)), self.fc,
                           self.drop_rate, is_training, outputs)
