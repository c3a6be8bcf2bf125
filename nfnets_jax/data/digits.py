"""An offline TFDS dataset: scikit-learn's 1,797 handwritten 8x8 digits.

The images ship inside scikit-learn, so building needs no network. They are
split once, stratified by class with a fixed seed, into 1,437 training and 360
test examples, upscaled (bicubic) to `image_size` and stored as RGB uint8.
Each example keeps `index`, its row in `sklearn.datasets.load_digits()`.

The pipeline builds it on first use; to build it ahead (a few seconds):
    python -m nfnets_jax.data --data_dir ~/tensorflow_datasets --image_size 32
"""
import contextlib
import dataclasses
import io
import sys


import numpy as np
from PIL import Image

from nfnets_jax import console
from nfnets_jax.data.tensorflow_setup import tfds

NUM_TEST = 360
SPLIT_SEED = 0
_MAX_PIXEL = 16.0  # load_digits() pixels are counts in 0..16


@dataclasses.dataclass(eq=False)
class DigitsConfig(tfds.core.BuilderConfig):
  """Builder config: the side the 8x8 images are upscaled to."""
  image_size: int = 32


def _load_digits():
  """scikit-learn's `load_digits()`; sklearn is imported only to build (~1.5 s)."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  return datasets.load_digits()


def split_indices() -> dict[str, np.ndarray]:
  """Rows of `load_digits()` in each split: stratified, fixed seed, sorted."""
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top
  labels = _load_digits().target
  train, test = model_selection.train_test_split(
      np.arange(len(labels)), test_size=NUM_TEST, stratify=labels,
      random_state=SPLIT_SEED)
  return {"train": np.sort(train), "test": np.sort(test)}


def upscale(image_8x8: np.ndarray, image_size: int) -> np.ndarray:
  """One 0..16 grey digit -> [image_size, image_size, 3] uint8 RGB."""
  grey = np.round(image_8x8 * (255.0 / _MAX_PIXEL)).astype(np.uint8)
  pil = Image.fromarray(grey, mode="L")
  if image_size != grey.shape[0]:
    pil = pil.resize((image_size, image_size), Image.BICUBIC)
  return np.asarray(pil.convert("RGB"))


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's handwritten digits as a TFDS image classification set."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  # TFDS finds a builder's download checksums beside its source through the
  # `importlib_resources` package, which is not installed; digits downloads
  # nothing, so it has no checksums to find.
  code_path = None
  BUILDER_CONFIGS = [DigitsConfig(name=f"{size}px", image_size=size)
                     for size in (8, 16, 32, 64)]

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description="UCI ML hand-written digits (via scikit-learn), upscaled.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3)),
            "label": tfds.features.ClassLabel(num_classes=10),
            "index": np.int64,
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(rows)
            for split, rows in split_indices().items()}

  def _generate_examples(self, rows):
    digits = _load_digits()
    size = self.builder_config.image_size
    for row in rows:
      yield int(row), {"image": upscale(digits.images[row], size),
                       "label": int(digits.target[row]), "index": int(row)}


def prepared_builder(data_dir: str | None, image_size: int) -> Digits:
  """The digits builder at `image_size`, built in `data_dir` if not yet there."""
  if image_size < 8:
    raise ValueError(f"digits.image_size must be >= 8 (the digits are 8x8), got {image_size}.")
  name = f"{image_size}px"
  # TFDS refuses a new config object named like a predefined one, and warns
  # about other new ones.
  config = name if name in Digits.builder_configs else DigitsConfig(
      name=name, image_size=image_size)
  # TFDS would say it is "Downloading" and warn that the not-yet-built
  # version folder has no dataset_info.json: neither is true news here.
  with console.absl_warnings_off(), contextlib.redirect_stdout(io.StringIO()):
    builder = Digits(data_dir=data_dir, config=config)
    if not builder.is_prepared():
      print(f"Building the digits dataset ({name}) in {builder.data_dir}: once, "
            "from scikit-learn's copy, no download.", file=sys.stderr, flush=True)
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder
