"""`python -m nfnets_jax.predict`: top-5 from workdirs and released checkpoints.

The checkpoints here have all-zero weights except the classifier bias, so the
logits equal that bias whatever the image: the expected top-5 is the softmax
of the bias, computed independently with NumPy.
"""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from nfnets_jax import checkpointing
from nfnets_jax import models
from nfnets_jax.pretrained import released
from nfnets_jax import predict
from nfnets_jax import train_config
from nfnets_jax.imagenet_classes import CLASS_NAMES
import test_train_support as support

FOLDER_CLASSES = ["ant", "bee", "cat", "cow", "dog", "eel", "elk", "emu",
                  "fox", "gnu"]


def _softmax_top5(bias, names):
  probs = np.exp(bias - bias.max()) / np.exp(bias - bias.max()).sum()
  order = np.argsort(-probs)[:5]
  return [(names[i], probs[i]) for i in order]


def _zeros_like_model(model_name, num_classes, **kwargs):
  _, shapes, _, _ = models.abstract_init(model_name, num_classes, **kwargs)
  return {m: {n: np.zeros(s.shape, np.float32) for n, s in v.items()}
          for m, v in shapes.items()}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
  path = tmp_path_factory.mktemp("images") / "photo.png"
  pixels = np.random.default_rng(0).integers(0, 256, (40, 30, 3), np.uint8)
  Image.fromarray(pixels).save(path)
  return str(path)


def test_imagenet_class_names():
  assert len(CLASS_NAMES) == len(set(CLASS_NAMES)) == 1000
  for index, name in ((0, "tench"), (1, "goldfish"), (207, "golden retriever"),
                      (281, "tabby"), (340, "zebra"), (409, "analog clock"),
                      (430, "basketball"), (948, "Granny Smith"),
                      (999, "toilet tissue")):
    assert CLASS_NAMES[index] == name


def test_released_checkpoint_top5_with_imagenet_names(tmp_path, image):
  params = _zeros_like_model("NFResNet", 1000, variant="ResNet50")
  bias = np.zeros(1000, np.float32)
  bias[[207, 281, 0, 999, 430, 1]] = [4.0, 3.0, 2.5, 2.0, 1.5, 1.0]
  params["NF_ResNet/~/linear"]["b"] = bias
  path = tmp_path / "ResNet50_haiku.npz"
  released.save_official_checkpoint(params, path)

  predictor = predict.load(str(path), variant="ResNet50")
  assert predictor.image_size == 224
  prepared = predict.prepare_image(image, predictor.image_size,
                                   predictor.resize_pad)
  assert prepared.shape == (224, 224, 3)
  probabilities = predictor.probabilities(prepared[None])[0]
  got = predict.top_k(probabilities, predictor.class_names, 5)
  expected = _softmax_top5(bias.astype(np.float64), CLASS_NAMES)
  assert [n for n, _ in got] == [n for n, _ in expected] == [
      "golden retriever", "tabby", "tench", "toilet tissue", "basketball"]
  np.testing.assert_allclose([p for _, p in got], [p for _, p in expected],
                             rtol=1e-5)
  with pytest.raises(released.CheckpointError, match="ResNet50"):
    predict.load(str(path), variant="F0")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A training workdir whose raw and EMA weights favour different classes."""
  root = tmp_path_factory.mktemp("folder")
  pixels = np.zeros((8, 8, 3), np.uint8)
  for split in ("train", "test"):
    for name in FOLDER_CLASSES:
      (root / split / name).mkdir(parents=True)
      Image.fromarray(pixels).save(root / split / name / "0.png")
  config = train_config.base_config(
      "NFNet", dict(variant="F0", stage_depths=(1, 1, 1, 1),
                    stage_widths=(16, 32, 32, 32), group_width=8))
  config.data.name = "image_folder"
  config.data.image_folder.path = str(root)
  config.data.test_px = 16
  params = _zeros_like_model("NFNet", 10, **config.model.kwargs)
  raw, ema = params, {m: dict(v) for m, v in params.items()}
  raw["NFNet/~/linear"]["b"] = np.arange(10, dtype=np.float32) / 2
  ema["NFNet/~/linear"]["b"] = np.arange(10, dtype=np.float32)[::-1] / 3
  state = {"step": np.asarray(7), "params": raw, "ema_params": ema,
           "model_state": {}, "ema_state": {}}
  directory = tmp_path_factory.mktemp("run")
  checkpointer = checkpointing.Checkpointer(directory / "checkpoints",
                                            async_save=False)
  checkpointer.save(7, state, checkpointing.config_to_dict(config))
  return directory, raw["NFNet/~/linear"]["b"], ema["NFNet/~/linear"]["b"]


@pytest.mark.parametrize("weights", ["ema", "raw"])
def test_workdir_top5_with_the_datasets_class_names(workdir, image, weights):
  directory, raw_bias, ema_bias = workdir
  predictor = predict.load(str(directory), weights=weights)
  assert predictor.image_size == 16
  assert predictor.class_names == FOLDER_CLASSES
  probabilities = predictor.probabilities(predict.prepare_image(
      image, predictor.image_size, predictor.resize_pad)[None])[0]
  bias = ema_bias if weights == "ema" else raw_bias
  expected = _softmax_top5(bias.astype(np.float64), FOLDER_CLASSES)
  got = predict.top_k(probabilities, predictor.class_names, 5)
  assert [n for n, _ in got] == [n for n, _ in expected]
  np.testing.assert_allclose([p for _, p in got], [p for _, p in expected],
                             rtol=1e-5)


def test_command_line(workdir, image, tmp_path):
  directory, _, ema_bias = workdir
  not_an_image = tmp_path / "notes.png"
  not_an_image.write_text("hello")
  command = [sys.executable, "-m", "nfnets_jax.predict",
             f"--checkpoint={directory}"]
  # Both at once: most of each run is start-up.
  good, bad = (subprocess.Popen(command + arguments, cwd=support.REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for arguments in ([image, image], [str(not_an_image)]))
  stdout, stderr = good.communicate(timeout=180)
  assert good.returncode == 0, stderr
  expected = [image] + [f"  {p:7.2%}  {n}" for n, p in _softmax_top5(
      ema_bias.astype(np.float64), FOLDER_CLASSES)]
  assert stdout.splitlines() == expected * 2

  _, stderr = bad.communicate(timeout=180)
  assert bad.returncode != 0
  assert f"error: {not_an_image} is not a JPEG, PNG, BMP or GIF image." in stderr
