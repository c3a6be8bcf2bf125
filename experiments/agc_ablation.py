r"""The AGC ablation of Brock et al. 2021 (Fig. 2), scaled down to offline digits.

    python -m experiments.agc_ablation [--out_dir experiments/results] \
        [--config.batch_sizes='(32,128,512)'] [--config.epochs=30]

Every method trains for the same number of epochs at every batch size, with
the learning rate scaled linearly with the batch (`base_lr * batch / 256`),
as in the paper:
  NF-ResNet without clipping,
  NF-ResNet with AGC at each lambda in `clippings`,
  BN-ResNet (the batch-normalised baseline, no clipping),
  each of `baselines`: the release's unnormalised baselines, SkipInit-ResNet
  and Fixup-ResNet (no clipping).
Each run uses the training system's own pieces (model, optimizer chain, train
and eval steps, input pipeline); a run whose loss or gradient norm becomes
non-finite is stopped and counted as diverged. Writes `agc_ablation.csv`,
`agc_ablation.md` (table, settings, command) and `agc_ablation.png`
(accuracy vs batch size per method; accuracy vs lambda per batch size).
"""
from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import matplotlib
matplotlib.use("Agg")  # Files only, no display.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections
from ml_collections import config_flags
import numpy as np

from nfnets_jax import data
from nfnets_jax import models
from nfnets_jax import optim
from nfnets_jax import train_config
from nfnets_jax import train_step as ts

CSV_FIELDS = ("method", "model", "clipping", "batch_size", "peak_lr", "steps",
              "steps_run", "diverged", "test_top1", "max_abs_skip_gain", "seconds")
# Diverged runs are drawn at chance level in the plots.
CHANCE = 0.1
# Steps between checks for a non-finite loss (each check waits for the step).
_CHECK_EVERY = 10


def get_config() -> ml_collections.ConfigDict:
  """The ablation as run for experiments/results (see the module docstring)."""
  return ml_collections.ConfigDict(dict(
      # Models: same depths and widths; the NF-ResNet has skip_gain 0 at init.
      stage_depths=(1, 1, 1, 1),
      width=0.5,  # Stage widths (32, 64, 128, 256), stem 8 channels.
      resolution=16,  # Digits upscaled from 8x8.
      batch_sizes=(32, 128, 512),
      clippings=(0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64),
      baselines=("SkipInitResNet", "FixupResNet"),
      epochs=30.0,
      warmup_epochs=2.0,
      base_lr=0.2,  # Per 256 examples: peak lr = base_lr * batch / 256.
      weight_decay=5e-5,
      eval_batch_size=360,  # The whole digits test split in one batch.
      seed=0,
  ))


@dataclasses.dataclass(frozen=True)
class Method:
  label: str
  model: str  # 'NFResNet', 'ResNet' or a key of BASELINES
  clipping: float  # AGC lambda; 0 = no clipping


# Unnormalised baselines: model -> (label, plot colour).
BASELINES = {"SkipInitResNet": ("SkipInit-ResNet", "tab:orange"),
             "FixupResNet": ("Fixup-ResNet", "tab:brown")}


def methods(clippings: Sequence[float], baselines: Sequence[str] = ()) -> list[Method]:
  return ([Method("NF-ResNet, no clipping", "NFResNet", 0.0)]
          + [Method(f"NF-ResNet, AGC {c:g}", "NFResNet", c) for c in clippings]
          + [Method("BN-ResNet", "ResNet", 0.0)]
          + [Method(BASELINES[b][0], b, 0.0) for b in baselines])


def run_config(config: ml_collections.ConfigDict, method: Method,
               batch_size: int) -> ml_collections.ConfigDict:
  """The training config of one run (fields the ablation does not vary are defaults)."""
  run = train_config.base_config(method.model, dict(
      stage_depths=tuple(config.stage_depths), width=config.width, stochdepth_rate=0.0))
  run.seed = config.seed
  run.data.name = "digits"
  run.data.digits.image_size = run.data.train_px = run.data.test_px = config.resolution
  # Plain inputs: no RandAugment, MixUp or CutMix (the default crops remain).
  run.data.randaugment.num_layers = 0
  run.data.mix_policy = "none"
  run.train.batch_size = batch_size
  run.train.num_epochs = config.epochs
  run.train.label_smoothing = 0.0
  opt = run.optimizer
  opt.lr = config.base_lr
  opt.lr_scale_by_batch, opt.lr_reference_batch = True, 256
  opt.clipping = method.clipping
  opt.weight_decay = config.weight_decay
  opt.schedule.warmup_epochs = config.warmup_epochs
  opt.ema_decay = 0.0  # Evaluate the raw weights only.
  run.eval.batch_size = config.eval_batch_size
  return run


def _finite(metrics: dict[str, jax.Array]) -> bool:
  return all(np.isfinite(float(metrics[k][0])) for k in ("loss", "grad_norm"))


def max_abs_skip_gain(params: dict[str, dict[str, Any]]) -> float:
  """Largest |skip_gain| over the residual blocks (NaN without skip gains).

  Every NF block's branch is scaled by its skip_gain, which starts at 0: while
  all of them stay near 0 the residual branches are switched off.
  """
  gains = [abs(float(p["skip_gain"])) for p in params.values() if "skip_gain" in p]
  return max(gains) if gains else float("nan")


def train_run(run: ml_collections.ConfigDict, forward: Any,
              eval_step: Any) -> dict[str, Any]:
  """Trains one run to the end (or to divergence) and evaluates it."""
  start = time.time()
  batch_size = run.train.batch_size
  total_steps, steps_per_epoch = train_config.training_length(
      run, data.dataset_info(run.data).num_train)
  optimizer, schedule = optim.build_optimizer(
      run.optimizer, batch_size=batch_size, total_steps=total_steps,
      steps_per_epoch=steps_per_epoch)
  train_step = ts.make_train_step(forward, optimizer, schedule, run)
  px = run.data.train_px
  state = ts.replicate(ts.init_train_state(forward, optimizer, seed=run.seed,
                                           image_shape=(px, px, 3)))
  batches = data.train_iterator(run.data, global_batch_size=batch_size, seed=run.seed)
  diverged, step = False, 0
  while step < total_steps and not diverged:
    state, metrics = train_step(state, next(batches))
    step += 1
    if step % _CHECK_EVERY == 0 or step == total_steps:
      diverged = not _finite(metrics)
  top1 = float("nan")
  skip_gain = max_abs_skip_gain(ts.unreplicate(state.params))
  if not diverged:
    top1 = ts.evaluate(eval_step, state.params, state.model_state, data.eval_iterator(
        run.data, global_batch_size=run.eval.batch_size))["top1"]
  peak_lr = run.optimizer.lr * batch_size / run.optimizer.lr_reference_batch
  return {"peak_lr": peak_lr, "steps": total_steps, "steps_run": step, "diverged": diverged,
          "test_top1": top1, "max_abs_skip_gain": skip_gain, "seconds": time.time() - start}


def run_ablation(config: ml_collections.ConfigDict, out_dir: pathlib.Path,
                 log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Every method at every batch size; rewrites the CSV after each run."""
  out_dir.mkdir(parents=True, exist_ok=True)
  rows: list[dict[str, Any]] = []
  eval_steps: dict[str, Any] = {}  # One per model, so each compiles once.
  forwards: dict[str, Any] = {}
  num_classes = None
  for batch_size in config.batch_sizes:
    for method in methods(config.clippings, config.baselines):
      run = run_config(config, method, batch_size)
      if method.model not in forwards:
        num_classes = num_classes or data.dataset_info(run.data).num_classes
        forwards[method.model] = models.transform(
            method.model, num_classes, **run.model.kwargs)
        eval_steps[method.model] = ts.make_eval_step(forwards[method.model], run)
      result = train_run(run, forwards[method.model], eval_steps[method.model])
      rows.append({"method": method.label, "model": method.model,
                   "clipping": method.clipping, "batch_size": batch_size, **result})
      log(f"batch {batch_size:5d}  {method.label:24s}  top-1 {result['test_top1']:.3f}"
          f"{'  DIVERGED' if result['diverged'] else ''}  ({result['seconds']:.0f} s)")
      write_csv(rows, out_dir / "agc_ablation.csv")
  return rows


def write_csv(rows: Sequence[dict[str, Any]], path: pathlib.Path) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, CSV_FIELDS)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                       for k, v in row.items()})


def read_csv(path: pathlib.Path) -> list[dict[str, Any]]:
  """Rows with numbers parsed back (test_top1 NaN for diverged runs)."""
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  for row in rows:
    for key in ("clipping", "peak_lr", "test_top1", "max_abs_skip_gain", "seconds"):
      row[key] = float(row[key])
    for key in ("batch_size", "steps", "steps_run"):
      row[key] = int(row[key])
    row["diverged"] = row["diverged"] == "True"
  return rows


def markdown_table(rows: Sequence[dict[str, Any]], value: str = "test_top1") -> str:
  """Methods by batch size: test top-1 (%) or another column, or 'diverged'."""
  batch_sizes = sorted({r["batch_size"] for r in rows})
  labels = list(dict.fromkeys(r["method"] for r in rows))
  cell = {(r["method"], r["batch_size"]): r for r in rows}
  lr = {r["batch_size"]: r["peak_lr"] for r in rows}
  show = (lambda x: f"{100 * x:.1f}") if value == "test_top1" else (lambda x: f"{x:.2g}")
  lines = ["| method | " + " | ".join(f"batch {b} (lr {lr[b]:g})" for b in batch_sizes) + " |",
           "|---|" + "---|" * len(batch_sizes)]
  for label in labels:
    values = []
    for b in batch_sizes:
      r = cell.get((label, b))
      values.append("" if r is None else "diverged" if r["diverged"] else show(r[value]))
    lines.append(f"| {label} | " + " | ".join(values) + " |")
  return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], path: pathlib.Path) -> None:
  """Left: accuracy vs batch size per method. Right: vs lambda per batch size."""
  accuracy = lambda r: CHANCE if r["diverged"] else r["test_top1"]
  batch_sizes = sorted({r["batch_size"] for r in rows})
  clippings = sorted({r["clipping"] for r in rows if r["clipping"] > 0})
  agc_colours = plt.cm.viridis(np.linspace(0.0, 0.9, max(len(clippings), 1)))
  fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))

  def draw(ax, points, **style):
    xs, ys, diverged = zip(*sorted(points))
    line, = ax.plot(xs, ys, marker="o", **style)
    ax.scatter([x for x, d in zip(xs, diverged) if d], [CHANCE] * sum(diverged),
               marker="x", s=90, color=line.get_color(), zorder=3)

  for label in dict.fromkeys(r["method"] for r in rows):
    method_rows = [r for r in rows if r["method"] == label]
    clipping = method_rows[0]["clipping"]
    model = method_rows[0]["model"]
    unclipped = {"ResNet": "black", "NFResNet": "red"}.get(model) or BASELINES[model][1]
    style = (dict(color=agc_colours[clippings.index(clipping)]) if clipping
             else dict(color=unclipped, linestyle="--"))
    draw(left, [(r["batch_size"], accuracy(r), r["diverged"]) for r in method_rows],
         label=label, **style)
  left.set_xlabel("batch size (learning rate scaled with it)")
  left.set_title("Accuracy vs batch size")
  left.legend(fontsize=8)
  for batch_size in batch_sizes:
    points = [(r["clipping"], accuracy(r), r["diverged"]) for r in rows
              if r["batch_size"] == batch_size and r["clipping"] > 0]
    if points:
      draw(right, points, label=f"batch {batch_size}")
  right.set_xlabel("AGC clipping threshold lambda")
  right.set_title("NF-ResNet with AGC: accuracy vs lambda")
  right.legend(fontsize=8)
  for ax, ticks in ((left, batch_sizes), (right, clippings)):
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_ylabel("test top-1 (x: diverged, drawn at chance)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_report(rows: Sequence[dict[str, Any]], config: ml_collections.ConfigDict,
                 command: str, wall_time: float, load: Sequence[float],
                 path: pathlib.Path) -> None:
  text = f"""# AGC ablation on digits (scaled-down Fig. 2 of Brock et al. 2021)

Command (from the repository root):

    {command}

Settings: {config.to_json(sort_keys=True)}

Test top-1 (%) on the 360 digits test images after {config.epochs:g} epochs of
the 1,437 training images; the column header gives the peak learning rate
(`{config.base_lr:g} * batch / 256`). "diverged": the loss or gradient norm
became non-finite and the run was stopped.

{markdown_table(rows)}

Largest |skip_gain| of the NF-ResNet's blocks at the end of training (0 at
initialisation; while every skip_gain stays near 0 the residual branches are
switched off):

{markdown_table([r for r in rows if r["model"] == "NFResNet"], "max_abs_skip_gain")}

Wall time {wall_time / 60:.1f} min on {os.cpu_count()} CPU cores; load average
(1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in load)}.
"""
  path.write_text(text)


def ablate(config: ml_collections.ConfigDict, out_dir: pathlib.Path,
           command: str) -> list[dict[str, Any]]:
  """Runs the ablation and writes the CSV, the plot and the report."""
  start = time.time()
  rows = run_ablation(config, out_dir)
  plot(rows, out_dir / "agc_ablation.png")
  write_report(rows, config, command, time.time() - start, os.getloadavg(),
               out_dir / "agc_ablation.md")
  return rows


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # TFDS and tf.data are chatty.
  out_dir = pathlib.Path(flags.FLAGS.out_dir)
  command = " ".join(["python -m experiments.agc_ablation", *sys.argv[1:]])
  ablate(flags.FLAGS.config, out_dir, command)
  print(f"Wrote agc_ablation.csv, .md and .png to {out_dir}")


if __name__ == "__main__":
  # Defined only when run as a script: tests import this module next to
  # nfnets_jax.train, which defines its own --config.
  flags.DEFINE_string("out_dir", "experiments/results", "Output directory.")
  config_flags.DEFINE_config_dict("config", get_config(),
                                  "Ablation settings (see get_config).")
  app.run(main)
