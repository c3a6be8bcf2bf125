"""Image ops: decoding, inception crop, RandAugment, evaluation crop, normalisation.

Training runs in two stages: `train_image` per example (decode, crop, resize,
flip) and `train_batch` per batch (RandAugment, normalisation), since
RandAugment is several times cheaper per image on a batch. Images enter as
encoded bytes (tf.string) or uint8 [H, W, 3]; all randomness is stateless,
keyed by a shape-[2] int64 seed.
"""
from nfnets_jax.data.randaugment import randaugment
from nfnets_jax.data.tensorflow_setup import tf

# ImageNet channel statistics on the 0..255 scale (NFNETS.md).
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# Inception-style crop: aspect ratios of the sampled box.
CROP_ASPECT_RANGE = (3 / 4, 4 / 3)
CROP_MAX_ATTEMPTS = 10


def decode(image: tf.Tensor) -> tf.Tensor:
  """Encoded bytes (JPEG, PNG, BMP, GIF) or uint8 HWC -> uint8 [H, W, 3]."""
  if image.dtype != tf.string:
    return image
  return tf.io.decode_image(image, channels=3, expand_animations=False)


def _sample_crop_window(image_shape: tf.Tensor, seed: tf.Tensor,
                        min_area: float) -> tf.Tensor:
  """[y, x, h, w] of a random box covering min_area..100% of the image.

  Falls back to the whole image when no box fits in CROP_MAX_ATTEMPTS.
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
      min_object_covered=min_area, aspect_ratio_range=CROP_ASPECT_RANGE,
      area_range=(min_area, 1.0), max_attempts=CROP_MAX_ATTEMPTS,
      use_image_if_no_bounding_boxes=True)
  return tf.stack([begin[0], begin[1], size[0], size[1]])


def decode_and_inception_crop(image: tf.Tensor, seed: tf.Tensor,
                              min_area: float) -> tf.Tensor:
  """Random crop of min_area..100% of the image with aspect ratio 3/4..4/3.

  A JPEG is decoded only inside the crop window (much cheaper for ImageNet).
  """
  def crop_decoded(pixels):
    y, x, h, w = tf.unstack(_sample_crop_window(tf.shape(pixels), seed, min_area))
    return pixels[y:y + h, x:x + w]

  if image.dtype != tf.string:
    return crop_decoded(image)

  def crop_jpeg():
    window = _sample_crop_window(tf.image.extract_jpeg_shape(image), seed, min_area)
    return tf.image.decode_and_crop_jpeg(image, window, channels=3)

  return tf.cond(tf.io.is_jpeg(image), crop_jpeg, lambda: crop_decoded(decode(image)))


def resize(image: tf.Tensor, size: int) -> tf.Tensor:
  """Bicubic resize to [size, size], float32 clipped to the 0..255 range."""
  image = tf.image.resize(image, [size, size], method="bicubic")
  return tf.clip_by_value(image, 0.0, 255.0)


def normalize(image: tf.Tensor) -> tf.Tensor:
  """0..255 RGB -> zero mean, unit std per channel (ImageNet statistics)."""
  return (tf.cast(image, tf.float32) - MEAN_RGB) / STDDEV_RGB


def train_image(image: tf.Tensor, seed: tf.Tensor, *, image_size: int,
                min_crop_area: float, random_flip: bool) -> tf.Tensor:
  """Inception crop, bicubic resize and flip of one example -> uint8 [size, size, 3].

  Rounded to uint8 because RandAugment (in `train_batch`) works on uint8
  pixels; it also makes batches 4x smaller to move between stages.
  """
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = resize(decode_and_inception_crop(image, crop_seed, min_crop_area), image_size)
  if random_flip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  return tf.cast(tf.round(image), tf.uint8)


def train_batch(images: tf.Tensor, seed: tf.Tensor, *, randaugment_layers: int,
                randaugment_magnitude: float) -> tf.Tensor:
  """RandAugment (each image its own draws) and normalisation of a uint8 batch."""
  if randaugment_layers:
    images = randaugment(images, randaugment_layers, randaugment_magnitude, seed)
  return normalize(images)


def eval_image(image: tf.Tensor, *, image_size: int, resize_pad: int) -> tf.Tensor:
  """Resize to (image_size + resize_pad) square, centre-crop, normalise."""
  image = resize(decode(image), image_size + resize_pad)
  offset = resize_pad // 2
  image = image[offset:offset + image_size, offset:offset + image_size]
  return normalize(image)
