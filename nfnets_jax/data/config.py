"""The `config.data` section: every field of the input pipeline, documented."""
import ml_collections

from nfnets_jax.models import nfnet

# Names handled by this package; any other name is looked up in TFDS.
BUILTIN_DATASETS = ("digits", "fake", "image_folder")
MIX_POLICIES = ("half", "mixup", "cutmix", "none")


def _unset_path() -> ml_collections.FieldReference:
  """None, typed str so the command line can set it (--config.data.data_dir=...)."""
  return ml_collections.config_dict.placeholder(str)


def default_config() -> ml_collections.ConfigDict:
  """The data config of the default experiment: offline digits at 32 px.

  The augmentation recipe is the paper's (inception crop, RandAugment, MixUp
  and CutMix) with strengths suited to 32 px digits; `imagenet_config` gives
  the paper's ImageNet values.

  Returns:
    A ConfigDict with these fields:
      name: 'digits' (offline, built from scikit-learn's handwritten digits),
        'fake' (random images, for benchmarks), 'image_folder' (your own
        images, see `image_folder.path`) or any TFDS name ('imagenet2012',
        'cifar10', ...), read from `data_dir`.
      data_dir: TFDS data directory; None means TFDS's default
        ($TFDS_DATA_DIR or ~/tensorflow_datasets). 'digits' is built there on
        first use.
      train_split / eval_split: split names (TFDS slicing such as
        'train[:90%]' works for TFDS datasets; for 'image_folder' they are
        sub-directory names).
      image_key / label_key: feature names of a TFDS dataset.
      train_px: side of the square training crops.
      test_px: side of the square evaluation crops.
      eval_resize_pad: evaluation resizes to (test_px + eval_resize_pad) square
        then centre-crops test_px (the paper: 32; 0 keeps the whole image).
      min_crop_area: smallest area fraction of the inception-style random crop
        (the paper: 0.08; 1.0 disables cropping).
      random_flip: random horizontal flips in training.
      randaugment.num_layers / randaugment.magnitude: RandAugment strength
        (0 layers turns it off; the paper uses 4 layers, magnitude 5-15).
      mix_policy: 'half' (the authors' combination: in every per-device batch
        the first half gets MixUp and the second half CutMix), 'mixup',
        'cutmix' or 'none'. Mixing pairs each example with its mirror in its
        half (index n-1-i).
      mixup_alpha: MixUp ratios come from Beta(alpha, alpha), folded to
        max(r, 1 - r) so an example's own label stays dominant (paper: 0.2).
      cutmix_alpha: CutMix ratios come from Beta(alpha, alpha) (1.0: uniform).
      shuffle_buffer: examples in the training shuffle buffer (reshuffled
        every epoch).
      cache: in training, keep this process's encoded examples in host
        memory after the first epoch (for datasets that fit: digits, CIFAR;
        not ImageNet).
      image_folder.path: root of an image folder laid out as
        `path/<split>/<class>/*.jpg` (also .jpeg, .png, .bmp, .gif).
      digits.image_size: side the 8x8 digits are upscaled to when built.
      fake.num_classes / fake.image_size / fake.num_train / fake.num_test:
        shape and size of the random 'fake' dataset.
  """
  return ml_collections.ConfigDict(dict(
      name="digits",
      data_dir=_unset_path(),
      train_split="train",
      eval_split="test",
      image_key="image",
      label_key="label",
      train_px=32,
      test_px=32,
      eval_resize_pad=0,
      min_crop_area=0.35,
      random_flip=False,  # a mirrored digit is another symbol
      randaugment=dict(num_layers=2, magnitude=5),
      mix_policy="half",
      mixup_alpha=0.2,
      cutmix_alpha=1.0,
      shuffle_buffer=10_000,
      cache=True,
      image_folder=dict(path=_unset_path()),
      digits=dict(image_size=32),
      fake=dict(num_classes=1000, image_size=256, num_train=1_281_167,
                num_test=50_000),
  ))


def imagenet_config(variant: str = "F0") -> ml_collections.ConfigDict:
  """The paper's ImageNet data recipe for an NFNet variant ('F0'...'F7+').

  Args:
    variant: NFNet variant whose train/test resolution and RandAugment levels
      to use (`nfnets_jax.models.NFNET_VARIANTS`).

  Returns:
    `default_config()` with name 'imagenet2012', the paper's crop, flip,
    evaluation resize and mixing, and the variant's resolutions.
  """
  spec = nfnet.variant_spec(variant)
  config = default_config()
  config.name = "imagenet2012"
  config.eval_split = "validation"
  config.train_px = spec["train_px"]
  config.test_px = spec["test_px"]
  config.eval_resize_pad = 32
  config.min_crop_area = 0.08
  config.random_flip = True
  config.randaugment.num_layers, config.randaugment.magnitude = spec["randaugment"]
  config.cache = False  # ~150 GB of JPEGs
  return config
