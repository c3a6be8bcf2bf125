"""A user's own images laid out as `root/<split>/<class>/<image>`.

Class names are the sorted union of class folders over all splits, so a label
means the same class in every split. Files are listed in sorted order.
"""
import functools
import pathlib

from nfnets_jax.data import sources
from nfnets_jax.data.tensorflow_setup import tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
_LAYOUT = "<path>/<split>/<class>/<image>.jpg"


class ImageFolderSource(sources.Source):
  """Images read from files; decode errors are traced back to the file."""

  def __init__(self, root: str | None):
    if root is None:
      raise ValueError("config.data.image_folder.path is not set: point it at a "
                       f"folder laid out as {_LAYOUT}.")
    self._root = pathlib.Path(root).expanduser()
    if not self._root.is_dir():
      raise FileNotFoundError(f"Image folder {self._root} does not exist: set "
                              f"config.data.image_folder.path to a folder laid out as {_LAYOUT}.")
    self._splits = sorted(d.name for d in self._root.iterdir() if d.is_dir())
    self.class_names = sorted({c.name for split in self._splits
                               for c in (self._root / split).iterdir() if c.is_dir()})
    self.num_classes = len(self.class_names)

  @functools.cache
  def _files(self, split: str) -> tuple[list[str], list[int]]:
    """(paths, labels) of a split, sorted by class then file name."""
    if split not in self._splits:
      raise ValueError(f"Image folder {self._root} has no split {split!r} (it has "
                       f"{self._splits}); expected the layout {_LAYOUT}.")
    paths, labels = [], []
    for label, name in enumerate(self.class_names):
      class_dir = self._root / split / name
      if class_dir.is_dir():
        images = sorted(str(f) for f in class_dir.iterdir()
                        if f.suffix.lower() in IMAGE_EXTENSIONS)
        paths += images
        labels += [label] * len(images)
    if not paths:
      raise ValueError(
          f"No images in {self._root / split}: put files ending in "
          f"{', '.join(IMAGE_EXTENSIONS)} in one sub-folder per class ({_LAYOUT}).")
    return paths, labels

  def num_examples(self, split: str) -> int:
    return len(self._files(split)[0])

  def _shard(self, split, process_index, process_count):
    paths, labels = self._files(split)
    start, end = sources.shard_bounds(len(paths), process_index, process_count)
    return paths[start:end], labels[start:end]

  def read(self, split: str, process_index: int, process_count: int) -> tf.data.Dataset:
    paths, labels = self._shard(split, process_index, process_count)
    ds = tf.data.Dataset.from_tensor_slices(
        {"path": paths, "label": tf.constant(labels, tf.int32)})
    return ds.map(lambda ex: {"image": tf.io.read_file(ex["path"]), "label": ex["label"]})

  def explain_decode_failure(self, split: str, process_index: int,
                             process_count: int) -> None:
    # tf.data's decode error does not say which file failed: find it by
    # decoding this process's files one by one (only on this failure path).
    for path in self._shard(split, process_index, process_count)[0]:
      try:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
      except tf.errors.InvalidArgumentError as error:
        raise ValueError(
            f"Cannot decode image file {path} ({error.message.strip()}): delete it "
            "or re-save it as JPEG or PNG.") from None
