"""Reading and writing the authors' released checkpoint format.

The released `F0_haiku.npz` ... `F6_haiku.npz` are, despite the name, pickles
of the Haiku parameter dict `{module_path: {name: array}}`. A pickle can run
arbitrary code when loaded, so they are read through an unpickler that refuses
every global except NumPy's array and dtype reconstructors, before anything
from the file is executed.
"""
from __future__ import annotations

import io
import os
import pickle
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from nfnets_jax import models
from nfnets_jax.nfnet import NFNET_VARIANTS
from nfnets_jax.nfresnet import RESNET_DEPTHS

Params = dict[str, dict[str, Any]]

# (module, name) pairs a NumPy array or dtype pickle may reference, for the
# NumPy 1.x (`numpy.core`) and 2.x (`numpy._core`) module layouts.
_ALLOWED_GLOBALS = frozenset(
    [(mod, name)
     for core in ("numpy.core", "numpy._core")
     for mod, name in ((f"{core}.multiarray", "_reconstruct"),
                       (f"{core}.multiarray", "scalar"),
                       (f"{core}.numeric", "_frombuffer"))]
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")])

_TOP_MODULES = {"NFNet": "NFNet", "NF_ResNet": "NFResNet"}


class CheckpointError(ValueError):
  """A file that is not a valid released checkpoint for the requested model."""


class _RestrictedUnpickler(pickle.Unpickler):

  def find_class(self, module: str, name: str):
    if (module, name) not in _ALLOWED_GLOBALS:
      raise CheckpointError(
          f"Refusing to unpickle the global {module}.{name}: a released "
          "checkpoint only contains NumPy arrays in plain containers, and "
          "loading anything else could run code. Do not load this file.")
    return super().find_class(module, name)


def read_param_pickle(path: str | os.PathLike) -> Params:
  """Safely reads `{module_path: {name: array}}` from a released-format pickle.

  Raises:
    CheckpointError: the file is not such a pickle, or asks for any global
      other than NumPy's array and dtype reconstructors (refused before the
      global is imported, so nothing in the file runs).
  """
  with open(path, "rb") as f:
    data = f.read()
  if data[:2] == b"PK":
    raise CheckpointError(
        f"{path} is a zip archive (a real .npz), not the released format, a "
        "pickle of {module_path: {name: array}}.")
  try:
    tree = _RestrictedUnpickler(io.BytesIO(data)).load()
  except CheckpointError:
    raise
  except Exception as e:  # pickle raises many types on garbage input.
    raise CheckpointError(
        f"{path} is not a readable pickle ({type(e).__name__}: {e}); expected "
        "the released format, a pickle of {module_path: {name: array}}.") from e
  if not isinstance(tree, Mapping) or not all(
      isinstance(m, Mapping) and all(isinstance(a, np.ndarray) for a in m.values())
      for m in tree.values()):
    raise CheckpointError(
        f"{path} holds a {type(tree).__name__}, not a dict of "
        "{module_path: {name: numpy array}} as in the released checkpoints.")
  return {str(k): {str(n): a for n, a in v.items()} for k, v in tree.items()}


def save_official_checkpoint(params: Mapping[str, Mapping[str, Any]],
                             path: str | os.PathLike) -> None:
  """Writes Haiku params in the released format (atomically: temp file + rename)."""
  tree = {m: {n: np.asarray(a) for n, a in v.items()} for m, v in params.items()}
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:
    pickle.dump(tree, f, protocol=pickle.HIGHEST_PROTOCOL)
  os.replace(tmp, path)


def infer_variant(params: Mapping[str, Any]) -> tuple[str, str]:
  """(model name, variant) that a released parameter dict looks like.

  NFNets are told apart by their number of blocks and final width, NF-ResNets
  by their number of blocks.
  """
  tops = {path.split("/")[0] for path in params}
  if len(tops) != 1 or next(iter(tops)) not in _TOP_MODULES:
    raise CheckpointError(
        f"Top-level modules {sorted(tops)} match no known model; expected "
        f"one of {sorted(_TOP_MODULES)}.")
  top = next(iter(tops))
  num_blocks = len({m.group(0) for m in
                    (re.match(rf"{top}/~/nf_(res_)?block(_\d+)?", p) for p in params) if m})
  if top == "NF_ResNet":
    matches = [v for v, d in RESNET_DEPTHS.items() if sum(d) == num_blocks]
    if not matches:
      raise CheckpointError(f"No NF-ResNet variant has {num_blocks} blocks.")
    return "NFResNet", matches[0]
  final_width = params.get(f"{top}/~/final_conv", {}).get("bias")
  final_width = None if final_width is None else final_width.shape[0]
  for variant, spec in NFNET_VARIANTS.items():
    if sum(spec["depths"]) == num_blocks and 2 * spec["widths"][-1] == final_width:
      return "NFNet", variant
  raise CheckpointError(
      f"No NFNet variant has {num_blocks} blocks and final width {final_width}.")


def expected_shapes(model: str, variant: str, num_classes: int,
                    **kwargs: Any) -> dict[str, dict[str, tuple[int, ...]]]:
  """Parameter shapes of a model, from an abstract init (nothing allocated)."""
  _, params, _, _ = models.abstract_init(model, num_classes, variant=variant, **kwargs)
  return {m: {n: tuple(a.shape) for n, a in v.items()} for m, v in params.items()}


def load_official_checkpoint(path: str | os.PathLike, variant: str | None = None,
                             **model_kwargs: Any) -> Params:
  """Loads one of the authors' released checkpoints, checked against our model.

  Args:
    path: the released file, e.g. `F0_haiku.npz`.
    variant: the variant the caller expects ('F0', 'ResNet50', ...); None
      accepts whatever the file holds.
    **model_kwargs: constructor arguments that change parameter shapes, if the
      checkpoint was not trained with the defaults.

  Returns:
    Params `{module_path: {name: jnp array}}` ready for the Haiku `apply` of
    `nfnets_jax.NFNet(num_classes, variant)` (or `NFResNet`), with
    num_classes read from the classifier.

  Raises:
    CheckpointError: the file is unsafe or malformed, holds another variant
      than `variant` (the message names the one it looks like), or its module
      paths or shapes differ from the model's (named, with both shapes).
  """
  params = read_param_pickle(path)
  model, found = infer_variant(params)
  if variant is not None and variant != found:
    raise CheckpointError(
        f"{path} looks like {model} variant {found!r}, not {variant!r}; pass "
        f"variant={found!r} (or the right file).")
  top = next(iter(params)).split("/")[0]
  classifier = params.get(f"{top}/~/linear", {}).get("w")
  if classifier is None or classifier.ndim != 2:
    raise CheckpointError(f"{path} has no classifier weight at {top}/~/linear 'w'.")
  expected = expected_shapes(model, found, classifier.shape[1], **model_kwargs)
  missing = sorted(set(expected) - set(params))
  unexpected = sorted(set(params) - set(expected))
  if missing or unexpected:
    raise CheckpointError(
        f"{path} does not match {model} {found}: missing modules {missing}, "
        f"unexpected modules {unexpected}.")
  for module, names in expected.items():
    if set(names) != set(params[module]):
      raise CheckpointError(
          f"{path}: module {module} has parameters {sorted(params[module])}, "
          f"expected {sorted(names)}.")
    for name, shape in names.items():
      got = params[module][name].shape
      if got != shape:
        raise CheckpointError(
            f"{path}: {module}/{name} has shape {got}, the model expects {shape}.")
  return jax.tree_util.tree_map(jnp.asarray, params)
