"""experiments/*.py: the paper's recipe, and every config builds and trains."""
import math

import jax
import numpy as np
import pytest

from nfnets_jax import models
from nfnets_jax import optim
from nfnets_jax import train
from nfnets_jax import train_config
from nfnets_jax import train_step as ts
from nfnets_jax.data import preprocessing
import test_train_support as support

# NFNETS.md, "NFNet architecture": variant -> (train px, test px, dropout,
# RandAugment layers, RandAugment magnitude).
PAPER_VARIANTS = {
    "F0": (192, 256, 0.2, 4, 5),
    "F1": (224, 320, 0.3, 4, 10),
    "F2": (256, 352, 0.4, 4, 10),
    "F3": (320, 416, 0.4, 4, 15),
    "F4": (384, 512, 0.5, 4, 15),
    "F5": (416, 544, 0.5, 4, 15),
    "F6": (448, 576, 0.5, 4, 15),
    "F7": (480, 608, 0.5, 4, 15),
}
# NFNETS.md, "Training recipe": (config path, value).
PAPER_RECIPE = {
    "train.batch_size": 4096,
    "train.num_epochs": 360,
    "train.label_smoothing": 0.1,
    "train.compute_dtype": "bfloat16",
    "optimizer.name": "sgd",
    "optimizer.momentum": 0.9,
    "optimizer.nesterov": True,
    "optimizer.lr": 0.1,
    "optimizer.lr_scale_by_batch": True,
    "optimizer.lr_reference_batch": 256,
    "optimizer.schedule.name": "warmup_cosine",
    "optimizer.schedule.warmup_epochs": 5,
    "optimizer.schedule.end_lr_fraction": 0.0,
    "optimizer.weight_decay": 2e-5,
    "optimizer.clipping": 0.01,
    "optimizer.clipping_eps": 1e-3,
    "optimizer.ema_decay": 0.99999,
    "model.kwargs.alpha": 0.2,
    "model.kwargs.stochdepth_rate": 0.25,
    "model.kwargs.activation": "gelu",
    "model.kwargs.se_ratio": 0.5,
    "model.kwargs.group_width": 128,
    "model.kwargs.final_conv_mult": 2,
    "data.name": "imagenet2012",
    "data.eval_resize_pad": 32,
    "data.min_crop_area": 0.08,
    "data.random_flip": True,
    "data.mix_policy": "half",  # MixUp on half of each batch, CutMix on half.
    "data.mixup_alpha": 0.2,
}
IMAGENET_TRAIN_EXAMPLES = 1_281_167


def _get(config, path):
  for key in path.split("."):
    config = config[key]
  return config


@pytest.mark.parametrize("variant", sorted(PAPER_VARIANTS))
def test_nfnet_config_has_every_number_of_the_paper(variant):
  config = support.load_config("nfnet_imagenet.py", variant)
  train_px, test_px, dropout, ra_layers, ra_magnitude = PAPER_VARIANTS[variant]
  assert config.model.name == "NFNet"
  assert config.model.kwargs.variant == variant
  assert config.data.train_px == train_px
  assert config.data.test_px == test_px
  assert config.model.kwargs.drop_rate == dropout
  assert config.data.randaugment.num_layers == ra_layers
  assert config.data.randaugment.magnitude == ra_magnitude
  for path, value in PAPER_RECIPE.items():
    assert _get(config, path) == value, path
  # lr 0.1 per 256 examples: 1.6 at the end of the 5 warm-up epochs, 0 at
  # the start and the end.
  steps_per_epoch = IMAGENET_TRAIN_EXAMPLES / 4096
  total = math.ceil(360 * steps_per_epoch)
  _, schedule = optim.build_optimizer(
      config.optimizer, batch_size=4096, total_steps=total,
      steps_per_epoch=round(steps_per_epoch))
  warmup = round(5 * round(steps_per_epoch))
  np.testing.assert_allclose(
      [schedule(0), schedule(warmup), schedule(total)], [0.0, 1.6, 0.0],
      atol=1e-6)


def test_training_length_of_the_digits_experiment():
  config = support.load_config("digits.py")
  assert (config.train.batch_size, config.train.num_epochs) == (64, 45)
  # 1,437 / 64 = 22.45 steps per epoch -> 22; 45 x 1,437 / 64 = 1,010.4 -> 1,011.
  assert train_config.training_length(config, 1437) == (1011, 22)
  # Epochs round to the nearest step (1,437 / 32 = 44.9 -> 45), never below 1.
  config.train.batch_size = 32
  assert train_config.training_length(config, 1437) == (2021, 45)
  assert train_config.training_length(config, 10) == (15, 1)
  config.train.total_steps = 7  # Set explicitly, it wins over num_epochs.
  assert train_config.training_length(config, 1437) == (7, 45)


def test_the_plus_variants_and_unknown_variants():
  assert support.load_config("nfnet_imagenet.py", "F3+").data.test_px == 416
  with pytest.raises(ValueError, match="Unknown NFNet variant 'F9'"):
    support.load_config("nfnet_imagenet.py", "F9")


def test_input_normalisation_is_the_papers():
  # Not a config field: the data pipeline's constants (NFNETS.md).
  np.testing.assert_allclose(preprocessing.MEAN_RGB,
                             np.array([0.485, 0.456, 0.406]) * 255)
  np.testing.assert_allclose(preprocessing.STDDEV_RGB,
                             np.array([0.229, 0.224, 0.225]) * 255)


# PRETRAINED.md and the release's experiment_nf_regnets.py: variant ->
# (train px, test px, dropout, weight decay).
RELEASE_REGNETS = {"B0": (192, 224, 0.2, 5e-5), "B1": (224, 256, 0.2, 6e-5),
                   "B2": (240, 272, 0.3, 7e-5), "B5": (384, 456, 0.4, 1e-4),
                   "B8": (600, 672, 0.5, 1.3e-4)}
RELEASE_REGNET_RECIPE = {
    "model.name": "NFRegNet", "model.kwargs.width": 0.75, "model.kwargs.expansion": 2.25,
    "model.kwargs.se_ratio": 0.5, "model.kwargs.alpha": 0.2,
    "model.kwargs.stochdepth_rate": 0.1, "model.kwargs.activation": "silu",
    "train.batch_size": 1024, "train.num_epochs": 360, "train.label_smoothing": 0.1,
    "optimizer.lr": 0.4, "optimizer.lr_scale_by_batch": False, "optimizer.nesterov": True,
    "optimizer.momentum": 0.9, "optimizer.clipping": 0.0, "optimizer.ema_decay": 0.99999,
    "data.mix_policy": "half", "data.randaugment.num_layers": 0,
}


@pytest.mark.parametrize("variant", sorted(RELEASE_REGNETS))
def test_nfregnet_config_is_the_releases(variant):
  config = support.load_config("nfregnet_imagenet.py", variant)
  train_px, test_px, dropout, weight_decay = RELEASE_REGNETS[variant]
  assert (config.data.train_px, config.data.test_px) == (train_px, test_px)
  assert config.model.kwargs.drop_rate == dropout
  assert config.optimizer.weight_decay == pytest.approx(weight_decay)
  for path, value in RELEASE_REGNET_RECIPE.items():
    assert _get(config, path) == value, path
  # The release's WarmupCosineDecay: 0 -> 0.4 over 5 epochs, then down to 0.001.
  steps_per_epoch = round(IMAGENET_TRAIN_EXAMPLES / 1024)
  total = 360 * steps_per_epoch
  _, schedule = optim.build_optimizer(config.optimizer, batch_size=1024, total_steps=total,
                                      steps_per_epoch=steps_per_epoch)
  np.testing.assert_allclose([schedule(0), schedule(5 * steps_per_epoch), schedule(total)],
                             [0.0, 0.4, 0.001], rtol=1e-5)


@pytest.mark.parametrize("name, argument, model_name, num_params", [
    ("nfnet_imagenet.py", "F0", "NFNet", 71_489_284),
    ("nfregnet_imagenet.py", "B0", "NFRegNet", 8_595_372),
    ("nfresnet_imagenet.py", "ResNet50", "NFResNet", 25_557_048),
    ("resnet_imagenet.py", "ResNet50", "ResNet", None),
    ("cifar10.py", None, "NFNet", None),
    ("digits.py", None, "NFNet", None),
    ("finetune.py", "F1", "NFNet", None),
])
def test_every_config_builds_its_model_optimizer_and_step(
    name, argument, model_name, num_params):
  config = support.load_config(name, argument)
  num_classes = 1000 if "imagenet" in name else 10
  assert config.model.name == model_name
  assert config.train.batch_size % 8 == 0 and config.eval.batch_size % 8 == 0
  forward, params, _, _ = models.abstract_init(
      model_name, num_classes, **config.model.kwargs)
  if num_params:  # The paper's parameter counts (NFNETS.md).
    assert sum(x.size for x in jax.tree.leaves(params)) == num_params
  optimizer, schedule = optim.build_optimizer(
      config.optimizer, batch_size=config.train.batch_size,
      total_steps=10_000, steps_per_epoch=100)
  ts.make_train_step(forward, optimizer, schedule, config)
  assert config.data.eval_split and config.data.train_split
  if model_name == "ResNet":
    assert not config.optimizer.clipping  # BatchNorm baseline: no AGC.


def test_finetune_config_needs_weights_and_uses_a_transfer_recipe(tmp_path):
  config = support.load_config("finetune.py", "F1")
  paper = support.load_config("nfnet_imagenet.py", "F1")
  assert config.model.kwargs.variant == "F1"
  assert (config.data.train_px, config.data.test_px) == (224, 320)
  assert config.optimizer.lr == paper.optimizer.lr / 10
  assert config.data.mix_policy == "none" and config.data.randaugment.num_layers == 0
  with pytest.raises(train.ConfigError, match="set --config.init_from to a released file"):
    train.train_and_evaluate(config, str(tmp_path))
  assert not list(tmp_path.iterdir())
