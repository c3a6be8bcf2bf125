r"""NF-ResNet baseline on ImageNet (Brock, De, Smith, ICLR 2021) with AGC.

The config argument is the depth variant (default ResNet50):
    python -m nfnets_jax.train --config=experiments/nfresnet_imagenet.py:ResNet50 \
        --workdir=/tmp/nfresnet50

A 90-epoch ResNet recipe at batch 4096 (the NFNet paper's large-batch
comparison): SGD + Nesterov, lr 0.1 per 256, 5 warm-up epochs then cosine,
weight decay 5e-5, label smoothing 0.1, inception crop + flip, AGC 0.01 (set
--config.optimizer.clipping=0 for the unclipped NF-ResNet, which the NFNet
paper found unstable at this batch size). Trains at 224 px, evaluates at 224
after resizing to 256.
"""
from ml_collections.config_dict import placeholder

from nfnets_jax import data
from nfnets_jax import train_config


def get_config(variant: str = "ResNet50"):
  variant = variant or "ResNet50"
  config = train_config.base_config(
      "NFResNet",
      dict(variant=variant, width=4.0, alpha=0.2, activation="relu",
           stochdepth_rate=0.0, drop_rate=0.25,
           # None: the variant's. Typed, so the command line can set it.
           stage_depths=placeholder(tuple)),
      data.imagenet_config("F0"))
  config.data.train_px = 224
  config.data.test_px = 224
  config.data.eval_resize_pad = 32
  config.data.randaugment.num_layers = 0
  config.data.mix_policy = "none"

  config.train.batch_size = 4096
  config.train.num_epochs = 90.0
  config.train.label_smoothing = 0.1
  config.train.compute_dtype = "bfloat16"

  opt = config.optimizer
  opt.lr = 0.1
  opt.lr_reference_batch = 256
  opt.momentum = 0.9
  opt.nesterov = True
  opt.weight_decay = 5e-5
  opt.clipping = 0.01
  opt.schedule.warmup_epochs = 5.0
  opt.ema_decay = 0.99999

  config.eval.batch_size = 1024
  config.eval.every_steps = 2000
  config.checkpoint.every_steps = 1000
  config.log.every_steps = 100
  return config
