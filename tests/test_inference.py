"""Inference on weights standardised once, against the release's and timm's logits."""
import importlib.util
import pathlib

import jax
import numpy as np
import pytest

from nfnets_jax import models
from nfnets_jax.models import inference
from nfnets_jax.pretrained import released
from nfnets_jax.pretrained import timm

DATA = pathlib.Path(__file__).parent / "data"
RELEASE = DATA / "release_models"  # Made by the release's own code (make_fixture.py).
# A small F0 that dill 0.3.3 wrote as the authors' files are (test_released.py).
RELEASED_FILE = DATA / "released" / "f0_small_FlatMapping.dill"
RELEASED_F0 = dict(variant="F0", stage_widths=(16, 16, 16, 16), group_width=8)
SMALL_F0 = dict(variant="F0", stage_widths=(256, 32, 32, 32), group_width=8)
# timm 1.0.31's small networks (tests/data/timm/make_fixture.py) and our overrides.
TIMM_SMALL = {
    "dm_nfnet_f0": dict(SMALL_F0, **timm.TIMM_ARCHS["dm_nfnet_f0"].timm_numerics),
    "eca_nfnet_l0": dict(stage_widths=(256, 32, 48, 64), group_width=8),
    "nf_regnet_b1": dict(stage_widths=(16, 24, 32, 48)),
    "nf_resnet50": dict(width=1, stage_widths=(32, 32, 64, 64)),
}


def _standardized_logits(net, params, images):
  def logits(p, x):
    weights = inference.standardized_params(net, p, {}, x)
    return inference.apply_standardized(net, weights, {}, x)["logits"]
  return np.asarray(jax.jit(logits)(params, images))


def _assert_close(logits, expected):
  np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


@pytest.fixture(scope="module")
def released_f0():
  return models.transform("NFNet", 10, **RELEASED_F0), released.load_official_checkpoint(
      RELEASED_FILE, **RELEASED_F0)


def test_the_releases_nfregnet_logits():
  spec = importlib.util.spec_from_file_location("release_fixture", RELEASE / "make_fixture.py")
  fixture = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(fixture)  # Defines functions only; the release is not imported.
  net, shapes, _, _ = models.abstract_init("NFRegNet", fixture.NUM_CLASSES,
                                           variant="B0", width=0.25)
  params = fixture.random_params(
      {m: {n: list(a.shape) for n, a in v.items()} for m, v in shapes.items()})
  _assert_close(_standardized_logits(net, params, fixture.input_images()),
                np.load(RELEASE / "release_logits.npz")["NF-RegNet-B0"])


@pytest.mark.parametrize("arch", sorted(TIMM_SMALL))
def test_timms_logits(arch):
  kwargs = TIMM_SMALL[arch]
  model = "NFNet" if arch == "dm_nfnet_f0" else arch
  params = timm.load_timm_checkpoint(DATA / "timm" / f"{arch}_small.safetensors", arch, **kwargs)
  images = np.random.default_rng(5).standard_normal((2, 3, 35, 35)).astype(np.float32)
  net = models.transform(model, 10, **kwargs)
  _assert_close(_standardized_logits(net, params, images.transpose(0, 2, 3, 1)),
                np.load(DATA / "timm" / f"{arch}_small_logits.npy"))


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
