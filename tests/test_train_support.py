"""Shared by the training tests: tiny runs of `python -m nfnets_jax.train`.

(No tests here; the name only puts it among the training test files.)
"""
import importlib.util
import os
import pathlib
import subprocess
import sys
import time
from typing import Optional

import jax
import numpy as np

from nfnets_jax import checkpointing

REPO = pathlib.Path(__file__).resolve().parents[1]
# A four-block NFNet on 16 px digits: compiles and runs in seconds.
TINY_RUN = (
    "--config=experiments/digits.py",
    "--config.data.digits.image_size=16",
    "--config.data.train_px=16",
    "--config.data.test_px=16",
    "--config.model.kwargs.stage_widths=(16,32,32,32)",
    "--config.model.kwargs.group_width=8",
    "--config.train.batch_size=16",
    "--config.eval.batch_size=120",
    "--config.optimizer.schedule.warmup_epochs=0",
    "--config.log.every_steps=2",
    "--config.log.progress_bar=False",
)


# Two epochs of plain digits (no augmentation, so that two epochs suffice).
SHORT_RUN = ("--config.train.total_steps=90", "--config.train.batch_size=32",
             "--config.optimizer.lr=0.4", "--config.data.mix_policy=none",
             "--config.data.randaugment.num_layers=0",
             "--config.data.min_crop_area=1.0", "--config.log.every_steps=30",
             "--config.checkpoint.every_steps=45")


def compile_on_first_call(pmapped):
  """`pmapped`, compiled unoptimised for the arguments of its first call.

  Unoptimised XLA code compiles several times faster on CPU, and the tests
  run only a few steps.
  """
  compiled = []

  def call(*args):
    if not compiled:
      compiled.append(pmapped.lower(*args).compile(
          {"xla_backend_optimization_level": 0}))
    return compiled[0](*args)
  return call


def build_digits(data_dir: pathlib.Path) -> None:
  """Builds the 16 px digits the tiny runs read in the TFDS `data_dir`."""
  # Imported here: it loads TensorFlow, which the multi-host workers skip.
  from nfnets_jax.data import digits  # pylint: disable=g-import-not-at-top
  digits.prepared_builder(str(data_dir), 16)


def load_config(name: str, argument: Optional[str] = None):
  """`get_config([argument])` of experiments/<name>, as config_flags loads it."""
  spec = importlib.util.spec_from_file_location(
      name, REPO / "experiments" / name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(argument) if argument else module.get_config()


def subprocess_env(num_devices: int, cache_dir: str) -> dict[str, str]:
  """CPU-only environment with `num_devices` devices and a shared XLA cache.

  The suite's fast-compile XLA flags (conftest.py): these runs are short.
  The persistent cache lets the runs of a test share compilations.
  """
  xla_flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
               if not f.startswith("--xla_force_host_platform_device_count=")]
  # TensorFlow's logging: the package's own defaults, as users get them.
  env = {k: v for k, v in os.environ.items()
         if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
  env.update(
      XLA_FLAGS=" ".join(
          [f"--xla_force_host_platform_device_count={num_devices}", *xla_flags]),
      JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="",
      JAX_COMPILATION_CACHE_DIR=cache_dir,
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      PYTHONPATH=str(REPO))
  return env


def start_training(workdir, *overrides: str, data_dir: str, cache_dir: str,
                   num_devices: int = 2) -> subprocess.Popen:
  """Starts a tiny run; its stdout and stderr go to `<workdir>.log`."""
  log = open(f"{workdir}.log", "w")  # pylint: disable=consider-using-with
  return subprocess.Popen(
      [sys.executable, "-m", "nfnets_jax.train", f"--workdir={workdir}",
       *TINY_RUN, f"--config.data.data_dir={data_dir}", *overrides],
      cwd=REPO, env=subprocess_env(num_devices, cache_dir), stdout=log,
      stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
  """Waits for a run to exit; returns its output (stdout and stderr)."""
  try:
    process.wait(timeout=timeout)
  finally:
    process.kill()
  return log_of(process)


def log_of(process: subprocess.Popen) -> str:
  workdir = next(a for a in process.args if a.startswith("--workdir="))
  return log_of_workdir(workdir.split("=", 1)[1])


def log_of_workdir(workdir) -> str:
  """The output (stdout and stderr) of the run started in `workdir`."""
  with open(f"{workdir}.log") as f:
    return f.read()


def run_training(workdir, *overrides: str, data_dir: str, cache_dir: str,
                 num_devices: int = 2, timeout: float = 240
                 ) -> tuple[int, str]:
  """(exit code, output) of a tiny run."""
  process = start_training(workdir, *overrides, data_dir=data_dir,
                           cache_dir=cache_dir, num_devices=num_devices)
  output = finish(process, timeout)
  return process.returncode, output


def checkpoint_steps(workdir) -> list[int]:
  """Finished checkpoint steps (orbax renames a step's folder when done)."""
  directory = pathlib.Path(workdir) / "checkpoints"
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def wait_for(predicate, process: subprocess.Popen, timeout: float) -> None:
  """Polls `predicate` until true; fails if `process` exits first."""
  deadline = time.monotonic() + timeout
  while not predicate():
    if process.poll() is not None:
      raise AssertionError(f"training exited ({process.returncode}) early:\n"
                           f"{log_of(process)[-3000:]}")
    if time.monotonic() > deadline:
      process.kill()
      raise AssertionError("timed out waiting for the training run")
    time.sleep(0.1)


def latest_state(workdir):
  """The newest intact checkpoint's state (plain dicts of numpy arrays)."""
  checkpointer = checkpointing.Checkpointer(
      os.path.join(workdir, "checkpoints"), read_only=True)
  try:
    return checkpointer.restore()
  finally:
    checkpointer.close()


def assert_trees_equal(a, b) -> None:
  """Same structure and bit-identical arrays."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)
