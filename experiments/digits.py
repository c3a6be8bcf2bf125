r"""The offline default experiment: a small NFNet on scikit-learn's digits.

    python -m nfnets_jax.train --config=experiments/digits.py --workdir=workdirs/digits

1,437 training and 360 test images (8x8 digits upscaled to 32 px), built
locally on first use: no download. A four-block NFNet with the paper's
recipe scaled down (AGC, Nesterov SGD with warm-up and cosine decay, label
smoothing, EMA, light RandAugment, MixUp/CutMix) reaches 96-98% test top-1
in 45 epochs (1,011 steps), a few minutes on two CPU cores.
"""
from nfnets_jax import train_config


def get_config():
  config = train_config.base_config(
      "NFNet",
      dict(variant="F0", stage_depths=(1, 1, 1, 1),
           stage_widths=(32, 64, 96, 128), group_width=16,
           stochdepth_rate=0.1, drop_rate=0.2))
  config.data.name = "digits"

  config.train.batch_size = 64
  config.train.num_epochs = 45.0
  config.train.label_smoothing = 0.1

  config.optimizer.lr = 0.1
  config.optimizer.lr_reference_batch = 64
  config.optimizer.weight_decay = 5e-5
  # Small batches tolerate a looser clipping threshold than 0.01 at 4096.
  config.optimizer.clipping = 0.1
  config.optimizer.schedule.warmup_epochs = 2.0
  config.optimizer.ema_decay = 0.999

  config.eval.batch_size = 120
  config.eval.every_steps = 0
  config.checkpoint.every_steps = 200
  config.log.every_steps = 20
  return config
