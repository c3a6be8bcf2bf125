"""NF-RegNets: the EfficientNet-like NF networks of Brock, De, Smith, ICLR 2021.

Inverted bottleneck blocks (expansion 2.25 from the block's input, grouped
3x3 convs of 8 channels per group, Squeeze-Excite in the middle), as the
release's `NF_RegNet`; with `channel_divisor=8`, `se_divisor=8` and timm's
numerics they are timm's `nf_regnet_b*`.
"""
from __future__ import annotations

from typing import Any, Sequence

import haiku as hk
import jax.numpy as jnp

from nfnets_jax.models import blocks, layers

# The release's `nf_regnet_params`: base stage widths (before the 0.75 width
# multiplier), depths, train / test resolutions and dropout.
NFREGNET_VARIANTS: dict[str, dict[str, Any]] = {
    "B0": dict(widths=(48, 104, 208, 440), depths=(1, 3, 6, 6), train_px=192, test_px=224, drop_rate=0.2),
    "B1": dict(widths=(48, 104, 208, 440), depths=(2, 4, 7, 7), train_px=224, test_px=256, drop_rate=0.2),
    "B2": dict(widths=(56, 112, 232, 488), depths=(2, 4, 8, 8), train_px=240, test_px=272, drop_rate=0.3),
    "B3": dict(widths=(56, 128, 248, 528), depths=(2, 5, 9, 9), train_px=288, test_px=320, drop_rate=0.3),
    "B4": dict(widths=(64, 144, 288, 616), depths=(2, 6, 11, 11), train_px=320, test_px=384, drop_rate=0.4),
    "B5": dict(widths=(80, 168, 336, 704), depths=(3, 7, 14, 14), train_px=384, test_px=456, drop_rate=0.4),
    "B6": dict(widths=(88, 184, 376, 792), depths=(3, 8, 16, 16), train_px=448, test_px=528, drop_rate=0.5),
    "B7": dict(widths=(96, 208, 416, 880), depths=(4, 10, 19, 19), train_px=512, test_px=600, drop_rate=0.5),
    "B8": dict(widths=(104, 232, 456, 968), depths=(4, 11, 22, 22), train_px=600, test_px=672, drop_rate=0.5),
}


def regnet_variant_spec(variant: str) -> dict[str, Any]:
  """The architecture and recipe numbers of an NF-RegNet variant ('B0'...'B8')."""
  return layers.variant_entry(NFREGNET_VARIANTS, variant, "NF-RegNet")


class NFRegNet(hk.Module):
  """Normalizer-Free RegNet, B-series.

  Returns the same dict as `NFNet`: `logits`, `pool` and, with
  `return_metrics`, the per-block signal metrics.
  """

  def __init__(self, num_classes: int, variant: str = "B0", width: float = 0.75,
               expansion: float = 2.25, group_width: int = 8, se_ratio: float = 0.5,
               alpha: float = 0.2, stochdepth_rate: float = 0.1,
               drop_rate: float | None = None, activation: str = "silu",
               fc_init=jnp.zeros, stage_depths: Sequence[int] | None = None,
               stage_widths: Sequence[int] | None = None,
               channel_divisor: int | None = None, se_divisor: int | None = None,
               ws_eps: float = 1e-4, ws_eps_style: str = "floor",
               gamma_in: str = "activation", padding: str = "same",
               skip_gain: bool = True, grouped_conv: str = "auto",
               name: str = "NF_RegNet"):
    """Args:
      num_classes: classifier outputs.
      variant: 'B0'...'B8'.
      width: multiplier of the base stage widths.
      expansion: bottleneck width over the block input's (1 for the first
        block, as in EfficientNets).
      group_width: channels per group of the 3x3 convs.
      se_ratio: Squeeze-Excite hidden width over the bottleneck's.
      alpha: residual branch scale.
      stochdepth_rate: stochastic-depth rate of the last block (linear ramp).
      drop_rate: dropout before the classifier; None takes the variant's.
      activation: name of the non-linearity (the release's default 'swish'
        is its silu).
      fc_init: classifier weight initialiser; the release's zeros.
      stage_depths, stage_widths: override the variant's (small models).
      channel_divisor: None truncates widths to integers (the release); 8
        rounds every width as timm does.
      se_divisor: Squeeze-Excite hidden width rounding (timm: 8).
      ws_eps, ws_eps_style: see `layers.WSConv2D`.
      gamma_in: 'activation' or 'conv', see `layers.nf_activation_and_conv`.
      padding: 'same' (the release) or 'symmetric' (timm).
      skip_gain: a learnable `skip_gain` per block (False: timm).
      grouped_conv: grouped convolution formulation, see `layers.conv2d`.
      name: module name (part of the checkpoint format).
    """
    super().__init__(name=name)
    spec = regnet_variant_spec(variant)
    self.activation, conv = layers.nf_activation_and_conv(
        activation, gamma_in, eps=ws_eps, eps_style=ws_eps_style, padding=padding)
    self.drop_rate = spec["drop_rate"] if drop_rate is None else drop_rate
    base_widths = tuple(stage_widths or spec["widths"])
    widths = [layers.round_channels(w * width, channel_divisor) for w in base_widths]
    stem_width = layers.round_channels(base_widths[0] * width, channel_divisor)
    self.initial_conv = conv(stem_width, 3, stride=2, name="initial_conv")
    specs = layers.block_specs(stage_depths or spec["depths"], widths, stem_width,
                               alpha, stochdepth_rate, strides=(2, 2, 2, 2))
    self.blocks = [
        blocks.NFBlock(*s, bottleneck_ratio=1.0 if i == 0 else expansion,
                       bottleneck_from="in", group_width=group_width,
                       channel_divisor=channel_divisor, attention="se",
                       attention_position="mid", se_ratio=se_ratio, se_divisor=se_divisor,
                       skip_gain_init=jnp.zeros if skip_gain else None, alpha=alpha,
                       activation=self.activation, conv=conv, grouped_conv=grouped_conv,
                       name="nf_block")
        for i, s in enumerate(specs)]
    # EfficientNet's 1280-wide head, scaled with the last stage (440 wide in B0).
    if channel_divisor is None:
      final_width = 1280 * widths[-1] // 440
    else:
      final_width = layers.make_divisible(width * (1280 * base_widths[-1] // 440),
                                          channel_divisor)
    self.final_conv = conv(final_width, 1, name="final_conv")
    self.fc = hk.Linear(num_classes, w_init=fc_init)

  def __call__(self, x, is_training: bool = True, return_metrics: bool = False):
    out = self.initial_conv(x)
    out, outputs = layers.apply_blocks(out, self.blocks, is_training, return_metrics)
    out = self.activation(self.final_conv(out))
    return layers.classify(jnp.mean(out, axis=(1, 2)), self.fc, self.drop_rate,
                           is_training, outputs)
