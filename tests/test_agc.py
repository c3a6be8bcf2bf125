"""Adaptive Gradient Clipping against optax's own AGC and a NumPy loop."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nfnets_jax import agc

CLIPPING = 0.05
EPS = 1e-3

# One leaf per layout AGC knows; 'vec_like' is a [1, C] linear, a vector once
# squeezed; 'tiny' has units whose parameter norm is below eps. Shapes repeat,
# as in a network (AGC reduces small leaves of one shape together), and the
# 'wide' pair is above the size it stacks.
SHAPES = {
    "conv": {"w": (3, 3, 4, 8), "gain": (8,), "bias": (8,)},
    "conv2": {"w": (3, 3, 4, 8), "gain": (8,), "bias": (8,)},
    "linear": {"w": (16, 10), "b": (10,)},
    "mha": {"w": (6, 3, 5)},
    "block": {"skip_gain": ()},
    "block2": {"skip_gain": ()},
    "vec_like": {"w": (1, 7)},
    "tiny": {"w": (5, 4)},
    "wide": {"w": (260, 256)},
    "wide2": {"w": (260, 256)},
}


def _unit_shape(shape):
  """Shape of the per-unit norm array, by the rule stated in NFNETS.md."""
  if sum(d != 1 for d in shape) <= 1:
    return (1,) * len(shape)
  if len(shape) in (2, 3):
    return (1,) + tuple(shape[1:])
  return (1, 1, 1, shape[3])


def _random_tree(seed, dtype=np.float32):
  """Params and grads whose per-unit norm ratios straddle CLIPPING."""
  rng = np.random.default_rng(seed)
  params, grads = {}, {}
  for module, leaves in SHAPES.items():
    params[module], grads[module] = {}, {}
    for name, shape in leaves.items():
      p = rng.normal(size=shape)
      if module == "tiny":
        p *= 1e-5
      if name == "skip_gain":
        p = np.zeros(shape)
      # Per-unit scale over 4 decades around the clipping threshold.
      unit_scale = CLIPPING * 10 ** rng.uniform(-2, 2, size=_unit_shape(shape))
      g = rng.normal(size=shape) * unit_scale * max(np.linalg.norm(p), 1e-2)
      g = g / np.sqrt(max(np.prod(shape) / np.prod(_unit_shape(shape)), 1))
      params[module][name] = np.asarray(p, dtype)
      grads[module][name] = np.asarray(g, dtype)
  return params, grads


def _brute_force(params, grads, clipping=CLIPPING, eps=EPS):
  """Loops over every unit explicitly, in float64."""
  out, clipped, total = {}, 0, 0
  for module in params:
    out[module] = {}
    for name, p in params[module].items():
      p, g = np.float64(p), np.array(grads[module][name], np.float64)
      shape = p.shape
      if sum(d != 1 for d in shape) <= 1:
        units = [tuple(slice(None) for _ in shape)]
      elif len(shape) == 2:
        units = [(slice(None), o) for o in range(shape[1])]
      elif len(shape) == 3:
        units = [(slice(None), j, k)
                 for j, k in itertools.product(range(shape[1]),
                                               range(shape[2]))]
      else:
        units = [(slice(None),) * 3 + (o,) for o in range(shape[3])]
      new = g.copy()
      for unit in units:
        p_norm = np.sqrt(np.sum(p[unit] ** 2))
        g_norm = np.sqrt(np.sum(g[unit] ** 2))
        max_norm = clipping * max(p_norm, eps)
        total += 1
        if g_norm > max_norm:
          clipped += 1
          new[unit] = g[unit] * max_norm / g_norm
      out[module][name] = new
  return out, clipped / total


def _assert_trees_close(actual, expected, rtol=1e-6, atol=0.0):
  jax.tree.map(
      lambda a, e: np.testing.assert_allclose(np.asarray(a, np.float64),
                                              np.asarray(e, np.float64),
                                              rtol=rtol, atol=atol),
      actual, expected)


def _apply(transform, grads, params):
  # Under jit: one compilation instead of one per eager op (faster tests).
  return jax.jit(lambda g, p: transform.update(g, transform.init(p), p))(
      grads, params)


def test_random_tree_has_clipped_and_unclipped_units():
  params, grads = _random_tree(0)
  _, fraction = _brute_force(params, grads)
  assert 0.2 < fraction < 0.8


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_optax_adaptive_grad_clip(seed):
  params, grads = _random_tree(seed)
  ours, _ = _apply(agc.adaptive_grad_clip(CLIPPING, EPS), grads, params)
  # optax reduces rank-3 leaves over axes (0, 1, 2) by default; the authors'
  # rule (multi-head linear) reduces over axis 0 only, which optax's `axis`
  # argument reproduces.
  rank3 = lambda tree: {"mha": tree["mha"]}
  others = lambda tree: {k: v for k, v in tree.items() if k != "mha"}
  expected, _ = _apply(optax.adaptive_grad_clip(CLIPPING, EPS), others(grads),
                       others(params))
  expected_mha, _ = _apply(optax.adaptive_grad_clip(CLIPPING, EPS, axis=0),
                           rank3(grads), rank3(params))
  expected.update(expected_mha)
  _assert_trees_close(ours, expected, rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_loop_over_units(seed):
  params, grads = _random_tree(seed)
  ours, state = _apply(agc.adaptive_grad_clip(CLIPPING, EPS), grads, params)
  expected, fraction = _brute_force(params, grads)
  _assert_trees_close(ours, expected, rtol=1e-5)
  np.testing.assert_allclose(state.clipped_fraction, fraction, rtol=1e-6)
  np.testing.assert_allclose(agc.clipped_fraction(state), fraction, rtol=1e-6)


@pytest.mark.parametrize("unitwise", [True, False])
def test_global_norm_equals_optax(unitwise):
  rng = np.random.default_rng(3)
  tree = {"conv": rng.normal(size=(3, 3, 4, 5)), "w": rng.normal(size=(6, 7)),
          "b": rng.normal(size=(7,)), "b2": rng.normal(size=(7,)),
          "s": np.float32(2.0), "s2": np.float32(-1.5),
          "conv3d": rng.normal(size=(2, 3, 3, 4, 5)),  # No AGC units: reduced whole.
          "conv3d_b": rng.normal(size=(2, 3, 3, 4, 5))}
  tree = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
  expected = np.sqrt(sum(np.sum(np.float64(x) ** 2) for x in jax.tree.leaves(tree)))
  norm = jax.jit(lambda t: agc.global_norm(t, unitwise=unitwise))(tree)
  np.testing.assert_allclose(norm, expected, rtol=1e-6)
  np.testing.assert_allclose(norm, optax.global_norm(tree), rtol=1e-6)


def _reductions(fn, *args):
  """How many reduce_sum operations `fn` traces to."""
  jaxpr = jax.make_jaxpr(fn)(*args)
  return sum(eqn.primitive.name == "reduce_sum" for eqn in jaxpr.eqns)


def test_small_leaves_of_one_shape_are_reduced_together():
  # 40 biases, 10 scalars and 3 conv kernels: 3 shapes, so 3 reductions per
  # tree (gradients, parameters) and one for the clipped count; one by one
  # it would be 53 per tree and one count per leaf.
  rng = np.random.default_rng(8)
  shapes = [(16,)] * 40 + [()] * 10 + [(3, 3, 4, 8)] * 3
  params = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in shapes]
  grads = [p * 0.1 for p in params]
  tx = agc.adaptive_grad_clip(CLIPPING, EPS)
  assert _reductions(lambda g, p: tx.update(g, tx.init(p), p), grads, params) == 7
  assert _reductions(agc.global_norm, grads) == 4  # Three shapes, then the total.
  # Above the size that is stacked, one reduction per leaf.
  wide = [jnp.ones(SHAPES["wide"]["w"])] * 3
  assert _reductions(lambda g: agc.global_norm(g, unitwise=False), wide) == 4


def test_gradients_through_agc_match_optax():
  params, grads = _random_tree(9)
  others = lambda tree: {k: v for k, v in tree.items() if k != "mha"}
  params, grads = others(params), others(grads)
  rng = np.random.default_rng(9)
  cotangent = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), grads)

  def loss(transform):
    def f(g, p):
      out, _ = transform.update(g, transform.init(p), p)
      return sum(jnp.sum(o * c) for o, c in zip(jax.tree.leaves(out),
                                               jax.tree.leaves(cotangent)))
    return jax.jit(jax.grad(f, argnums=(0, 1)))

  ours = loss(agc.adaptive_grad_clip(CLIPPING, EPS))(grads, params)
  expected = loss(optax.adaptive_grad_clip(CLIPPING, EPS))(grads, params)
  _assert_trees_close(ours, expected, rtol=1e-5, atol=1e-7)


def test_unitwise_norm_per_layout():
  rng = np.random.default_rng(3)
  conv = rng.normal(size=(3, 3, 4, 8)).astype(np.float32)
  np.testing.assert_allclose(
      agc.unitwise_norm(conv)[0, 0, 0],
      [np.linalg.norm(conv[..., o]) for o in range(8)], rtol=1e-6)
  linear = rng.normal(size=(16, 10)).astype(np.float32)
  np.testing.assert_allclose(agc.unitwise_norm(linear),
                             np.linalg.norm(linear, axis=0, keepdims=True),
                             rtol=1e-6)
  mha = rng.normal(size=(6, 3, 5)).astype(np.float32)
  assert agc.unitwise_norm(mha).shape == (1, 3, 5)
  np.testing.assert_allclose(agc.unitwise_norm(mha)[0, 2, 4],
                             np.linalg.norm(mha[:, 2, 4]), rtol=1e-6)
  # A 1x1 conv with one input channel squeezes to a vector: one unit.
  squeezable = rng.normal(size=(1, 1, 1, 6)).astype(np.float32)
  np.testing.assert_allclose(agc.unitwise_norm(squeezable).ravel(),
                             [np.linalg.norm(squeezable)], rtol=1e-6)
  np.testing.assert_allclose(agc.unitwise_norm(jnp.float32(-3.0)), 3.0)


def test_zero_initialised_parameters_are_not_frozen():
  params = {"skip_gain": jnp.zeros([]), "gain": jnp.zeros([4])}
  tx = agc.adaptive_grad_clip(CLIPPING, EPS)
  big = {"skip_gain": jnp.float32(-5.0), "gain": jnp.full([4], 2.0)}
  out, _ = _apply(tx, big, params)
  np.testing.assert_allclose(out["skip_gain"], -CLIPPING * EPS, rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(out["gain"]), CLIPPING * EPS,
                             rtol=1e-6)
  np.testing.assert_allclose(out["gain"], np.full(4, CLIPPING * EPS / 2),
                             rtol=1e-6)  # Direction kept.
  small = {"skip_gain": jnp.float32(1e-5), "gain": jnp.zeros([4])}
  out, _ = _apply(tx, small, params)
  assert float(out["skip_gain"]) == pytest.approx(1e-5)
  assert np.all(np.asarray(out["gain"]) == 0)


def test_in_chain_in_front_of_nesterov_sgd():
  params, grads = _random_tree(4)
  lr, momentum = 0.3, 0.9
  tx = optax.chain(agc.adaptive_grad_clip(CLIPPING, EPS),
                   optax.sgd(lr, momentum, nesterov=True))

  @jax.jit
  def apply_step(g, state, params):
    updates, state = tx.update(g, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  p_np = jax.tree.map(np.float64, params)
  buf = jax.tree.map(np.zeros_like, p_np)
  for step in range(3):
    g = jax.tree.map(lambda x: x * (1.0 + step), grads)
    params, state = apply_step(g, state, params)
    clipped, _ = _brute_force(p_np, g)
    buf = jax.tree.map(lambda b, c: momentum * b + c, buf, clipped)
    p_np = jax.tree.map(lambda p, c, b: p - lr * (c + momentum * b), p_np,
                        clipped, buf)
  _assert_trees_close(params, p_np, rtol=1e-5, atol=1e-7)


def test_inside_masked_and_clipped_fraction_helper():
  params, grads = _random_tree(5)
  grads["linear"]["w"] = grads["linear"]["w"] * 1e3  # Would clip if included.
  mask = jax.tree_util.tree_map_with_path(
      lambda path, _: agc.param_path(path) != "linear/w", params)
  tx = optax.chain(
      optax.masked(agc.adaptive_grad_clip(CLIPPING, EPS), mask),
      optax.inject_hyperparams(optax.sgd)(learning_rate=-1.0))
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  np.testing.assert_array_equal(updates["linear"]["w"], grads["linear"]["w"])
  without = lambda tree: {k: {n: v for n, v in d.items()
                              if (k, n) != ("linear", "w")}
                          for k, d in tree.items()}
  expected, fraction = _brute_force(without(params), without(grads))
  _assert_trees_close(without(updates), expected, rtol=1e-5)
  np.testing.assert_allclose(agc.clipped_fraction(state), fraction, rtol=1e-6)


def test_clipped_fraction_helper_without_or_with_two_agc():
  params, grads = _random_tree(0)
  assert agc.clipped_fraction(optax.sgd(0.1).init(params)) is None
  two = optax.chain(agc.adaptive_grad_clip(0.1), agc.adaptive_grad_clip(0.2))
  with pytest.raises(ValueError, match="2 adaptive_grad_clip states"):
    agc.clipped_fraction(two.init(params))


def test_eager_jit_and_inject_hyperparams():
  params, grads = _random_tree(6)
  tx = agc.adaptive_grad_clip(CLIPPING, EPS)
  eager, _ = tx.update(grads, tx.init(params), params)
  jitted, _ = _apply(tx, grads, params)
  _assert_trees_close(jitted, eager, rtol=1e-6)
  injected = optax.inject_hyperparams(agc.adaptive_grad_clip)(
      clipping=CLIPPING, eps=EPS)
  state = injected.init(params)
  out, _ = jax.jit(injected.update)(grads, state, params)
  _assert_trees_close(out, eager, rtol=1e-6)


def test_under_pmap():
  n = jax.local_device_count()
  trees = [_random_tree(10 + i) for i in range(n)]
  params = jax.tree.map(lambda *x: np.stack(x), *[t[0] for t in trees])
  grads = jax.tree.map(lambda *x: np.stack(x), *[t[1] for t in trees])
  tx = agc.adaptive_grad_clip(CLIPPING, EPS)
  out, state = jax.pmap(lambda g, p: tx.update(g, tx.init(p), p))(grads,
                                                                   params)
  for i, (p, g) in enumerate(trees):
    expected, fraction = _brute_force(p, g)
    _assert_trees_close(jax.tree.map(lambda x: x[i], out), expected, rtol=1e-5)
    np.testing.assert_allclose(state.clipped_fraction[i], fraction, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_norms_in_float32(dtype):
  params, grads = _random_tree(7)
  params_lp = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
  grads_lp = jax.tree.map(lambda x: jnp.asarray(x, dtype), grads)
  out, _ = _apply(agc.adaptive_grad_clip(CLIPPING, EPS), grads_lp, params_lp)
  assert all(x.dtype == dtype for x in jax.tree.leaves(out))
  # Reference: the rule on the exact (float64) values of the low-precision
  # inputs, rounded once to the output dtype.
  expected, _ = _brute_force(jax.tree.map(np.float64, params_lp),
                             jax.tree.map(np.float64, grads_lp))
  expected = jax.tree.map(lambda x: np.asarray(jnp.asarray(x, dtype)),
                          expected)
  _assert_trees_close(out, expected, rtol=1e-2)


def test_float16_norm_does_not_overflow():
  # Squares of 1000 overflow float16 (max 65504); float32 norms do not.
  params = {"w": jnp.full([4, 2], 100.0, jnp.float16)}
  grads = {"w": jnp.full([4, 2], 1000.0, jnp.float16)}
  out, state = _apply(agc.adaptive_grad_clip(1.0, EPS), grads, params)
  np.testing.assert_allclose(np.asarray(out["w"], np.float32), 100.0)
  assert float(state.clipped_fraction) == 1.0


def test_missing_params_is_an_error():
  params, grads = _random_tree(0)
  tx = agc.adaptive_grad_clip(CLIPPING)
  with pytest.raises(ValueError, match="needs the parameters"):
    tx.update(grads, tx.init(params))


@pytest.mark.parametrize("clipping, eps, match", [
    (0.0, 1e-3, "clipping must be > 0"),
    (-0.1, 1e-3, "clipping must be > 0"),
    (float("nan"), 1e-3, "clipping must be > 0"),
    (0.01, -1e-3, "eps must be >= 0"),
])
def test_bad_hyper_parameters_are_errors(clipping, eps, match):
  with pytest.raises(ValueError, match=match):
    agc.adaptive_grad_clip(clipping, eps)


def test_uninterpretable_rank_names_the_parameter():
  params = {"enc/~/conv3d": {"w": jnp.ones([2, 3, 3, 4, 5])}}
  tx = agc.adaptive_grad_clip(CLIPPING)
  with pytest.raises(ValueError, match=r"'enc/~/conv3d/w'.*rank 5.*Exclude"):
    tx.update(params, tx.init(params), params)
  with pytest.raises(ValueError, match="rank 5"):
    agc.unitwise_norm(params["enc/~/conv3d"]["w"])


def test_shape_mismatch_names_the_parameter():
  params = {"lin": {"w": jnp.ones([3, 4])}}
  tx = agc.adaptive_grad_clip(CLIPPING)
  with pytest.raises(ValueError, match="'lin/w'"):
    tx.update({"lin": {"w": jnp.ones([4, 3])}}, tx.init(params), params)
