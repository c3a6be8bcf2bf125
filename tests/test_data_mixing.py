"""MixUp / CutMix: ratios, pasted areas and targets, checked against NumPy."""
import numpy as np
import pytest
from scipy import stats
import tensorflow as tf

from nfnets_jax.data import mixing

SEED = tf.constant([3, 4], tf.int64)


def _constant_batch(n, height=12, width=10, num_classes=5):
  """Example i is filled with the value i + 1 and labelled i % num_classes."""
  values = np.arange(1, n + 1, dtype=np.float32)
  images = np.broadcast_to(values[:, None, None, None], (n, height, width, 3)).copy()
  targets = np.eye(num_classes, dtype=np.float32)[np.arange(n) % num_classes]
  return images, targets


def test_mixup_blends_each_example_with_its_mirror():
  images, targets = _constant_batch(9)
  out_images, out_targets, ratio = (t.numpy() for t in mixing.mixup(images, targets, 0.2, SEED))
  assert np.all((ratio >= 0.5) & (ratio <= 1.0))
  r = ratio[:, None, None, None]
  np.testing.assert_allclose(out_images, r * images + (1 - r) * images[::-1], rtol=1e-6)
  np.testing.assert_allclose(out_targets, ratio[:, None] * targets
                             + (1 - ratio[:, None]) * targets[::-1], rtol=1e-6)
  np.testing.assert_allclose(out_targets.sum(-1), 1.0, rtol=1e-6)


def test_mixup_ratios_follow_the_folded_beta_distribution():
  n = 4000
  images = np.zeros((n, 1, 1, 1), np.float32)
  targets = np.ones((n, 1), np.float32)
  ratio = mixing.mixup(images, targets, 0.2, SEED)[2].numpy()
  beta = stats.beta(0.2, 0.2)
  # P(max(r, 1 - r) <= x) for r ~ Beta(0.2, 0.2). Compared below 0.999 only:
  # float32 rounds a few % of this heavy-tailed mass to exactly 1.
  x = np.linspace(0.5, 0.999, 60)
  empirical = (ratio[:, None] <= x).mean(0)
  # Dvoretzky-Kiefer-Wolfowitz bound on the CDF error, failure rate 1e-3.
  assert np.max(np.abs(empirical - (beta.cdf(x) - beta.cdf(1 - x)))) < np.sqrt(np.log(2e3) / (2 * n))


def test_cutmix_ratio_is_the_area_kept_and_the_box_comes_from_the_mirror():
  n, height, width = 16, 12, 10
  images, targets = _constant_batch(n, height, width)
  out_images, out_targets, ratio = (t.numpy() for t in mixing.cutmix(images, targets, 1.0, SEED))
  assert np.all((ratio >= 0) & (ratio <= 1))
  assert 0 < ratio.min() < ratio.max() < 1  # boxes of different, non-trivial sizes
  for i in range(n):
    own, partner = i + 1, n - i
    pasted = out_images[i, :, :, 0] == partner
    assert np.all(out_images[i][~pasted] == own)
    np.testing.assert_allclose(1 - pasted.mean(), ratio[i], atol=1e-6)
    if pasted.any():  # the pasted region is one axis-aligned rectangle
      rows, cols = np.nonzero(pasted)
      assert pasted.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
  np.testing.assert_allclose(out_targets, ratio[:, None] * targets
                             + (1 - ratio[:, None]) * targets[::-1], rtol=1e-6)
  np.testing.assert_allclose(out_targets.sum(-1), 1.0, rtol=1e-6)


def test_half_policy_mixes_up_the_first_half_and_cuts_the_second():
  n = 12
  images, targets = _constant_batch(n)
  out_images, out_targets = (t.numpy() for t in mixing.mix_batch(
      images, targets, policy="half", mixup_alpha=0.2, cutmix_alpha=1.0, seed=SEED))
  first, second = out_images[:n // 2], out_images[n // 2:]
  # MixUp of constant images stays constant, a blend of the pair's values.
  for i, image in enumerate(first):
    value = image.flat[0]
    assert np.all(image == value)
    low, high = sorted((i + 1, n // 2 - i))
    assert low <= value <= high
  # CutMix only moves pixels within the second half.
  assert set(np.unique(second)) <= set(range(n // 2 + 1, n + 1))
  np.testing.assert_allclose(out_targets.sum(-1), 1.0, rtol=1e-6)


def test_none_policy_is_identity_and_unknown_policy_is_refused():
  images, targets = _constant_batch(4)
  out_images, out_targets = mixing.mix_batch(images, targets, policy="none", mixup_alpha=0.2,
                                             cutmix_alpha=1.0, seed=SEED)
  np.testing.assert_array_equal(out_images, images)
  np.testing.assert_array_equal(out_targets, targets)
  with pytest.raises(ValueError, match="mix_policy"):
    mixing.mix_batch(images, targets, policy="both", mixup_alpha=0.2, cutmix_alpha=1.0, seed=SEED)
