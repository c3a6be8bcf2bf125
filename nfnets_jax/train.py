r"""Train and evaluate a model from an ml_collections config.

    python -m nfnets_jax.train --config=experiments/digits.py --workdir=DIR
    python -m nfnets_jax.train --config=experiments/nfnet_imagenet.py:F1 \
        --workdir=gs://bucket/f1 --config.train.batch_size=1024

Re-running the same command resumes from the newest checkpoint in `workdir`
and continues exactly as if never interrupted. SIGTERM saves a checkpoint and
exits. Multi-host: run the same command on every host with
`--config.distributed.initialize=True` (plus coordinator address, process
count and id where JAX cannot detect them).
"""
from __future__ import annotations

import os
import time
from typing import Any, Iterator

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from nfnets_jax import checkpointing
from nfnets_jax import cli
from nfnets_jax import data
from nfnets_jax import distributed
from nfnets_jax import metrics_logging
from nfnets_jax import models
from nfnets_jax import optim
from nfnets_jax import train_config
from nfnets_jax import train_step as ts
from nfnets_jax.pretrained import weights as pretrained_weights



class ConfigError(ValueError):
  """The config cannot be run as it is."""


class TrainingDivergedError(RuntimeError):
  """The loss, gradient or weights became NaN or infinite."""


def _check_config(config: ml_collections.ConfigDict) -> None:
  try:
    config.init_from  # pylint: disable=pointless-statement
  except ml_collections.config_dict.RequiredValueError:
    raise ConfigError("This config fine-tunes pretrained weights: set "
                      "--config.init_from to a released file, a timm "
                      "safetensors file or a training workdir.") from None
  devices = jax.device_count()
  for field in ("train.batch_size", "eval.batch_size"):
    section, name = field.split(".")
    value = config[section][name]
    if value <= 0 or value % devices:
      raise ConfigError(
          f"{field}={value} is not a positive multiple of the {devices} "
          f"devices; set --config.{field} to a multiple of {devices}.")
  if config.log.every_steps <= 0:
    raise ConfigError(f"log.every_steps must be positive, got "
                      f"{config.log.every_steps}.")


def _summarise_train_metrics(step_metrics: list[dict[str, Any]],
                             last_step: int) -> dict[str, float]:
  """Means over the steps since the last summary; stops on non-finite values.

  Checked before every checkpoint, so no diverged state is ever saved: the
  loss and gradient of each step and the weights it produced are finite.
  """
  host_metrics = [ts.unreplicate(m) for m in step_metrics]
  first_step = last_step - len(host_metrics) + 1
  for offset, metrics in enumerate(host_metrics):
    checked = {k: metrics[k] for k in ("loss", "grad_norm", "param_norm")}
    if not all(np.isfinite(v) for v in checked.values()):
      raise TrainingDivergedError(
          f"Non-finite values at step {first_step + offset}: " +
          ", ".join(f"{k}={v}" for k, v in checked.items()) + ". "
          "Stopped without saving; the last checkpoint in the workdir is the "
          "last good state. Lower optimizer.lr, enable/tighten AGC "
          "(optimizer.clipping) or use train.compute_dtype='float32'.")
  return {k: float(np.mean([m[k] for m in host_metrics]))
          for k in host_metrics[-1]}


def _initialise_from(config: ml_collections.ConfigDict,
                     initial: ts.TrainState) -> tuple[ts.TrainState, str]:
  """`initial` with the weights of `config.init_from`, and a line saying what."""
  loaded = pretrained_weights.load_weights(
      config.init_from, model_kwargs=dict(config.model.kwargs))
  skip = [p.strip() for p in config.init_skip.split(",") if p.strip()]
  params, report = pretrained_weights.merge_for_finetuning(
      initial.params, loaded.params, skip)
  model_state = initial.model_state
  if model_state:  # BatchNorm statistics, from a workdir of a BN network.
    model_state, _ = pretrained_weights.merge_for_finetuning(
        model_state, loaded.model_state, skip)
  state = initial._replace(params=params, ema_params=params,
                           model_state=model_state, ema_state=model_state)
  return state, report.summary(loaded.description)


class _Trainer:
  """One training run: state, steps, evaluations, checkpoints and logs."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    _check_config(config)
    self.config = config
    self.workdir = workdir
    self.info = data.dataset_info(config.data)
    self.total_steps, steps_per_epoch = train_config.training_length(
        config, self.info.num_train)
    if self.total_steps <= 0:
      raise ConfigError("Training has no steps: set train.num_epochs or "
                        "train.total_steps to a positive value.")
    self.forward = models.transform(
        config.model.name, self.info.num_classes, **config.model.kwargs)
    optimizer, schedule = optim.build_optimizer(
        config.optimizer, batch_size=config.train.batch_size,
        total_steps=self.total_steps, steps_per_epoch=steps_per_epoch)
    self.train_step = ts.make_train_step(self.forward, optimizer, schedule,
                                         config)
    self.eval_step = ts.make_eval_step(self.forward, config)
    image_shape = (config.data.train_px, config.data.train_px, 3)
    initial = ts.init_train_state(self.forward, optimizer, seed=config.seed,
                                  image_shape=image_shape)
    self.checkpointer = checkpointing.Checkpointer(
        os.path.join(workdir, "checkpoints"),
        max_to_keep=config.checkpoint.max_to_keep,
        async_save=config.checkpoint.async_save)
    try:
      self.config_dict = checkpointing.config_to_dict(config)
      restored = self.checkpointer.restore(initial, self.config_dict)
      self.resumed = restored is not None
      init_message = None
      if not self.resumed and config.init_from:
        initial, init_message = _initialise_from(config, initial)
      self.state = ts.replicate(restored.state if self.resumed else initial)
      self.step = restored.step if self.resumed else 0
      self.logger = metrics_logging.MetricsLogger(
          workdir, config.log, start_step=self.step,
          total_steps=self.total_steps, enabled=distributed.is_primary())
    except BaseException:
      # `close()` never runs for a run refused here (another config, an
      # unreadable checkpoint or init_from file): stop orbax's background
      # threads now, or one may fail at interpreter exit with a traceback.
      self.checkpointer.close()
      raise
    if init_message:
      self.logger.message(init_message)

  def evaluate(self) -> dict[str, dict[str, float]]:
    """Raw and EMA weights over the whole evaluation split, logged."""
    split = self.config.data.eval_split
    weights = {"raw": (self.state.params, self.state.model_state)}
    if self.config.optimizer.ema_decay:
      weights["ema"] = (self.state.ema_params, self.state.ema_state)
    results = {}
    for name, (params, model_state) in weights.items():
      batches = data.eval_iterator(
          self.config.data, global_batch_size=self.config.eval.batch_size,
          split=split)
      metrics = ts.evaluate(self.eval_step, params, model_state, batches)
      count = metrics.pop("count")
      if count != self.info.num_test:
        logging.warning("Evaluated %d examples, but split %r has %d.", count,
                        split, self.info.num_test)
      self.logger.log_eval(self.step, split, name, metrics)
      results[name] = metrics
    return results

  def save(self) -> None:
    self.checkpointer.save(self.step, ts.unreplicate(self.state),
                           self.config_dict)

  def train(self) -> bool:
    """Trains up to the last step; False if stopped by a preemption notice."""
    config = self.config
    batches: Iterator[dict[str, np.ndarray]] = data.train_iterator(
        config.data, global_batch_size=config.train.batch_size,
        seed=config.seed, start_step=self.step)
    pending: list[dict[str, Any]] = []
    interval_start = time.time()
    with distributed.PreemptionWatch() as preemption:
      while self.step < self.total_steps:
        self.state, metrics = self.train_step(self.state, next(batches))
        pending.append(metrics)
        self.step += 1
        self.logger.advance(self.step)
        preempted = preemption.reached(self.step)
        every = config.checkpoint.every_steps
        checkpoint_due = preempted or (every and self.step % every == 0)
        if checkpoint_due or self.step % config.log.every_steps == 0:
          summary = _summarise_train_metrics(pending, self.step)
          summary["steps_per_second"] = len(pending) / (
              time.time() - interval_start)
          self.logger.log_train(self.step, summary)
          pending, interval_start = [], time.time()
        if checkpoint_due:
          self.save()
        if preempted:
          return False
        every = config.eval.every_steps
        if every and self.step % every == 0 and self.step < self.total_steps:
          self.evaluate()
    if pending:
      self.logger.log_train(self.step,
                            _summarise_train_metrics(pending, self.step))
    self.save()
    return True

  def close(self) -> None:
    self.checkpointer.wait()
    self.checkpointer.close()
    self.logger.close()


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Trains (resuming from `workdir`), evaluates, and returns a summary.

  Returns:
    A dict with 'completed' (False if stopped by SIGTERM), 'step',
    'wall_time' (seconds) and, when completed, 'eval' ({'raw': metrics,
    'ema': metrics}).

  Raises:
    ConfigError, checkpointing.ConfigMismatchError,
    checkpointing.CheckpointReadError, TrainingDivergedError.
  """
  start = time.time()
  distributed.initialize(config.distributed)
  trainer = _Trainer(config, workdir)
  try:
    if trainer.resumed:
      trainer.logger.message(f"Resuming from the checkpoint at step "
                             f"{trainer.step} in {workdir}.")
    completed = trainer.train()
    result = {"completed": completed, "step": trainer.step}
    if completed:
      result["eval"] = trainer.evaluate()
  finally:
    trainer.close()
  result["wall_time"] = time.time() - start
  return result


def summary_line(config: ml_collections.ConfigDict, workdir: str,
                 result: dict[str, Any]) -> str:
  """The one-line summary printed at the end of a completed run."""
  evals = result["eval"]
  parts = [f"{config.data.eval_split} top-1 {evals['raw']['top1']:.2%}"]
  if "ema" in evals:
    parts.append(f"EMA {evals['ema']['top1']:.2%}")
  return (f"Done: {config.model.name} on {config.data.name}, "
          f"{result['step']} steps, {', '.join(parts)}, wall time "
          f"{result['wall_time']:.0f}s, workdir {workdir}")


_USER_ERRORS = cli.USER_ERRORS + (TrainingDivergedError,)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  try:
    result = train_and_evaluate(config, workdir)
  except _USER_ERRORS as e:
    cli.fail(e)
  if not distributed.is_primary():
    return
  if result["completed"]:
    print(summary_line(config, workdir, result), flush=True)
  else:
    print(f"Preempted (SIGTERM): saved a checkpoint at step {result['step']} "
          f"in {workdir}; re-run the same command to resume.", flush=True)


def _define_flags() -> None:
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config file, `path[:argument]`; override "
      "fields with --config.<section>.<field>=value.")
  flags.DEFINE_string(
      "workdir", None, "Directory for checkpoints, metrics.jsonl and "
      "TensorBoard events; resumes from the checkpoints already there.")


def run() -> None:
  """Console-script entry point (`nfnets-train`)."""
  cli.run(main, _define_flags, ["config", "workdir"])


if __name__ == "__main__":
  run()
