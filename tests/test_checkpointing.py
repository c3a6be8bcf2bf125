"""Checkpoints: exact resume after SIGKILL and SIGTERM, corruption, config checks."""
import asyncio
import json
import logging
import pathlib
import signal
import threading

import numpy as np
import pytest

from nfnets_jax import checkpointing
import test_train_support as support

TOTAL_STEPS = 14
RESUME_RUN = (f"--config.train.total_steps={TOTAL_STEPS}",
              "--config.checkpoint.every_steps=2",
              "--config.checkpoint.max_to_keep=2")


def _state(seed):
  rng = np.random.default_rng(seed)
  return {"step": np.asarray(seed), "params": {
      "net/~/linear": {"w": rng.normal(size=(3, 4)).astype(np.float32),
                       "b": np.zeros(4, np.float32)}}, "model_state": {}}


def test_config_differences_name_each_field_and_allow_resumable_ones():
  saved = {"train": {"batch_size": 256, "label_smoothing": 0.1},
           "model": {"kwargs": {"variant": "F0"}},
           "log": {"every_steps": 50}, "data": {"data_dir": "/a"}}
  current = {"train": {"batch_size": 128, "label_smoothing": 0.1},
             "model": {"kwargs": {"variant": "F0", "width": 2}},
             "log": {"every_steps": 10}, "data": {"data_dir": "/b"}}
  assert checkpointing.config_differences(saved, current) == [
      "model.kwargs.width: checkpoint has no such field, this run has 2",
      "train.batch_size: checkpoint has 256, this run has 128"]


def test_mismatched_config_is_refused_naming_the_field(tmp_path):
  checkpointer = checkpointing.Checkpointer(tmp_path, async_save=False)
  checkpointer.save(1, _state(1), {"train": {"batch_size": 256}})
  with pytest.raises(checkpointing.ConfigMismatchError,
                     match=r"train.batch_size: checkpoint has 256, this run "
                     r"has 64"):
    checkpointer.restore(_state(0), {"train": {"batch_size": 64}})
  checkpointer.close()


def test_close_waits_for_the_temporary_directory_cleanup(tmp_path, monkeypatch):
  # Orbax lists the directory for unfinished saves in a thread of its own;
  # slowed down here, it is still running when a refused run closes.
  from orbax.checkpoint._src.path import temporary_paths
  listing = temporary_paths.all_temporary_paths
  finished = threading.Event()

  async def slow_listing(*args, **kwargs):
    await asyncio.sleep(0.5)
    result = await listing(*args, **kwargs)
    finished.set()
    return result

  monkeypatch.setattr(temporary_paths, "all_temporary_paths", slow_listing)
  checkpointing.Checkpointer(tmp_path / "checkpoints").close()
  assert finished.is_set()


def test_relative_directory_and_background_saves(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  checkpointer = checkpointing.Checkpointer("run/checkpoints", max_to_keep=2)
  for step in (1, 2, 3):
    checkpointer.save(step, _state(step), {})
  checkpointer.wait()
  restored = checkpointer.restore(_state(0), {})
  checkpointer.close()
  assert restored.step == 3
  support.assert_trees_equal(restored.state, _state(3))
  assert support.checkpoint_steps(tmp_path / "run") == [2, 3]


# A failed read leaves tensorstore callbacks that fire after orbax closed its
# event loop, each an unraisable RuntimeError; the checkpointer drops them,
# so one would now fail the test.
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["garbage", "flipped_byte"])
def test_corrupted_latest_checkpoint_falls_back_with_a_warning(
    tmp_path, caplog, damage):
  config = {"seed": 0}
  checkpointer = checkpointing.Checkpointer(tmp_path, max_to_keep=3,
                                            async_save=False)
  for step in (1, 2, 3):
    checkpointer.save(step, _state(step), config)
  checkpointer.close()
  files = [p for p in (tmp_path / "3" / "state").rglob("*")
           if p.is_file() and p.parent.name == "d"]
  assert files
  for path in files:
    contents = bytearray(path.read_bytes())
    if damage == "garbage":
      contents = b"garbage"
    else:  # Same size, one bit off: only the checksum can tell.
      contents[-1] ^= 1
    path.write_bytes(bytes(contents))

  with caplog.at_level(logging.WARNING):
    checkpointer = checkpointing.Checkpointer(tmp_path)
    restored = checkpointer.restore(_state(0), config)
    checkpointer.close()
  assert restored.step == 2
  support.assert_trees_equal(restored.state, _state(2))
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert len(warnings) == 1, warnings  # One line per skipped checkpoint.
  assert "step 3" in warnings[0] and "corrupt" in warnings[0]
  # The unreadable step is gone, so training can save that step again.
  assert sorted(int(p.name) for p in tmp_path.iterdir()
                if p.name.isdigit()) == [1, 2]


def _events(workdir, kind):
  lines = pathlib.Path(workdir, "metrics.jsonl").read_text().splitlines()
  return [e for e in map(json.loads, lines) if e["event"] == kind]


def test_killed_and_preempted_runs_resume_bit_identically(tmp_path, dirs):
  reference = support.start_training(tmp_path / "reference", *RESUME_RUN,
                                     **dirs)
  # Its first checkpoint means its step is compiled and in the XLA cache,
  # where the interrupted runs find it instead of compiling it again.
  support.wait_for(lambda: support.checkpoint_steps(tmp_path / "reference"),
                   reference, timeout=240)
  workdir = tmp_path / "interrupted"
  steps = lambda: support.checkpoint_steps(workdir)

  # SIGKILL mid-way: nothing is saved at the kill, the run resumes from the
  # newest finished checkpoint.
  run = support.start_training(workdir, *RESUME_RUN, **dirs)
  support.wait_for(lambda: any(s >= 4 for s in steps()), run, timeout=240)
  run.send_signal(signal.SIGKILL)
  run.wait(timeout=30)
  killed_at = max(steps())

  # SIGTERM mid-way: a checkpoint at the current step, a clean exit.
  run = support.start_training(workdir, *RESUME_RUN, **dirs)
  support.wait_for(lambda: max(steps()) >= killed_at + 2, run, timeout=240)
  run.send_signal(signal.SIGTERM)
  output = support.finish(run, timeout=120)
  assert run.returncode == 0, output
  assert "Preempted" in output
  preempted = support.latest_state(workdir)
  assert preempted.step == max(steps()) < TOTAL_STEPS
  assert int(preempted.state["step"]) == preempted.step

  output = support.finish(support.start_training(workdir, *RESUME_RUN,
                                                 **dirs))
  assert f"Resuming from the checkpoint at step {preempted.step}" in output
  assert "Done:" in output
  reference_output = support.finish(reference)
  assert "Done:" in reference_output

  final = support.latest_state(workdir)
  expected = support.latest_state(tmp_path / "reference")
  assert final.step == expected.step == TOTAL_STEPS
  support.assert_trees_equal(final.state, expected.state)
  assert (_events(workdir, "eval") ==
          _events(tmp_path / "reference", "eval"))
  # The logs of replayed steps were replaced, not duplicated.
  logged_steps = [e["step"] for e in _events(workdir, "train")]
  assert logged_steps == sorted(set(logged_steps))
