"""The offline digits dataset: built without network, fixed disjoint splits."""
import socket
import types

import numpy as np
import pytest
from sklearn import datasets as sk_datasets
import tensorflow_datasets as tfds

from nfnets_jax import data
from nfnets_jax.data import digits, sources

SKLEARN = sk_datasets.load_digits()
# The 8x8 digits on the 0..255 scale, the same value in R, G and B.
EXPECTED_8PX = np.repeat(np.round(SKLEARN.images * 255 / 16)[..., None], 3, -1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """A TFDS data_dir holding digits at 8 px, built with the network cut off."""
  root = tmp_path_factory.mktemp("tfds")
  def refuse(*args, **kwargs):
    raise AssertionError("building digits tried to use the network")
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(socket.socket, "connect", refuse)
    patch.setattr(socket, "getaddrinfo", refuse)
    digits.prepared_builder(str(root), 8)
  return str(root)


def _split(data_dir, split):
  ds = digits.prepared_builder(data_dir, 8).as_dataset(split=split)
  return [{k: v.numpy() for k, v in example.items()} for example in ds]


def _rows_of(images):
  """sklearn rows of 8x8 uint8 images, by exact pixel match (digits are unique)."""
  lookup = {image.tobytes(): row for row, image in enumerate(EXPECTED_8PX.astype(np.uint8))}
  return [lookup[image.tobytes()] for image in images]


def test_splits_are_fixed_stratified_disjoint_and_complete(data_dir):
  train, test = _split(data_dir, "train"), _split(data_dir, "test")
  assert (len(train), len(test)) == (1437, 360)
  train_rows = {ex["index"] for ex in train}
  test_rows = {ex["index"] for ex in test}
  assert not train_rows & test_rows
  assert train_rows | test_rows == set(range(len(SKLEARN.target)))
  # Stratified: each class has its share of the 360 test examples (+-1).
  test_counts = np.bincount(SKLEARN.target[sorted(test_rows)], minlength=10)
  np.testing.assert_allclose(test_counts, np.bincount(SKLEARN.target) * 360 / 1797, atol=1)
  # The test images themselves appear nowhere in train.
  assert not set(_rows_of([ex["image"] for ex in test])) & train_rows


def test_examples_are_the_sklearn_digits(data_dir):
  for example in _split(data_dir, "test"):
    row = example["index"]
    assert example["image"].dtype == np.uint8 and example["image"].shape == (8, 8, 3)
    np.testing.assert_array_equal(example["image"], EXPECTED_8PX[row])
    assert example["label"] == SKLEARN.target[row]


def test_upscaled_images_keep_the_digit():
  image = digits.upscale(SKLEARN.images[0], 32)
  assert image.shape == (32, 32, 3) and image.dtype == np.uint8
  assert np.all(image[..., 0] == image[..., 2])  # still grey
  # Averaging 4x4 blocks gives back the 8x8 digit, up to interpolation blur.
  blocks = image[..., 0].reshape(8, 4, 8, 4).mean(axis=(1, 3))
  assert np.corrcoef(blocks.ravel(), EXPECTED_8PX[0, ..., 0].ravel())[0, 1] > 0.95


def _eval_config(data_dir):
  config = data.default_config()
  config.data_dir = data_dir
  config.digits.image_size = config.train_px = config.test_px = 8
  config.eval_resize_pad = 0
  return config


def test_eval_shards_of_three_processes_cover_the_test_split_once(data_dir):
  config = _eval_config(data_dir)
  rows, labels = [], []
  for index in range(3):
    for batch in data.eval_iterator(config, global_batch_size=42, process_index=index,
                                    process_count=3, num_local_devices=2):
      real = batch["mask"] == 1
      pixels = batch["images"][real] * (np.array([0.229, 0.224, 0.225]) * 255) + (
          np.array([0.485, 0.456, 0.406]) * 255)
      rows += _rows_of(np.round(pixels).astype(np.uint8))
      labels += list(batch["labels"][real])
  assert sorted(rows) == sorted(digits.split_indices()["test"])
  np.testing.assert_array_equal(labels, SKLEARN.target[rows])


def test_dataset_info_and_train_batches(data_dir):
  config = _eval_config(data_dir)
  assert data.dataset_info(config) == data.DatasetInfo("digits", 10, 1437, 360)
  config.randaugment.num_layers = 0
  batch = next(data.train_iterator(config, global_batch_size=16, seed=0, num_local_devices=2))
  assert batch["images"].shape == (2, 8, 8, 8, 3) and batch["labels"].shape == (2, 8, 10)
  np.testing.assert_allclose(batch["labels"].sum(-1), 1.0, rtol=1e-6)


def test_tfds_sources_take_class_names_from_the_label_feature(data_dir):
  digit_names = data.pipeline.make_source(_eval_config(data_dir)).class_names
  assert digit_names == [str(i) for i in range(10)]
  # A stand-in builder whose ClassLabel has names, like cifar10's.
  names = ["cat", "dog", "eel"]
  features = tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(8, 8, 3)),
      "label": tfds.features.ClassLabel(names=names)})
  builder = types.SimpleNamespace(name="pets", info=types.SimpleNamespace(features=features))
  source = sources.TfdsSource(builder)
  assert source.class_names == names and source.num_classes == 3
