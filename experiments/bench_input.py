"""Input-pipeline throughput: the ImageNet recipe on JPEGs, and the digits default.

1. The full training pipeline of the paper (decode, inception crop, flip,
   bicubic resize to 224, RandAugment 2 layers magnitude 9, MixUp + CutMix) on
   an image folder of generated JPEGs with ImageNet-like sizes: images/s, in
   total and per CPU core.
2. The default digits experiment's pipeline: batches/s, to compare with the
   training step (`throughput.headroom`): the pipeline should be >= 5x faster.

    python -m experiments.bench_input [--num_images 300] [--batch_size 64]
"""
import argparse
import os
import pathlib
import tempfile

import ml_collections
import numpy as np
from PIL import Image

from nfnets_jax import data
from nfnets_jax.data import throughput

# Sizes (width, height) common in ImageNet's training set.
IMAGENET_LIKE_SIZES = ((500, 375), (375, 500), (500, 333), (500, 400), (640, 480), (400, 300))


def write_jpeg_folder(root: pathlib.Path, num_images: int, num_classes: int = 10,
                      seed: int = 0) -> None:
  """Writes `root/train/<class>/<i>.jpg`: smooth colour fields plus texture."""
  rng = np.random.default_rng(seed)
  for i in range(num_images):
    width, height = IMAGENET_LIKE_SIZES[i % len(IMAGENET_LIKE_SIZES)]
    coarse = rng.uniform(0, 255, (height // 32 + 1, width // 32 + 1, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
    pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    class_dir = root / "train" / f"class_{i % num_classes}"
    class_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(class_dir / f"{i}.jpg", quality=90)


def imagenet_recipe_config(folder: pathlib.Path) -> ml_collections.ConfigDict:
  """The paper's training pipeline at 224 px, RandAugment 2 x 9, on `folder`."""
  config = data.imagenet_config("F1")  # 224 px training crops
  config.name = "image_folder"
  config.image_folder.path = str(folder)
  config.eval_split = "train"  # the folder has only a train split
  config.randaugment.num_layers, config.randaugment.magnitude = 2, 9
  config.shuffle_buffer = 1000
  config.cache = True  # measure decoding and augmentation, not the disk
  return config


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_images", type=int, default=300)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--num_batches", type=int, default=15)
  parser.add_argument("--digits_batch_size", type=int, default=128)
  parser.add_argument("--digits_num_batches", type=int, default=50)
  parser.add_argument("--data_dir", default=None, help="TFDS data_dir for digits.")
  args = parser.parse_args()
  cores = os.cpu_count()

  with tempfile.TemporaryDirectory() as tmp:
    folder = pathlib.Path(tmp)
    write_jpeg_folder(folder, args.num_images)
    # Warm-up of one epoch, so the cache holds every file before timing.
    result = throughput.pipeline_throughput(
        imagenet_recipe_config(folder), args.batch_size, args.num_batches,
        warmup=-(-args.num_images // args.batch_size))
  print(f"ImageNet recipe (224 px, RandAugment 2x9, MixUp+CutMix), {args.num_images} JPEGs: "
        f"{result.images_per_s:.0f} images/s on {cores} cores = "
        f"{result.images_per_s / cores:.0f} images/s per core")

  config = data.default_config()
  config.data_dir = args.data_dir
  digits = throughput.pipeline_throughput(config, args.digits_batch_size,
                                          args.digits_num_batches)
  required = throughput.REQUIRED_HEADROOM
  print(f"digits default ({config.train_px} px, batch {args.digits_batch_size}): "
        f"{digits.batches_per_s:.1f} batches/s = {digits.images_per_s:.0f} images/s; "
        f"feeds a training step of >= {required / digits.batches_per_s * 1e3:.0f} ms "
        f"with {required:g}x headroom")


if __name__ == "__main__":
  main()
