"""NFNets: the F-series of Brock et al. 2021, arXiv 2102.06171."""
from __future__ import annotations

from typing import Any, Sequence

import haiku as hk
import jax.numpy as jnp

from nfnets_jax.models import blocks, layers

# Per-variant architecture and training-recipe numbers (NFNETS.md).
# randaugment: (num_layers, magnitude).
_BASE_WIDTHS = (256, 512, 1536, 1536)
_PLUS_WIDTHS = (384, 768, 2048, 2048)
_F_SERIES = {
    "F0": dict(depths=(1, 2, 6, 3), train_px=192, test_px=256, drop_rate=0.2, randaugment=(4, 5)),
    "F1": dict(depths=(2, 4, 12, 6), train_px=224, test_px=320, drop_rate=0.3, randaugment=(4, 10)),
    "F2": dict(depths=(3, 6, 18, 9), train_px=256, test_px=352, drop_rate=0.4, randaugment=(4, 10)),
    "F3": dict(depths=(4, 8, 24, 12), train_px=320, test_px=416, drop_rate=0.4, randaugment=(4, 15)),
    "F4": dict(depths=(5, 10, 30, 15), train_px=384, test_px=512, drop_rate=0.5, randaugment=(4, 15)),
    "F5": dict(depths=(6, 12, 36, 18), train_px=416, test_px=544, drop_rate=0.5, randaugment=(4, 15)),
    "F6": dict(depths=(7, 14, 42, 21), train_px=448, test_px=576, drop_rate=0.5, randaugment=(4, 15)),
    "F7": dict(depths=(8, 16, 48, 24), train_px=480, test_px=608, drop_rate=0.5, randaugment=(4, 15)),
}
NFNET_VARIANTS: dict[str, dict[str, Any]] = {
    **{k: dict(v, widths=_BASE_WIDTHS) for k, v in _F_SERIES.items()},
    **{k + "+": dict(v, widths=_PLUS_WIDTHS) for k, v in _F_SERIES.items()},
}


def variant_spec(variant: str) -> dict[str, Any]:
  """The architecture and recipe numbers of an NFNet variant ('F0'...'F7+')."""
  return layers.variant_entry(NFNET_VARIANTS, variant, "NFNet")


class NFNet(hk.Module):
  """Normalizer-Free Network, F-series.

  `model(images, is_training, return_metrics=False)` returns a dict with
  `logits` and `pool` (the pooled features before dropout) and, with
  `return_metrics`, the per-block signal metrics `avg_sq_mean_i`, `avg_var_i`
  (i = 0 for the stem, i + 1 for block i) and `res_avg_var_i`.
  """

  def __init__(self, num_classes: int, variant: str = "F0", width: float = 1.0,
               se_ratio: float = 0.5, alpha: float = 0.2,
               stochdepth_rate: float = 0.1, drop_rate: float | None = None,
               activation: str = "gelu", final_conv_mult: float = 2,
               stage_depths: Sequence[int] | None = None,
               stage_widths: Sequence[int] | None = None,
               group_width: int = 128, bottleneck_ratio: float = 0.5,
               channel_divisor: int | None = None,
               attention: str = "se", se_divisor: int | None = None,
               fc_init=None, ws_eps: float = 1e-4, ws_eps_style: str = "floor",
               gamma_in: str = "activation", padding: str = "same",
               skip_gain: bool = True, grouped_conv: str = "auto",
               name: str = "NFNet"):
    """Args:
      num_classes: classifier outputs.
      variant: 'F0'...'F7' or 'F0+'...'F7+'.
      width: multiplier of the stage widths.
      se_ratio: Squeeze-Excite hidden width as a fraction of the block output.
      alpha: residual branch scale.
      stochdepth_rate: stochastic-depth rate of the last block (linear ramp).
      drop_rate: dropout before the classifier; None takes the variant's.
      activation: name of the non-linearity (see `layers.ACTIVATIONS`).
      final_conv_mult: width of the final 1x1 conv over the last stage's.
      stage_depths: overrides the variant's blocks per stage (small models).
      stage_widths: overrides the variant's stage widths (small models).
      group_width: channels per group in the grouped 3x3 convs.
      bottleneck_ratio: bottleneck width over the block output's.
      channel_divisor: None truncates widths to integers (the release); 8
        rounds stage and bottleneck widths as timm does.
      attention: 'se' (Squeeze-Excite) or 'eca' (timm's eca_nfnet_l*).
      se_divisor: Squeeze-Excite hidden width rounding, see
        `layers.SqueezeExcite` (timm's nfnet_l0: 8).
      fc_init: classifier weight initialiser; default N(0, 0.01).
      ws_eps, ws_eps_style: weight standardisation's epsilon and how it
        enters, see `layers.WSConv2D` (the release: 1e-4, 'floor'; timm:
        1e-5, 'add').
      gamma_in: where the activation gammas go, 'activation' or 'conv'
        (timm's own models), see `layers.nf_activation_and_conv`.
      padding: 'same' (the release) or 'symmetric' (timm's own models).
      skip_gain: a learnable `skip_gain` per block; False as in timm's own
        models (whose last conv gain starts at 0 instead).
      grouped_conv: grouped convolution formulation, see `layers.conv2d`.
      name: module name (part of the checkpoint format).
    """
    super().__init__(name=name)
    spec = variant_spec(variant)
    self.activation, conv = layers.nf_activation_and_conv(
        activation, gamma_in, eps=ws_eps, eps_style=ws_eps_style, padding=padding)
    self.drop_rate = spec["drop_rate"] if drop_rate is None else drop_rate
    base_widths = tuple(stage_widths or spec["widths"])
    stage_widths = tuple(layers.round_channels(w * width, channel_divisor) for w in base_widths)
    stem_width = base_widths[0] // 2
    self.stem = [conv(ch, 3, stride=stride, name=f"stem_conv{i}")
                 for i, (ch, stride) in enumerate(zip((16, 32, 64, stem_width), (2, 1, 1, 2)))]
    specs = layers.block_specs(stage_depths or spec["depths"], stage_widths,
                               stem_width, alpha, stochdepth_rate)
    self.blocks = [
        blocks.NFBlock(*s, bottleneck_ratio=bottleneck_ratio, group_width=group_width,
                       channel_divisor=channel_divisor,
                       extra_conv=True, attention=attention, se_ratio=se_ratio,
                       se_divisor=se_divisor, skip_gain_init=jnp.zeros if skip_gain else None,
                       alpha=alpha, activation=self.activation, conv=conv,
                       grouped_conv=grouped_conv, name="nf_block")
        for s in specs]
    self.final_conv = conv(int(final_conv_mult * stage_widths[-1]), 1, name="final_conv")
    self.fc = hk.Linear(num_classes, w_init=fc_init or hk.initializers.RandomNormal(0.01))

  def __call__(self, x, is_training: bool = True, return_metrics: bool = False):
    out = self.stem[0](x)
    for conv in self.stem[1:]:
      out = conv(self.activation(out))
    out, outputs = layers.apply_blocks(out, self.blocks, is_training, return_metrics)
    out = self.activation(self.final_conv(out))
    return layers.classify(jnp.mean(out, axis=(1, 2)), self.fc, self.drop_rate,
                           is_training, outputs)
