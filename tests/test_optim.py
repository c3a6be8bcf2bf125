"""The paper's optimizer, its schedule, masks, EMA and SAM, against formulas."""
import json
import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import nfnets_jax
from nfnets_jax import agc
from nfnets_jax import optim

SHAPES_JSON = "/work/shared/reference/official_param_shapes.json"
GAIN_AND_BIAS_NAMES = {"gain", "skip_gain", "bias", "b", "scale", "offset"}


def _paths(tree):
  return [agc.param_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _excluded(mask_fn, tree):
  mask = mask_fn(tree)
  return {path for path, keep in zip(_paths(tree), jax.tree.leaves(mask))
          if not keep}


# ----------------------------------------------------------------- config ---


def test_default_config_is_the_paper_recipe():
  config = optim.default_config()
  assert (config.name, config.momentum, config.nesterov) == ("sgd", 0.9, True)
  assert (config.weight_decay, config.clipping, config.clipping_eps) == (
      2e-5, 0.01, 1e-3)
  assert config.ema_decay == 0.99999
  assert config.sam.rho == 0.0
  # 0.1 per 256 examples at batch 4096 is the paper's 1.6.
  _, schedule = optim.build_optimizer(config, batch_size=4096,
                                      total_steps=360 * 312,
                                      steps_per_epoch=312)
  np.testing.assert_allclose(schedule(5 * 312), 1.6, rtol=1e-6)


# ------------------------------------------------------------------ masks ---


def _param_shapes(model=None, **kwargs):
  """A model's parameter tree as shapes (tracing only, no compilation)."""
  model = model or nfnets_jax.NFNet
  forward = hk.transform_with_state(
      lambda x, is_training: model(**kwargs)(x, is_training))
  params, _ = jax.eval_shape(
      lambda rng, x: forward.init(rng, x, is_training=True),
      jax.random.PRNGKey(0), jnp.zeros([1, 32, 32, 3]))
  return params


def _classifier_path(paths):
  """The top-level linear's weight (path of the authors' release)."""
  (path,) = [p for p in paths if p == "NFNet/~/linear/w"]
  return path


def test_masks_on_nfnet_f0():
  params = _param_shapes(num_classes=1000, variant="F0")
  config = optim.default_config()
  paths = _paths(params)
  assert len(paths) > 200  # The real F0, not an empty tree.
  assert _excluded(optim.exclusion_mask(config.agc_exclude), params) == {
      _classifier_path(paths)}
  se_weights = [p for p in paths if "squeeze_excite" in p and p.endswith("/w")]
  assert len(se_weights) == 2 * 12  # Two SE linears in each of 12 blocks.
  expected_no_decay = {p for p in paths
                       if p.rsplit("/", 1)[1] in GAIN_AND_BIAS_NAMES}
  assert len([p for p in expected_no_decay if p.endswith("skip_gain")]) == 12
  assert _excluded(optim.exclusion_mask(config.weight_decay_exclude),
                   params) == expected_no_decay
  # Everything left is decayed: conv kernels and all linear weights.
  assert all(p.endswith("/w") for p in set(paths) - expected_no_decay)


def test_masks_on_released_param_trees():
  with open(SHAPES_JSON) as f:
    trees = json.load(f)
  config = optim.default_config()
  for tree, classifier in ((trees["F0"], "NFNet/~/linear/w"),
                           (trees["NF-ResNet50"], "NF_ResNet/~/linear/w")):
    tree = jax.tree.map(np.zeros, tree, is_leaf=lambda x: isinstance(x, list))
    assert _excluded(optim.exclusion_mask(config.agc_exclude), tree) == {
        classifier}


@pytest.mark.parametrize("model, classifier", [
    ("NFResNet", "NF_ResNet/~/linear/w"), ("ResNet", "ResNet/~/linear/w")])
def test_masks_on_other_models(model, classifier):
  kwargs = dict(use_se=True) if model == "NFResNet" else {}
  params = _param_shapes(getattr(nfnets_jax, model), num_classes=10,
                         stage_depths=(1, 1, 1, 1), width=1, **kwargs)
  config = optim.default_config()
  paths = _paths(params)
  assert _excluded(optim.exclusion_mask(config.agc_exclude), params) == {
      classifier}
  assert _excluded(optim.exclusion_mask(config.weight_decay_exclude),
                   params) == {p for p in paths
                               if p.rsplit("/", 1)[1] in GAIN_AND_BIAS_NAMES}


def test_mask_predicate_and_bad_regex():
  tree = {"a/~/conv": {"w": np.zeros(3)}, "a/~/linear": {"w": np.zeros(3)}}
  assert _excluded(optim.exclusion_mask(lambda p: "conv" in p), tree) == {
      "a/~/conv/w"}
  assert _excluded(optim.exclusion_mask(None), tree) == set()
  with pytest.raises(ValueError, match="Invalid exclusion regex"):
    optim.exclusion_mask("([")


def test_agc_exclusion_that_matches_nothing_is_an_error():
  tx, _ = optim.build_optimizer(optim.default_config(), batch_size=256,
                                total_steps=100, steps_per_epoch=10)
  params = {"mlp/~/linear_2": {"w": np.zeros((3, 2))}}
  with pytest.raises(ValueError, match="matches none of the parameters"):
    tx.init(params)


# ------------------------------------------------- five steps vs NumPy ------


def _np_unit_norm(x):
  if sum(d != 1 for d in x.shape) <= 1:
    return np.sqrt(np.sum(x ** 2))
  axes = (0,) if x.ndim in (2, 3) else (0, 1, 2)
  return np.sqrt(np.sum(x ** 2, axis=axes, keepdims=True))


def _np_agc(g, p, clipping, eps):
  g_norm, max_norm = _np_unit_norm(g), clipping * np.maximum(_np_unit_norm(p),
                                                             eps)
  return np.where(g_norm > max_norm, g * max_norm / g_norm, g)


def test_five_steps_on_a_small_nfnet_match_numpy():
  shapes = _param_shapes(num_classes=10, variant="F0",
                         stage_depths=(1, 1, 1, 1),
                         stage_widths=(32, 64, 96, 128), group_width=16)
  classifier = _classifier_path(_paths(shapes))
  rng = np.random.default_rng(0)

  # The paper's init (w ~ N(0, 1/fan_in), gains 1, biases and skip_gain 0).
  # Gradients are random rather than backpropagated, to keep the test fast
  # (compiling the model's gradient takes tens of seconds on CPU) and to put
  # units on both sides of the clipping threshold.
  def init(path, s):
    name = agc.param_path(path).rsplit("/", 1)[1]
    if name == "w":
      fan_in = np.prod(s.shape[:-1])
      return np.float32(rng.normal(size=s.shape) / np.sqrt(fan_in))
    return np.full(s.shape, 1.0 if name == "gain" else 0.0, np.float32)

  def grad(path, p):
    unit_scale = 0.01 * 10 ** rng.uniform(-1.5, 1.5, size=(1,) * (p.ndim - 1) +
                                          p.shape[-1:])
    norm = max(np.linalg.norm(p) / np.sqrt(max(p.shape[-1:] or [1])), 1e-3)
    return np.float32(rng.normal(size=p.shape) * unit_scale * norm /
                      np.sqrt(max(p.size // max(p.shape[-1:] or [1]), 1)))

  params = jax.tree_util.tree_map_with_path(init, shapes)
  config = optim.default_config()
  config.weight_decay = 1e-2  # Large enough that a wrong mask shows.
  config.schedule.warmup_epochs = 1.0
  lr, momentum, wd, clipping, eps = 0.1 * 512 / 256, 0.9, 1e-2, 0.01, 1e-3
  total, per_epoch, warmup = 8, 2, 2
  tx, schedule = optim.build_optimizer(config, batch_size=512,
                                       total_steps=total,
                                       steps_per_epoch=per_epoch)

  @jax.jit
  def apply_step(grads, opt_state, params):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  opt_state = jax.jit(tx.init)(params)
  lrs = jax.jit(jax.vmap(schedule))(jnp.arange(5))

  np_params = jax.tree.map(np.float64, params)
  buf = jax.tree.map(np.zeros_like, np_params)
  classifier_would_clip = False
  for step in range(5):
    grads = jax.tree_util.tree_map_with_path(grad, params)
    params, opt_state = apply_step(grads, opt_state, params)
    fraction = float(agc.clipped_fraction(opt_state))
    assert 0.1 < fraction < 0.9  # Both branches of AGC are exercised.

    # Closed-form schedule: linear warm-up from 0, then cosine to 0.
    if step < warmup:
      step_lr = lr * step / warmup
    else:
      step_lr = lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) /
                                         (total - warmup)))
    np.testing.assert_allclose(lrs[step], step_lr, rtol=1e-6)
    new = {}
    for module, leaves in np_params.items():
      new[module] = {}
      for name, p in leaves.items():
        g = np.float64(grads[module][name])
        if f"{module}/{name}" != classifier:
          g = _np_agc(g, p, clipping, eps)
        else:
          classifier_would_clip |= not np.allclose(
              _np_agc(g, p, clipping, eps), g)
        if name not in GAIN_AND_BIAS_NAMES:
          g = g + wd * p
        buf[module][name] = momentum * buf[module][name] + g
        new[module][name] = p - step_lr * (g + momentum * buf[module][name])
    np_params = new
  assert classifier_would_clip  # So its exclusion from AGC is tested.
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6,
                                                       atol=1e-7),
               params, np_params)


# -------------------------------------------------------------- schedules ---


def _schedule(name, end_fraction=0.0, warmup_epochs=5.0):
  config = optim.default_config()
  config.schedule.name = name
  config.schedule.end_lr_fraction = end_fraction
  config.schedule.warmup_epochs = warmup_epochs
  _, schedule = optim.build_optimizer(config, batch_size=1024,
                                      total_steps=1000, steps_per_epoch=20)
  return schedule


@pytest.mark.parametrize("name, end_fraction", [
    ("warmup_cosine", 0.0), ("warmup_cosine", 0.1), ("warmup_linear", 0.0),
    ("warmup_constant", 0.0)])
def test_schedule_closed_form(name, end_fraction):
  peak, warmup, total = 0.1 * 1024 / 256, 100, 1000
  end = end_fraction * peak
  decay = {
      "warmup_cosine": lambda t: 0.5 * (1 + math.cos(math.pi * t)),
      "warmup_linear": lambda t: 1 - t,
      "warmup_constant": lambda t: 1.0,
  }[name]
  after = lambda step: end + (peak - end) * decay((step - warmup) /
                                                  (total - warmup))
  if name == "warmup_constant":
    after = lambda step: peak
  schedule = jax.jit(_schedule(name, end_fraction))
  expected = {0: 0.0, 1: peak / warmup, 50: peak / 2, warmup: peak,
              550: after(550), total - 1: after(total - 1), total: after(total)}
  for step, value in expected.items():
    # atol: float32 rounding of the schedule, relative to the peak.
    np.testing.assert_allclose(schedule(step), value, rtol=1e-6,
                               atol=1e-6 * peak, err_msg=f"step {step}")
  if name == "warmup_cosine" and end_fraction == 0:
    np.testing.assert_allclose(schedule(550), peak / 2, rtol=1e-6)
    assert float(schedule(total)) == 0.0


def test_schedule_without_warmup_starts_at_peak():
  np.testing.assert_allclose(_schedule("warmup_cosine", warmup_epochs=0)(0),
                             0.4, rtol=1e-6)


# ------------------------------------------------------- other optimizers ---


def _tiny_problem():
  rng = np.random.default_rng(1)
  params = {"lin": {"w": rng.normal(size=(4, 3)).astype(np.float32),
                    "b": rng.normal(size=(3,)).astype(np.float32)}}
  grads = [jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32),
                        params) for _ in range(3)]
  return params, grads


def _run(config, params, grads):
  config.schedule.name = "warmup_constant"
  config.schedule.warmup_epochs = 0.0
  tx, _ = optim.build_optimizer(config, batch_size=256, total_steps=10,
                                steps_per_epoch=10)
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def _no_clip_config(name):
  config = optim.default_config()
  config.name = name
  config.clipping = None
  config.weight_decay = 0.1
  return config


def _optax_decay_then_sgd(lr, nesterov, mask):
  return optax.chain(optax.add_decayed_weights(0.1, mask),
                     optax.sgd(lr, 0.9, nesterov=nesterov))


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("lr", [0.1, optax.linear_schedule(0.2, 0.05, 3)])
def test_sgd_with_weight_decay_equals_the_optax_chain(nesterov, lr):
  params, grads = _tiny_problem()
  mask = lambda tree: {"lin": {"w": True, "b": False}}
  fused = optim.sgd_with_weight_decay(lr, 0.9, nesterov=nesterov,
                                      weight_decay=0.1, mask=mask)
  reference = _optax_decay_then_sgd(lr, nesterov, mask)
  ours, state = params, fused.init(params)
  theirs, ref_state = params, reference.init(params)
  # The same state tree: checkpoints of either restore into the other.
  assert jax.tree.structure(state) == jax.tree.structure(ref_state)
  step = jax.jit(fused.update)
  for g in grads:
    updates, state = step(g, state, ours)
    ref_updates, ref_state = reference.update(g, ref_state, theirs)
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-7),
                 updates, ref_updates)
    ours = optax.apply_updates(ours, updates)
    theirs = optax.apply_updates(theirs, ref_updates)
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-7),
               state, ref_state)


def test_sgd_with_weight_decay_needs_momentum_and_params():
  with pytest.raises(ValueError, match="momentum > 0"):
    optim.sgd_with_weight_decay(0.1, 0.0, nesterov=True, weight_decay=0.1)
  tx = optim.sgd_with_weight_decay(0.1, 0.9, nesterov=True, weight_decay=0.1)
  params, grads = _tiny_problem()
  with pytest.raises(ValueError, match="needs the parameters"):
    tx.update(grads[0], tx.init(params))


def _tensor_writes(fn, params, leaf_shape):
  """Instructions of the compiled `fn` writing a tensor of `leaf_shape`."""
  state = jax.eval_shape(lambda: fn.init(params))
  text = jax.jit(fn.update).lower(params, state, params).compile().as_text()
  entry = text[text.index("\nENTRY"):]
  shape = "f32[" + ",".join(map(str, leaf_shape)) + "]"
  return [line for line in entry.splitlines()
          if f"= {shape}" in line and "parameter(" not in line]


def test_sgd_with_weight_decay_writes_each_output_once():
  # Why the fused transformation exists: as an optax chain XLA:CPU writes the
  # decayed gradient out as well as the two results (new momentum, update).
  shape = (3, 3, 64, 128)
  params = {"w": jnp.ones(shape)}
  fused = optax.chain(agc.adaptive_grad_clip(0.01), optim.sgd_with_weight_decay(
      0.1, 0.9, nesterov=True, weight_decay=2e-5))
  chain = optax.chain(agc.adaptive_grad_clip(0.01),
                      _optax_decay_then_sgd(0.1, True, None))
  assert len(_tensor_writes(fused, params, shape)) == 2
  assert len(_tensor_writes(chain, params, shape)) == 3


def test_build_optimizer_equals_the_unfused_optax_chain():
  params, _ = _tiny_problem()
  params["head/~/linear"] = {"w": params["lin"]["w"]}
  config = optim.default_config()
  config.agc_exclude = r"^head/"
  tx, schedule = optim.build_optimizer(config, batch_size=256, total_steps=100,
                                       steps_per_epoch=10)
  decay_mask = optim.exclusion_mask(config.weight_decay_exclude)
  # The unfused chain build_optimizer made before: its checkpoints restore.
  reference = optax.chain(
      optax.masked(agc.adaptive_grad_clip(0.01), optim.exclusion_mask(r"^head/")),
      optax.add_decayed_weights(config.weight_decay, decay_mask),
      optax.sgd(schedule, config.momentum, nesterov=True))
  state, ref_state = tx.init(params), reference.init(params)
  assert jax.tree.structure(state) == jax.tree.structure(ref_state)
  grads = jax.tree.map(lambda p: 0.3 * p + 0.01, params)
  for _ in range(3):  # Past the first warm-up step, whose learning rate is 0.
    updates, state = tx.update(grads, state, params)
    ref_updates, ref_state = reference.update(grads, ref_state, params)
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-9),
                 (updates, state), (ref_updates, ref_state))


def test_heavy_ball_momentum():
  params, grads = _tiny_problem()
  out, _ = _run(_no_clip_config("momentum"), params, grads)
  w, buf = np.float64(params["lin"]["w"]), 0.0
  for g in grads:
    buf = 0.9 * buf + g["lin"]["w"] + 0.1 * w
    w = w - 0.1 * buf
  np.testing.assert_allclose(out["lin"]["w"], w, rtol=1e-5)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_and_adamw(name):
  params, grads = _tiny_problem()
  out, _ = _run(_no_clip_config(name), params, grads)
  for leaf, decayed in (("w", True), ("b", False)):
    p, m, v = np.float64(params["lin"][leaf]), 0.0, 0.0
    for t, g in enumerate(grads, start=1):
      g = np.float64(g["lin"][leaf])
      if name == "adam" and decayed:
        g = g + 0.1 * p  # L2 added to the gradient.
      m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g ** 2
      step = (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
      if name == "adamw" and decayed:
        step = step + 0.1 * p  # Decoupled.
      p = p - 0.1 * step
    # atol: float32 rounding of m / sqrt(v) for tiny second moments.
    np.testing.assert_allclose(out["lin"][leaf], p, rtol=1e-5, atol=1e-5,
                               err_msg=leaf)


def test_clipping_none_or_zero_disables_agc():
  params, grads = _tiny_problem()
  reference = optax.chain(
      optax.add_decayed_weights(0.1, mask={"lin": {"w": True, "b": False}}),
      optax.sgd(0.1, 0.9, nesterov=True))
  expected, state = params, reference.init(params)
  for g in grads:
    updates, state = reference.update(g, state, expected)
    expected = optax.apply_updates(expected, updates)
  for clipping in (None, 0.0):
    config = _no_clip_config("sgd")
    config.clipping = clipping
    out, state = _run(config, params, grads)
    assert agc.clipped_fraction(state) is None
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6),
                 out, expected)


def test_agc_exclude_predicate_overrides_config():
  params, grads = _tiny_problem()
  big = [jax.tree.map(lambda g: g * 1e3, grads[0])]
  config = optim.default_config()
  config.weight_decay = 0.0
  config.schedule.name = "warmup_constant"
  config.schedule.warmup_epochs = 0.0
  config.momentum = 0.0
  tx, _ = optim.build_optimizer(config, batch_size=256, total_steps=10,
                                steps_per_epoch=10,
                                agc_exclude=lambda path: path == "lin/w")
  updates, state = tx.update(big[0], tx.init(params), params)
  np.testing.assert_allclose(updates["lin"]["w"], -0.1 * big[0]["lin"]["w"],
                             rtol=1e-6)
  b, g = np.float64(params["lin"]["b"]), np.float64(big[0]["lin"]["b"])
  np.testing.assert_allclose(updates["lin"]["b"], -0.1 * _np_agc(g, b, 0.01,
                                                                  1e-3),
                             rtol=1e-5)
  assert float(agc.clipped_fraction(state)) == 1.0


@pytest.mark.parametrize("field, value, match", [
    ("name", "lamb", r"Unknown optimizer 'lamb'.*'adam', 'adamw', "
                     r"'momentum', 'sgd'"),
    ("schedule.name", "cosine", r"Unknown schedule 'cosine'.*warmup_cosine"),
    ("schedule.warmup_epochs", 20.0, "does not fit"),
    ("sam.rho", -0.1, "sam.rho must be >= 0"),
    ("sam.batch_fraction", 0.0, r"batch_fraction must be in \(0, 1\]"),
    ("clipping", -1.0, "clipping must be > 0"),
    ("ema_decay", 1.0, r"ema_decay must be in \[0, 1\)"),
    ("ema_decay", -0.5, r"ema_decay must be in \[0, 1\)"),
    ("agc_exclude", "([", "Invalid exclusion regex"),
])
def test_config_errors(field, value, match):
  config = optim.default_config()
  section, _, key = field.rpartition(".")
  setattr(config[section] if section else config, key, value)
  with pytest.raises(ValueError, match=match):
    optim.build_optimizer(config, batch_size=256, total_steps=100,
                          steps_per_epoch=10)


def test_momentum_without_momentum_and_bad_sizes_are_errors():
  config = optim.default_config()
  config.name, config.momentum = "momentum", 0.0
  with pytest.raises(ValueError, match="needs momentum > 0"):
    optim.build_optimizer(config, batch_size=256, total_steps=100,
                          steps_per_epoch=10)
  with pytest.raises(ValueError, match="batch_size must be positive"):
    optim.build_optimizer(optim.default_config(), batch_size=0,
                          total_steps=100, steps_per_epoch=10)


# -------------------------------------------------------------------- EMA ---


def test_ema_decay_warmup():
  for step, decay in ((0, 0.1), (10, 11 / 20), (1000, 1001 / 1010)):
    np.testing.assert_allclose(optim.ema_decay(step, 0.99999), decay,
                               rtol=1e-6)
  np.testing.assert_allclose(optim.ema_decay(10 ** 7, 0.99999), 0.99999,
                             rtol=1e-7)


def test_ema_update_formula_dtypes_and_pmap():
  rng = np.random.default_rng(2)
  ema = {"w": rng.normal(size=(3, 2)).astype(np.float32),
         "h": jnp.asarray(rng.normal(size=(4,)), jnp.bfloat16),
         "counter": np.int32(7)}
  new = {"w": rng.normal(size=(3, 2)).astype(np.float32),
         "h": jnp.asarray(rng.normal(size=(4,)), jnp.bfloat16),
         "counter": np.int32(8)}
  out = jax.jit(optim.ema_update, static_argnums=3)(ema, new, 10, 0.9)
  d = 11 / 20  # The warm-up value, below 0.9.
  np.testing.assert_allclose(out["w"], d * ema["w"] + (1 - d) * new["w"],
                             rtol=1e-6)
  assert out["h"].dtype == jnp.bfloat16
  np.testing.assert_allclose(
      np.float32(out["h"]),
      d * np.float32(ema["h"]) + (1 - d) * np.float32(new["h"]), rtol=1e-2)
  assert int(out["counter"]) == 8
  n = jax.local_device_count()
  stacked = lambda x: np.stack([x] * n)
  pmapped = jax.pmap(lambda e, p: optim.ema_update(e, p, 10, 0.9))(
      stacked(ema["w"]), stacked(new["w"]))
  np.testing.assert_allclose(pmapped[-1], out["w"], rtol=1e-6)


# -------------------------------------------------------------------- SAM ---


def _least_squares(params, batch):
  """0.5 * mean squared error of a linear model; aux: the predictions."""
  pred = batch["x"] @ params["w"] + params["b"]
  return 0.5 * jnp.mean(jnp.sum((pred - batch["y"]) ** 2, -1)), pred


def _np_grad(params, batch):
  """The analytic gradient of `_least_squares`."""
  x, y = np.float64(batch["x"]), np.float64(batch["y"])
  residual = x @ params["w"] + params["b"] - y
  return {"w": x.T @ residual / len(x), "b": residual.mean(0)}


def _sam_problem(seed, batch=8):
  rng = np.random.default_rng(seed)
  params = {"w": rng.normal(size=(5, 3)).astype(np.float32),
            "b": rng.normal(size=(3,)).astype(np.float32)}
  data = {"x": rng.normal(size=(batch, 5)).astype(np.float32),
          "y": rng.normal(size=(batch, 3)).astype(np.float32)}
  return params, data


def _np_sam(params, data, rho, fraction):
  params = jax.tree.map(np.float64, params)
  n = max(1, round(len(data["x"]) * fraction))
  ascent = _np_grad(params, jax.tree.map(lambda v: v[:n], data))
  norm = np.sqrt(sum(np.sum(g ** 2) for g in ascent.values()))
  perturbed = {k: params[k] + rho * ascent[k] / norm for k in params}
  return _np_grad(perturbed, data)


def test_sam_with_zero_rho_is_the_plain_gradient():
  params, data = _sam_problem(0)
  grads, (loss, pred) = optim.sam_gradient(_least_squares, params, data,
                                           rho=0.0)
  (expected_loss, expected_pred), expected = jax.value_and_grad(
      _least_squares, has_aux=True)(params, data)
  jax.tree.map(np.testing.assert_array_equal, grads, expected)
  np.testing.assert_array_equal(loss, expected_loss)
  np.testing.assert_array_equal(pred, expected_pred)
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-5),
               grads, _np_grad(jax.tree.map(np.float64, params), data))


@pytest.mark.parametrize("fraction", [1.0, 0.25, 0.3])
def test_sam_matches_manual_two_step(fraction):
  params, data = _sam_problem(1)
  grads, _ = jax.jit(lambda p, b: optim.sam_gradient(
      _least_squares, p, b, rho=0.5, batch_fraction=fraction))(params, data)
  expected = _np_sam(params, data, 0.5, fraction)
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-5),
               grads, expected)
  plain = _np_grad(jax.tree.map(np.float64, params), data)
  assert not np.allclose(grads["w"], plain["w"], rtol=1e-3)


def test_sam_under_pmap_averages_the_descent_gradient():
  n = jax.local_device_count()
  problems = [_sam_problem(2, batch=8) for _ in range(n)]
  params = problems[0][0]
  rng = np.random.default_rng(3)
  shards = [jax.tree.map(lambda v: v + rng.normal(size=v.shape).astype(
      np.float32), data) for _, data in problems]
  batch = jax.tree.map(lambda *v: np.stack(v), *shards)
  grads, _ = jax.pmap(
      lambda p, b: optim.sam_gradient(_least_squares, p, b, rho=0.2,
                                      batch_fraction=0.5, axis_name="i"),
      axis_name="i", in_axes=(None, 0))(params, batch)
  # Each device perturbs with its own (local) ascent gradient.
  per_device = [_np_sam(params, shard, 0.2, 0.5) for shard in shards]
  expected = jax.tree.map(lambda *g: np.mean(g, axis=0), *per_device)
  for i in range(n):
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a[i], e, rtol=1e-5),
                 grads, expected)


def test_agc_after_sam_still_clips():
  params, data = _sam_problem(4)
  grads, _ = optim.sam_gradient(_least_squares, params, data, rho=0.5,
                                batch_fraction=0.5)
  tx = optax.chain(agc.adaptive_grad_clip(0.01), optax.sgd(-1.0))
  updates, state = tx.update(grads, tx.init(params), params)
  expected = _np_sam(params, data, 0.5, 0.5)
  for k in params:
    clipped = _np_agc(expected[k], np.float64(params[k]), 0.01, 1e-3)
    assert not np.allclose(clipped, expected[k])
    np.testing.assert_allclose(updates[k], clipped, rtol=1e-5)
  assert float(agc.clipped_fraction(state)) == 1.0


@pytest.mark.parametrize("devices", [1, 4])
def test_cross_device_mean(devices):
  x = np.arange(devices * 3, dtype=np.float32).reshape(devices, 3)
  mean = jax.pmap(lambda t: optim.cross_device_mean(t, "d"), axis_name="d",
                  devices=jax.local_devices()[:devices])
  np.testing.assert_allclose(mean({"x": x})["x"], np.broadcast_to(x.mean(0), x.shape))
  # One device: no all-reduce at all (XLA would copy every operand).
  hlo = mean.lower({"x": x}).compile().as_text()
  assert ("all-reduce" in hlo) == (devices > 1)
