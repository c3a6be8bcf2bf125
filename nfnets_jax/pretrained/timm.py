"""timm's state dicts in safetensors form, both ways, without torch.

timm (PyTorch Image Models) hosts the authors' NFNet weights as
`timm/dm_nfnet_f0.dm_in1k` ... `dm_nfnet_f6`, and its own NF models'
(`eca_nfnet_l0`, `nfnet_l0`, `nf_regnet_b1`, `nf_resnet50`, ...), on the
Hugging Face hub as `model.safetensors`. A converter is a table per
architecture: which of our models and constructor arguments it is
(`nfnets_jax.models.TIMM_MODELS`), and how each of our module paths is named
in timm (`_FAMILY_MODULES`). Layouts follow from the kind of module:
convolutions HWIO <-> OIHW with gains (C,) <-> (C, 1, 1, 1), linears IO <->
OI, linears that timm implements as 1x1 convolutions (Squeeze-Excite) IO <->
OI11, and ECA's kernel (k,) <-> (1, 1, k).
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import re
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from nfnets_jax.models import TIMM_MODELS, variant_depths
from nfnets_jax.pretrained import released
from nfnets_jax.pretrained.released import CheckpointError

Params = dict[str, dict[str, Any]]

# Our parameter names -> timm's.
_NAMES = {"w": "weight", "b": "bias", "bias": "bias", "gain": "gain",
          "skip_gain": "skipinit_gain"}
_BLOCK = r"nf_(?:res_)?block(?:_\d+)?"


@dataclasses.dataclass(frozen=True)
class ModuleRule:
  """One of our modules (a regex below the top module) and its timm name.

  `{block}` in `timm` stands for the block's `stages.<stage>.<index>`, from the
  named group `block` of `ours` (our blocks count 0, 1, ... over all stages).
  `kind` sets the layouts: 'conv', 'linear', 'linear_as_conv' (a linear
  that timm runs as a 1x1 conv), 'conv1d' (ECA's kernel) or 'block'.
  """
  ours: str
  timm: str
  kind: str


def _block_rules(attention: str) -> tuple[ModuleRule, ...]:
  """Our NF block's modules in timm's NormFreeBlock; `attention`: timm's attribute."""
  block = f"(?P<block>{_BLOCK})"
  return (
      ModuleRule(f"{block}/~/conv_shortcut", "{block}.downsample.conv", "conv"),
      ModuleRule(f"{block}/~/conv0", "{block}.conv1", "conv"),
      ModuleRule(f"{block}/~/conv1", "{block}.conv2", "conv"),
      ModuleRule(f"{block}/~/conv1b", "{block}.conv2b", "conv"),
      ModuleRule(f"{block}/~/conv2", "{block}.conv3", "conv"),
      ModuleRule(f"{block}/~/squeeze_excite/~/linear", f"{{block}}.{attention}.fc1",
                 "linear_as_conv"),
      ModuleRule(f"{block}/~/squeeze_excite/~/linear_1", f"{{block}}.{attention}.fc2",
                 "linear_as_conv"),
      ModuleRule(f"{block}/~/efficient_channel_attention", f"{{block}}.{attention}.conv",
                 "conv1d"),
      ModuleRule(block, "{block}", "block"),
  )


_HEAD = (ModuleRule("final_conv", "final_conv", "conv"), ModuleRule("linear", "head.fc", "linear"))
# Per our model: the stem, the blocks (attention after the last conv, or in
# the middle of NF-RegNet blocks) and the head.
_FAMILY_MODULES = {
    "NFNet": (*(ModuleRule(f"stem_conv{i}", f"stem.conv{i + 1}", "conv") for i in range(4)),
              *_block_rules("attn_last"), *_HEAD),
    "NFRegNet": (ModuleRule("initial_conv", "stem.conv", "conv"), *_block_rules("attn"), *_HEAD),
    "NFResNet": (ModuleRule("initial_conv", "stem.conv", "conv"), *_block_rules("attn_last"),
                 *_HEAD),
}
_TOPS = {"NFNet": "NFNet", "NFRegNet": "NF_RegNet", "NFResNet": "NF_ResNet"}


@dataclasses.dataclass(frozen=True)
class TimmArch:
  """A timm architecture as one of our models.

  Attributes:
    model: our model name (`nfnets_jax.create_model`).
    kwargs: our constructor arguments for it.
    timm_numerics: further constructor arguments with which our model
      computes exactly what timm's does (for the DeepMind ports; the
      release's numerics are their default: its weights were trained with
      them).
    top: our top-level module name.
    depths: blocks per stage.
    modules: the module table.
  """
  model: str
  kwargs: Mapping[str, Any]
  timm_numerics: Mapping[str, Any]
  top: str
  depths: Sequence[int]
  modules: Sequence[ModuleRule]


TIMM_ARCHS: dict[str, TimmArch] = {
    name: TimmArch(spec.model, spec.kwargs, spec.numerics, _TOPS[spec.model],
                   variant_depths(spec.model)[spec.kwargs["variant"]], _FAMILY_MODULES[spec.model])
    for name, spec in TIMM_MODELS.items()
}


def _arch(name: str) -> TimmArch:
  if name not in TIMM_ARCHS:
    raise CheckpointError(
        f"Unknown timm architecture {name!r}; this converter knows "
        f"{sorted(TIMM_ARCHS)}.")
  return TIMM_ARCHS[name]


def _block_prefix(block: str, depths: Sequence[int]) -> str:
  """`stages.<stage>.<index>` of our block `nf_block[_k]`."""
  k = int(block.rsplit("_", 1)[1]) if block[-1].isdigit() else 0
  for stage, depth in enumerate(depths):
    if k < depth:
      return f"stages.{stage}.{k}"
    k -= depth
  raise CheckpointError(f"{block} is beyond the {sum(depths)} blocks of the architecture.")


def _timm_module(arch: TimmArch, module: str,
                 depths: Sequence[int]) -> tuple[str, str]:
  """(timm module name, kind) of our module path, with `depths` blocks per stage."""
  prefix = f"{arch.top}/~/"
  if module.startswith(prefix):
    relative = module[len(prefix):]
    for rule in arch.modules:
      match = re.fullmatch(rule.ours, relative)
      if match:
        block = match.groupdict().get("block")
        name = rule.timm.format(
            block=_block_prefix(block, depths) if block else None)
        return name, rule.kind
  raise CheckpointError(f"Module {module} has no timm counterpart.")


def _to_timm_layout(array: np.ndarray, kind: str, name: str) -> np.ndarray:
  if kind == "conv" and name == "w":
    return array.transpose(3, 2, 0, 1)
  if kind == "conv" and name == "gain":
    return array.reshape(-1, 1, 1, 1)
  if kind == "linear" and name == "w":
    return array.T
  if kind == "linear_as_conv" and name == "w":
    return array.T[:, :, None, None]
  if kind == "conv1d":
    return array.reshape(1, 1, -1)
  return array


def _from_timm_layout(array: np.ndarray, kind: str, name: str) -> np.ndarray:
  if kind == "conv" and name == "w":
    return array.transpose(2, 3, 1, 0)
  if kind == "conv" and name == "gain":
    return array.reshape(-1)
  if kind == "linear" and name == "w":
    return array.T
  if kind == "linear_as_conv" and name == "w":
    return array[:, :, 0, 0].T
  if kind == "conv1d":
    return array.reshape(-1)
  return array


def _depths(spec: TimmArch, model_kwargs: Mapping[str, Any]) -> Sequence[int]:
  return model_kwargs.get("stage_depths") or spec.depths


def to_timm_state_dict(params: Mapping[str, Mapping[str, Any]], arch: str,
                       **model_kwargs: Any) -> dict[str, np.ndarray]:
  """Our params as timm's state dict for `arch` (keys and layouts).

  `model_kwargs` are the params' constructor overrides (`stage_depths` sets
  the numbering of the blocks).
  """
  spec = _arch(arch)
  depths = _depths(spec, model_kwargs)
  state_dict = {}
  for module, names in params.items():
    timm_module, kind = _timm_module(spec, module, depths)
    for name, value in names.items():
      # order="C": safetensors writes contiguous buffers; keeps 0-d arrays 0-d.
      state_dict[f"{timm_module}.{_NAMES[name]}"] = np.asarray(
          _to_timm_layout(np.asarray(value, np.float32), kind, name), order="C")
  return state_dict


def from_timm_state_dict(state_dict: Mapping[str, np.ndarray], arch: str,
                         source: str = "the state dict", **model_kwargs: Any) -> Params:
  """timm's state dict for `arch` as our params, checked against our model.

  `model_kwargs` override `arch`'s constructor arguments (other widths).

  Raises:
    CheckpointError: keys or shapes differ from `arch`'s (named).
  """
  spec = _arch(arch)
  classifier = state_dict.get("head.fc.weight")
  if classifier is None or classifier.ndim != 2:
    raise CheckpointError(f"{source} has no classifier weight 'head.fc.weight'; "
                          f"is it a timm {arch} state dict?")
  expected = released.expected_shapes(spec.model, num_classes=classifier.shape[0],
                                      **{**spec.kwargs, **model_kwargs})
  params: Params = {}
  unused = set(state_dict)
  depths = _depths(spec, model_kwargs)
  for module, names in expected.items():
    timm_module, kind = _timm_module(spec, module, depths)
    for name in names:
      key = f"{timm_module}.{_NAMES[name]}"
      if key not in state_dict:
        raise CheckpointError(f"{source} has no {key} (our {module}/{name}); "
                              f"is it a timm {arch} state dict?")
      unused.discard(key)
      params.setdefault(module, {})[name] = _from_timm_layout(
          np.asarray(state_dict[key], np.float32), kind, name)
  if unused:
    raise CheckpointError(f"{source} has keys that {arch} does not: "
                          f"{sorted(unused)[:10]}")
  released.check_shapes(params, expected, source, f"timm's {arch}")
  return params


@functools.lru_cache(maxsize=None)
def _timm_keys(arch: str) -> frozenset[str]:
  """The state-dict keys of timm's `arch` (any widths: keys name no sizes)."""
  spec = _arch(arch)
  expected = released.expected_shapes(spec.model, num_classes=1, **spec.kwargs)
  return frozenset(f"{_timm_module(spec, module, spec.depths)[0]}.{_NAMES[name]}"
                   for module, names in expected.items() for name in names)


def infer_arch(state_dict: Mapping[str, Any]) -> str:
  """The timm architecture with the state dict's blocks per stage and keys."""
  blocks = {tuple(int(i) for i in m.groups()) for m in
            (re.match(r"stages\.(\d+)\.(\d+)\.", k) for k in state_dict) if m}
  depths = [sum(1 for s, _ in blocks if s == stage) for stage in range(4)]
  matches = [name for name, spec in TIMM_ARCHS.items() if list(spec.depths) == depths]
  if len(matches) > 1:  # e.g. dm_nfnet_f0, nfnet_l0 and eca_nfnet_l0.
    matches = [name for name in matches if _timm_keys(name) == set(state_dict)]
  if len(matches) != 1:
    raise CheckpointError(
        f"Blocks per stage {depths} and keys match {matches or 'no'} known timm "
        "architecture; pass arch= (one of " + ", ".join(sorted(TIMM_ARCHS)) + ").")
  return matches[0]


def _arch_from_hub_path(path: str) -> str | None:
  """The architecture a Hugging Face cache path or its config.json names."""
  config = os.path.join(os.path.dirname(path), "config.json")
  if os.path.exists(config):
    with open(config) as f:
      name = json.load(f).get("architecture")
    if name:
      return name
  match = re.search(r"models--timm--([A-Za-z0-9_]+)", path)
  return match.group(1) if match else None


def find_safetensors(path: str | os.PathLike) -> str:
  """The weights file of a path: itself, or a hub folder's `model.safetensors`.

  Accepts a `.safetensors` file, a folder holding `model.safetensors`, or a
  Hugging Face cache folder (`models--timm--<name>`), whose newest snapshot
  is taken.
  """
  path = os.fspath(path)
  if os.path.isfile(path):
    return path
  candidates = glob.glob(os.path.join(path, "model.safetensors")) + glob.glob(
      os.path.join(path, "snapshots", "*", "model.safetensors"))
  if not candidates:
    raise FileNotFoundError(
        f"No model.safetensors in {path} (nor in its snapshots/*/): pass the "
        ".safetensors file or a Hugging Face cache folder such as "
        "models--timm--dm_nfnet_f0.dm_in1k.")
  return max(candidates, key=os.path.getmtime)


def is_safetensors(path: str | os.PathLike) -> bool:
  """Whether `path` is a safetensors file (by its header, not its name)."""
  with open(path, "rb") as f:
    head = f.read(9)
  return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1


def read_timm_checkpoint(path: str | os.PathLike, arch: str | None = None,
                         **model_kwargs: Any) -> tuple[str, Params]:
  """(architecture, params) of a timm safetensors file or hub cache folder."""
  file = find_safetensors(path)
  try:
    state_dict = safetensors.numpy.load_file(file)
  except Exception as e:  # safetensors raises its own error types.
    raise CheckpointError(f"{file} is not a readable safetensors file: {e}") from e
  arch = arch or _arch_from_hub_path(file) or infer_arch(state_dict)
  return arch, from_timm_state_dict(state_dict, arch, file, **model_kwargs)


def load_timm_checkpoint(path: str | os.PathLike, arch: str | None = None,
                         **model_kwargs: Any) -> Params:
  """Loads timm weights for our model (any name of `TIMM_ARCHS`).

  Args:
    path: a `.safetensors` state dict as timm writes it, a folder with
      `model.safetensors`, or a Hugging Face cache folder such as
      `~/.cache/huggingface/hub/models--timm--dm_nfnet_f0.dm_in1k`.
    arch: the timm architecture; None reads it from the hub folder's name or
      `config.json`, else from the blocks per stage and the keys.
    **model_kwargs: constructor arguments that change parameter shapes, for
      weights not of the architecture's standard widths.

  Returns:
    Params for `nfnets_jax.create_model(arch, num_classes)` (which computes
    what timm computes), num_classes from the classifier. The DeepMind ports
    `dm_nfnet_f*` also fit `create_model(TIMM_ARCHS[arch].model, num_classes,
    **TIMM_ARCHS[arch].kwargs)`, the release's numerics.

  Raises:
    CheckpointError: unknown architecture, or keys or shapes that differ.
    FileNotFoundError: no safetensors file at `path`.
  """
  return {m: {n: jnp.asarray(a) for n, a in v.items()}
          for m, v in read_timm_checkpoint(path, arch, **model_kwargs)[1].items()}


def arch_of(model: str, variant: str | None) -> str:
  """timm's architecture for one of our model variants."""
  for name, spec in TIMM_ARCHS.items():
    if spec.model == model and spec.kwargs.get("variant") == variant:
      return name
  raise CheckpointError(f"timm has no counterpart of {model} {variant}; pass the "
                        f"architecture (one of {', '.join(sorted(TIMM_ARCHS))}).")


def export_timm(params: Mapping[str, Mapping[str, Any]], path: str | os.PathLike,
                arch: str | None = None, **model_kwargs: Any) -> str:
  """Writes our params as a timm state dict in safetensors form (atomically).

  A PyTorch user loads it with `safetensors.torch.load_file` and
  `timm.create_model(arch).load_state_dict`.

  Args:
    params: our model's params.
    path: the output file.
    arch: the timm architecture; None takes the one of the params' variant
      (`model_kwargs['variant']`, else inferred from the params).
    **model_kwargs: the constructor arguments of params that are not of the
      architecture's standard widths (timm then needs the same overrides).

  Returns:
    The architecture written.

  Raises:
    CheckpointError: no timm counterpart, or shapes other than the
      architecture's (with `model_kwargs` applied).
  """
  if arch is None:
    model, variant = released.infer_variant(params)
    arch = arch_of(model, model_kwargs.get("variant", variant))
  state_dict = to_timm_state_dict(params, arch, **model_kwargs)
  # Refuse what timm could not load: the inverse must check out.
  from_timm_state_dict(state_dict, arch, f"params for {arch}", **model_kwargs)
  tmp = f"{path}.tmp"
  safetensors.numpy.save_file(state_dict, tmp, metadata={"format": "pt"})
  os.replace(tmp, path)
  return arch
