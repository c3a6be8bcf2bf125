"""NF-ResNets: Brock, De, Smith, ICLR 2021 (normalizer-free pre-activation ResNets)."""
from __future__ import annotations

from typing import Callable, Sequence

import haiku as hk
import jax.numpy as jnp

from nfnets_jax.models import blocks, layers

RESNET_DEPTHS: dict[str, tuple[int, ...]] = {
    "ResNet26": (2, 2, 2, 2),  # timm's nf_resnet26; not in the release.
    "ResNet50": (3, 4, 6, 3),
    "ResNet101": (3, 4, 23, 3),
    "ResNet152": (3, 8, 36, 3),
    "ResNet200": (3, 24, 36, 3),
    "ResNet288": (24, 24, 24, 24),
    "ResNet600": (50, 50, 50, 50),
}
RESNET_WIDTHS = (64, 128, 256, 512)


def resnet_stages(variant: str, width: float, stage_depths: Sequence[int] | None = None,
                  stage_widths: Sequence[int] | None = None
                  ) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(depths, output widths) of the four stages of a ResNet variant."""
  depths = tuple(stage_depths or layers.variant_entry(RESNET_DEPTHS, variant, "ResNet"))
  return depths, tuple(stage_widths or (int(w * width) for w in RESNET_WIDTHS))


class NFResNet(hk.Module):
  """Normalizer-Free ResNet.

  `model(images, is_training, return_metrics=False)` returns a dict with
  `logits`, `pool` and, with `return_metrics`, the per-block signal metrics
  (`avg_sq_mean_i`, `avg_var_i` with i = 0 after the stem, `res_avg_var_i`).
  """

  def __init__(self, num_classes: int, variant: str = "ResNet50", width: float = 4,
               alpha: float = 0.2, stochdepth_rate: float = 0.1,
               drop_rate: float = 0.0, activation: str = "relu",
               skipinit_gain: Callable | None = jnp.zeros, use_se: bool = False,
               se_ratio: float = 0.25, stage_depths: Sequence[int] | None = None,
               stage_widths: Sequence[int] | None = None,
               weight_standardization: bool = True, fc_init=None,
               shortcut: str = "strided_conv", ws_eps: float = 1e-4,
               ws_eps_style: str = "floor", gamma_in: str = "activation",
               padding: str = "same", name: str = "NF_ResNet"):
    """Args:
      num_classes: classifier outputs.
      variant: 'ResNet26', 'ResNet50', 'ResNet101', 'ResNet152', 'ResNet200',
        'ResNet288' or 'ResNet600'.
      width: multiplier of the base stage widths (64, 128, 256, 512) and of
        the stem's 16.
      alpha: residual branch scale.
      stochdepth_rate: stochastic-depth rate of the last block (linear ramp).
      drop_rate: dropout before the classifier.
      activation: name of the non-linearity (see `layers.ACTIVATIONS`).
      skipinit_gain: initialiser of each block's scalar `skip_gain`; None for
        none (timm's nf_resnet, whose last conv gain starts at 0 instead).
      use_se: add Squeeze-Excite to every block.
      se_ratio: Squeeze-Excite hidden width ratio.
      stage_depths: overrides the variant's blocks per stage (small models).
      stage_widths: overrides the stage widths (small models).
      weight_standardization: False gives plain convolutions (for the signal
        propagation study of mean shift).
      fc_init: classifier weight initialiser; default N(0, 0.01).
      shortcut: 'strided_conv' (the release) or 'avg_pool' (timm), see
        `blocks.NFBlock`.
      ws_eps, ws_eps_style: see `layers.WSConv2D`.
      gamma_in: 'activation' or 'conv', see `layers.nf_activation_and_conv`.
      padding: 'same' (the release) or 'symmetric' (timm).
      name: module name (part of the checkpoint format).
    """
    super().__init__(name=name)
    depths, widths = resnet_stages(variant, width, stage_depths, stage_widths)
    stem_width = int(16 * width)
    self.drop_rate = drop_rate
    self.padding = padding
    self.activation, conv, stem_conv = self._activation_and_convs(
        activation, gamma_in, standardize=weight_standardization, eps=ws_eps,
        eps_style=ws_eps_style, padding=padding)
    self.initial_conv = stem_conv(stem_width, 7, stride=2, name="initial_conv")
    self.blocks = [
        blocks.NFBlock(*s, bottleneck_ratio=0.25, alpha=alpha, activation=self.activation,
                       skip_gain_init=skipinit_gain, attention="se" if use_se else None,
                       se_ratio=se_ratio, shortcut=shortcut, conv=conv, name="nf_res_block")
        for s in self._block_specs(depths, widths, stem_width, alpha, stochdepth_rate)]
    self.fc = hk.Linear(num_classes, w_init=fc_init or hk.initializers.RandomNormal(0.01))

  def _activation_and_convs(self, activation: str, gamma_in: str, **conv_kwargs):
    """(activation, block conv factory, stem conv factory)."""
    activation, conv = layers.nf_activation_and_conv(activation, gamma_in, **conv_kwargs)
    return activation, conv, conv

  def _block_specs(self, *args) -> list[layers.BlockSpec]:
    return layers.block_specs(*args)

  def __call__(self, x, is_training: bool = True, return_metrics: bool = False):
    out = layers.max_pool(self.initial_conv(x), 3, 2, self.padding)
    out, outputs = layers.apply_blocks(out, self.blocks, is_training, return_metrics)
    return layers.classify(jnp.mean(self.activation(out), axis=(1, 2)), self.fc,
                           self.drop_rate, is_training, outputs)
