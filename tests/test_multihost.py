"""Multi-host training: 2 processes x 2 CPU devices == 1 process x 4 devices.

The processes talk over 127.0.0.1 (JAX's coordination service, gloo
collectives). This file is also the worker: `python test_multihost.py ...`.
"""
import argparse
import os
import socket
import subprocess
import sys

import numpy as np

import test_train_support as support

GLOBAL_BATCH = 16
NUM_STEPS = 3
PX = 16
NUM_CLASSES = 10


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def train_on_slices(num_processes: int, process_index: int,
                    num_local_devices: int, compile_step=lambda f: f):
  """NUM_STEPS on this process's slice of fixed global batches; host state."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from nfnets_jax import models, optim  # pylint: disable=g-import-not-at-top
  from nfnets_jax import train_step as ts  # pylint: disable=g-import-not-at-top

  # Dropout and stochastic depth on: each global device needs its own rng.
  model_kwargs = dict(variant="F0", stage_depths=(1, 1, 1, 1),
                      stage_widths=(16, 32, 32, 32), group_width=8,
                      stochdepth_rate=0.2, drop_rate=0.2)
  # Only the sections the step reads (train_config would import TensorFlow
  # with the data pipeline, seconds per process).
  config = ml_collections.ConfigDict(dict(
      train=dict(label_smoothing=0.1, compute_dtype="float32"),
      optimizer=optim.default_config()))
  config.optimizer.schedule.warmup_epochs = 0.0
  config.optimizer.clipping = 0.01
  forward = models.transform("NFNet", NUM_CLASSES, **model_kwargs)
  optimizer, schedule = optim.build_optimizer(
      config.optimizer, batch_size=GLOBAL_BATCH, total_steps=10,
      steps_per_epoch=5)
  state = ts.replicate(
      ts.init_train_state(forward, optimizer, seed=0, image_shape=(PX, PX, 3)),
      num_local_devices)
  train_step = compile_step(
      ts.make_train_step(forward, optimizer, schedule, config))

  per_device = GLOBAL_BATCH // (num_processes * num_local_devices)
  start = process_index * num_local_devices * per_device
  rows = slice(start, start + num_local_devices * per_device)
  for step in range(NUM_STEPS):
    rng = np.random.default_rng(step)
    images = rng.normal(size=(GLOBAL_BATCH, PX, PX, 3)).astype(np.float32)
    labels = np.eye(NUM_CLASSES, dtype=np.float32)[
        rng.integers(NUM_CLASSES, size=GLOBAL_BATCH)]
    batch = {"images": images[rows], "labels": labels[rows]}
    batch = {k: v.reshape(num_local_devices, per_device, *v.shape[1:])
             for k, v in batch.items()}
    state, metrics = train_step(state, batch)
  assert ts.unreplicate(metrics)["clipped_fraction"] > 0
  return ts.unreplicate(state)


def _flat_params(state):
  import jax  # pylint: disable=g-import-not-at-top
  flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
  return {jax.tree_util.keystr(k): v for k, v in flat}


def _worker(args) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from nfnets_jax import checkpointing, distributed  # pylint: disable=g-import-not-at-top

  distributed.initialize(ml_collections.ConfigDict(dict(
      initialize=True, coordinator_address=f"127.0.0.1:{args.port}",
      num_processes=args.num_processes, process_id=args.process_id)))
  assert jax.process_count() == args.num_processes
  state = train_on_slices(args.num_processes, jax.process_index(),
                          jax.local_device_count())
  # Every process saves and restores through orbax (process 0 writes).
  checkpointer = checkpointing.Checkpointer(args.checkpoint_dir,
                                            async_save=False)
  checkpointer.save(NUM_STEPS, state, {"seed": 0})
  checkpointer.wait()
  restored = checkpointer.restore(state, {"seed": 0})
  support.assert_trees_equal(restored.state, state)
  checkpointer.close()
  np.savez(args.output, **_flat_params(state))


def _start(process_id, port, tmp_path):
  env = support.subprocess_env(2, str(tmp_path / "xla_cache"))
  env["PYTHONPATH"] = os.pathsep.join([str(support.REPO),
                                       str(support.REPO / "tests")])
  log = open(tmp_path / f"{process_id}.log", "w")  # pylint: disable=consider-using-with
  return subprocess.Popen(
      [sys.executable, __file__, "--num_processes=2",
       f"--process_id={process_id}", f"--port={port}",
       f"--output={tmp_path / str(process_id)}.npz",
       f"--checkpoint_dir={tmp_path / 'checkpoints'}"],
      env=env, stdout=log, stderr=subprocess.STDOUT)


def test_two_processes_match_one_process_with_the_same_devices(tmp_path):
  port = _free_port()
  runs = [_start(i, port, tmp_path) for i in range(2)]
  try:
    # Meanwhile, the reference here: 1 process x 4 of its 8 devices.
    reference = _flat_params(train_on_slices(
        1, 0, 4, compile_step=support.compile_on_first_call))
    for run in runs:
      run.wait(timeout=240)
  finally:
    for run in runs:
      run.kill()
  for i, run in enumerate(runs):
    assert run.returncode == 0, (tmp_path / f"{i}.log").read_text()[-3000:]
  for i in range(2):
    result = dict(np.load(tmp_path / f"{i}.npz"))
    assert result.keys() == reference.keys()
    for key, value in reference.items():
      np.testing.assert_allclose(result[key], value, rtol=1e-5, atol=1e-7,
                                 err_msg=f"process {i}: {key}")


if __name__ == "__main__":
  parser = argparse.ArgumentParser()
  for flag, kind in (("num_processes", int), ("process_id", int),
                     ("port", int), ("output", str),
                     ("checkpoint_dir", str)):
    parser.add_argument(f"--{flag}", type=kind, required=True)
  _worker(parser.parse_args())
