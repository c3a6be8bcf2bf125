r"""NF-RegNet-B0...B8 on ImageNet with the release's recipe (its experiment_nf_regnets.py).

The config argument is the variant (default B0):
    python -m nfnets_jax.train --config=experiments/nfregnet_imagenet.py:B0 \
        --workdir=gs://my-bucket/nf_regnet_b0

As the release trains them: batch 1024 for 360 epochs, SGD + Nesterov 0.9 at
lr 0.4 (not scaled with the batch), 5 warm-up epochs then cosine decay to
0.001, weight decay 5e-5 + 1e-5 per level above B0 (not on gains and
biases), label smoothing 0.1, MixUp on half of each batch and CutMix on the
other, no RandAugment and no AGC, an EMA with decay 0.99999. Width 0.75,
expansion 2.25, SE 0.5, alpha 0.2, stochastic depth 0.1, silu; the variant's
train and test resolutions and dropout (`nfnets_jax.models.NFREGNET_VARIANTS`).
"""
from ml_collections.config_dict import placeholder

from nfnets_jax import data
from nfnets_jax import train_config
from nfnets_jax.models import nfregnet

# The release's per-variant weight decay (defined up to B5; B6-B8 continue it).
WEIGHT_DECAY = {f"B{i}": 5e-5 + 1e-5 * i for i in range(9)}


def get_config(variant: str = "B0"):
  variant = variant or "B0"
  spec = nfregnet.regnet_variant_spec(variant)
  config = train_config.base_config(
      "NFRegNet",
      dict(variant=variant, width=0.75, expansion=2.25, se_ratio=0.5, alpha=0.2,
           stochdepth_rate=0.1, drop_rate=spec["drop_rate"], activation="silu",
           # None: the variant's. Typed, so the command line can set them.
           stage_depths=placeholder(tuple), stage_widths=placeholder(tuple)),
      data.imagenet_config("F0"))
  config.data.train_px = spec["train_px"]
  config.data.test_px = spec["test_px"]
  config.data.randaugment.num_layers = 0
  config.data.mix_policy = "half"
  config.data.mixup_alpha = 0.2
  config.data.cutmix_alpha = 1.0

  config.train.batch_size = 1024
  config.train.num_epochs = 360.0
  config.train.label_smoothing = 0.1

  opt = config.optimizer
  opt.name = "sgd"
  opt.lr = 0.4
  opt.lr_scale_by_batch = False
  opt.momentum = 0.9
  opt.nesterov = True
  opt.weight_decay = WEIGHT_DECAY[variant]
  opt.clipping = 0.0
  opt.schedule.name = "warmup_cosine"
  opt.schedule.warmup_epochs = 5.0
  opt.schedule.end_lr_fraction = 0.001 / 0.4
  opt.ema_decay = 0.99999

  config.eval.batch_size = 1000
  config.eval.every_steps = 5000
  config.checkpoint.every_steps = 1000
  config.log.every_steps = 100
  return config
