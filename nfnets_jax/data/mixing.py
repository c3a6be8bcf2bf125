"""MixUp and CutMix on one batch, as stateless TensorFlow ops.

Each example i of a batch of n is paired with its mirror, example n-1-i (the
batch is already shuffled, so the pair is random); the middle example of an
odd batch pairs with itself and stays unchanged. Targets are mixed with the
same ratio as the pixels, so they remain probability vectors (sum to 1).
"""
from nfnets_jax.data import config as config_lib
from nfnets_jax.data.tensorflow_setup import tf


def _beta(shape, alpha: float, seed: tf.Tensor) -> tf.Tensor:
  """Stateless Beta(alpha, alpha) samples, via two Gamma(alpha) draws."""
  seed_a, seed_b = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  a = tf.random.stateless_gamma(shape, seed_a, alpha)
  b = tf.random.stateless_gamma(shape, seed_b, alpha)
  # Both draws underflow to 0 only with negligible probability; count it as 0.
  return tf.math.divide_no_nan(a, a + b)


def _blend(ratio, own, partner):
  """ratio * own + (1 - ratio) * partner, ratio broadcast over trailing axes."""
  ratio = tf.reshape(ratio, [-1] + [1] * (len(own.shape) - 1))
  return ratio * own + (1.0 - ratio) * partner


def mixup(images: tf.Tensor, targets: tf.Tensor, alpha: float,
          seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Blends every example with its mirror (Zhang et al., 2018).

  Args:
    images: float [n, H, W, C].
    targets: float [n, num_classes], rows summing to 1.
    alpha: the Beta(alpha, alpha) parameter of the ratios (> 0).
    seed: shape-[2] integer seed.

  Returns:
    (images, targets, ratio): ratio [n] is the weight of each example's own
    image and target, folded to max(r, 1 - r) so it lies in [0.5, 1].

  References:
    Zhang et al., "mixup: Beyond empirical risk minimization", ICLR 2018.
  """
  ratio = _beta(tf.shape(images)[:1], alpha, seed)
  ratio = tf.maximum(ratio, 1.0 - ratio)
  return (_blend(ratio, images, tf.reverse(images, [0])),
          _blend(ratio, targets, tf.reverse(targets, [0])), ratio)


def cutmix(images: tf.Tensor, targets: tf.Tensor, alpha: float,
           seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Pastes a box of each example's mirror into it (Yun et al., 2019).

  The box has sides sqrt(1 - r) times the image's, r ~ Beta(alpha, alpha), and
  a uniformly random centre; it is clipped to the image, and the targets use
  the area actually kept.

  Args:
    images: float [n, H, W, C].
    targets: float [n, num_classes], rows summing to 1.
    alpha: the Beta(alpha, alpha) parameter (> 0; 1.0 gives uniform ratios).
    seed: shape-[2] integer seed.

  Returns:
    (images, targets, ratio): ratio [n] in [0, 1] is the fraction of each
    image's own pixels kept (1 - the pasted area fraction), also the weight of
    its own target.

  References:
    Yun et al., "CutMix: Regularization strategy to train strong classifiers
    with localizable features", ICCV 2019.
  """
  n, height, width = tf.unstack(tf.shape(images)[:3])
  ratio_seed, y_seed, x_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  side = tf.sqrt(1.0 - _beta([n], alpha, ratio_seed))

  def box_span(seed_axis, length):
    """[n] begin and end of the box along one axis, and a [n, length] mask."""
    cut = tf.cast(tf.round(side * tf.cast(length, tf.float32)), tf.int32)
    centre = tf.random.stateless_uniform([n], seed_axis, maxval=length, dtype=tf.int32)
    begin = tf.clip_by_value(centre - cut // 2, 0, length)
    end = tf.clip_by_value(centre - cut // 2 + cut, 0, length)
    positions = tf.range(length)[None, :]
    return end - begin, (positions >= begin[:, None]) & (positions < end[:, None])

  box_h, rows = box_span(y_seed, height)
  box_w, cols = box_span(x_seed, width)
  in_box = (rows[:, :, None] & cols[:, None, :])[..., None]
  images = tf.where(in_box, tf.reverse(images, [0]), images)
  ratio = 1.0 - tf.cast(box_h * box_w, tf.float32) / tf.cast(height * width, tf.float32)
  return images, _blend(ratio, targets, tf.reverse(targets, [0])), ratio


def mix_batch(images: tf.Tensor, targets: tf.Tensor, *, policy: str,
              mixup_alpha: float, cutmix_alpha: float,
              seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Applies a mixing policy to one batch.

  Args:
    images: float [n, H, W, C].
    targets: float [n, num_classes] (one-hot).
    policy: 'half' (MixUp on the first n // 2 examples and CutMix on the
      rest, each within its half: the authors' combination), 'mixup',
      'cutmix' or 'none'.
    mixup_alpha, cutmix_alpha: Beta parameters of the two methods.
    seed: shape-[2] integer seed.

  Returns:
    (images, targets) of the same shapes.
  """
  if policy not in config_lib.MIX_POLICIES:
    raise ValueError(f"Unknown mix_policy {policy!r}; choose one of "
                     f"{list(config_lib.MIX_POLICIES)}.")
  mixup_seed, cutmix_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  if policy == "none":
    return images, targets
  if policy == "mixup":
    return mixup(images, targets, mixup_alpha, mixup_seed)[:2]
  if policy == "cutmix":
    return cutmix(images, targets, cutmix_alpha, cutmix_seed)[:2]
  half = tf.shape(images)[0] // 2
  mixed_images, mixed_targets, _ = mixup(images[:half], targets[:half], mixup_alpha, mixup_seed)
  cut_images, cut_targets, _ = cutmix(images[half:], targets[half:], cutmix_alpha, cutmix_seed)
  return (tf.concat([mixed_images, cut_images], 0),
          tf.concat([mixed_targets, cut_targets], 0))
