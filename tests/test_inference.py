"""Inference on weights standardised once: the weights it computes, what it refuses.

Its logits against the release's and timm's: test_model_family.py.
"""
import pathlib

import jax
import numpy as np
import pytest

from nfnets_jax import models
from nfnets_jax.models import inference
from nfnets_jax.pretrained import released

DATA = pathlib.Path(__file__).parent / "data"
# A small F0 that dill 0.3.3 wrote as the authors' files are (test_released.py).
RELEASED_FILE = DATA / "released" / "f0_small_FlatMapping.dill"
RELEASED_F0 = dict(variant="F0", stage_widths=(16, 16, 16, 16), group_width=8)


@pytest.fixture(scope="module")
def released_f0():
  return models.transform("NFNet", 10, **RELEASED_F0), released.load_official_checkpoint(
      RELEASED_FILE, **RELEASED_F0)


def test_weights_are_the_standardisation_formula(released_f0):
  net, params = released_f0
  images = np.zeros((1, 33, 33, 3), np.float32)
  weights = jax.jit(inference.standardized_params, static_argnums=0)(net, params, {}, images)
  assert set(weights) == set(params)
  name = "NFNet/~/nf_block_1/~/conv1"  # A grouped 3x3 conv.
  w = np.asarray(params[name]["w"], np.float64)
  flat = w.reshape(-1, w.shape[-1])
  # The release: gain * (W - mean) / sqrt(max(N * var, 1e-4)) per output channel.
  expected = (params[name]["gain"] * (flat - flat.mean(0))
              / np.sqrt(np.maximum(flat.shape[0] * flat.var(0), 1e-4)))
  np.testing.assert_allclose(weights[name]["w"], expected.reshape(w.shape), rtol=1e-5, atol=1e-7)
  assert set(weights[name]) == {"w", "bias"}  # The gain is in w now.
  np.testing.assert_array_equal(weights[name]["bias"], params[name]["bias"])
  linear = "NFNet/~/linear"  # Not a standardised conv: passed through.
  jax.tree.map(np.testing.assert_array_equal, weights[linear], params[linear])
  # The plain forward cannot take them by mistake and standardise twice.
  with pytest.raises(ValueError, match="gain"):
    net.apply(weights, {}, None, images, is_training=False)


def test_batchnorm_resnet_is_unchanged():
  net = models.transform("ResNet", 7, width=0.25, stage_depths=(1, 1, 1, 1))
  images = np.random.default_rng(0).standard_normal((2, 33, 33, 3)).astype(np.float32)
  params, state = net.init(jax.random.PRNGKey(1), images, is_training=True)
  weights = inference.standardized_params(net, params, state, images)
  assert weights == params
  np.testing.assert_array_equal(
      inference.apply_standardized(net, weights, state, images)["logits"],
      net.apply(params, state, None, images, is_training=False)[0]["logits"])
