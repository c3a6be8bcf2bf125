r"""NFNet-F0...F7(+) on ImageNet with the paper's recipe (Brock et al. 2021).

The config argument is the variant (default F0):
    python -m nfnets_jax.train --config=experiments/nfnet_imagenet.py:F1 \
        --workdir=gs://my-bucket/nfnet_f1

Every number of the paper's ImageNet recipe is set here explicitly (the
variant's resolutions, dropout and RandAugment levels come from the variant
table in `nfnets_jax.models.nfnet`); tests/test_configs.py checks them against the
paper.
"""
from ml_collections.config_dict import placeholder

from nfnets_jax import data
from nfnets_jax.models import nfnet
from nfnets_jax import train_config


def get_config(variant: str = "F0"):
  variant = variant or "F0"
  spec = nfnet.variant_spec(variant)
  config = train_config.base_config(
      "NFNet",
      dict(variant=variant, width=1.0, alpha=0.2, se_ratio=0.5,
           activation="gelu", group_width=128, final_conv_mult=2,
           stochdepth_rate=0.25, drop_rate=spec["drop_rate"],
           # None: the variant's. Typed, so the command line can set them.
           stage_depths=placeholder(tuple), stage_widths=placeholder(tuple)),
      data.imagenet_config(variant))

  # Input pipeline: inception crop + flip, RandAugment (the variant's layers
  # and magnitude), MixUp and CutMix; evaluation resizes to test_px + 32 and
  # centre-crops test_px.
  config.data.train_px = spec["train_px"]
  config.data.test_px = spec["test_px"]
  config.data.eval_resize_pad = 32
  config.data.min_crop_area = 0.08
  config.data.random_flip = True
  config.data.randaugment.num_layers, config.data.randaugment.magnitude = (
      spec["randaugment"])
  config.data.mix_policy = "half"
  config.data.mixup_alpha = 0.2
  config.data.cutmix_alpha = 1.0

  config.train.batch_size = 4096
  config.train.num_epochs = 360.0
  config.train.label_smoothing = 0.1
  config.train.compute_dtype = "bfloat16"

  # SGD + Nesterov momentum 0.9, lr 0.1 per 256 examples (1.6 at batch 4096),
  # 5 epochs of linear warm-up then cosine decay to 0; weight decay 2e-5 on
  # everything but gains and biases; AGC 0.01 on everything but the
  # classifier's weight; EMA of the weights with decay 0.99999.
  opt = config.optimizer
  opt.name = "sgd"
  opt.lr = 0.1
  opt.lr_scale_by_batch = True
  opt.lr_reference_batch = 256
  opt.momentum = 0.9
  opt.nesterov = True
  opt.weight_decay = 2e-5
  opt.clipping = 0.01
  opt.clipping_eps = 1e-3
  opt.schedule.name = "warmup_cosine"
  opt.schedule.warmup_epochs = 5.0
  opt.schedule.end_lr_fraction = 0.0
  opt.ema_decay = 0.99999

  config.eval.batch_size = 1024
  config.eval.every_steps = 5000
  config.checkpoint.every_steps = 1000
  config.log.every_steps = 100
  return config
