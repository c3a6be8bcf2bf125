"""Weights from any checkpoint path: a training workdir, a released or a timm file.

`load_weights` is what `predict`, `evaluate`, `export` and fine-tuning
(`--config.init_from`) read; `merge_for_finetuning` fits loaded weights into a
freshly initialised model.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import os
from typing import Any, Mapping, Optional, Sequence

import ml_collections
import numpy as np

from nfnets_jax import checkpointing
from nfnets_jax.pretrained import released
from nfnets_jax.pretrained import timm
from nfnets_jax.pretrained.released import CheckpointError

Params = dict[str, dict[str, Any]]


@dataclasses.dataclass
class Weights:
  """A model's weights and how to build the model.

  Attributes:
    kind: 'workdir', 'released' or 'timm'.
    model: our model name (`nfnets_jax.create_model`).
    model_kwargs: its constructor arguments.
    num_classes: classifier outputs.
    params: Haiku params (host arrays).
    model_state: Haiku state (BatchNorm statistics; empty for NF networks).
    config: a workdir's run config; None for files.
    description: what was read, for log lines.
  """
  kind: str
  model: str
  model_kwargs: dict[str, Any]
  num_classes: int
  params: Params
  model_state: Any
  config: Optional[ml_collections.ConfigDict]
  description: str


def classifier_module(params: Mapping[str, Any]) -> str:
  """The classifier's module path, `<top>/~/linear`."""
  return f"{next(iter(params)).split('/')[0]}/~/linear"


def num_classes(params: Mapping[str, Any]) -> int:
  return params[classifier_module(params)]["w"].shape[1]


def is_workdir(path: str) -> bool:
  return os.path.isdir(os.path.join(path, "checkpoints")) or any(
      name.isdigit() for name in os.listdir(path))


def _load_workdir(path: str, weights: str) -> Weights:
  directory = os.path.join(path, "checkpoints")
  if not os.path.isdir(directory):
    directory = path
  checkpointer = checkpointing.Checkpointer(directory, async_save=False, read_only=True)
  try:
    restored = checkpointer.restore()
  finally:
    checkpointer.close()
  if restored is None:
    raise FileNotFoundError(f"No checkpoint in {directory}.")
  config = ml_collections.ConfigDict(restored.config)
  use_ema = weights == "ema" and bool(config.optimizer.ema_decay)
  params = restored.state["ema_params" if use_ema else "params"]
  return Weights(
      kind="workdir", model=config.model.name, model_kwargs=dict(config.model.kwargs),
      num_classes=num_classes(params), params=params,
      model_state=restored.state["ema_state" if use_ema else "model_state"],
      config=config,
      description=(f"workdir {path} (step {restored.step}, "
                   f"{'EMA' if use_ema else 'raw'} weights)"))


def load_weights(path: str | os.PathLike, *, weights: str = "ema",
                 model_kwargs: Optional[Mapping[str, Any]] = None,
                 arch: Optional[str] = None) -> Weights:
  """Reads the weights at `path`, whatever holds them.

  Args:
    path: a training workdir (or its `checkpoints/` folder); a released file
      (`F0_haiku.npz` ...); a timm `.safetensors` file or Hugging Face cache
      folder (`models--timm--dm_nfnet_f0.dm_in1k`).
    weights: workdirs only: 'ema' (if the run kept an EMA) or 'raw'.
    model_kwargs: files only: constructor arguments of the model the file
      holds, for files that are not of a standard variant (`variant` also
      checks which variant the file holds).
    arch: timm files only: the architecture, if it cannot be inferred.

  Raises:
    FileNotFoundError: nothing at `path`, or an empty workdir.
    CheckpointError: the file is unsafe, malformed or of another variant.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist.")
  if weights not in ("ema", "raw"):
    raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}.")
  kwargs = dict(model_kwargs or {})
  variant = kwargs.pop("variant", None)
  if os.path.isdir(path) and not _holds_safetensors(path):
    if not is_workdir(path):
      raise FileNotFoundError(
          f"{path} is a folder with neither checkpoints nor model.safetensors: "
          "pass a training workdir, a released file, or a timm safetensors file "
          "or Hugging Face cache folder.")
    return _load_workdir(path, weights)
  if os.path.isdir(path) or timm.is_safetensors(path):
    found_arch, params = timm.read_timm_checkpoint(path, arch, **kwargs)
    spec = timm.TIMM_ARCHS[found_arch]
    if variant is not None and spec.kwargs.get("variant") != variant:
      raise CheckpointError(f"{path} holds timm's {found_arch}, not variant {variant!r}.")
    return Weights("timm", spec.model, {**spec.kwargs, **kwargs}, num_classes(params),
                   params, {}, None, f"timm {found_arch} file {path}")
  model, found, params = released.read_official_checkpoint(path, variant, **kwargs)
  return Weights("released", model, {"variant": found, **kwargs}, num_classes(params),
                 params, {}, None, f"released {model} {found} file {path}")


def _holds_safetensors(path: str) -> bool:
  try:
    timm.find_safetensors(path)
  except FileNotFoundError:
    return False
  return True


@dataclasses.dataclass
class MergeReport:
  """What `merge_for_finetuning` did, module by module."""
  loaded: list[str]
  reinitialised: list[str]
  skipped: list[str]

  def summary(self, source: str) -> str:
    parts = [f"Initialised from {source}: loaded {len(self.loaded)} modules"]
    if self.reinitialised:
      parts.append(f"re-initialised {', '.join(self.reinitialised)}")
    if self.skipped:
      parts.append(f"kept the fresh initialisation of {', '.join(self.skipped)} "
                   "(init_skip)")
    return "; ".join(parts) + "."


def merge_for_finetuning(initial: Mapping[str, Mapping[str, Any]],
                         loaded: Mapping[str, Mapping[str, Any]],
                         skip: Sequence[str] = ()) -> tuple[Params, MergeReport]:
  """`initial` with every module taken from `loaded` where path and shapes match.

  The classifier keeps its fresh initialisation when its number of classes
  differs; modules matching a pattern of `skip` (fnmatch, e.g.
  'NFNet/~/nf_block_11*') keep theirs whatever `loaded` holds. Anything else
  that does not match is an error.

  Raises:
    CheckpointError: naming each module that is missing, unexpected or of
      other shapes, and how to skip it.
  """
  skipped = lambda module: any(fnmatch.fnmatchcase(module, p) for p in skip)
  shapes = lambda tree: {n: np.shape(a) for n, a in tree.items()}
  classifier = classifier_module(initial)
  merged: Params = {}
  report = MergeReport([], [], [])
  problems = []
  for module, names in initial.items():
    source = loaded.get(module)
    if skipped(module):
      report.skipped.append(module)
      merged[module] = dict(names)
    elif source is not None and shapes(source) == shapes(names):
      report.loaded.append(module)
      merged[module] = {n: np.asarray(source[n], np.asarray(a).dtype) for n, a in names.items()}
    elif module == classifier and source is not None and set(source) == set(names):
      report.reinitialised.append(
          f"{module} ({num_classes(loaded)} -> {num_classes(initial)} classes)")
      merged[module] = dict(names)
    elif source is None:
      problems.append(f"{module} is not in the checkpoint")
    else:
      problems.append(f"{module} has {shapes(source)} in the checkpoint, the model "
                      f"{shapes(names)}")
  problems += [f"{m} is in the checkpoint but not in the model"
               for m in loaded if m not in initial and not skipped(m)]
  if problems:
    raise CheckpointError(
        "The checkpoint does not fit the model: " + "; ".join(problems) +
        ". Fix config.model to match the checkpoint, or list the modules to "
        "leave freshly initialised in --config.init_skip (comma-separated "
        "patterns).")
  return merged, report
