"""The sections of a training run's config, assembled for `experiments/*.py`.

A run's config (`ml_collections.ConfigDict`) has these sections:
  model        name ('NFNet' | 'NFResNet' | 'ResNet') and constructor kwargs
  data         nfnets_jax.data.default_config()
  optimizer    nfnets_jax.optim.default_config()
  train        `train_defaults()` below
  eval         `eval_defaults()` below
  checkpoint   nfnets_jax.checkpointing.default_config()
  log          nfnets_jax.metrics_logging.default_config()
  distributed  nfnets_jax.distributed.default_config()
  seed         int: parameter initialisation, data order, dropout and
               stochastic depth all derive from it.
  init_from    fine-tuning: a released file, a timm safetensors file or a
               training workdir whose weights replace the fresh
               initialisation where module paths and shapes match; the
               classifier is re-initialised when its classes differ. Read
               only when a run starts, never when it resumes.
  init_skip    comma-separated module patterns (fnmatch, e.g.
               'NFNet/~/linear,NFNet/~/nf_block_11*') that keep their fresh
               initialisation whatever init_from holds.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import ml_collections

from nfnets_jax import checkpointing
from nfnets_jax import data
from nfnets_jax import distributed
from nfnets_jax import metrics_logging
from nfnets_jax import optim


def train_defaults() -> ml_collections.ConfigDict:
  """Fields of `config.train`."""
  config = ml_collections.ConfigDict()
  # Global batch: over all processes and devices; a multiple of the number
  # of devices.
  config.batch_size = 256
  config.num_epochs = 90.0
  # Training length in optimizer steps; 0 derives it from num_epochs.
  config.total_steps = 0
  config.label_smoothing = 0.1
  # 'bfloat16': bf16 activations and weights in the forward and backward
  # passes, fp32 loss and fp32 master weights; 'float32': fp32 throughout.
  config.compute_dtype = "float32"
  return config


def eval_defaults() -> ml_collections.ConfigDict:
  """Fields of `config.eval`."""
  config = ml_collections.ConfigDict()
  # Evaluate every this many steps during training (0: only at the end);
  # both the raw and the EMA weights, over the whole of data.eval_split.
  config.every_steps = 0
  # Global evaluation batch; a multiple of the number of devices.
  config.batch_size = 256
  return config


def base_config(model_name: str,
                model_kwargs: Optional[dict[str, Any]] = None,
                data_config: Optional[ml_collections.ConfigDict] = None
                ) -> ml_collections.ConfigDict:
  """A complete config with every section at its default.

  Args:
    model_name: 'NFNet', 'NFResNet' or 'ResNet'.
    model_kwargs: the model constructor's keyword arguments.
    data_config: the data section; `nfnets_jax.data.default_config()` if None.
  """
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.init_from = ml_collections.config_dict.placeholder(str)
  config.init_skip = ""
  config.model = ml_collections.ConfigDict(
      {"name": model_name, "kwargs": dict(model_kwargs or {})})
  config.data = data_config or data.default_config()
  config.optimizer = optim.default_config()
  config.train = train_defaults()
  config.eval = eval_defaults()
  config.checkpoint = checkpointing.default_config()
  config.log = metrics_logging.default_config()
  config.distributed = distributed.default_config()
  return config


def training_length(config: ml_collections.ConfigDict,
                    num_train: int) -> tuple[int, int]:
  """(total_steps, steps_per_epoch) of a run on `num_train` examples.

  An epoch rounds to whole steps (at least one) for the epoch-based schedule;
  the total, unless `train.total_steps` sets it, covers `train.num_epochs`
  epochs of examples, rounded up.
  """
  batch_size = config.train.batch_size
  steps_per_epoch = max(1, round(num_train / batch_size))
  total_steps = config.train.total_steps or math.ceil(
      config.train.num_epochs * num_train / batch_size)
  return total_steps, steps_per_epoch
