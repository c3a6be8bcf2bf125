"""Training logs: console progress bar, TensorBoard events, metrics.jsonl.

Only the primary process (process 0) writes; on the others every method is a
no-op, so the training loop calls them unconditionally.

`workdir/metrics.jsonl` holds one JSON object per event: always `step` and
`event` ('train' or 'eval'); evaluations also have `split`, `weights` ('raw'
or 'ema'), `loss`, `top1`, `top5`.
"""
from __future__ import annotations

import json
import os
from typing import Mapping

import ml_collections
import tqdm

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# Shown next to the progress bar, in this order, when present.
_PROGRESS_KEYS = ("loss", "top1", "learning_rate", "clipped_fraction")


def default_config() -> ml_collections.ConfigDict:
  """Fields of `config.log`."""
  config = ml_collections.ConfigDict()
  config.every_steps = 50  # Training metrics (averaged over the interval).
  config.progress_bar = True
  config.tensorboard = True
  return config


def read_metrics(workdir: str) -> list[dict]:
  """All events of `workdir/metrics.jsonl`, in order."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class _TensorBoard:
  """Scalars in TensorBoard's event format (TF's writer, no TensorBoard needed)."""

  def __init__(self, logdir: str):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from tensorflow.core.framework import summary_pb2  # pylint: disable=g-import-not-at-top
    self._tf = tf
    self._writer = tf.summary.create_file_writer(logdir)
    # Marks the values as scalars for TensorBoard's "Scalars" dashboard.
    self._metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name="scalars"))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    with self._writer.as_default():
      for tag, value in scalars.items():
        self._tf.summary.write(tag, self._tf.constant(value, self._tf.float32),
                               step=step, metadata=self._metadata)
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class MetricsLogger:
  """Writes training and evaluation metrics; no-op unless `enabled`."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, *,
               start_step: int, total_steps: int, enabled: bool):
    self._enabled = enabled
    self._jsonl_path = os.path.join(workdir, METRICS_FILE)
    self._tensorboard = None
    self._bar = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._drop_events_after(start_step)
    if config.tensorboard:
      self._tensorboard = _TensorBoard(os.path.join(workdir, TENSORBOARD_DIR))
    if config.progress_bar:
      self._bar = tqdm.tqdm(total=total_steps, initial=start_step,
                            unit="step", dynamic_ncols=True, smoothing=0.1)

  def _drop_events_after(self, step: int) -> None:
    """Forgets events an interrupted run logged after its last checkpoint.

    They are logged again when training replays those steps.
    """
    events = [e for e in read_metrics(os.path.dirname(self._jsonl_path))
              if e["step"] <= step]
    with open(self._jsonl_path + ".tmp", "w") as f:
      f.writelines(json.dumps(e) + "\n" for e in events)
    os.replace(self._jsonl_path + ".tmp", self._jsonl_path)

  def _append(self, event: dict) -> None:
    with open(self._jsonl_path, "a") as f:
      f.write(json.dumps(event) + "\n")

  def advance(self, step: int) -> None:
    """Moves the progress bar to `step`."""
    if self._bar is not None:
      self._bar.update(step - self._bar.n)

  def log_train(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    metrics = {k: float(v) for k, v in metrics.items()}
    self._append({"step": step, "event": "train", **metrics})
    if self._tensorboard is not None:
      self._tensorboard.write(step, {f"train/{k}": v for k, v in metrics.items()})
    if self._bar is not None:
      self._bar.set_postfix({k: f"{metrics[k]:.4g}" for k in _PROGRESS_KEYS
                             if k in metrics}, refresh=False)

  def log_eval(self, step: int, split: str, weights: str,
               metrics: Mapping[str, float]) -> None:
    if not self._enabled:
      return
    metrics = {k: float(v) for k, v in metrics.items()}
    self._append({"step": step, "event": "eval", "split": split,
                  "weights": weights, **metrics})
    if self._tensorboard is not None:
      self._tensorboard.write(
          step, {f"{split}_{weights}/{k}": v for k, v in metrics.items()})
    self.message(f"step {step} {split} ({weights} weights): " + ", ".join(
        f"{k} {v:.4f}" for k, v in metrics.items()))

  def message(self, text: str) -> None:
    """Prints a line without breaking the progress bar."""
    if self._enabled:
      tqdm.tqdm.write(text)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    if self._tensorboard is not None:
      self._tensorboard.close()
