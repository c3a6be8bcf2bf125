"""Checkpoints of the training state: orbax, atomic, verified, config-checked.

Each checkpoint step directory holds two items:
  state: the host copy of the `TrainState` (numpy arrays), via orbax;
  meta:  JSON with the run's config and a checksum of the state.
Orbax writes a step into a temporary directory and renames it when complete,
so a process killed mid-save leaves only finished checkpoints. The checksum
catches checkpoints damaged afterwards; restoring then falls back, with a
warning, to the newest checkpoint that reads back intact.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from typing import Any, Iterable, NamedTuple, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

from nfnets_jax import agc
from nfnets_jax import console

# Config sections and fields that may change when a run resumes: they do not
# affect the training trajectory (logging, checkpoint cadence, evaluation,
# where the data lives, how the processes find each other).
RESUMABLE_CHANGES = ("checkpoint", "distributed", "eval", "log",
                     "data.data_dir")


class ConfigMismatchError(ValueError):
  """The config of this run differs from the one stored with a checkpoint."""


class CheckpointReadError(RuntimeError):
  """No checkpoint in the directory could be read back intact."""


def default_config() -> ml_collections.ConfigDict:
  """Fields of `config.checkpoint`."""
  config = ml_collections.ConfigDict()
  config.every_steps = 1000  # Periodic checkpoints; 0: only the final one.
  config.max_to_keep = 3  # Newest checkpoints kept on disk.
  config.async_save = True  # Write in a background thread while training.
  return config


def config_to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as plain JSON data (tuples become lists), as stored."""
  return json.loads(config.to_json_best_effort())


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix: tree}
  flat = {}
  for key, value in tree.items():
    flat.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
  return flat


def config_differences(saved: dict[str, Any], current: dict[str, Any],
                       ignore: Iterable[str] = RESUMABLE_CHANGES) -> list[str]:
  """Human-readable differences between two configs (as `config_to_dict`).

  Args:
    saved: the config stored with the checkpoint.
    current: the config of this run.
    ignore: dotted field names or section prefixes that may differ.

  Returns:
    One line per differing field, e.g.
    `train.batch_size: checkpoint has 256, this run has 128`; empty if equal.
  """
  ignore = tuple(ignore)
  skipped = lambda key: any(key == p or key.startswith(p + ".") for p in ignore)
  saved_flat, current_flat = _flatten(saved), _flatten(current)
  missing = object()
  lines = []
  for key in sorted(set(saved_flat) | set(current_flat)):
    old, new = saved_flat.get(key, missing), current_flat.get(key, missing)
    if skipped(key) or old == new:
      continue
    describe = lambda v: "no such field" if v is missing else json.dumps(v)
    lines.append(f"{key}: checkpoint has {describe(old)}, "
                 f"this run has {describe(new)}")
  return lines


def tree_checksum(tree: Any) -> str:
  """SHA-256 over the paths, dtypes, shapes and bytes of a tree's arrays.

  Paths are joined key names in sorted order, so a state restored with its
  NamedTuples (a typed template) or as plain dicts and lists (no template)
  has the same checksum.
  """
  leaves = sorted((agc.param_path(path), np.ascontiguousarray(leaf))
                  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0])
  digest = hashlib.sha256()
  for path, leaf in leaves:
    digest.update(f"{path}|{leaf.dtype}|{leaf.shape}|".encode())
    digest.update(leaf.tobytes())
  return digest.hexdigest()


def _ignore_reads_finishing_on_a_closed_loop() -> None:
  """Drops the `Event loop is closed` errors of a failed restore's other reads.

  When one array of a checkpoint fails to read, orbax closes its event loop
  while tensorstore is still reading the others; each read that completes
  then reports `RuntimeError('Event loop is closed')` through
  `sys.unraisablehook`, hundreds of tracebacks for one damaged checkpoint.
  The fallback has already said what happened, so those (and only those)
  are dropped; every other unraisable error still reaches the previous hook.
  """
  previous = sys.unraisablehook
  if getattr(previous, "ignores_closed_loop_reads", False):
    return

  def hook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
      previous(unraisable)

  hook.ignores_closed_loop_reads = True
  sys.unraisablehook = hook


class Restored(NamedTuple):
  """A checkpoint read back: its step, state and stored config (as JSON data)."""
  step: int
  state: Any
  config: dict[str, Any]


class Checkpointer:
  """Saves and restores `(state, config)` pairs in `directory`.

  Every process must call `save` and `restore` (orbax synchronises them);
  with several hosts `directory` must be storage they share (e.g. a GCS
  bucket).
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3,
               async_save: bool = True, read_only: bool = False):
    self.directory = os.fspath(directory)
    if "://" not in self.directory:  # Orbax needs local paths absolute.
      self.directory = os.path.abspath(self.directory)
    self._read_only = read_only
    # Read-only, orbax warns that it will not save or create anything.
    with console.absl_warnings_off() if read_only else contextlib.nullcontext():
      options = ocp.CheckpointManagerOptions(
          preservation_policy=checkpoint_managers.LatestN(max_to_keep),
          enable_async_checkpointing=async_save,
          cleanup_tmp_directories=not read_only, read_only=read_only)
      self._manager = ocp.CheckpointManager(
          self.directory, options=options, item_names=("state", "meta"))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, config: dict[str, Any]) -> None:
    """Writes `state` (numpy arrays) at `step`; skips steps already saved."""
    if step in self._manager.all_steps():
      return
    meta = {"step": int(step), "config": config,
            "checksum": tree_checksum(state)}
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def restore(self, template: Any = None,
              config: Optional[dict[str, Any]] = None) -> Optional[Restored]:
    """The newest intact checkpoint, or None if there is none.

    Args:
      template: a state with the expected structure, dtypes and shapes; None
        restores plain dicts and lists of numpy arrays.
      config: this run's config (`config_to_dict`), compared with the stored
        one outside `RESUMABLE_CHANGES`; None skips the comparison.

    Raises:
      ConfigMismatchError: the newest readable checkpoint has another config.
      CheckpointReadError: checkpoints exist but none reads back intact.
    """
    _ignore_reads_finishing_on_a_closed_loop()
    steps = sorted(self._manager.all_steps(), reverse=True)
    for index, step in enumerate(steps):
      try:
        meta = self._restore_item(step, "meta", ocp.args.JsonRestore())
      except Exception as e:  # pylint: disable=broad-except
        self._warn_unreadable(step, e)
        continue
      differences = ([] if config is None else
                     config_differences(meta["config"], config))
      if differences:
        raise ConfigMismatchError(
            f"The checkpoint at step {step} in {self.directory} was written "
            "with a different config:\n  " + "\n  ".join(differences) +
            "\nUse a new --workdir for a different experiment, or re-run with "
            "the checkpoint's values to resume it.")
      try:
        state = self._restore_item(
            step, "state", ocp.args.StandardRestore(template))
      except Exception as e:  # pylint: disable=broad-except
        self._warn_unreadable(step, e)
        continue
      if tree_checksum(state) != meta["checksum"]:
        self._warn_unreadable(step, "checksum mismatch")
        continue
      # Training restarts from `step` and will save the later steps again.
      for bad_step in steps[:index] if not self._read_only else ():
        logging.info("Removing the unreadable checkpoint at step %d.", bad_step)
        self._manager.delete(bad_step)
      return Restored(step, state, meta["config"])
    if steps:
      raise CheckpointReadError(
          f"None of the checkpoints (steps {sorted(steps)}) in "
          f"{self.directory} could be read back intact (see the warnings "
          "above). Move that directory away to start training afresh.")
    return None

  def _restore_item(self, step: int, name: str, args: Any) -> Any:
    return self._manager.restore(
        step, args=ocp.args.Composite(**{name: args}))[name]

  def _warn_unreadable(self, step: int, error: Any) -> None:
    logging.warning(
        "Checkpoint at step %d in %s is corrupt or incomplete (%s); falling "
        "back to the previous checkpoint.", step, self.directory,
        str(error)[:200] or type(error).__name__)

  def wait(self) -> None:
    """Blocks until background writes are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    # Orbax removes unfinished temporary directories in a background thread
    # that its close() does not wait for; a run refused right after start-up
    # (another config) could exit under it and print its traceback.
    cleanup = getattr(self._manager, "_cleanup_tmp_directory_future", None)
    if cleanup is not None:
      cleanup.result()
    self._manager.close()
