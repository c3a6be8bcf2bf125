"""Training and evaluation pipelines on an image folder whose pixels encode labels.

Every image is constant: red encodes its class, green a unique example id.
Crops, flips and resizes keep a constant image constant, so each output pixel
tells which examples (and in which proportions) went into it.
"""
import itertools
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from nfnets_jax import data

RED_BY_CLASS = (40, 120, 200)
PER_CLASS = {"train": 7, "test": 5}  # 21 and 15 examples: not batch multiples
MEAN = np.array([0.485, 0.456, 0.406]) * 255  # NFNETS.md
STD = np.array([0.229, 0.224, 0.225]) * 255
PX = 16


def _green(example_id):
  return 8 + 6 * example_id


def _id(green):
  return np.round((green - 8) / 6).astype(int)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """Writes the folder; returns (root, {split: {example id: label}})."""
  root = tmp_path_factory.mktemp("images")
  labels = {}
  ids = itertools.count()
  for split, count in PER_CLASS.items():
    labels[split] = {}
    for label, red in enumerate(RED_BY_CLASS):
      class_dir = root / split / f"class_{label}"
      class_dir.mkdir(parents=True)
      for j in range(count):
        example_id = next(ids)
        pixels = np.zeros((20 + 3 * j, 27 - 2 * j, 3), np.uint8)  # assorted shapes
        pixels[..., 0], pixels[..., 1] = red, _green(example_id)
        # The last class is stored as JPEG (the crop-while-decoding path).
        suffix = "jpg" if label == 2 else "png"
        Image.fromarray(pixels).save(class_dir / f"{j}.{suffix}", quality=95)
        labels[split][example_id] = label
  return root, labels


def _config(root, **overrides):
  config = data.default_config()
  config.name = "image_folder"
  config.image_folder.path = str(root)
  config.train_px = config.test_px = PX
  config.randaugment.num_layers = 0
  config.update(overrides)
  return config


def _pixels(images):
  """Denormalised per-example mean RGB, [..., 3]."""
  return images.mean(axis=(-3, -2)) * STD + MEAN


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _value_range():
  return (0 - MEAN) / STD, (255 - MEAN) / STD


def test_train_batches_have_the_contract_shapes_dtypes_and_ranges(folder):
  root, _ = folder
  config = _config(root)
  config.randaugment.num_layers, config.randaugment.magnitude = 1, 9
  batch = next(data.train_iterator(config, global_batch_size=8, seed=0, num_local_devices=2))
  assert batch["images"].dtype == np.float32 and batch["images"].shape == (2, 4, PX, PX, 3)
  assert batch["labels"].dtype == np.float32 and batch["labels"].shape == (2, 4, 3)
  low, high = _value_range()
  assert np.all(batch["images"] >= low - 1e-5) and np.all(batch["images"] <= high + 1e-5)
  assert np.all((batch["labels"] >= 0) & (batch["labels"] <= 1))
  np.testing.assert_allclose(batch["labels"].sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("policy", ["none", "mixup", "cutmix", "half"])
def test_train_targets_match_the_mixed_pixels(folder, policy):
  root, _ = folder
  config = _config(root, mix_policy=policy, random_flip=True)
  for batch in _take(data.train_iterator(config, global_batch_size=8, seed=1,
                                         num_local_devices=2), 3):
    red = _pixels(batch["images"])[..., 0]
    expected_red = batch["labels"] @ np.array(RED_BY_CLASS, np.float32)
    np.testing.assert_allclose(red, expected_red, atol=2.5)
    if policy == "none":
      np.testing.assert_array_equal(batch["labels"].max(-1), 1.0)


def test_eval_batches_have_the_contract_shapes_and_pixel_labels(folder):
  root, labels = folder
  config = _config(root, eval_resize_pad=4)
  batches = list(data.eval_iterator(config, global_batch_size=8, num_local_devices=2))
  assert len(batches) == 2  # 15 examples, 8 per batch
  for batch in batches:
    assert batch["images"].dtype == np.float32 and batch["images"].shape == (2, 4, PX, PX, 3)
    assert batch["labels"].dtype == np.int32 and batch["labels"].shape == (2, 4)
    assert batch["mask"].dtype == np.float32 and batch["mask"].shape == (2, 4)
    real = batch["mask"] == 1
    pixels = _pixels(batch["images"])
    np.testing.assert_allclose(pixels[real][:, 0], np.take(RED_BY_CLASS, batch["labels"][real]),
                               atol=2.5)
    assert all(labels["test"][i] == label
               for i, label in zip(_id(pixels[real][:, 1]), batch["labels"][real]))
  assert sum(batch["mask"].sum() for batch in batches) == 15


def test_train_is_deterministic_and_resumes_mid_run(folder):
  root, _ = folder
  config = _config(root, random_flip=True)
  kwargs = dict(global_batch_size=8, num_local_devices=2)
  run = _take(data.train_iterator(config, seed=0, **kwargs), 8)  # ~3 epochs of 21
  rerun = _take(data.train_iterator(config, seed=0, **kwargs), 8)
  other_seed = next(data.train_iterator(config, seed=1, **kwargs))
  for a, b in zip(run, rerun):
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["labels"], b["labels"])
  assert not np.array_equal(run[0]["images"], other_seed["images"])
  for start in (3, 5):  # resumes inside the second and third epochs
    resumed = _take(data.train_iterator(config, seed=0, start_step=start, **kwargs), 8 - start)
    for a, b in zip(run[start:], resumed):
      np.testing.assert_array_equal(a["images"], b["images"])
      np.testing.assert_array_equal(a["labels"], b["labels"])


def _first_epoch_ids(config, process_index, process_count, shard_size):
  """Example ids of the first `shard_size` training examples a process sees."""
  iterator = data.train_iterator(config, global_batch_size=2 * process_count, seed=0,
                                 process_index=process_index, process_count=process_count,
                                 num_local_devices=1)
  ids = []
  while len(ids) < shard_size:
    ids += list(_id(_pixels(next(iterator)["images"])[..., 1].ravel()))
  return ids[:shard_size]


@pytest.mark.parametrize("process_count", [2, 3])
def test_train_shards_of_all_processes_cover_the_split_once(folder, process_count):
  root, labels = folder
  config = _config(root, min_crop_area=1.0, mix_policy="none")
  seen = []
  for index in range(process_count):
    num_train = len(labels["train"])
    shard_size = (num_train * (index + 1) // process_count
                  - num_train * index // process_count)
    ids = _first_epoch_ids(config, index, process_count, shard_size)
    assert len(set(ids)) == shard_size  # an epoch is a permutation of the shard
    seen += ids
  assert sorted(seen) == sorted(labels["train"])


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_eval_sees_every_example_exactly_once(folder, process_count):
  root, labels = folder
  config = _config(root)
  seen, num_batches = [], set()
  for index in range(process_count):
    batches = list(data.eval_iterator(config, global_batch_size=4 * process_count,
                                      process_index=index, process_count=process_count,
                                      num_local_devices=2))
    num_batches.add(len(batches))
    for batch in batches:
      real = batch["mask"] == 1
      assert set(np.unique(batch["mask"])) <= {0.0, 1.0}
      assert np.all(batch["labels"][~real] == 0)
      seen += list(_id(_pixels(batch["images"])[real][:, 1]))
  assert len(num_batches) == 1  # pmap needs the same step count on every process
  assert sorted(seen) == sorted(labels["test"])


def test_fake_dataset_repeats_one_batch_and_counts_its_test_split():
  config = data.default_config()
  config.name = "fake"
  config.train_px = config.test_px = 8
  config.fake.update(num_classes=7, image_size=12, num_test=10)
  config.randaugment.num_layers = 0
  assert data.dataset_info(config).num_classes == 7
  first, second = _take(data.train_iterator(config, global_batch_size=4, seed=0,
                                            num_local_devices=2), 2)
  assert first["images"].shape == (2, 2, 8, 8, 3) and first["labels"].shape == (2, 2, 7)
  np.testing.assert_array_equal(first["images"], second["images"])
  # A resumed run sees the same single batch, not the one at its start step.
  (resumed,) = _take(data.train_iterator(config, global_batch_size=4, seed=0,
                                         start_step=5, num_local_devices=2), 1)
  np.testing.assert_array_equal(resumed["images"], first["images"])
  np.testing.assert_array_equal(resumed["labels"], first["labels"])
  batches = list(data.eval_iterator(config, global_batch_size=4, num_local_devices=2))
  assert len(batches) == 3 and sum(b["mask"].sum() for b in batches) == 10


def _modules_after_import(env_update):
  code = ("import sys; import nfnets_jax.data.pipeline; "
          "print(sorted(m for m in ('keras', 'sklearn') if m in sys.modules))")
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  result = subprocess.run([sys.executable, "-c", code], env={**env, **env_update},
                          cwd=pathlib.Path(__file__).parents[1], capture_output=True,
                          text=True, timeout=120, check=True)
  return result.stdout.strip().splitlines()[-1]


def test_the_pipeline_loads_tensorflow_without_keras_unless_asked():
  # tf.data needs no Keras; TensorFlow would import it (and scikit-learn).
  assert _modules_after_import({}) == "[]"
  assert _modules_after_import({"TF_USE_LEGACY_KERAS": "0"}) == "['keras', 'sklearn']"
