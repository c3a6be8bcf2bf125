"""The residual block of every Normalizer-Free network.

NFNets, NF-ResNets, NF-RegNets, the SkipInit baseline and timm's NF models
differ in where the bottleneck width comes from, whether the 3x3 conv is
grouped and doubled, which attention they use and where, and how the
shortcut downsamples; each is an option here, so every network shares one
block (its module name, e.g. `nf_block` or `nf_res_block`, comes from the
network, for the release's checkpoint format).
"""
from __future__ import annotations

from typing import Callable

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets_jax.models import layers

SHORTCUTS = ("avg_pool", "strided_conv")


class NFBlock(hk.Module):
  """Pre-activation bottleneck block with a down-scaled, gated residual branch.

      h = activation(x) * beta
      branch = conv0 1x1 -> act -> conv1 kxk (stride, groups) [-> act -> conv1b]
               [-> attention 'mid'] -> act -> conv2 1x1 [-> attention 'last']
      out = x_or_projection(h) + alpha * skip_gain * stochastic_depth(branch)

  Returns (out, the residual branch's average channel variance).
  """

  def __init__(self, in_ch: int, out_ch: int, stride: int = 1,
               beta: float = 1.0, stochdepth_rate: float = 0.0, *,
               bottleneck_ratio: float = 0.5, bottleneck_from: str = "out",
               group_width: int | None = None, channel_divisor: int | None = None,
               extra_conv: bool = False, attention: str | None = None,
               attention_position: str = "last", se_ratio: float = 0.5,
               se_divisor: int | None = None, shortcut: str = "avg_pool",
               skip_gain_init: Callable | None = jnp.zeros, alpha: float = 0.2,
               activation: Callable = jax.nn.relu, conv=layers.WSConv2D,
               grouped_conv: str = "auto", name: str | None = None):
    """Args:
      in_ch, out_ch: input and output channels.
      stride: stride of the kxk conv and of the shortcut.
      beta: input scale, 1 / the expected std of `x`.
      stochdepth_rate: probability of dropping the branch in training.
      bottleneck_ratio: bottleneck width as a fraction of `out_ch`
        (`bottleneck_from='out'`, ResNets and NFNets) or of `in_ch` ('in',
        the inverted bottlenecks of NF-RegNets).
      group_width: channels per group of the kxk conv(s), rounding the
        bottleneck down to whole groups; None: one group.
      channel_divisor: None truncates the bottleneck width (the release);
        8 rounds it as timm does.
      extra_conv: a second kxk conv (`conv1b`), as in NFNets.
      attention: None, 'se' (Squeeze-Excite) or 'eca' (efficient channel
        attention); its gates are doubled to keep the variance.
      attention_position: 'last' (on the block output, NFNets) or 'mid'
        (on the bottleneck before the last conv, NF-RegNets).
      se_ratio, se_divisor: Squeeze-Excite's hidden width, see
        `layers.SqueezeExcite`.
      shortcut: how a downsampling shortcut projects: 'avg_pool' (2x2 average
        pool, then a 1x1 conv) or 'strided_conv' (a stride-2 1x1 conv, the
        release's NF-ResNet).
      skip_gain_init: initialiser of the learnable scalar `skip_gain` that
        scales the branch; None: no such scalar, and the last conv's gain
        starts at 0 instead (timm's own models).
      alpha: the branch's scale.
      activation: the (scaled) non-linearity.
      conv: convolution module, called as `conv(channels, kernel, stride=,
        name=)`, grouped ones also with `feature_group_count=` and
        `grouped_conv=`.
      grouped_conv: grouped convolution formulation, see `layers.conv2d`.
      name: module name (part of the checkpoint format).
    """
    super().__init__(name=name)
    if shortcut not in SHORTCUTS:
      raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}.")
    if attention not in layers.ATTENTIONS:
      raise ValueError(f"attention must be one of {layers.ATTENTIONS}, got {attention!r}.")
    if attention_position not in ("last", "mid"):
      raise ValueError(f"attention_position must be 'last' or 'mid', got {attention_position!r}.")
    self.stride = stride
    self.beta, self.alpha = beta, alpha
    self.activation = activation
    self.stochdepth_rate = stochdepth_rate
    self.shortcut = shortcut
    self.skip_gain_init = skip_gain_init
    width = layers.round_channels(
        (out_ch if bottleneck_from == "out" else in_ch) * bottleneck_ratio, channel_divisor)
    groups = 1
    if group_width:
      groups = max(1, width // group_width)
      width = groups * group_width
    grouping = {"feature_group_count": groups, "grouped_conv": grouped_conv} if groups > 1 else {}
    self.conv0 = conv(width, 1, name="conv0")
    self.conv1 = conv(width, 3, stride=stride, **grouping, name="conv1")
    self.conv1b = conv(width, 3, **grouping, name="conv1b") if extra_conv else None
    last_conv = conv if skip_gain_init is not None else _zero_gain(conv)
    self.conv2 = last_conv(out_ch, 1, name="conv2")
    self.use_projection = stride > 1 or in_ch != out_ch
    if self.use_projection:
      self.conv_shortcut = conv(out_ch, 1, stride=stride if shortcut == "strided_conv" else 1,
                                name="conv_shortcut")
    channels = out_ch if attention_position == "last" else width
    self.attention_position = attention_position
    self.attention = {
        None: lambda: None,
        "se": lambda: layers.SqueezeExcite(channels, channels, se_ratio, se_divisor),
        "eca": lambda: layers.EfficientChannelAttention(channels),
    }[attention]()

  def _attend(self, out, position: str):
    if self.attention is None or position != self.attention_position:
      return out
    # x2 so that the sigmoid gates (0.5 on average at init) preserve variance.
    return 2 * self.attention(out) * out

  def __call__(self, x, is_training: bool):
    out = self.activation(x) * self.beta
    if self.use_projection:
      shortcut = out
      if self.stride > 1 and self.shortcut == "avg_pool":
        shortcut = layers.avg_pool_2x2(shortcut)
      shortcut = self.conv_shortcut(shortcut)
    else:
      shortcut = x
    out = self.conv0(out)
    out = self.conv1(self.activation(out))
    if self.conv1b is not None:
      out = self.conv1b(self.activation(out))
    out = self._attend(out, "mid")
    out = self.conv2(self.activation(out))
    out = self._attend(out, "last")
    res_var = layers.residual_variance(out)
    out = layers.stochastic_depth(out, self.stochdepth_rate, is_training)
    if self.skip_gain_init is not None:
      out = out * hk.get_parameter("skip_gain", (), out.dtype, init=self.skip_gain_init)
    return out * self.alpha + shortcut, res_var


def _zero_gain(conv):
  """`conv` whose gain starts at zero (timm's stand-in for a skip gain)."""
  return lambda *args, **kwargs: conv(*args, gain_init=0.0, **kwargs)
