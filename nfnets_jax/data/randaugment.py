"""RandAugment (Cubuk et al., 2020) as TensorFlow ops for a tf.data pipeline.

`randaugment(image, num_layers, magnitude, seed)` applies `num_layers`
operations to an image, or to each image of a batch, each drawn uniformly from
`OPERATIONS`, at one shared magnitude. All randomness is stateless (derived
from `seed`), so an example's augmentation is reproducible. Every operation
is also public. Each takes one HWC uint8 RGB image or an NHWC batch of them,
and returns the same shape; an operation's argument is one value, or one per
image ([N]) for a batch.

Batches are the fast path: `randaugment` groups a batch by drawn operation
and runs each operation once per group, so the fixed cost of an operation
(large next to the work on a small image) is shared by the whole batch.

Magnitude scale (0 to 30). The NFNet recipe uses 5, 10 and 15. Arguments grow
linearly with the magnitude m and reach AutoAugment's largest settings at
m = 10; beyond that they keep growing (clipped where the operation saturates),
matching how the authors' TPU RandAugment treated levels above 10.

  operation      argument at magnitude m                     random sign
  Rotate         3 m degrees                                 yes
  ShearX/Y       shear factor 0.03 m                         yes
  TranslateX/Y   0.045 m * image width/height pixels         yes
  Color, Contrast, Brightness, Sharpness
                 factor max(1 + s * 0.09 m, 0), s = +-1       yes
  Posterize      keep 8 - floor(0.4 m) bits, at least 1      no
  Solarize       invert pixels >= 256 (1 - m / 10), >= 0     no
  SolarizeAdd    add min(round(11 m), 255) to pixels < 128   no
  AutoContrast, Equalize, Invert: no argument.

At m = 0 every operation with an argument is the identity. Posterize and
Solarize are oriented so that a larger magnitude is a stronger distortion.

Geometric conventions: x is the column, y the row (pointing down), pixel
centres sit at integer coordinates and the image centre is ((W-1)/2, (H-1)/2),
which is PIL's centre too. Resampling is bilinear (smoother than nearest for
non-integer motions, exact for integer ones); pixels that come from outside the
image take `FILL_VALUE` (mid grey) in every channel.
"""
import math
from typing import Callable, NamedTuple, Optional, Sequence, Union

import numpy as np

from nfnets_jax.data.tensorflow_setup import tf

ImageLike = Union[tf.Tensor, np.ndarray]
Scalar = Union[int, float, tf.Tensor]
Seed = Union[tf.Tensor, np.ndarray, Sequence[int]]  # Shape [2], integer.

# Grey for pixels that geometric operations pull in from outside the image.
FILL_VALUE = 128
MAX_MAGNITUDE = 30.
# Magnitude at which arguments reach AutoAugment's largest settings.
_REFERENCE_MAGNITUDE = 10.
# Arguments at the reference magnitude.
_REFERENCE_DEGREES = 30.
_REFERENCE_SHEAR = 0.3
_REFERENCE_TRANSLATE = 0.45  # Fraction of the image side (150 of 331 px).
_REFERENCE_FACTOR_CHANGE = 0.9  # Enhancement factors span 0.1 to 1.9.
_REFERENCE_BITS_REMOVED = 4
_REFERENCE_SOLARIZE_ADD = 110
SOLARIZE_ADD_THRESHOLD = 128
# ITU-R 601 luma weights, the ones PIL uses for RGB -> L.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# PIL's ImageFilter.SMOOTH, the blurred image ImageEnhance.Sharpness blends with.
_SMOOTH_KERNEL = ((1., 1., 1.), (1., 5., 1.), (1., 1., 1.))


def _as_image(image: ImageLike) -> tf.Tensor:
  """Converts to a tensor and checks it is one HWC or a batch NHWC of uint8 RGB."""
  image = tf.convert_to_tensor(image)
  if (image.dtype != tf.uint8 or image.shape.rank not in (3, 4)
      or image.shape[-1] != 3):
    raise ValueError(
        "RandAugment operations take one HWC image or an NHWC batch, uint8 "
        f"with 3 channels; got dtype {image.dtype.name} and shape {image.shape}. "
        "Apply them before converting to float.")
  return image


def _per_image(value: Scalar, image: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
  """A scalar or per-image [N] argument, shaped to broadcast against `image`."""
  return tf.reshape(tf.cast(value, dtype), [-1] + [1] * (image.shape.rank - 1))


def _on_batch(fn: Callable[[tf.Tensor], tf.Tensor], image: tf.Tensor) -> tf.Tensor:
  """Applies an NHWC -> NHWC `fn` to one HWC image or to a batch."""
  if image.shape.rank == 4:
    return fn(image)
  return fn(image[None])[0]


def _to_uint8(x: tf.Tensor) -> tf.Tensor:
  """Rounds float pixel values to uint8, saturating at 0 and 255."""
  return tf.cast(tf.clip_by_value(tf.round(x), 0., 255.), tf.uint8)


# Geometric operations.


def _centre(image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """The (x, y) coordinates of the image centre."""
  size = tf.cast(tf.shape(image)[-3:-1], tf.float32)
  return (size[1] - 1.) / 2., (size[0] - 1.) / 2.


def _resample(image: tf.Tensor, inverse_map: list[Scalar]) -> tf.Tensor:
  """Output pixel (x, y) reads the input at affine `inverse_map` of (x, y).

  `inverse_map` is [a0, a1, a2, b0, b1, b2]: the input is read at
  (a0 x + a1 y + a2, b0 x + b1 y + b2), i.e. the inverse of the motion applied
  to the content, which is what ImageProjectiveTransformV3 expects. Each
  coefficient is a scalar or has one value per image of a batch.
  """
  def transform(images):
    per_image = [tf.broadcast_to(tf.cast(c, tf.float32), tf.shape(images)[:1])
                 for c in inverse_map]
    zeros = tf.zeros_like(per_image[0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32),
        transforms=tf.stack(per_image + [zeros, zeros], axis=1),  # Affine.
        output_shape=tf.shape(images)[1:3],
        fill_value=float(FILL_VALUE),
        interpolation="BILINEAR",
        fill_mode="CONSTANT")
    return _to_uint8(out)
  return tf.ensure_shape(_on_batch(transform, image), image.shape)


def rotate(image: ImageLike, degrees: Scalar) -> tf.Tensor:
  """Rotates the content `degrees` counter-clockwise about the centre.

  Counter-clockwise as displayed (y pointing down), like PIL's Image.rotate:
  at 90 degrees a pixel right of the centre moves above it.
  """
  image = _as_image(image)
  theta = tf.cast(degrees, tf.float32) * (math.pi / 180.)
  cos, sin = tf.cos(theta), tf.sin(theta)
  cx, cy = _centre(image)
  # Read each output pixel from the input rotated back by -theta.
  return _resample(image, [cos, -sin, cx - cos * cx + sin * cy,
                           sin, cos, cy - sin * cx - cos * cy])


def shear_x(image: ImageLike, level: Scalar) -> tf.Tensor:
  """Moves the pixel at (x, y) to (x + level * (y - cy), y).

  Shearing about the centre row (rather than the top row, as PIL-based
  versions do) keeps strong shears from pushing the content off one side.
  """
  image = _as_image(image)
  _, cy = _centre(image)
  return _resample(image, [1., -level, level * cy, 0., 1., 0.])


def shear_y(image: ImageLike, level: Scalar) -> tf.Tensor:
  """Moves the pixel at (x, y) to (x, y + level * (x - cx))."""
  image = _as_image(image)
  cx, _ = _centre(image)
  return _resample(image, [1., 0., 0., -level, 1., level * cx])


def translate_x(image: ImageLike, pixels: Scalar) -> tf.Tensor:
  """Moves the content `pixels` to the right (left if negative)."""
  image = _as_image(image)
  return _resample(image, [1., 0., -pixels, 0., 1., 0.])


def translate_y(image: ImageLike, pixels: Scalar) -> tf.Tensor:
  """Moves the content `pixels` down (up if negative)."""
  image = _as_image(image)
  return _resample(image, [1., 0., 0., 0., 1., -pixels])


# Pixel-value operations (each output pixel depends on its own input pixel and
# on image-wide statistics only).


def invert(image: ImageLike) -> tf.Tensor:
  """Maps every value v to 255 - v."""
  return tf.constant(255, tf.uint8) - _as_image(image)


def solarize(image: ImageLike, threshold: Scalar) -> tf.Tensor:
  """Inverts the values >= `threshold` (256 leaves the image unchanged)."""
  image = _as_image(image)
  return tf.where(tf.cast(image, tf.int32) >= _per_image(threshold, image, tf.int32),
                  tf.constant(255, tf.uint8) - image, image)


def solarize_add(image: ImageLike, addition: Scalar,
                 threshold: Scalar = SOLARIZE_ADD_THRESHOLD) -> tf.Tensor:
  """Adds `addition` (saturating at 255) to the values below `threshold`."""
  image = _as_image(image)
  values = tf.cast(image, tf.int32)
  raised = tf.clip_by_value(values + _per_image(addition, image, tf.int32), 0, 255)
  out = tf.where(values < _per_image(threshold, image, tf.int32), raised, values)
  return tf.cast(out, tf.uint8)


def posterize(image: ImageLike, bits: Scalar) -> tf.Tensor:
  """Keeps the `bits` most significant bits of every value (0 to 8)."""
  image = _as_image(image)
  # A mask, not a shift: shifting a uint8 by 8 bits is undefined in TF.
  dropped = 8 - _per_image(bits, image, tf.int32)
  mask = 256 - tf.bitwise.left_shift(tf.ones_like(dropped), dropped)
  return tf.cast(tf.bitwise.bitwise_and(tf.cast(image, tf.int32), mask),
                 tf.uint8)


def autocontrast(image: ImageLike) -> tf.Tensor:
  """Stretches each channel linearly so its minimum is 0 and maximum 255.

  Like PIL.ImageOps.autocontrast; a constant channel is left unchanged.
  Values are rounded where PIL truncates, so results can differ by 1.
  """
  image = _as_image(image)
  values = tf.cast(image, tf.float32)
  low = tf.reduce_min(values, axis=(-3, -2), keepdims=True)
  high = tf.reduce_max(values, axis=(-3, -2), keepdims=True)
  stretched = _to_uint8((values - low) * (255. / tf.maximum(high - low, 1.)))
  return tf.where(high > low, stretched, image)


def equalize(image: ImageLike) -> tf.Tensor:
  """Equalises each channel's histogram with PIL.ImageOps.equalize's table.

  The count of the brightest value is left out of the spread, and a channel
  with too few distinct pixels to fill 255 levels is left unchanged.
  """
  image = _as_image(image)
  shape = tf.shape(image)
  num_pixels = shape[-3] * shape[-2]
  # One row of values per channel of each image: [N * 3, H * W].
  pixels = tf.reshape(tf.cast(image, tf.int32), [-1, num_pixels, 3])
  channels = tf.reshape(tf.transpose(pixels, [0, 2, 1]), [-1, num_pixels])
  histogram = tf.math.bincount(channels, minlength=256, maxlength=256, axis=-1)
  brightest_count = tf.gather(histogram, tf.reduce_max(channels, axis=1),
                              batch_dims=1)
  step = (num_pixels - brightest_count)[:, None] // 255
  # Each value maps to the (rounded) number of steps of pixels below it.
  below = tf.cumsum(histogram, axis=1, exclusive=True)
  table = tf.minimum((below + step // 2) // tf.maximum(step, 1), 255)
  table = tf.where(step > 0, table, tf.range(256)[None])
  equalised = tf.reshape(tf.gather(table, channels, batch_dims=1), [-1, 3, num_pixels])
  out = tf.reshape(tf.cast(tf.transpose(equalised, [0, 2, 1]), tf.uint8), shape)
  return tf.ensure_shape(out, image.shape)


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: Scalar) -> tf.Tensor:
  """PIL.ImageEnhance's rule: degenerate + factor * (image - degenerate).

  Factor 0 gives the degenerate image, 1 the input; beyond 1 extrapolates.
  """
  degenerate = tf.cast(degenerate, tf.float32)
  change = tf.cast(image, tf.float32) - degenerate
  return _to_uint8(degenerate + _per_image(factor, image, tf.float32) * change)


def _luma(image: tf.Tensor) -> tf.Tensor:
  """The greyscale image [..., H, W, 1], rounded to integers as in PIL's "L"."""
  weights = tf.constant(_LUMA_WEIGHTS, tf.float32)
  return tf.round(tf.reduce_sum(tf.cast(image, tf.float32) * weights, axis=-1,
                                keepdims=True))


def color(image: ImageLike, factor: Scalar) -> tf.Tensor:
  """Blends with the greyscale image: 0 is grey, 1 the input, 2 more saturated."""
  image = _as_image(image)
  return _blend(_luma(image), image, factor)


def contrast(image: ImageLike, factor: Scalar) -> tf.Tensor:
  """Blends with a uniform image of the mean grey level (PIL's Contrast)."""
  image = _as_image(image)
  mean = tf.reduce_mean(_luma(image), axis=(-3, -2, -1), keepdims=True)
  return _blend(tf.round(mean), image, factor)


def brightness(image: ImageLike, factor: Scalar) -> tf.Tensor:
  """Blends with black, i.e. scales every value by `factor`."""
  image = _as_image(image)
  return _blend(tf.zeros([]), image, factor)


def _smoothed(image: tf.Tensor) -> tf.Tensor:
  """PIL's SMOOTH filter, rounded; the 1-pixel border keeps its values as in PIL."""
  kernel = tf.constant(_SMOOTH_KERNEL) / np.sum(_SMOOTH_KERNEL)
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])

  def smooth(images):
    values = tf.cast(images, tf.float32)
    # "SAME" keeps the shape even for an empty batch ("VALID" would not);
    # the border it computes from zero padding is replaced below.
    smoothed = tf.nn.depthwise_conv2d(values, kernel, [1, 1, 1, 1], "SAME")
    inner_shape = tf.shape(images)[1:3] - 2
    is_inner = tf.pad(tf.ones(inner_shape, tf.bool), [[1, 1], [1, 1]])[:, :, None]
    return tf.where(is_inner, tf.round(smoothed), values)
  return _on_batch(smooth, image)


def sharpness(image: ImageLike, factor: Scalar) -> tf.Tensor:
  """Blends with a blurred copy: 0 blurs, 1 is the input, 2 sharpens."""
  image = _as_image(image)
  return _blend(_smoothed(image), image, factor)


# RandAugment.

LevelToArg = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]


class Operation(NamedTuple):
  """One RandAugment operation and how the magnitude sets its argument.

  `level_to_arg(magnitude, sign, image)` gives the argument of `fn` (None for
  operations without one); `sign` is +1 or -1, drawn per layer, and only the
  operations marked in the module docstring use it.
  """
  fn: Callable[..., tf.Tensor]
  level_to_arg: Optional[LevelToArg] = None


def _fraction(magnitude: tf.Tensor) -> tf.Tensor:
  """Magnitude relative to the reference (AutoAugment's maxima)."""
  return magnitude / _REFERENCE_MAGNITUDE


def _signed(reference: float) -> LevelToArg:
  """Argument `sign * reference * magnitude / 10`."""
  return lambda magnitude, sign, _: sign * reference * _fraction(magnitude)


def _translation(axis: int) -> LevelToArg:
  """Pixels proportional to the image side along `axis` (-3 rows, -2 columns)."""
  def level_to_arg(magnitude, sign, image):
    side = tf.cast(tf.shape(image)[axis], tf.float32)
    return sign * _REFERENCE_TRANSLATE * _fraction(magnitude) * side
  return level_to_arg


def _enhancement(magnitude, sign, _):
  """Factor 1 +- 0.09 m; negative factors would invert, so floor at 0."""
  change = _REFERENCE_FACTOR_CHANGE * _fraction(magnitude)
  return tf.maximum(1. + sign * change, 0.)


def _posterize_bits(magnitude, unused_sign, unused_image):
  removed = tf.floor(_REFERENCE_BITS_REMOVED * _fraction(magnitude))
  return tf.clip_by_value(8 - tf.cast(removed, tf.int32), 1, 8)


def _solarize_threshold(magnitude, unused_sign, unused_image):
  return tf.cast(tf.maximum(256. * (1. - _fraction(magnitude)), 0.), tf.int32)


def _solarize_addition(magnitude, unused_sign, unused_image):
  addition = tf.round(_REFERENCE_SOLARIZE_ADD * _fraction(magnitude))
  return tf.cast(tf.minimum(addition, 255.), tf.int32)


OPERATIONS: dict[str, Operation] = {
    "AutoContrast": Operation(autocontrast),
    "Equalize": Operation(equalize),
    "Invert": Operation(invert),
    "Rotate": Operation(rotate, _signed(_REFERENCE_DEGREES)),
    "Posterize": Operation(posterize, _posterize_bits),
    "Solarize": Operation(solarize, _solarize_threshold),
    "SolarizeAdd": Operation(solarize_add, _solarize_addition),
    "Color": Operation(color, _enhancement),
    "Contrast": Operation(contrast, _enhancement),
    "Brightness": Operation(brightness, _enhancement),
    "Sharpness": Operation(sharpness, _enhancement),
    "ShearX": Operation(shear_x, _signed(_REFERENCE_SHEAR)),
    "ShearY": Operation(shear_y, _signed(_REFERENCE_SHEAR)),
    "TranslateX": Operation(translate_x, _translation(-2)),
    "TranslateY": Operation(translate_y, _translation(-3)),
}


def apply_operation(operation: Operation, image: ImageLike, magnitude: Scalar,
                    sign: Scalar = 1.) -> tf.Tensor:
  """Applies `operation` at `magnitude` with the given sign (+1 or -1).

  For a batch, `sign` may hold one sign per image ([N]).
  """
  image = _as_image(image)
  if operation.level_to_arg is None:
    return operation.fn(image)
  argument = operation.level_to_arg(tf.cast(magnitude, tf.float32),
                                    tf.cast(sign, tf.float32), image)
  return operation.fn(image, argument)


def _check_settings(num_layers: int, magnitude: Scalar) -> None:
  if not isinstance(num_layers, (int, np.integer)) or num_layers < 0:
    raise ValueError(
        f"num_layers must be a non-negative Python int, got {num_layers!r}; "
        "the NFNet recipe uses 4 (0 disables RandAugment).")
  if (isinstance(magnitude, (int, float, np.number))
      and not 0 <= magnitude <= MAX_MAGNITUDE):
    raise ValueError(
        f"magnitude must lie in [0, {MAX_MAGNITUDE:g}] (RandAugment's scale), "
        f"got {magnitude!r}; the NFNet recipe uses 5, 10 or 15.")


def randaugment(image: ImageLike, num_layers: int, magnitude: Scalar,
                seed: Seed) -> tf.Tensor:
  """Applies `num_layers` operations, drawn uniformly from `OPERATIONS`, to each image.

  Usable inside `tf.data.Dataset.map` (graph mode). Every image of a batch
  draws its own operation and sign per layer (stateless ops); each layer
  partitions the batch by operation and runs each operation once, on its
  group only.

  Args:
    image: one HWC uint8 RGB image, or an NHWC batch (faster per image).
    num_layers: operations applied in sequence (repeats allowed); 0 returns
      the input unchanged.
    magnitude: strength in [0, 30] shared by all layers and images (module
      docstring).
    seed: shape [2] integer tensor; the same seed gives the same output.

  Returns:
    The augmented uint8 image or batch, same shape as `image`.

  References:
    Cubuk et al., "RandAugment: Practical automated data augmentation with a
    reduced search space", CVPR Workshops 2020.
  """
  _check_settings(num_layers, magnitude)
  image = _as_image(image)
  if image.shape.rank == 3:
    return randaugment(image[None], num_layers, magnitude, seed)[0]
  magnitude = tf.cast(magnitude, tf.float32)
  operations = list(OPERATIONS.values())
  batch_shape = tf.shape(image)[:1]
  for layer in range(num_layers):
    layer_seed = tf.random.experimental.stateless_fold_in(seed, layer)
    choice_seed, sign_seed = tf.unstack(
        tf.random.experimental.stateless_split(layer_seed, 2))
    choice = tf.random.stateless_uniform(
        batch_shape, choice_seed, maxval=len(operations), dtype=tf.int32)
    sign = tf.where(tf.random.stateless_uniform(batch_shape, sign_seed) < 0.5, -1., 1.)
    groups = tf.dynamic_partition(tf.range(batch_shape[0]), choice, len(operations))
    outputs = [apply_operation(op, tf.gather(image, group), magnitude, tf.gather(sign, group))
               for op, group in zip(operations, groups)]
    image = tf.ensure_shape(tf.dynamic_stitch(groups, outputs), image.shape)
  return image
