"""Evaluation, export and fine-tuning from the checkpoints of a real digits run."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from nfnets_jax import data
from nfnets_jax import evaluate
from nfnets_jax import export
from nfnets_jax import models
from nfnets_jax import train
from nfnets_jax import train_step as ts
from nfnets_jax.pretrained import released
from nfnets_jax.pretrained import timm
from nfnets_jax.pretrained import weights as pretrained_weights
import test_train_support as support


def _logged_eval(workdir, weights):
  events = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [e for e in events if e["event"] == "eval" and e["weights"] == weights][-1]


def _run_config(workdir):
  """The config the run stored with its checkpoints."""
  return pretrained_weights.load_weights(str(workdir)).config


@pytest.fixture(scope="module")
def exported(short_run, tmp_path_factory):
  """The short run's raw weights in the released format."""
  workdir, _ = short_run
  path = tmp_path_factory.mktemp("export") / "digits_haiku.npz"
  line = export.export(str(workdir), str(path), "released", weights="raw")
  assert line.startswith(f"Wrote {path}: workdir {workdir} (step 90, raw weights)")
  return path


def test_evaluate_reports_the_runs_final_evaluation_exactly(short_run, dirs, exported):
  workdir, _ = short_run
  # No --config: the workdir's own.
  command = [sys.executable, "-m", "nfnets_jax.evaluate", f"--checkpoint={workdir}", "--json"]
  result = subprocess.run(command, cwd=support.REPO, capture_output=True, text=True,
                          env=support.subprocess_env(2, dirs["cache_dir"]), timeout=300,
                          check=False)
  assert result.returncode == 0, result.stderr
  reported = json.loads(result.stdout)
  logged = _logged_eval(workdir, "ema")
  for key in ("top1", "top5", "loss"):
    assert reported[key] == logged[key], key
  assert reported["count"] == 360 and reported["split"] == "test"
  # The raw weights on request, here on the suite's 8 devices (the run had
  # 2): the same predictions, the loss summed in another order.
  raw = evaluate.evaluate_checkpoint(str(workdir), weights="raw")
  logged_raw = _logged_eval(workdir, "raw")
  assert (raw["top1"], raw["top5"]) == (logged_raw["top1"], logged_raw["top5"])
  assert raw["loss"] == pytest.approx(logged_raw["loss"], rel=1e-6)
  # The same raw weights through the released format: the same numbers.
  from_file = evaluate.evaluate_checkpoint(str(exported), _run_config(workdir))
  assert {k: from_file[k] for k in ("top1", "top5", "loss", "count")} == \
      {k: raw[k] for k in ("top1", "top5", "loss", "count")}
  assert from_file["checkpoint"].startswith("released NFNet F0 file")


def test_export_round_trips_and_refuses_what_it_cannot_write(short_run, exported, tmp_path):
  workdir, _ = short_run
  loaded = pretrained_weights.load_weights(str(workdir), weights="raw")
  kwargs = dict(loaded.model_kwargs)
  from_file = released.load_official_checkpoint(exported, kwargs.pop("variant"), **kwargs)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(from_file), loaded.params)
  # timm: the blocks are numbered by the run's own stage depths.
  out = tmp_path / "digits.safetensors"
  line = export.export(str(workdir), str(out), "timm", weights="raw", arch="dm_nfnet_f0")
  assert line.endswith("as timm's dm_nfnet_f0.")
  again = pretrained_weights.load_weights(str(out), model_kwargs=loaded.model_kwargs,
                                          arch="dm_nfnet_f0")
  jax.tree.map(np.testing.assert_array_equal, again.params, loaded.params)
  # Its (1, 1, 1, 1) blocks per stage are no timm architecture's: say which.
  with pytest.raises(released.CheckpointError, match=r"Blocks per stage \[1, 1, 1, 1\] and keys match no"):
    pretrained_weights.load_weights(str(out), model_kwargs=loaded.model_kwargs)
  with pytest.raises(released.CheckpointError, match="timm has no counterpart of NFNet F7"):
    timm.arch_of("NFNet", "F7")


def _first_train_top1(workdir):
  events = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [e for e in events if e["event"] == "train"][0]["top1"]


FINETUNE = ("--config.train.total_steps=4", "--config.train.batch_size=32",
            "--config.data.mix_policy=none", "--config.data.randaugment.num_layers=0",
            "--config.data.min_crop_area=1.0", "--config.log.every_steps=4",
            "--config.optimizer.lr=0.0", "--config.checkpoint.every_steps=4")


def _fresh_init(config, num_classes):
  """(net, params, state) as the run initialises them, for `num_classes`."""
  net = models.transform("NFNet", num_classes, **config.model.kwargs)
  rng = jax.random.split(jax.random.PRNGKey(config.seed))[0]
  return (net, *ts.init_model(net, rng, (config.data.train_px, config.data.train_px, 3)))


def _fresh_init_top1(config, num_classes):
  """Top-1 of the run's own fresh initialisation on the training images."""
  net, params, state = _fresh_init(config, num_classes)
  batches = data.eval_iterator(config.data, global_batch_size=config.eval.batch_size,
                               split="train")
  metrics = ts.evaluate(ts.make_eval_step(net, config), ts.replicate(params),
                        ts.replicate(state), batches)
  return metrics["top1"]


def test_finetuning_starts_from_the_checkpoint(short_run, exported, dirs, tmp_path):
  runs = {
      "tuned": support.start_training(tmp_path / "tuned", *FINETUNE,
                                      f"--config.init_from={exported}", **dirs),
      # Five classes: the classifier cannot be loaded and is re-initialised.
      "five": support.start_training(
          tmp_path / "five", *FINETUNE, f"--config.init_from={exported}",
          "--config.data.name=fake", "--config.data.fake.num_classes=5",
          "--config.data.fake.image_size=16", "--config.data.fake.num_train=128",
          # Not ImageNet's 50,000: the final evaluation reads them all.
          "--config.data.fake.num_test=120", **dirs),
  }
  outputs = {name: support.finish(run) for name, run in runs.items()}
  for name, run in runs.items():
    assert run.returncode == 0, (name, outputs[name])
  source = released.read_param_pickle(exported)
  assert (f"Initialised from released NFNet F0 file {exported}: loaded {len(source)} "
          "modules." in outputs["tuned"]), outputs["tuned"]
  # lr 0: the first logged accuracy is the loaded weights' (the run reached
  # > 60% test top-1 in 90 steps); a fresh initialisation is near chance.
  config = _run_config(short_run[0])
  fresh_top1 = _fresh_init_top1(config, 10)
  assert fresh_top1 < 0.3 and _first_train_top1(tmp_path / "tuned") > fresh_top1 + 0.3
  assert ("re-initialised NFNet/~/linear (10 -> 5 classes)" in outputs["five"]
          and f"loaded {len(source) - 1} modules" in outputs["five"]), outputs["five"]
  state = support.latest_state(tmp_path / "five").state
  for module, names in state["params"].items():
    if module != "NFNet/~/linear":
      for name, value in names.items():
        np.testing.assert_array_equal(value, source[module][name], err_msg=module)
  # The classifier is a fresh initialisation's, for 5 classes.
  fresh = _fresh_init(config, 5)[1]
  assert state["params"]["NFNet/~/linear"]["w"].shape == (64, 5)
  np.testing.assert_allclose(state["params"]["NFNet/~/linear"]["w"],
                             fresh["NFNet/~/linear"]["w"], rtol=1e-6)
  # Resuming never re-reads init_from: the file may be gone.
  tuned = tmp_path / "tuned"
  moved = exported.with_suffix(".moved")
  exported.rename(moved)
  try:
    result = train.train_and_evaluate(_run_config(tuned), str(tuned))
  finally:
    moved.rename(exported)
  assert result["completed"] and result["step"] == 4


def test_merge_names_what_does_not_fit_and_honours_init_skip():
  shapes = lambda **kw: jax.tree.map(
      lambda s: np.zeros(s.shape, np.float32),
      models.abstract_init("NFNet", 10, variant="F0", stage_depths=(1, 1, 1, 1),
                           stage_widths=(16, 32, 32, 32), group_width=8, **kw)[1])
  initial, other = shapes(), shapes(se_ratio=0.25)
  with pytest.raises(released.CheckpointError) as error:
    pretrained_weights.merge_for_finetuning(initial, other)
  message = str(error.value)
  assert "NFNet/~/nf_block/~/squeeze_excite/~/linear has {'b': (4,), 'w': (16, 4)}" in message
  assert "init_skip" in message
  merged, report = pretrained_weights.merge_for_finetuning(
      initial, other, skip=["NFNet/~/nf_block*/~/squeeze_excite/~/linear*"])
  assert len(report.skipped) == 8 and not report.reinitialised
  assert "kept the fresh initialisation of" in report.summary("x")
  extra = dict(other, **{"NFNet/~/head": {"w": np.zeros(2)}})
  with pytest.raises(released.CheckpointError, match="NFNet/~/head is in the checkpoint but not in the model"):
    pretrained_weights.merge_for_finetuning(initial, extra, skip=["*squeeze_excite*"])
