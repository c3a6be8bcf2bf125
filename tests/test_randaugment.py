"""RandAugment: every operation against an independent expectation.

References: point-motion formulas, NumPy formulas, PIL (ImageOps, ImageEnhance,
Image.rotate) and scipy.ndimage's bilinear resampler.
"""
import collections

import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from nfnets_jax.data import randaugment as ra

# Odd and non-square: the centre (16, 15) is a pixel, and a row/column mix-up
# shows.
H, W = 31, 33
CX, CY = (W - 1) / 2, (H - 1) / 2
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
ENHANCEMENTS = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
                "Brightness": ImageEnhance.Brightness,
                "Sharpness": ImageEnhance.Sharpness}


def _noise(seed: int = 0, low: int = 0, high: int = 256,
           shape: tuple[int, ...] = (H, W, 3)) -> np.ndarray:
  return np.random.default_rng(seed).integers(low, high, shape, dtype=np.uint8)


def _marked(x: int, y: int) -> np.ndarray:
  """Black image with one white pixel at column x, row y."""
  image = np.zeros((H, W, 3), np.uint8)
  image[y, x] = 255
  return image


def _white_pixels(image: tf.Tensor) -> list[tuple[int, int]]:
  """(x, y) of the pure white pixels."""
  rows, cols = np.nonzero(np.all(np.asarray(image) == 255, axis=-1))
  return list(zip(cols.tolist(), rows.tolist()))


def _max_diff(a, b) -> int:
  return int(np.abs(np.asarray(a, np.int64) - np.asarray(b, np.int64)).max())


# Geometric operations.


@pytest.mark.parametrize("degrees", [90, -90, 180])
def test_rotate_moves_marked_pixel_counter_clockwise(degrees):
  x, y = 20, 9
  # As a complex number with the imaginary axis pointing up, a counter-
  # clockwise rotation is a multiplication by exp(i theta).
  moved = complex(x - CX, CY - y) * np.exp(1j * np.deg2rad(degrees))
  expected = (round(CX + moved.real), round(CY - moved.imag))
  assert _white_pixels(ra.rotate(_marked(x, y), degrees)) == [expected]


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotate_matches_pil_at_right_angles(degrees):
  image = _noise()
  expected = Image.fromarray(image).rotate(degrees, fillcolor=(ra.FILL_VALUE,) * 3)
  np.testing.assert_array_equal(ra.rotate(image, degrees), expected)


@pytest.mark.parametrize("op, argument, x, y, expected", [
    # shear_x: x + level * (y - cy) with y - cy = 10.
    (ra.shear_x, 0.4, 10, 25, (14, 25)),
    (ra.shear_x, -0.4, 10, 25, (6, 25)),
    # shear_y: y + level * (x - cx) with x - cx = 10.
    (ra.shear_y, -0.3, 26, 12, (26, 9)),
    (ra.translate_x, 5, 10, 12, (15, 12)),
    (ra.translate_x, -7, 10, 12, (3, 12)),
    (ra.translate_y, 4, 10, 12, (10, 16)),
    (ra.translate_y, -12, 10, 12, (10, 0)),
])
def test_shear_and_translate_move_marked_pixel(op, argument, x, y, expected):
  assert _white_pixels(op(_marked(x, y), argument)) == [expected]


def _scipy_motion(image: np.ndarray, forward: np.ndarray,
                  shift=(0., 0.)) -> np.ndarray:
  """Bilinear resampling moving pixel p to c + forward (p - c) + shift.

  Coordinates are (row, column) and c is the image centre; pixels from outside
  the image are grey and interpolated with inner ones ('grid-constant').
  """
  centre = np.array([CY, CX])
  inverse = np.linalg.inv(forward)
  offset = centre - inverse @ (centre + np.asarray(shift))
  return np.stack([
      scipy.ndimage.affine_transform(
          image[..., c].astype(np.float64), inverse, offset=offset, order=1,
          mode="grid-constant", cval=ra.FILL_VALUE)
      for c in range(3)], axis=-1)


def _rotation(degrees: float) -> np.ndarray:
  """Counter-clockwise as displayed, acting on (row, column) offsets."""
  t = np.deg2rad(degrees)
  return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


@pytest.mark.parametrize("op, argument, forward, shift", [
    (ra.rotate, 30., _rotation(30.), (0., 0.)),
    (ra.rotate, -47., _rotation(-47.), (0., 0.)),
    (ra.shear_x, 0.37, np.array([[1., 0.], [0.37, 1.]]), (0., 0.)),
    (ra.shear_y, -0.2, np.array([[1., -0.2], [0., 1.]]), (0., 0.)),
    (ra.translate_x, 2.5, np.eye(2), (0., 2.5)),
    (ra.translate_y, -3.25, np.eye(2), (-3.25, 0.)),
])
def test_geometric_ops_match_scipy_bilinear_resampling(op, argument, forward,
                                                       shift):
  image = _noise()
  expected = _scipy_motion(image, forward, shift)
  # We round to integers (error <= 0.5); float32 coordinates add a little.
  np.testing.assert_allclose(op(image, argument), expected, rtol=0, atol=0.52)


def test_geometric_fill_is_grey():
  black = np.zeros((H, W, 3), np.uint8)
  moved_right = ra.translate_x(black, 5).numpy()
  assert np.all(moved_right[:, :5] == ra.FILL_VALUE)
  assert np.all(moved_right[:, 5:] == 0)
  moved_up = ra.translate_y(black, -4).numpy()
  assert np.all(moved_up[-4:] == ra.FILL_VALUE) and np.all(moved_up[:-4] == 0)


@pytest.mark.parametrize("name", GEOMETRIC)
@pytest.mark.parametrize("sign", [1., -1.])
def test_geometric_ops_leave_uniform_grey_image_unchanged(name, sign):
  grey = np.full((H, W, 3), ra.FILL_VALUE, np.uint8)
  out = ra.apply_operation(ra.OPERATIONS[name], grey, 20., sign)
  np.testing.assert_array_equal(out, grey)


@pytest.mark.parametrize(
    "name", [n for n, op in ra.OPERATIONS.items() if op.level_to_arg])
@pytest.mark.parametrize("sign", [1., -1.])
def test_magnitude_zero_is_identity(name, sign):
  image = _noise()
  out = ra.apply_operation(ra.OPERATIONS[name], image, 0., sign)
  np.testing.assert_array_equal(out, image)


@pytest.mark.parametrize("name", list(ra.OPERATIONS))
def test_only_geometric_ops_move_pixels(name):
  """Pixel-value ops commute with flips (no pixel moves); geometric ones don't."""
  image = _noise()
  op = ra.OPERATIONS[name]
  commutes = all(
      np.array_equal(ra.apply_operation(op, flip(image), 10., 1.),
                     flip(ra.apply_operation(op, image, 10., 1.).numpy()))
      for flip in (np.fliplr, np.flipud))
  assert commutes == (name not in GEOMETRIC)


# Pixel-value operations.


def test_invert_matches_numpy_and_pil():
  image = _noise()
  np.testing.assert_array_equal(ra.invert(image), 255 - image.astype(int))
  np.testing.assert_array_equal(ra.invert(image),
                                ImageOps.invert(Image.fromarray(image)))


@pytest.mark.parametrize("threshold", [0, 1, 100, 128, 255, 256])
def test_solarize_matches_numpy_and_pil(threshold):
  image = _noise()
  expected = np.where(image >= threshold, 255 - image.astype(int), image)
  np.testing.assert_array_equal(ra.solarize(image, threshold), expected)
  np.testing.assert_array_equal(
      ra.solarize(image, threshold),
      ImageOps.solarize(Image.fromarray(image), threshold))


@pytest.mark.parametrize("bits", range(1, 9))
def test_posterize_matches_numpy_and_pil(bits):
  image = _noise()
  expected = (image >> (8 - bits)) << (8 - bits)
  np.testing.assert_array_equal(ra.posterize(image, bits), expected)
  np.testing.assert_array_equal(ra.posterize(image, bits),
                                ImageOps.posterize(Image.fromarray(image), bits))


@pytest.mark.parametrize("addition", [0, 30, 110, 255])
def test_solarize_add_matches_numpy(addition):
  image = _noise().astype(int)
  expected = np.where(image < 128, np.minimum(image + addition, 255), image)
  np.testing.assert_array_equal(ra.solarize_add(image.astype(np.uint8),
                                                addition), expected)


def _with_constant_channel(image: np.ndarray) -> np.ndarray:
  image = image.copy()
  image[..., 1] = 77
  return image


@pytest.mark.parametrize("image", [
    _noise(), _noise(1, 40, 120), _with_constant_channel(_noise(2, 10, 60))])
def test_equalize_matches_pil(image):
  np.testing.assert_array_equal(ra.equalize(image),
                                ImageOps.equalize(Image.fromarray(image)))


@pytest.mark.parametrize("image", [
    _noise(1, 40, 120), _with_constant_channel(_noise(2, 10, 60))])
def test_autocontrast_matches_pil(image):
  out = ra.autocontrast(image).numpy()
  # PIL truncates the stretched values, we round them: at most 1 apart.
  assert _max_diff(out, ImageOps.autocontrast(Image.fromarray(image))) <= 1
  stretched = [c for c in range(3) if np.ptp(image[..., c]) > 0]
  assert np.all(out[..., stretched].min(axis=(0, 1)) == 0)
  assert np.all(out[..., stretched].max(axis=(0, 1)) == 255)


@pytest.mark.parametrize("name", list(ENHANCEMENTS))
@pytest.mark.parametrize("factor", [0., 0.3, 1.7, 2.5])
def test_enhancements_match_pil(name, factor):
  image = _noise()
  out = ra.OPERATIONS[name].fn(image, factor)
  expected = ENHANCEMENTS[name](Image.fromarray(image)).enhance(factor)
  # PIL truncates blended values, we round them: at most 1 apart.
  assert _max_diff(out, expected) <= 1


@pytest.mark.parametrize("name", list(ENHANCEMENTS))
def test_enhancement_factor_one_is_identity(name):
  image = _noise()
  np.testing.assert_array_equal(ra.OPERATIONS[name].fn(image, 1.), image)


# Magnitude mapping (the table in the module docstring).


@pytest.mark.parametrize("name, magnitude, sign, expected", [
    ("Rotate", 15., -1., -45.),
    ("ShearX", 5., 1., 0.15),
    ("TranslateX", 10., 1., 0.45 * W),
    ("TranslateY", 10., -1., -0.45 * H),
    ("Color", 5., -1., 0.55),
    ("Brightness", 15., -1., 0.),
    ("Sharpness", 10., 1., 1.9),
    ("Posterize", 5., 1., 6),
    ("Posterize", 15., 1., 2),
    ("Posterize", 30., 1., 1),
    ("Solarize", 5., 1., 128),
    ("Solarize", 15., 1., 0),
    ("SolarizeAdd", 10., 1., 110),
])
def test_magnitude_mapping(name, magnitude, sign, expected):
  argument = ra.OPERATIONS[name].level_to_arg(
      tf.constant(magnitude), tf.constant(sign), tf.zeros((H, W, 3), tf.uint8))
  np.testing.assert_allclose(argument, expected, rtol=1e-6)


# RandAugment.


def test_zero_layers_is_identity():
  image = _noise()
  np.testing.assert_array_equal(ra.randaugment(image, 0, 15., [3, 4]), image)


def test_same_seed_same_output_and_different_seeds_differ():
  image = _noise()
  outputs = [ra.randaugment(image, 4, 10., seed).numpy()
             for seed in ([0, 0], [0, 1], [1, 0], [0, 0])]
  np.testing.assert_array_equal(outputs[0], outputs[3])
  for i in range(3):
    for j in range(i):
      assert not np.array_equal(outputs[i], outputs[j])


def test_each_image_of_a_batch_gets_one_operation_drawn_uniformly():
  # Distinct images, so an image put back in another's slot would show.
  images = np.stack([_noise(i) for i in range(300)])
  magnitude = 7.  # Where no two operations coincide on these images.
  candidates = {(name, sign): ra.apply_operation(op, images, magnitude, sign).numpy()
                for name, op in ra.OPERATIONS.items() for sign in (1., -1.)}
  out = ra.randaugment(images, 1, magnitude, [5, 6]).numpy()
  counts = collections.Counter()
  seen_signs = collections.defaultdict(set)
  for i in range(len(images)):
    matches = [key for key, c in candidates.items() if np.array_equal(out[i], c[i])]
    names = {name for name, _ in matches}
    assert len(names) == 1, f"image {i}: output matches {matches}"
    counts[names.pop()] += 1
    if len(matches) == 1:  # Distinct outputs per sign: a signed operation.
      seen_signs[matches[0][0]].add(matches[0][1])
  expected = len(images) / len(ra.OPERATIONS)
  assert set(counts) == set(ra.OPERATIONS)
  assert max(counts.values()) < 2 * expected and min(counts.values()) > expected / 2
  # The geometric and enhancement operations draw both signs.
  assert set(seen_signs) == set(GEOMETRIC) | set(ENHANCEMENTS)
  assert all(signs == {1., -1.} for signs in seen_signs.values())


def test_single_image_is_a_batch_of_one():
  image = _noise()
  np.testing.assert_array_equal(ra.randaugment(image, 3, 10., [2, 9]),
                                ra.randaugment(image[None], 3, 10., [2, 9])[0])


@pytest.mark.parametrize("name", list(ra.OPERATIONS))
def test_batched_operation_equals_one_call_per_image(name):
  images = np.stack([_noise(i) for i in range(4)])
  signs = np.array([1., -1., -1., 1.], np.float32)
  op = ra.OPERATIONS[name]
  batched = ra.apply_operation(op, images, 7., signs)
  for image, sign, out in zip(images, signs, batched):
    np.testing.assert_array_equal(out, ra.apply_operation(op, image, 7., sign))
  empty = ra.apply_operation(op, images[:0], 7., signs[:0])
  assert empty.shape == (0, H, W, 3) and empty.dtype == tf.uint8


def test_operation_arguments_can_differ_per_image():
  images = np.stack([_marked(20, int(CY))] * 2)  # Right of the centre.
  out = ra.rotate(images, tf.constant([90., -90.]))
  assert _white_pixels(out[0]) == [(int(CX), int(CY) - 4)]  # Moved above.
  assert _white_pixels(out[1]) == [(int(CX), int(CY) + 4)]  # Moved below.


def test_works_inside_tf_data_map_and_matches_eager():
  images = np.stack([_noise(i, shape=(32, 32, 3)) for i in range(6)])
  seeds = np.array([[7, i] for i in range(6)], np.int64)
  dataset = tf.data.Dataset.from_tensor_slices((images, seeds)).map(
      lambda image, seed: ra.randaugment(image, 2, 10., seed)).batch(6)
  assert dataset.element_spec == tf.TensorSpec([None, 32, 32, 3], tf.uint8)
  batch = next(iter(dataset)).numpy()
  for image, seed, out in zip(images, seeds, batch):
    np.testing.assert_array_equal(out, ra.randaugment(image, 2, 10., seed))
  batched = tf.data.Dataset.from_tensors(images).map(
      lambda batch: ra.randaugment(batch, 2, 10., [7, 0]))
  assert batched.element_spec == tf.TensorSpec([6, 32, 32, 3], tf.uint8)
  np.testing.assert_array_equal(next(iter(batched)),
                                ra.randaugment(images, 2, 10., [7, 0]))


@pytest.mark.parametrize("image, message", [
    (np.zeros((8, 8, 3), np.float32), "uint8"),
    (np.zeros((8, 8), np.uint8), "one HWC image or an NHWC batch"),
    (np.zeros((8, 8, 1), np.uint8), "3 channels"),
])
def test_bad_image_is_rejected(image, message):
  with pytest.raises(ValueError, match=message):
    ra.randaugment(image, 2, 10., [0, 0])


@pytest.mark.parametrize("num_layers, magnitude, message", [
    (-1, 10., "num_layers"), (2.0, 10., "num_layers"),
    (2, 31., "magnitude"), (2, -1., "magnitude")])
def test_bad_settings_are_rejected(num_layers, magnitude, message):
  with pytest.raises(ValueError, match=message):
    ra.randaugment(np.zeros((8, 8, 3), np.uint8), num_layers, magnitude, [0, 0])
