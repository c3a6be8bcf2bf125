"""Models: parameter trees, counts, MACs and outputs (signal propagation: test_signal_propagation.py)."""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nfnets_jax
from nfnets_jax import models
from nfnets_jax.models import counting, layers
from nfnets_jax.models.nfnet import variant_spec

REFERENCE = json.loads(
    (pathlib.Path(__file__).parent / "data" / "official_param_shapes.json").read_text())

# NFNETS.md: parameters (1000 classes) and GMACs at the test resolution.
PAPER_TABLE = {
    "F0": (71_489_284, 12.38), "F1": (132_634_256, 35.54), "F2": (193_779_228, 62.59),
    "F3": (254_924_200, 114.76), "F4": (316_069_172, 215.24), "F5": (377_214_144, 289.76),
    "F6": (438_359_116, 377.28), "F7": (499_504_088, 478.78),
}
TINY_NFNET = dict(variant="F0", stage_depths=(1, 1, 1, 1),
                  stage_widths=(32, 64, 96, 128), group_width=16)


def _shapes(params):
  return {m: {n: list(a.shape) for n, a in v.items()} for m, v in params.items()}


@pytest.mark.parametrize("key,name", [("F0", "NFNet"), ("NF-ResNet50", "NFResNet")])
def test_param_tree_equals_release(key, name):
  _, params, state, _ = models.abstract_init(name, 1000)
  assert _shapes(params) == REFERENCE[key]
  assert not state


@pytest.mark.parametrize("variant", sorted(PAPER_TABLE))
def test_params_and_macs_equal_paper(variant):
  params_expected, gmacs_expected = PAPER_TABLE[variant]
  net, params, state, image = models.abstract_init(
      "NFNet", 1000, variant_spec(variant)["test_px"], variant=variant)
  assert nfnets_jax.count_params(params) == params_expected
  macs = counting.count_macs(
      lambda p, s, x: net.apply(p, s, None, x, is_training=False), params, state, image)
  assert round(macs / 1e9, 2) == gmacs_expected


def test_plus_variant_and_nfresnet_counts():
  assert counting.model_param_count("NFNet", variant="F0+") == pytest.approx(118.82e6, abs=5e3)
  assert counting.model_macs("NFNet", 256, variant="F0+") / 1e9 == pytest.approx(19.52, abs=5e-3)
  assert counting.model_param_count("NFResNet") == 25_557_048


def test_mac_counter_matches_hand_count():
  def fn(x, w_conv, w_fc):
    y = layers.conv2d(x, w_conv, stride=2, groups=2, impl="split")
    return jnp.mean(y, axis=(1, 2)) @ w_fc
  args = (jax.ShapeDtypeStruct((3, 8, 8, 4), jnp.float32),
          jax.ShapeDtypeStruct((3, 3, 2, 6), jnp.float32),
          jax.ShapeDtypeStruct((6, 5), jnp.float32))
  # Output 3x4x4x6, each from 3*3*2 inputs; then 3x5 outputs from 6 inputs.
  assert counting.count_macs(fn, *args) == 3 * 4 * 4 * 6 * 18 + 3 * 5 * 6


@pytest.mark.parametrize("name,kwargs", [
    ("NFNet", TINY_NFNET),
    ("NFResNet", dict(width=0.25, stage_depths=(1, 1, 1, 1), use_se=True)),
    ("ResNet", dict(width=0.25, stage_depths=(1, 1, 1, 1))),
])
def test_forward_outputs(name, kwargs):
  net = models.transform(name, 7, **kwargs)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 33, 33, 3))
  params, state = jax.jit(net.init, static_argnums=2)(jax.random.PRNGKey(1), x, True)
  apply = jax.jit(net.apply, static_argnums=(4, 5))
  out, new_state = apply(params, state, jax.random.PRNGKey(2), x, True, True)
  assert out["logits"].shape == (2, 7) and out["pool"].ndim == 2
  num_blocks = 4
  for i in range(num_blocks):
    assert f"res_avg_var_{i}" in out and f"avg_var_{i + 1}" in out
  assert "avg_sq_mean_0" in out
  assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree_util.tree_leaves(out))
  eval_out, _ = apply(params, new_state, None, x, False, False)
  assert set(eval_out) == {"logits", "pool"}
  if name == "ResNet":  # BatchNorm statistics move in training mode only.
    assert jax.tree_util.tree_leaves(state)
    assert not all(np.array_equal(a, b) for a, b in zip(
        jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(new_state)))


def test_nf_models_are_identity_residual_at_init():
  # skip_gain starts at 0, so each block returns its shortcut: for a block
  # without projection, output == input.
  net = models.transform("NFNet", 3, **dict(TINY_NFNET, stage_depths=(2, 1, 1, 1)))
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  params, state = jax.jit(net.init, static_argnums=2)(jax.random.PRNGKey(1), x, False)
  out, _ = jax.jit(net.apply, static_argnums=(4, 5))(params, state, None, x, False, True)
  assert out["avg_var_2"] == pytest.approx(float(out["avg_var_1"]), rel=1e-6)


def test_unknown_variants_and_models_are_named():
  with pytest.raises(ValueError, match="Unknown NFNet variant 'F9'.*F0"):
    models.abstract_init("NFNet", 10, variant="F9")
  with pytest.raises(ValueError, match="Unknown ResNet variant 'ResNet18'.*ResNet50"):
    models.abstract_init("NFResNet", 10, variant="ResNet18")
  with pytest.raises(ValueError, match="Unknown model 'VGG'.*NFNet"):
    models.create_model("VGG", 10)
