"""Where examples come from: TFDS builders and random 'fake' images.

A source reads one process's share of a split as a `tf.data.Dataset` of
`{'image': encoded bytes (tf.string) or uint8 [H, W, 3], 'label': int32}` in a
fixed order; the pipeline shuffles and decodes. The shards of all processes
are contiguous and cover the split exactly once.
"""
from nfnets_jax.data import config as config_lib
from nfnets_jax.data.tensorflow_setup import tf, tfds


def shard_bounds(num_examples: int, process_index: int,
                 process_count: int) -> tuple[int, int]:
  """[start, end) of a process's contiguous shard; sizes differ by at most 1."""
  return (num_examples * process_index // process_count,
          num_examples * (process_index + 1) // process_count)


class Source:
  """Interface shared by the sources (see the module docstring)."""

  num_classes: int
  class_names: list[str] | None = None  # Label i's name, where the data has names.

  def num_examples(self, split: str) -> int:
    raise NotImplementedError

  def shard_sizes(self, split: str, process_count: int) -> list[int]:
    """Examples in each process's shard of `split`."""
    total = self.num_examples(split)
    return [end - start for start, end in
            (shard_bounds(total, i, process_count) for i in range(process_count))]

  def read(self, split: str, process_index: int, process_count: int) -> tf.data.Dataset:
    raise NotImplementedError

  def explain_decode_failure(self, split: str, process_index: int,
                             process_count: int) -> None:
    """Raises an error naming the input that failed to decode, if it can."""


class TfdsSource(Source):
  """A prepared TFDS dataset; images stay encoded until the pipeline decodes."""

  def __init__(self, builder: tfds.core.DatasetBuilder, image_key: str = "image",
               label_key: str = "label"):
    features = builder.info.features
    for key in (image_key, label_key):
      if key not in features:
        raise ValueError(
            f"TFDS dataset {builder.name!r} has no feature {key!r} (it has "
            f"{sorted(features.keys())}); set config.data.image_key / label_key.")
    self._builder = builder
    self._image_key, self._label_key = image_key, label_key
    self.num_classes = features[label_key].num_classes
    self.class_names = list(features[label_key].names)

  def num_examples(self, split: str) -> int:
    return self._builder.info.splits[split].num_examples

  def shard_sizes(self, split: str, process_count: int) -> list[int]:
    return [self._builder.info.splits[shard].num_examples
            for shard in tfds.even_splits(split, process_count)]

  def read(self, split: str, process_index: int, process_count: int) -> tf.data.Dataset:
    ds = self._builder.as_dataset(
        split=tfds.even_splits(split, process_count)[process_index],
        shuffle_files=False,  # TFDS stores examples already shuffled
        decoders={self._image_key: tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(try_autocache=False, skip_prefetch=True))
    return ds.map(lambda ex: {"image": ex[self._image_key],
                              "label": tf.cast(ex[self._label_key], tf.int32)})


def tfds_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """A prepared TFDS builder, or an error that says how to get one."""
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(
        f"Unknown dataset {name!r}: config.data.name must be one of "
        f"{list(config_lib.BUILTIN_DATASETS)} or a TFDS dataset name such as "
        "'imagenet2012' or 'cifar10' "
        "(https://www.tensorflow.org/datasets/catalog/overview).") from None
  if not builder.is_prepared():
    root = builder.data_dir_root
    message = (
        f"TFDS dataset {name!r} is not prepared in data_dir {root} (looked for "
        f"{builder.data_dir}). Prepare it once with `tfds build {name} "
        f"--data_dir={root}`, or set config.data.data_dir to the directory that "
        "holds it.")
    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
      message += (
          f" {name!r} needs a manual download first: put its files in "
          f"{root}/downloads/manual (or pass --manual_dir to `tfds build`). "
          f"TFDS says: {' '.join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())}")
    raise FileNotFoundError(message)
  return builder


class FakeSource(Source):
  """Random uint8 images and labels, a pure function of (split, index): no I/O."""

  def __init__(self, num_classes: int, image_size: int, split_sizes: dict[str, int]):
    self.num_classes = num_classes
    self._image_size = image_size
    self._split_sizes = dict(split_sizes)

  def num_examples(self, split: str) -> int:
    if split not in self._split_sizes:
      raise ValueError(f"The 'fake' dataset has splits {list(self._split_sizes)}, "
                       f"not {split!r}.")
    return self._split_sizes[split]

  def read(self, split: str, process_index: int, process_count: int) -> tf.data.Dataset:
    start, end = shard_bounds(self.num_examples(split), process_index, process_count)
    split_id = list(self._split_sizes).index(split)
    shape = [self._image_size, self._image_size, 3]

    def example(index):
      seed = tf.stack([tf.constant(split_id, tf.int64), index])
      image_seed, label_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
      image = tf.random.stateless_uniform(shape, image_seed, maxval=256, dtype=tf.int32)
      label = tf.random.stateless_uniform([], label_seed, maxval=self.num_classes,
                                          dtype=tf.int32)
      return {"image": tf.cast(image, tf.uint8), "label": label}

    return tf.data.Dataset.range(start, end).map(example)
