r"""CIFAR-10 from scratch with an NFNet at 32 px.

    tfds build cifar10 --data_dir=~/tensorflow_datasets   # once, downloads
    python -m nfnets_jax.train --config=experiments/cifar10.py --workdir=/tmp/cifar10

The NFNet recipe adapted to a 50,000-image dataset: NFNet-F0 depths at half
width, batch 256 for 200 epochs, AGC with a looser threshold (0.04) suited to
the smaller batch, weight decay 5e-4, RandAugment (2 layers, magnitude 10),
flips, MixUp + CutMix, label smoothing and an EMA of the weights.
"""
from nfnets_jax import train_config


def get_config():
  config = train_config.base_config(
      "NFNet",
      dict(variant="F0", stage_widths=(128, 256, 768, 768), group_width=64,
           stochdepth_rate=0.1, drop_rate=0.2))
  config.data.name = "cifar10"
  config.data.train_split = "train"
  config.data.eval_split = "test"
  config.data.train_px = 32
  config.data.test_px = 32
  config.data.eval_resize_pad = 0
  config.data.min_crop_area = 0.25
  config.data.random_flip = True
  config.data.randaugment.num_layers = 2
  config.data.randaugment.magnitude = 10
  config.data.mix_policy = "half"
  config.data.cache = True

  config.train.batch_size = 256
  config.train.num_epochs = 200.0
  config.train.label_smoothing = 0.1

  config.optimizer.lr = 0.1
  config.optimizer.lr_reference_batch = 256
  config.optimizer.weight_decay = 5e-4
  config.optimizer.clipping = 0.04
  config.optimizer.schedule.warmup_epochs = 5.0
  config.optimizer.ema_decay = 0.9999

  config.eval.batch_size = 400
  config.eval.every_steps = 2000
  config.checkpoint.every_steps = 2000
  config.log.every_steps = 100
  return config
