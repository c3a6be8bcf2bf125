r"""Evaluate a checkpoint on a config's evaluation split: top-1, top-5, loss.

    python -m nfnets_jax.evaluate --checkpoint=workdirs/digits
    python -m nfnets_jax.evaluate --config=experiments/nfnet_imagenet.py:F0 \
        --config.data.data_dir=$TFDS_DATA_DIR --checkpoint=F0_haiku.npz --json

The checkpoint is a training workdir (EMA weights by default), a released
file or a timm safetensors file (or Hugging Face cache folder). The data, the
test resolution, the resize-and-crop and the evaluation batch come from
`--config` (a workdir's own config when omitted); every example of
`config.data.eval_split` is seen exactly once. For files, `config.model`'s
constructor arguments apply when it names the model the file holds.
"""
from __future__ import annotations

import json
from typing import Any, Optional, Sequence

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from nfnets_jax import cli
from nfnets_jax import data
from nfnets_jax import models
from nfnets_jax import train_step as ts
from nfnets_jax.pretrained import weights as pretrained_weights



def evaluate_checkpoint(checkpoint: str,
                        config: Optional[ml_collections.ConfigDict] = None,
                        weights: str = "ema") -> dict[str, Any]:
  """Evaluates `checkpoint` on `config.data.eval_split`.

  Args:
    checkpoint: see `pretrained.weights.load_weights`.
    config: a run config (data, eval batch, and model overrides for files);
      None takes a workdir's own.
    weights: 'ema' or 'raw', for workdirs.

  Returns:
    top1, top5, loss (means over the split), count (examples), split,
    resolution, checkpoint (what was read).

  Raises:
    ValueError: no config for a file, or classes that differ from the data's.
  """
  file_kwargs = None
  if config is not None and config.model.name in ("NFNet", "NFResNet"):
    file_kwargs = dict(config.model.kwargs)
  loaded = pretrained_weights.load_weights(checkpoint, weights=weights,
                                           model_kwargs=file_kwargs)
  config = config or loaded.config
  if config is None:
    raise ValueError(f"{checkpoint} is a file: pass --config for the data to "
                     "evaluate it on (e.g. experiments/nfnet_imagenet.py:F0).")
  info = data.dataset_info(config.data)
  if info.num_classes != loaded.num_classes:
    raise ValueError(
        f"{loaded.description} has {loaded.num_classes} classes, but "
        f"{config.data.name} has {info.num_classes}: evaluate it on its own "
        "dataset, or fine-tune it first (--config.init_from).")
  forward = models.transform(loaded.model, loaded.num_classes, **loaded.model_kwargs)
  batches = data.eval_iterator(config.data, global_batch_size=config.eval.batch_size,
                               split=config.data.eval_split)
  metrics = ts.evaluate(ts.make_eval_step(forward, config),
                        ts.replicate(loaded.params), ts.replicate(loaded.model_state),
                        batches)
  return {"top1": metrics["top1"], "top5": metrics["top5"], "loss": metrics["loss"],
          "count": int(metrics["count"]), "split": config.data.eval_split,
          "resolution": config.data.test_px, "checkpoint": loaded.description}


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    result = evaluate_checkpoint(flags.FLAGS.checkpoint, flags.FLAGS.config,
                                 flags.FLAGS.weights)
  except cli.USER_ERRORS as e:
    cli.fail(e)
  if flags.FLAGS.json:
    print(json.dumps(result))
  else:
    print(f"{result['checkpoint']} on {result['split']} at {result['resolution']} px: "
          f"top-1 {result['top1']:.2%}, top-5 {result['top5']:.2%}, "
          f"loss {result['loss']:.4f}, {result['count']} examples", flush=True)


def _define_flags() -> None:
  config_flags.DEFINE_config_file(
      "config", None, "Experiment config file, `path[:argument]`, for the data "
      "and evaluation settings; default: the workdir's own config.")
  cli.define_checkpoint_flags()
  flags.DEFINE_bool("json", False, "Print one JSON object.")


def run() -> None:
  """Console-script entry point (`nfnets-evaluate`)."""
  cli.run(main, _define_flags, ["checkpoint"])


if __name__ == "__main__":
  run()
