r"""Top-5 classes of image files, from a training workdir or a released checkpoint.

    python -m nfnets_jax.predict --checkpoint=workdirs/digits digit.png
    python -m nfnets_jax.predict --checkpoint=F0_haiku.npz --variant=F0 cat.jpg

A workdir (or its `checkpoints/` folder) gives the newest intact checkpoint,
with the model, resolution and class names of its config; the EMA weights by
default. A released file (`F0_haiku.npz` ... `F6_haiku.npz`, or an NF-ResNet)
is an NFNet or NF-ResNet on ImageNet, evaluated at the variant's test
resolution. Images get the evaluation preprocessing of training: resize to
(test_px + pad) square, centre crop, ImageNet mean/std normalisation.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import haiku as hk
import jax
import ml_collections
import numpy as np
import tensorflow as tf

from nfnets_jax import checkpointing
from nfnets_jax import models
from nfnets_jax import nfnet
from nfnets_jax.pretrained import released as official
from nfnets_jax.data import pipeline
from nfnets_jax.data import preprocessing
from nfnets_jax.imagenet_classes import CLASS_NAMES as IMAGENET_CLASS_NAMES

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A training workdir (or its checkpoints/ folder), or "
    "one of the authors' released checkpoint files (e.g. F0_haiku.npz).")
_VARIANT = flags.DEFINE_string(
    "variant", None, "Released checkpoints only: the variant the file must "
    "hold ('F0' ... 'F7+', 'ResNet50', ...); default: whatever it holds.")
_WEIGHTS = flags.DEFINE_enum(
    "weights", "ema", ["ema", "raw"], "Workdirs only: the EMA or raw weights.")
_TOP_K = flags.DEFINE_integer("top_k", 5, "Number of classes to print.")

# The paper evaluates after resizing to test_px + 32 and centre-cropping.
_RELEASED_RESIZE_PAD = 32
# NF-ResNets were evaluated at the standard ResNet resolution.
_NFRESNET_TEST_PX = 224


@dataclasses.dataclass
class Predictor:
  """A model with its weights and how to prepare its inputs."""
  forward: hk.TransformedWithState
  params: hk.Params
  model_state: hk.State
  image_size: int
  resize_pad: int
  class_names: Sequence[str]

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    """Softmax class probabilities of a batch of prepared images."""
    out, _ = jax.jit(self.forward.apply, static_argnames="is_training")(
        self.params, self.model_state, None, images, is_training=False)
    return np.asarray(jax.nn.softmax(out["logits"].astype(np.float32)))


def _num_classes(params: hk.Params) -> int:
  """Outputs of the top-level module's classifier `<top>/~/linear`."""
  top = next(iter(params)).split("/")[0]
  return params[f"{top}/~/linear"]["w"].shape[1]


def _dataset_class_names(data_config: ml_collections.ConfigDict,
                         num_classes: int) -> list[str]:
  if data_config.name == "imagenet2012":
    return list(IMAGENET_CLASS_NAMES)
  try:
    names = pipeline.make_source(data_config).class_names
  except (ValueError, FileNotFoundError):
    names = None  # The dataset is not here; fall back to label numbers.
  return list(names) if names else [str(i) for i in range(num_classes)]


def load_workdir(path: str, weights: str = "ema") -> Predictor:
  """The newest intact checkpoint of a training workdir."""
  directory = os.path.join(path, "checkpoints")
  if not os.path.isdir(directory):
    directory = path
  checkpointer = checkpointing.Checkpointer(directory, async_save=False,
                                            read_only=True)
  try:
    restored = checkpointer.restore()
  finally:
    checkpointer.close()
  if restored is None:
    raise FileNotFoundError(
        f"No checkpoint in {directory}: pass a training workdir (with a "
        "checkpoints/ folder) or a released checkpoint file.")
  config = ml_collections.ConfigDict(restored.config)
  state = restored.state
  use_ema = weights == "ema" and config.optimizer.ema_decay
  params = state["ema_params" if use_ema else "params"]
  model_state = state["ema_state" if use_ema else "model_state"]
  num_classes = _num_classes(params)
  return Predictor(
      forward=models.transform(config.model.name, num_classes,
                               **config.model.kwargs),
      params=params, model_state=model_state, image_size=config.data.test_px,
      resize_pad=config.data.eval_resize_pad,
      class_names=_dataset_class_names(config.data, num_classes))


def load_released(path: str, variant: Optional[str] = None) -> Predictor:
  """One of the authors' released ImageNet checkpoints."""
  params = official.load_official_checkpoint(path, variant)
  model_name, found_variant = official.infer_variant(params)
  num_classes = _num_classes(params)
  if model_name == "NFNet":
    image_size = nfnet.variant_spec(found_variant)["test_px"]
  else:
    image_size = _NFRESNET_TEST_PX
  class_names = (list(IMAGENET_CLASS_NAMES) if num_classes == 1000 else
                 [str(i) for i in range(num_classes)])
  return Predictor(
      forward=models.transform(model_name, num_classes, variant=found_variant),
      params=params, model_state={}, image_size=image_size,
      resize_pad=_RELEASED_RESIZE_PAD, class_names=class_names)


def load(path: str, variant: Optional[str] = None,
         weights: str = "ema") -> Predictor:
  """A workdir (a directory) or a released checkpoint (a file)."""
  if os.path.isdir(path):
    return load_workdir(path, weights)
  if not os.path.exists(path):
    raise FileNotFoundError(f"--checkpoint {path} does not exist.")
  return load_released(path, variant)


def prepare_image(path: str, image_size: int, resize_pad: int) -> np.ndarray:
  """An image file as the evaluation pipeline prepares it: [H, W, 3] float32."""
  with open(path, "rb") as f:
    encoded = f.read()
  try:
    image = preprocessing.eval_image(tf.constant(encoded),
                                     image_size=image_size,
                                     resize_pad=resize_pad)
  except tf.errors.InvalidArgumentError:
    raise ValueError(f"{path} is not a JPEG, PNG, BMP or GIF image.") from None
  return image.numpy()


def top_k(probabilities: np.ndarray, class_names: Sequence[str],
          k: int) -> list[tuple[str, float]]:
  """The k most probable (class name, probability) pairs, best first."""
  order = np.argsort(-probabilities, kind="stable")[:k]
  return [(class_names[i], float(probabilities[i])) for i in order]


def main(argv: Sequence[str]) -> None:
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  image_paths = list(argv[1:])
  if not image_paths:
    raise app.UsageError("Pass one or more image files after the flags.")
  try:
    predictor = load(_CHECKPOINT.value, _VARIANT.value, _WEIGHTS.value)
    images = np.stack([prepare_image(p, predictor.image_size,
                                     predictor.resize_pad)
                       for p in image_paths])
  except (ValueError, FileNotFoundError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  for path, probabilities in zip(image_paths,
                                 predictor.probabilities(images)):
    print(path)
    for name, probability in top_k(probabilities, predictor.class_names,
                                   _TOP_K.value):
      print(f"  {probability:7.2%}  {name}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["checkpoint"])
  app.run(main)
