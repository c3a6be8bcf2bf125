r"""Fine-tune a pretrained NFNet on your own images (an image-folder dataset).

The config argument is the variant (default F0); the weights come from
`--config.init_from` (a released file, a timm safetensors file or hub
folder, or a training workdir), the images from a folder laid out as
`PATH/train/<class>/*.jpg` and `PATH/test/<class>/*.jpg`:

    python -m nfnets_jax.train --config=experiments/finetune.py:F0 \
        --config.init_from=F0_haiku.npz \
        --config.data.image_folder.path=/data/flowers --workdir=workdirs/flowers

Every module but the classifier starts from the checkpoint (the classifier
is re-initialised for the folder's number of classes). The recipe is the
usual one for transfer: the paper's optimizer at a tenth of its learning
rate with a one-epoch warm-up, light augmentation (inception crop of at least
a quarter of the image, flips; no RandAugment, MixUp or CutMix, which small
datasets and short schedules do not need), label smoothing and an EMA, at the
variant's train and test resolutions.
"""
from ml_collections.config_dict import placeholder

from nfnets_jax.models import nfnet
from nfnets_jax import train_config


def get_config(variant: str = "F0"):
  variant = variant or "F0"
  spec = nfnet.variant_spec(variant)
  config = train_config.base_config(
      "NFNet", dict(variant=variant, stochdepth_rate=0.1, drop_rate=spec["drop_rate"]))
  config.init_from = placeholder(str, required=True)

  config.data.name = "image_folder"
  config.data.train_split, config.data.eval_split = "train", "test"
  config.data.train_px = spec["train_px"]
  config.data.test_px = spec["test_px"]
  config.data.eval_resize_pad = 32
  config.data.min_crop_area = 0.25
  config.data.random_flip = True
  config.data.randaugment.num_layers = 0
  config.data.mix_policy = "none"
  config.data.cache = False

  config.train.batch_size = 64
  config.train.num_epochs = 10.0
  config.train.label_smoothing = 0.1

  opt = config.optimizer
  opt.lr = 0.01  # per 256 examples: a tenth of the paper's from-scratch rate
  opt.lr_reference_batch = 256
  opt.weight_decay = 1e-5
  opt.clipping = 0.01
  opt.schedule.name = "warmup_cosine"
  opt.schedule.warmup_epochs = 1.0
  opt.ema_decay = 0.999

  config.eval.batch_size = 64
  config.checkpoint.every_steps = 500
  config.log.every_steps = 10
  return config
