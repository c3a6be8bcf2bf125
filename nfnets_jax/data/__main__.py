"""Builds the offline digits dataset: python -m nfnets_jax.data [--data_dir D] [--image_size N]."""
import argparse

from nfnets_jax.data import digits


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--data_dir", default=None,
                      help="TFDS data directory (default: TFDS's, ~/tensorflow_datasets).")
  parser.add_argument("--image_size", type=int, default=32,
                      help="side the 8x8 digits are upscaled to")
  args = parser.parse_args()
  builder = digits.prepared_builder(args.data_dir, args.image_size)
  print(f"digits ready in {builder.data_dir}")


if __name__ == "__main__":
  main()
