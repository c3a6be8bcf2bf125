"""Training and evaluation iterators of NumPy batches, ready for `jax.pmap`.

Sharding: each process reads only its contiguous shard of a split
(`sources.shard_bounds`, or `tfds.even_splits` for TFDS); the shards of all
processes cover the split exactly once.

Determinism: everything random is a pure function of (seed, process_index)
and a position: the shuffle order of epoch e is seeded by e, the crop and flip
of an example by its position in the process's stream, and the RandAugment
draws and mixing of a per-device batch by that batch's position. tf.data runs
deterministically.

Resume: `train_iterator(..., start_step=N)` yields exactly batches N, N+1, ...
of an uninterrupted run. It starts at the right epoch and skips the examples
of that epoch already consumed before decoding them, so resuming costs
reading (not decoding) at most one epoch of this process's shard.

RandAugment and mixing run per device batch (RandAugment is much cheaper per
image on a batch), so each device's examples mix only among themselves; the
`labels` of training batches are float targets summing to 1.
"""
from typing import Iterator, NamedTuple

import jax
import ml_collections
import numpy as np

from nfnets_jax.data import config as config_lib
from nfnets_jax.data import digits, image_folder, mixing, preprocessing, sources
from nfnets_jax.data.tensorflow_setup import tf

Batch = dict[str, np.ndarray]
_AUTOTUNE = tf.data.AUTOTUNE
# For the functions tf.data traces: they use TensorFlow's own control flow, so
# autograph's source rewriting only costs time (3 of the 4 s a digits run
# took to build its training pipeline).
_plain_graph = tf.autograph.experimental.do_not_convert


class DatasetInfo(NamedTuple):
  """Static facts about a configured dataset."""
  name: str
  num_classes: int
  num_train: int  # examples in config.train_split
  num_test: int  # examples in config.eval_split


class _Layout(NamedTuple):
  process_index: int
  process_count: int
  num_local_devices: int
  per_device_batch: int


def make_source(config: ml_collections.ConfigDict) -> sources.Source:
  """The example source named by `config.name` (see `default_config`)."""
  if config.name == "fake":
    return sources.FakeSource(
        config.fake.num_classes, config.fake.image_size,
        {config.train_split: config.fake.num_train, config.eval_split: config.fake.num_test})
  if config.name == "image_folder":
    return image_folder.ImageFolderSource(config.image_folder.path)
  if config.name == "digits":
    return sources.TfdsSource(digits.prepared_builder(config.data_dir, config.digits.image_size))
  return sources.TfdsSource(sources.tfds_builder(config.name, config.data_dir),
                            config.image_key, config.label_key)


def dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  """Number of classes and split sizes of the configured dataset."""
  source = make_source(config)
  return DatasetInfo(config.name, source.num_classes,
                     source.num_examples(config.train_split),
                     source.num_examples(config.eval_split))


def _layout(global_batch_size, process_index, process_count, num_local_devices) -> _Layout:
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  num_local_devices = (jax.local_device_count() if num_local_devices is None
                       else num_local_devices)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count}).")
  num_devices = process_count * num_local_devices
  if global_batch_size <= 0 or global_batch_size % num_devices:
    raise ValueError(
        f"Global batch size {global_batch_size} is not divisible by the {num_devices} "
        f"devices ({process_count} processes x {num_local_devices} local devices): "
        f"use a positive multiple of {num_devices}, e.g. "
        f"{max(1, round(global_batch_size / num_devices)) * num_devices}.")
  return _Layout(process_index, process_count, num_local_devices,
                 global_batch_size // num_devices)


def _check_recipe(config: ml_collections.ConfigDict) -> None:
  if config.mix_policy not in config_lib.MIX_POLICIES:
    raise ValueError(f"Unknown config.data.mix_policy {config.mix_policy!r}; choose "
                     f"one of {list(config_lib.MIX_POLICIES)}.")
  for method in ("mixup", "cutmix"):
    alpha = config[f"{method}_alpha"]
    if config.mix_policy in ("half", method) and not alpha > 0:
      raise ValueError(f"config.data.{method}_alpha must be > 0, got {alpha}; set "
                       "config.data.mix_policy to turn a method off.")
  if not 0 < config.min_crop_area <= 1:
    raise ValueError(f"config.data.min_crop_area must be in (0, 1], got {config.min_crop_area}.")


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True  # resume and reproducibility rely on it
  # Parallelism comes from parallel map calls; one thread per op avoids
  # oversubscribing the host's cores.
  options.threading.max_intra_op_parallelism = 1
  return options


def _stream_seeds(seed: int, process_index: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Independent shape-[2] seeds for shuffling, examples and batches."""
  state = np.random.SeedSequence([seed, process_index]).generate_state(6).astype(np.int64)
  return tuple(tf.constant(state[i:i + 2]) for i in (0, 2, 4))


def _numpy_batches(ds: tf.data.Dataset, source: sources.Source, split: str,
                   layout: _Layout) -> Iterator[Batch]:
  batches = ds.as_numpy_iterator()
  while True:
    try:
      batch = next(batches)
    except StopIteration:
      return
    except tf.errors.InvalidArgumentError:
      source.explain_decode_failure(split, layout.process_index, layout.process_count)
      raise
    yield batch


def train_iterator(config: ml_collections.ConfigDict, *, global_batch_size: int,
                   seed: int, start_step: int = 0, process_index: int | None = None,
                   process_count: int | None = None,
                   num_local_devices: int | None = None) -> Iterator[Batch]:
  """Endless augmented training batches of this process (module docstring).

  Args:
    config: the `config.data` ConfigDict (`default_config`).
    global_batch_size: examples per step over all processes and devices.
    seed: non-negative int; the same seed gives the same batches.
    start_step: first step to yield (resume).
    process_index, process_count, num_local_devices: default to JAX's.

  Returns:
    An iterator of {'images': float32 [devices, per_device_batch, px, px, 3]
    normalised, 'labels': float32 [devices, per_device_batch, num_classes]
    targets summing to 1}.
  """
  _check_recipe(config)
  layout = _layout(global_batch_size, process_index, process_count, num_local_devices)
  source = make_source(config)
  split = config.train_split
  shard_size = source.shard_sizes(split, layout.process_count)[layout.process_index]
  if shard_size == 0:
    raise ValueError(f"Split {split!r} has fewer examples than the {layout.process_count} "
                     "processes: use a larger split or fewer processes.")
  per_device = layout.per_device_batch
  local_batch = per_device * layout.num_local_devices
  shuffle_seed, example_seed, batch_seed = _stream_seeds(seed, layout.process_index)

  records = source.read(split, layout.process_index, layout.process_count)
  if config.name == "fake":
    # Benchmarks: one batch, computed once below and then repeated for free;
    # always batch 0, so a resumed run sees the same batch.
    records = records.take(local_batch)
    start_step = 0
  if config.cache:
    records = records.cache()

  def epoch_records(epoch):
    epoch_seed = tf.random.experimental.stateless_fold_in(shuffle_seed, epoch)[0]
    return records.shuffle(config.shuffle_buffer, seed=epoch_seed,
                           reshuffle_each_iteration=False)

  @_plain_graph
  def augment(position, example):
    image = preprocessing.train_image(
        example["image"], tf.random.experimental.stateless_fold_in(example_seed, position),
        image_size=config.train_px, min_crop_area=config.min_crop_area,
        random_flip=config.random_flip)
    return image, tf.one_hot(example["label"], source.num_classes)

  @_plain_graph
  def augment_and_mix(position, batch):
    images, targets = batch
    augment_seed, mix_seed = tf.unstack(tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(batch_seed, position), 2))
    images = preprocessing.train_batch(
        images, augment_seed, randaugment_layers=config.randaugment.num_layers,
        randaugment_magnitude=config.randaugment.magnitude)
    return mixing.mix_batch(
        images, targets, policy=config.mix_policy, mixup_alpha=config.mixup_alpha,
        cutmix_alpha=config.cutmix_alpha, seed=mix_seed)

  first_example = start_step * local_batch
  first_epoch = first_example // shard_size
  ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch_records)
  ds = ds.enumerate(start=first_epoch * shard_size).skip(first_example - first_epoch * shard_size)
  ds = ds.map(augment, num_parallel_calls=_AUTOTUNE)
  ds = ds.batch(per_device, drop_remainder=True)
  ds = ds.enumerate(start=start_step * layout.num_local_devices)
  ds = ds.map(augment_and_mix, num_parallel_calls=_AUTOTUNE)
  ds = ds.batch(layout.num_local_devices, drop_remainder=True)
  if config.name == "fake":
    ds = ds.take(1).cache().repeat()
  ds = ds.map(lambda images, targets: {"images": images, "labels": targets})
  ds = ds.prefetch(_AUTOTUNE).with_options(_options())
  return _numpy_batches(ds, source, split, layout)


def eval_iterator(config: ml_collections.ConfigDict, *, global_batch_size: int,
                  split: str = "test", process_index: int | None = None,
                  process_count: int | None = None,
                  num_local_devices: int | None = None) -> Iterator[Batch]:
  """One pass over a split: every example of this process's shard exactly once.

  All processes yield the same number of batches (as pmap needs): the last
  ones are padded with zero images whose mask is 0.

  Args:
    config: the `config.data` ConfigDict (`default_config`).
    global_batch_size: examples per step over all processes and devices.
    split: 'test' (config.eval_split), 'train' (config.train_split) or any
      other split name of the dataset.
    process_index, process_count, num_local_devices: default to JAX's.

  Returns:
    A finite iterator of {'images': float32 [devices, per_device_batch, px,
    px, 3], 'labels': int32 [devices, per_device_batch], 'mask': float32
    [devices, per_device_batch], 1 for real examples and 0 for padding}.
  """
  layout = _layout(global_batch_size, process_index, process_count, num_local_devices)
  source = make_source(config)
  split = {"test": config.eval_split, "train": config.train_split}.get(split, split)
  shard_sizes = source.shard_sizes(split, layout.process_count)
  local_batch = layout.per_device_batch * layout.num_local_devices
  num_batches = -(-max(shard_sizes) // local_batch)
  num_padding = num_batches * local_batch - shard_sizes[layout.process_index]

  @_plain_graph
  def preprocess(example):
    image = preprocessing.eval_image(example["image"], image_size=config.test_px,
                                     resize_pad=config.eval_resize_pad)
    return {"images": image, "labels": example["label"], "mask": tf.constant(1.0)}

  padding = {"images": tf.zeros([config.test_px, config.test_px, 3]),
             "labels": tf.constant(0, tf.int32), "mask": tf.constant(0.0)}
  ds = source.read(split, layout.process_index, layout.process_count)
  ds = ds.map(preprocess, num_parallel_calls=_AUTOTUNE)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_padding))
  ds = ds.batch(layout.per_device_batch).batch(layout.num_local_devices)
  ds = ds.prefetch(_AUTOTUNE).with_options(_options())
  return _numpy_batches(ds, source, split, layout)
