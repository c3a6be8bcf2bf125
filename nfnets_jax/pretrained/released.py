"""The authors' released checkpoint format: read safely, check, write.

The released `F0_haiku.npz` ... `F6_haiku.npz` are, despite the name, dill
pickles (written with dill 0.3.3 in February 2021) of the Haiku parameter tree
`{module_path: {name: array}}`. Haiku 0.0.3 returned that tree as nested
`haiku._src.data_structures.FlatMapping`s, and dill 0.3.3 wrote every NumPy
array as `dill._dill._create_array(f, args, state, npdict)` with `f` the
reconstructor `_get_attr(_import_module('numpy.core._multiarray_umath'),
'_reconstruct')`.

A pickle can run any code when loaded, and `_import_module` / `_get_attr` are
exactly how a hostile dill file would reach `os.system`. So nothing named by a
file is imported from the file's say-so: every global maps to a stand-in from
an allow-list (NumPy's array and dtype reconstructors; plain dicts for Haiku's
containers; checked versions of dill's three helpers that only ever yield
NumPy's reconstructors), or the file is refused before anything in it runs.
Neither dill nor Haiku's old classes are needed to read the files.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import warnings
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from nfnets_jax import models
from nfnets_jax.models import NFNET_VARIANTS

Params = dict[str, dict[str, Any]]

# MD5 sums of the published files (../shared/reference/PRETRAINED.md).
RELEASED_MD5 = {
    "F0_haiku.npz": "0a41039da1cb43adf47f1b7d86ddfe0f",
    "F1_haiku.npz": "c9126bbfaf855f9ddb7ff3b902558781",
    "F2_haiku.npz": "7a018d8d1498020e2f5a8719a1e7f53f",
    "F3_haiku.npz": "d8e1e78d26db659c486150dbaccbe78a",
    "F4_haiku.npz": "f5974a7e3388aa81b91a9f1403e759a4",
    "F5_haiku.npz": "8639e925de951030651ac775b9f915c3",
    "F6_haiku.npz": "b16cca40ac1ecec2bd5e3273866da0c1",
}

_multiarray = np._core.multiarray  # pylint: disable=protected-access
# NumPy's array reconstructors, under the names NumPy 1.x (`numpy.core`) and
# 2.x (`numpy._core`) pickle them with; they build arrays and nothing else.
_RECONSTRUCTORS = {"_reconstruct": _multiarray._reconstruct,  # pylint: disable=protected-access
                   "scalar": _multiarray.scalar}
_NUMPY_MODULES = frozenset(f"{core}.{mod}" for core in ("numpy.core", "numpy._core")
                           for mod in ("multiarray", "_multiarray_umath"))
_NUMPY_GLOBALS = {
    **{(mod, name): fn for mod in _NUMPY_MODULES for name, fn in _RECONSTRUCTORS.items()},
    **{(f"{core}.numeric", "_frombuffer"): np._core.numeric._frombuffer  # pylint: disable=protected-access
       for core in ("numpy.core", "numpy._core")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
# Haiku's immutable parameter containers across versions, each pickled as
# `(cls, (plain_dict,))`: rebuilt as plain dicts, Haiku never imported.
_HAIKU_CONTAINERS = frozenset(
    (module, name)
    for module in ("haiku._src.data_structures", "haiku.data_structures")
    for name in ("FlatMapping", "FlatMap", "frozendict"))
_DILL_MODULES = ("dill._dill", "dill.dill")  # dill 0.3.x and 0.2.x
# The release's top-level module names -> our model names.
_TOP_MODULES = {"NFNet": "NFNet", "NF_ResNet": "NFResNet", "NF_RegNet": "NFRegNet",
                "SkipInit_ResNet": "SkipInitResNet", "FixUp_ResNet": "FixupResNet"}


class CheckpointError(ValueError):
  """A file that is not a valid checkpoint for the requested model."""


class ReleasedFileWarning(UserWarning):
  """A file named like a released checkpoint whose MD5 is not the published one."""


def _refuse(what: str) -> CheckpointError:
  return CheckpointError(
      f"Refusing to unpickle the global {what}: a released checkpoint only "
      "contains NumPy arrays in dicts (or Haiku's parameter containers), and "
      "loading anything else could run code. Do not load this file.")


class _NumpyModule(str):
  """What the checked `_import_module` returns: a NumPy module's name, no module."""


def _import_module(name: str, safe: bool = False) -> _NumpyModule:
  del safe
  if name not in _NUMPY_MODULES:
    raise _refuse(f"dill._dill._import_module({name!r})")
  return _NumpyModule(name)


def _get_attr(module: Any, name: str) -> Callable[..., Any]:
  if not isinstance(module, _NumpyModule) or name not in _RECONSTRUCTORS:
    raise _refuse(f"dill._dill._get_attr({module!r}, {name!r})")
  return _RECONSTRUCTORS[name]


def _create_array(f: Any, args: tuple[Any, ...], state: Any,
                  npdict: Any = None) -> np.ndarray:
  if not any(f is fn for fn in _RECONSTRUCTORS.values()):
    raise _refuse(f"dill._dill._create_array with constructor {f!r}")
  if npdict:
    raise CheckpointError("The file holds a NumPy array subclass with "
                          "attributes; released checkpoints hold plain arrays.")
  array = f(*args)
  if type(array) is not np.ndarray:  # pylint: disable=unidiomatic-typecheck
    raise CheckpointError(f"The file holds a {type(array).__name__}, not a "
                          "plain NumPy array.")
  array.__setstate__(state)
  return array


_DILL_HELPERS = {"_import_module": _import_module, "_get_attr": _get_attr,
                 "_create_array": _create_array}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves globals from the allow-lists above only; refuses the rest."""

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in _NUMPY_GLOBALS:
      return _NUMPY_GLOBALS[(module, name)]
    if (module, name) in _HAIKU_CONTAINERS:
      return dict
    if module in _DILL_MODULES and name in _DILL_HELPERS:
      return _DILL_HELPERS[name]
    raise _refuse(f"{module}.{name}")


def _md5_problem(path: str | os.PathLike, data: bytes) -> str | None:
  """Why the file differs from the published one of its name, or None."""
  name = os.path.basename(path)
  expected = RELEASED_MD5.get(name)
  if expected is None:
    return None
  got = hashlib.md5(data).hexdigest()
  if got == expected:
    return None
  return (f"{path}: MD5 {got} differs from the published {name}'s "
          f"{expected}: a truncated or wrong download, or another file under "
          "that name. Download it again if it should be the released one.")


def read_param_pickle(path: str | os.PathLike) -> Params:
  """Safely reads `{module_path: {name: array}}` from a released-format pickle.

  Reads plain pickles and dill 0.2-0.3 streams, with Haiku's `FlatMapping`,
  `FlatMap` or `frozendict` containers rebuilt as dicts. A file named like a
  released one (`F0_haiku.npz` ...) whose MD5 differs from the published sum
  gives a `ReleasedFileWarning` (or, if it does not read, an error that says
  so); renamed files are not checked.

  Raises:
    CheckpointError: the file is not such a pickle, or names any global
      outside the allow-list (refused before it is imported or called, so
      nothing in the file runs).
  """
  with open(path, "rb") as f:
    data = f.read()
  md5_problem = _md5_problem(path, data)
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
        "the released format, a pickle of {module_path: {name: array}}." +
        (f" {md5_problem}" if md5_problem else "")) from e
  if md5_problem:
    warnings.warn(md5_problem, ReleasedFileWarning, stacklevel=2)
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

  NFNets are told apart by their number of blocks and final width, the
  other networks by their number of blocks.
  """
  tops = {path.split("/")[0] for path in params}
  if len(tops) != 1 or next(iter(tops)) not in _TOP_MODULES:
    raise CheckpointError(
        f"Top-level modules {sorted(tops)} match no known model; expected "
        f"one of {sorted(_TOP_MODULES)}.")
  top = next(iter(tops))
  model = _TOP_MODULES[top]
  num_blocks = len({m.group(0) for m in
                    (re.match(rf"{top}/~/(nf_)?(res_)?block(_\d+)?", p) for p in params) if m})
  if model != "NFNet":
    matches = [v for v, d in models.variant_depths(model).items() if sum(d) == num_blocks]
    if not matches:
      raise CheckpointError(f"No {model} variant has {num_blocks} blocks.")
    return model, matches[0]
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
  _, _, params = read_official_checkpoint(path, variant, **model_kwargs)
  return jax.tree_util.tree_map(jnp.asarray, params)


def read_official_checkpoint(path: str | os.PathLike, variant: str | None = None,
                             **model_kwargs: Any) -> tuple[str, str, Params]:
  """`load_official_checkpoint`'s checks, returning (model, variant, host params)."""
  params = read_param_pickle(path)
  model, found = model_and_variant(params, variant, bool(model_kwargs), path)
  top = next(iter(params)).split("/")[0]
  classifier = params.get(f"{top}/~/linear", {}).get("w")
  if classifier is None or classifier.ndim != 2:
    raise CheckpointError(f"{path} has no classifier weight at {top}/~/linear 'w'.")
  check_shapes(params, expected_shapes(model, found, classifier.shape[1],
                                       **model_kwargs), f"{path}", f"{model} {found}")
  return model, found, params


def model_and_variant(params: Params, variant: str | None, custom: bool,
                       path: Any) -> tuple[str, str]:
  """The file's (model, variant), checked against the caller's `variant`.

  With constructor overrides (`custom`) a file may match no standard
  variant; the caller's `variant` is then taken and the shapes decide.
  """
  try:
    model, found = infer_variant(params)
  except CheckpointError:
    top = next(iter(params), "").split("/")[0]
    if not (custom and variant and top in _TOP_MODULES):
      raise
    return _TOP_MODULES[top], variant
  if variant is not None and variant != found:
    raise CheckpointError(
        f"{path} looks like {model} variant {found!r}, not {variant!r}; pass "
        f"variant={found!r} (or the right file).")
  return model, found


def check_shapes(params: Mapping[str, Mapping[str, Any]],
                 expected: Mapping[str, Mapping[str, tuple[int, ...]]],
                 source: str, target: str) -> None:
  """Raises CheckpointError naming every module or shape that differs."""
  missing = sorted(set(expected) - set(params))
  unexpected = sorted(set(params) - set(expected))
  if missing or unexpected:
    raise CheckpointError(
        f"{source} does not match {target}: missing modules {missing}, "
        f"unexpected modules {unexpected}.")
  for module, names in expected.items():
    if set(names) != set(params[module]):
      raise CheckpointError(
          f"{source}: module {module} has parameters {sorted(params[module])}, "
          f"expected {sorted(names)}.")
    for name, shape in names.items():
      got = params[module][name].shape
      if got != shape:
        raise CheckpointError(
            f"{source}: {module}/{name} has shape {got}, the model expects {shape}.")
