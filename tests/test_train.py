"""`python -m nfnets_jax.train` end to end: learning, logs, and refusals."""
import json

import jax
import numpy as np
import pytest

from nfnets_jax import train
import test_train_support as support
from test_train_support import SHORT_RUN

def test_short_digits_run_learns_and_logs(short_run):
  workdir, output = short_run
  events = [json.loads(line) for line in
            (workdir / "metrics.jsonl").read_text().splitlines()]
  assert all("step" in e for e in events)
  evals = {e["weights"]: e for e in events if e["event"] == "eval"}
  assert set(evals) == {"raw", "ema"}
  for e in evals.values():
    assert e["step"] == 90 and e["split"] == "test"
    assert {"loss", "top1", "top5"} <= set(e)
    assert 0 <= e["top1"] <= e["top5"] <= 1
  # Chance is 10%; two epochs of a tiny NFNet get far beyond.
  assert evals["raw"]["top1"] > 0.6
  train = [e for e in events if e["event"] == "train"]
  assert [e["step"] for e in train] == [30, 45, 60, 90]
  assert train[-1]["loss"] < train[0]["loss"]
  for key in ("loss", "top1", "top5", "learning_rate", "grad_norm",
              "clipped_fraction"):
    assert all(np.isfinite(e[key]) for e in train)
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert support.checkpoint_steps(workdir) == [45, 90]
  # Only our own lines: no C++ logging from TensorFlow or absl, no TFDS
  # "Downloading", no traceback (the package sets TensorFlow's log level;
  # the run's environment does not).
  for noise in ("oneDNN", "absl::InitializeLog", "I0000", "E0000", "W0000",
                "Downloading", "Traceback", "dataset_info.json"):
    assert noise not in output, noise
  summary = output.strip().splitlines()[-1]
  assert summary.startswith("Done: NFNet on digits, 90 steps, test top-1 "
                            f"{evals['raw']['top1']:.2%}")
  assert f"workdir {workdir}" in summary and "wall time" in summary


def test_bad_requests_fail_with_a_clear_message(short_run, dirs, tmp_path):
  trained_workdir, _ = short_run
  cases = {
      "unknown field": ((tmp_path / "a", "--config.train.no_such_field=1"),
                        "unknown config field 'no_such_field'"),
      "misspelt field": ((tmp_path / "b", "--config.train.batch_sise=32"),
                         "error: unknown config field 'batch_sise' in "
                         "--config.train.batch_sise. Did you mean \"batch_size\""),
      "other config": ((trained_workdir, *SHORT_RUN,
                        "--config.train.label_smoothing=0.2"),
                       "train.label_smoothing: checkpoint has 0.1, this run "
                       "has 0.2"),
      "missing dataset": ((tmp_path / "d", "--config.data.name=cifar10"),
                          "TFDS dataset 'cifar10' is not prepared"),
      # lr 0 at step 0 (warm-up), then astronomically large.
      "divergence": ((tmp_path / "e", "--config.train.total_steps=6",
                      "--config.optimizer.lr=1e30",
                      "--config.optimizer.clipping=0",
                      "--config.optimizer.schedule.warmup_epochs=0.05",
                      "--config.checkpoint.every_steps=1",
                      "--config.log.every_steps=1"),
                     "error: Non-finite values at step 2"),
  }
  # Concurrently: most of each run is start-up.
  runs = {name: support.start_training(*args, **dirs)
          for name, (args, _) in cases.items()}
  for name, run in runs.items():
    output = support.finish(run)
    assert run.returncode != 0, (name, output)
    assert cases[name][1] in output, (name, output)
    assert "Traceback" not in output, (name, output)
  # The refused run left the trained workdir alone.
  assert support.checkpoint_steps(trained_workdir) == [45, 90]
  # Divergence: the last good checkpoint (step 1) is intact and finite.
  good = support.latest_state(tmp_path / "e")
  assert good.step == 1 == support.checkpoint_steps(tmp_path / "e")[-1]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(good.state))


def test_batch_not_divisible_by_the_devices_is_refused(tmp_path):
  config = support.load_config("digits.py")
  config.train.batch_size = 60  # The tests run on 8 devices.
  with pytest.raises(train.ConfigError, match=(
      r"train.batch_size=60 is not a positive multiple of the 8 devices; set "
      r"--config.train.batch_size to a multiple of 8")):
    train.train_and_evaluate(config, str(tmp_path))
  assert not list(tmp_path.iterdir())  # Refused before writing anything.
  assert issubclass(train.ConfigError, train._USER_ERRORS)  # pylint: disable=protected-access
