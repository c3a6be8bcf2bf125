r"""Top-5 classes of image files, from a workdir, a released or a timm checkpoint.

    python -m nfnets_jax.predict --checkpoint=workdirs/digits digit.png
    python -m nfnets_jax.predict --checkpoint=F0_haiku.npz --variant=F0 cat.jpg
    python -m nfnets_jax.predict \
        --checkpoint=~/.cache/huggingface/hub/models--timm--dm_nfnet_f0.dm_in1k cat.jpg

A workdir (or its `checkpoints/` folder) gives the newest intact checkpoint,
with the model, resolution and class names of its config; the EMA weights by
default. A released file (`F0_haiku.npz` ... `F6_haiku.npz`, or an NF-ResNet)
or a timm `dm_nfnet_f0` ... `f6` safetensors file is an NFNet or NF-ResNet on
ImageNet, evaluated at the variant's test resolution. Images get the evaluation preprocessing of training: resize to
(test_px + pad) square, centre crop, ImageNet mean/std normalisation.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from absl import app
from absl import flags
import haiku as hk
import jax
import ml_collections
import numpy as np

from nfnets_jax import cli
from nfnets_jax import models
from nfnets_jax.models import nfnet
from nfnets_jax.data import pipeline
from nfnets_jax.data import preprocessing
from nfnets_jax.data.tensorflow_setup import tf
from nfnets_jax.imagenet_classes import CLASS_NAMES as IMAGENET_CLASS_NAMES
from nfnets_jax.pretrained import weights as pretrained_weights



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


def _dataset_class_names(data_config: ml_collections.ConfigDict,
                         num_classes: int) -> list[str]:
  if data_config.name == "imagenet2012":
    return list(IMAGENET_CLASS_NAMES)
  try:
    names = pipeline.make_source(data_config).class_names
  except (ValueError, FileNotFoundError):
    names = None  # The dataset is not here; fall back to label numbers.
  return list(names) if names else [str(i) for i in range(num_classes)]


def test_resolution(model: str, variant: str) -> int:
  """The resolution a released or timm ImageNet model is evaluated at."""
  return nfnet.variant_spec(variant)["test_px"] if model == "NFNet" else _NFRESNET_TEST_PX


def load(path: str, variant: Optional[str] = None,
         weights: str = "ema") -> Predictor:
  """A workdir, a released checkpoint or a timm safetensors file (or hub folder)."""
  loaded = pretrained_weights.load_weights(
      path, weights=weights, model_kwargs={"variant": variant} if variant else None)
  if loaded.config is not None:
    image_size = loaded.config.data.test_px
    resize_pad = loaded.config.data.eval_resize_pad
    class_names = _dataset_class_names(loaded.config.data, loaded.num_classes)
  else:
    image_size = test_resolution(loaded.model, loaded.model_kwargs["variant"])
    resize_pad = _RELEASED_RESIZE_PAD
    class_names = (list(IMAGENET_CLASS_NAMES) if loaded.num_classes == 1000 else
                   [str(i) for i in range(loaded.num_classes)])
  return Predictor(
      forward=models.transform(loaded.model, loaded.num_classes, **loaded.model_kwargs),
      params=loaded.params, model_state=loaded.model_state, image_size=image_size,
      resize_pad=resize_pad, class_names=class_names)


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
  image_paths = list(argv[1:])
  if not image_paths:
    raise app.UsageError("Pass one or more image files after the flags.")
  try:
    predictor = load(flags.FLAGS.checkpoint, flags.FLAGS.variant, flags.FLAGS.weights)
    images = np.stack([prepare_image(p, predictor.image_size,
                                     predictor.resize_pad)
                       for p in image_paths])
  except cli.USER_ERRORS + (OSError,) as e:
    cli.fail(e)
  for path, probabilities in zip(image_paths,
                                 predictor.probabilities(images)):
    print(path)
    for name, probability in top_k(probabilities, predictor.class_names,
                                   flags.FLAGS.top_k):
      print(f"  {probability:7.2%}  {name}")


def _define_flags() -> None:
  cli.define_checkpoint_flags()
  flags.DEFINE_string(
      "variant", None, "Released and timm checkpoints only: the variant the file must "
      "hold ('F0' ... 'F7+', 'ResNet50', ...); default: whatever it holds.")
  flags.DEFINE_integer("top_k", 5, "Number of classes to print.")


def run() -> None:
  """Console-script entry point (`nfnets-predict`)."""
  cli.run(main, _define_flags, ["checkpoint"])


if __name__ == "__main__":
  run()
