"""The pmapped train and eval steps against single-device and brute-force runs."""
import jax
import ml_collections
import numpy as np
import pytest

from nfnets_jax import data
from nfnets_jax import models
from nfnets_jax import optim
from nfnets_jax import train_config
from nfnets_jax import train_step as ts
import test_train_support as support

NUM_CLASSES = 10
PX = 16
TINY_NFNET = dict(variant="F0", stage_depths=(1, 1, 1, 1),
                  stage_widths=(16, 32, 32, 32), group_width=8,
                  stochdepth_rate=0.0, drop_rate=0.0)


def _config(**train_overrides) -> ml_collections.ConfigDict:
  config = train_config.base_config("NFNet", TINY_NFNET)
  config.train.label_smoothing = 0.1
  config.train.update(train_overrides)
  config.optimizer.lr = 0.4
  config.optimizer.lr_scale_by_batch = False
  config.optimizer.clipping = 0.01  # Small enough to clip at every step.
  config.optimizer.schedule.warmup_epochs = 0.0
  config.optimizer.ema_decay = 0.9
  return config


@pytest.fixture(scope="module")
def model():
  """(forward, optimizer, schedule, initial host state), built once."""
  forward = models.transform("NFNet", NUM_CLASSES, **TINY_NFNET)
  optimizer, schedule = optim.build_optimizer(
      _config().optimizer, batch_size=32, total_steps=10, steps_per_epoch=5)
  state = ts.init_train_state(forward, optimizer, seed=0,
                              image_shape=(PX, PX, 3))
  return forward, optimizer, schedule, state


def _batches(num_steps, batch_size, seed=0):
  rng = np.random.default_rng(seed)
  for _ in range(num_steps):
    images = rng.normal(size=(batch_size, PX, PX, 3)).astype(np.float32)
    # Mixed (MixUp-like) float targets, as the data pipeline produces.
    targets = rng.dirichlet(np.full(NUM_CLASSES, 0.3), size=batch_size)
    yield {"images": images, "labels": targets.astype(np.float32)}


def _train(model, config, num_devices, num_steps=3, batch_size=32):
  forward, optimizer, schedule, state = model
  state = ts.replicate(state, num_devices)
  step = support.compile_on_first_call(
      ts.make_train_step(forward, optimizer, schedule, config))
  history = []
  for batch in _batches(num_steps, batch_size):
    batch = jax.tree.map(
        lambda x: x.reshape(num_devices, -1, *x.shape[1:]), batch)
    state, metrics = step(state, batch)
    history.append(ts.unreplicate(metrics))
  return ts.unreplicate(state), history


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def _relative_error(a, b):
  return (np.linalg.norm(np.asarray(a, np.float64) - b) /
          max(np.linalg.norm(np.asarray(b, np.float64)), 1e-30))


def test_eight_devices_match_one_device_with_the_same_global_batch(model):
  assert jax.local_device_count() >= 8
  config = _config()
  state8, history8 = _train(model, config, num_devices=8)
  state1, history1 = _train(model, config, num_devices=1)
  for metrics in history8:
    assert metrics["clipped_fraction"] > 0  # AGC really clipped.
  for m8, m1 in zip(history8, history1):
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-5)
    np.testing.assert_allclose(m8["clipped_fraction"], m1["clipped_fraction"])
  assert int(state8.step) == int(state1.step) == 3
  for tree8, tree1 in ((state8.params, state1.params),
                       (state8.ema_params, state1.ema_params),
                       (state8.opt_state, state1.opt_state)):
    # The whole tree as one vector within 1e-5; each tensor within 1e-4 (a
    # few scalars near zero, e.g. skip gains, carry float32 rounding).
    assert _relative_error(_flat(tree8), _flat(tree1)) < 1e-5
    assert max(jax.tree.leaves(
        jax.tree.map(_relative_error, tree8, tree1))) < 1e-4
  # The updates were not trivially zero: parameters moved.
  moved = jax.tree.leaves(jax.tree.map(_relative_error, state1.params,
                                       model[3].params))
  assert max(moved) > 1e-3


def test_bfloat16_compute_keeps_float32_master_weights(model):
  forward, _, _, initial = model
  state, history = _train(model, _config(compute_dtype="bfloat16"),
                          num_devices=2, num_steps=1, batch_size=8)
  for tree in (state.params, state.ema_params):
    assert {x.dtype for x in jax.tree.leaves(tree)} == {np.dtype(np.float32)}
  # The first step's loss against a float32 forward pass at the same weights.
  batch = next(_batches(1, 8))
  out, _ = jax.jit(forward.apply, static_argnames="is_training")(
      initial.params, initial.model_state, None, batch["images"],
      is_training=True)
  targets = np.asarray(ts.smooth_labels(batch["labels"], 0.1))
  logits = np.asarray(out["logits"], np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  loss32 = -(targets * log_probs).sum(-1).mean()
  np.testing.assert_allclose(history[0]["loss"], loss32, rtol=0.02)
  assert abs(history[0]["loss"] - loss32) > 1e-6  # bf16 really used.


def test_smoothed_targets_and_topk_against_numpy():
  targets = np.array([[0.0, 1.0, 0.0, 0.0], [0.3, 0.0, 0.7, 0.0]], np.float32)
  np.testing.assert_allclose(
      ts.smooth_labels(targets, 0.2),
      [[0.05, 0.85, 0.05, 0.05], [0.29, 0.05, 0.61, 0.05]], rtol=1e-6)
  logits = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
  labels = np.arange(50) % 8
  ranks = (logits > logits[np.arange(50), labels][:, None]).sum(axis=1)
  for k in (1, 5, 20):  # 20 > classes: every label is in the top 20.
    np.testing.assert_array_equal(ts.topk_correct(logits, labels, k),
                                  (ranks < k).astype(np.float32))


def test_evaluation_counts_every_example_once_against_brute_force(model):
  forward, _, _, state = model
  config = _config()
  config.data.name = "fake"
  config.data.fake.update(num_classes=NUM_CLASSES, image_size=PX,
                          num_train=64, num_test=37)  # 37: padded last batch.
  config.data.test_px = PX
  # Random classifier weights so that predictions vary between examples.
  params = dict(state.params)
  params["NFNet/~/linear"] = dict(params["NFNet/~/linear"], w=(
      np.random.default_rng(0).normal(size=(32 * 2, NUM_CLASSES))
      .astype(np.float32)))
  eval_step = ts.make_eval_step(forward, config)
  metrics = ts.evaluate(
      eval_step._replace(sums=support.compile_on_first_call(eval_step.sums)),
      ts.replicate(params), ts.replicate(state.model_state),
      data.eval_iterator(config.data, global_batch_size=16))

  batches = list(data.eval_iterator(config.data, global_batch_size=16,
                                    num_local_devices=1))
  mask = np.concatenate([b["mask"].ravel() for b in batches]) > 0
  images = np.concatenate([b["images"].reshape(-1, PX, PX, 3)
                           for b in batches])[mask]
  labels = np.concatenate([b["labels"].ravel() for b in batches])[mask]
  out, _ = jax.jit(forward.apply, static_argnames="is_training")(
      params, state.model_state, None, images, is_training=False)
  logits = np.asarray(out["logits"], np.float64)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  order = np.argsort(-logits, axis=1)
  assert metrics["count"] == 37 == len(labels)
  np.testing.assert_allclose(metrics["loss"],
                             -log_probs[np.arange(37), labels].mean(),
                             rtol=1e-5)
  assert metrics["top1"] == pytest.approx(np.mean(order[:, 0] == labels))
  assert metrics["top5"] == pytest.approx(
      np.mean((order[:, :5] == labels[:, None]).any(1)))
  assert 0 < metrics["top1"] < 1  # A test that can tell right from wrong.
