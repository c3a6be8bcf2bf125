"""Every bad input of the data package gets an error naming the problem and the fix."""
import numpy as np
import pytest
from PIL import Image

from nfnets_jax import data


def _folder_config(root):
  config = data.default_config()
  config.name = "image_folder"
  config.image_folder.path = str(root)
  config.train_px = config.test_px = 8
  config.randaugment.num_layers = 0
  return config


def _write_image(path, value=100):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((10, 12, 3), value, np.uint8)).save(path)


def test_unknown_dataset_name():
  config = data.default_config()
  config.name = "no_such_dataset_xyz"
  with pytest.raises(ValueError, match=r"Unknown dataset 'no_such_dataset_xyz'.*image_folder"):
    data.dataset_info(config)


@pytest.mark.parametrize("name, hint", [("mnist", "tfds build mnist"),
                                        ("imagenet2012", "downloads/manual")])
def test_tfds_dataset_not_prepared_says_where_and_how(tmp_path, name, hint):
  config = data.default_config()
  config.name, config.data_dir = name, str(tmp_path)
  with pytest.raises(FileNotFoundError, match="not prepared") as error:
    data.train_iterator(config, global_batch_size=8, seed=0)
  assert str(tmp_path) in str(error.value) and hint in str(error.value)


def test_global_batch_not_divisible_by_devices(tmp_path):
  _write_image(tmp_path / "train" / "a" / "0.png")
  with pytest.raises(ValueError, match=r"not divisible by the 6 devices \(3 processes x 2"):
    data.train_iterator(_folder_config(tmp_path), global_batch_size=8, seed=0,
                        process_index=0, process_count=3, num_local_devices=2)


def test_image_folder_path_missing_or_unset(tmp_path):
  config = _folder_config(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere.*does not exist"):
    data.dataset_info(config)
  config.image_folder.path = None
  with pytest.raises(ValueError, match="image_folder.path is not set"):
    data.dataset_info(config)


def test_image_folder_without_images(tmp_path):
  (tmp_path / "train" / "cats").mkdir(parents=True)
  (tmp_path / "train" / "cats" / "notes.txt").write_text("not an image")
  (tmp_path / "test").mkdir()
  with pytest.raises(ValueError, match=r"No images in .*train"):
    data.train_iterator(_folder_config(tmp_path), global_batch_size=8, seed=0)


def test_image_folder_without_the_split(tmp_path):
  _write_image(tmp_path / "train" / "a" / "0.png")
  with pytest.raises(ValueError, match=r"no split 'test' \(it has \['train'\]\)"):
    data.dataset_info(_folder_config(tmp_path))


@pytest.mark.parametrize("split", ["train", "test"])
def test_undecodable_image_is_named(tmp_path, split):
  for s in ("train", "test"):
    for i in range(3):
      _write_image(tmp_path / s / "a" / f"{i}.png")
  bad = tmp_path / split / "a" / "1_broken.jpg"
  bad.write_bytes(b"\xff\xd8 this is not really a JPEG")
  config = _folder_config(tmp_path)
  if split == "train":
    batches = data.train_iterator(config, global_batch_size=2, seed=0, num_local_devices=1)
  else:
    batches = data.eval_iterator(config, global_batch_size=2, num_local_devices=1)
  with pytest.raises(ValueError, match=f"Cannot decode image file {bad}"):
    for _ in range(4):
      next(batches)


def test_bad_augmentation_settings():
  config = data.default_config()
  config.mix_policy = "sometimes"
  with pytest.raises(ValueError, match="mix_policy 'sometimes'"):
    data.train_iterator(config, global_batch_size=8, seed=0)
  config.mix_policy, config.mixup_alpha = "half", 0.0
  with pytest.raises(ValueError, match="mixup_alpha must be > 0"):
    data.train_iterator(config, global_batch_size=8, seed=0)
