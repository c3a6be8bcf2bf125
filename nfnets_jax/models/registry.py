"""Model registry: build any of the package's networks by name.

Our class names (`NFNet`, `NFRegNet`, ...) take constructor arguments; timm's
model names (`eca_nfnet_l0`, `nf_regnet_b1`, `dm_nfnet_f0`, ...) stand for
one of our classes with the arguments that make it compute what timm's
model computes (`TIMM_MODELS`), and accept further overrides.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import haiku as hk
import jax
import jax.numpy as jnp

from nfnets_jax.models.fixup import FixupResNet
from nfnets_jax.models.nfnet import NFNET_VARIANTS, NFNet
from nfnets_jax.models.nfregnet import NFREGNET_VARIANTS, NFRegNet
from nfnets_jax.models.nfresnet import RESNET_DEPTHS, NFResNet
from nfnets_jax.models.resnet import ResNet
from nfnets_jax.models.skipinit import SkipInitResNet

MODELS: dict[str, type[hk.Module]] = {
    "NFNet": NFNet, "NFResNet": NFResNet, "NFRegNet": NFRegNet, "ResNet": ResNet,
    "SkipInitResNet": SkipInitResNet, "FixupResNet": FixupResNet}


@dataclasses.dataclass(frozen=True)
class TimmModel:
  """One of timm's NF models as one of ours.

  Attributes:
    model: our class name (a key of `MODELS`).
    kwargs: the constructor arguments that give timm's parameter tree (for
      timm's own models, also its numerics: the gamma in the convs,
      symmetric padding).
    numerics: further arguments with which the forward pass equals timm's;
      the DeepMind ports keep the release's numerics by default, since their
      weights were trained with them.
  """
  model: str
  kwargs: Mapping[str, Any]
  numerics: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# timm's weight standardisation: eps 1e-5 added to the variance.
_TIMM_WS = dict(ws_eps=1e-5, ws_eps_style="add")
# timm's own NF models: gammas in the convs, PyTorch padding, no skip gain.
_TIMM_OWN = dict(_TIMM_WS, gamma_in="conv", padding="symmetric")
_LIGHT_NFNET = dict(_TIMM_OWN, activation="silu", group_width=64, bottleneck_ratio=0.25,
                    channel_divisor=8, skip_gain=False)
TIMM_MODELS: dict[str, TimmModel] = {
    **{f"dm_nfnet_f{i}": TimmModel("NFNet", {"variant": f"F{i}"},
                                   dict(_TIMM_WS, activation="gelu_exact"))
       for i in range(7)},
    "nfnet_l0": TimmModel("NFNet", dict(_LIGHT_NFNET, variant="F0", final_conv_mult=1.5,
                                        se_ratio=0.25, se_divisor=8)),
    "eca_nfnet_l0": TimmModel("NFNet", dict(_LIGHT_NFNET, variant="F0",
                                            final_conv_mult=1.5, attention="eca")),
    **{f"eca_nfnet_l{i}": TimmModel("NFNet", dict(_LIGHT_NFNET, variant=f"F{i}",
                                                  attention="eca"))
       for i in (1, 2, 3)},
    **{f"nf_regnet_b{i}": TimmModel("NFRegNet", dict(
        _TIMM_OWN, variant=f"B{i}", channel_divisor=8, se_divisor=8, skip_gain=False))
       for i in range(6)},
    **{f"nf_resnet{depth}": TimmModel("NFResNet", dict(
        _TIMM_OWN, variant=f"ResNet{depth}", shortcut="avg_pool", skipinit_gain=None))
       for depth in (26, 50, 101)},
}


def variant_depths(model: str) -> dict[str, tuple[int, ...]]:
  """Blocks per stage of every variant of our model `model` (a key of `MODELS`)."""
  if model == "NFNet":
    return {v: spec["depths"] for v, spec in NFNET_VARIANTS.items()}
  if model == "NFRegNet":
    return {v: spec["depths"] for v, spec in NFREGNET_VARIANTS.items()}
  return dict(RESNET_DEPTHS)  # The ResNets: NF, SkipInit, Fixup and BN.


def resolve(name: str, **kwargs: Any) -> tuple[type[hk.Module], dict[str, Any]]:
  """(class, constructor arguments) of a model name and overrides."""
  if name in TIMM_MODELS:
    spec = TIMM_MODELS[name]
    return MODELS[spec.model], {**spec.kwargs, **spec.numerics, **kwargs}
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; choose one of {list(MODELS)} or of "
                     f"timm's names {list(TIMM_MODELS)}.")
  return MODELS[name], kwargs


def create_model(name: str, num_classes: int, **kwargs: Any) -> hk.Module:
  """Instantiates model `name` (ours or timm's, see `resolve`) inside a Haiku transform."""
  cls, kwargs = resolve(name, **kwargs)
  return cls(num_classes, **kwargs)


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
