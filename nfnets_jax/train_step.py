"""Training state, the pmapped train step and the pmapped evaluation step.

Data parallel over the devices of all processes: every device runs the
forward and backward pass on its slice of the batch, the gradients are
averaged over all devices (`lax.pmean`) BEFORE the optimizer, so AGC clips
the global gradient and every replica applies the same update.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, NamedTuple, Optional

import haiku as hk
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from nfnets_jax import agc
from nfnets_jax import optim
from nfnets_jax.models import inference

AXIS = "batch"  # The pmap axis: all devices of all processes.
TOP_K = 5
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


class TrainState(NamedTuple):
  """Everything training needs to continue exactly (all of it checkpointed).

  Attributes:
    step: number of optimizer updates applied (int32 scalar).
    params: the fp32 master weights.
    model_state: Haiku state (BatchNorm statistics; empty for NF networks).
    opt_state: optimizer state.
    ema_params: exponential moving average of `params`.
    ema_state: exponential moving average of `model_state`.
    rng: base key; each step and device derives its own from it.
  """
  step: jax.Array
  params: hk.Params
  model_state: hk.State
  opt_state: optax.OptState
  ema_params: hk.Params
  ema_state: hk.State
  rng: jax.Array


def compute_dtype(name: str) -> Any:
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"Unknown train.compute_dtype {name!r}; choose one of "
                     f"{sorted(COMPUTE_DTYPES)}.")
  return COMPUTE_DTYPES[name]


def init_model(forward: hk.TransformedWithState, rng: jax.Array,
               image_shape: tuple[int, ...]) -> tuple[Any, Any]:
  """(params, model_state) of `forward` for one example's `image_shape`."""
  # Compiled as one program: eagerly, every op compiles on its own (~20 s for
  # a small NFNet on CPU). It runs once, and on CPU unoptimised code compiles
  # ~8x faster (the many random-number ops of initialisation are slow to
  # optimise).
  options = _FAST_COMPILE if jax.default_backend() == "cpu" else None
  init = jax.jit(functools.partial(forward.init, is_training=True),
                 compiler_options=options)
  return init(rng, jnp.zeros((1, *image_shape)))


def init_train_state(forward: hk.TransformedWithState,
                     optimizer: optax.GradientTransformation, *, seed: int,
                     image_shape: tuple[int, ...]) -> TrainState:
  """A fresh state (on the host), identical on every process for a seed.

  Args:
    forward: the transformed model, `forward(images, is_training)`.
    optimizer: from `optim.build_optimizer`.
    seed: the run's seed.
    image_shape: one example's shape (H, W, C).
  """
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  params, model_state = init_model(forward, init_rng, image_shape)
  state = TrainState(
      step=jnp.zeros([], jnp.int32), params=params, model_state=model_state,
      opt_state=jax.jit(optimizer.init)(params), ema_params=params,
      ema_state=model_state, rng=train_rng)
  return jax.device_get(state)


# Places stacked host arrays on devices. It has the steps' axis name so that
# the placement matches their outputs' and the first step compiles only once.
_to_devices = jax.pmap(lambda x: x, axis_name=AXIS)


def replicate(tree: Any, num_devices: Optional[int] = None) -> Any:
  """Copies a host tree onto the first `num_devices` local devices (None: all)."""
  if not jax.tree.leaves(tree):
    return tree  # E.g. the empty Haiku state of NF networks.
  count = num_devices or jax.local_device_count()
  return _to_devices(jax.tree.map(
      lambda x: np.broadcast_to(x, (count, *np.shape(x))), tree))


def unreplicate(tree: Any) -> Any:
  """A host (numpy) copy of the first local device's replica."""
  return jax.tree.map(
      lambda x: np.array(np.asarray(x.addressable_shards[0].data)[0]), tree)


def cast_floats(tree: Any, dtype: Any) -> Any:
  """`tree` with its floating-point leaves cast to `dtype`."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
      tree)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """1.0 where the integer label is among the `k` largest logits, else 0.0."""
  k = min(k, logits.shape[-1])
  _, top = jax.lax.top_k(logits, k)
  return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def smooth_labels(targets: jax.Array, smoothing: float) -> jax.Array:
  """Mixes (possibly already mixed) float targets with the uniform law."""
  return targets * (1.0 - smoothing) + smoothing / targets.shape[-1]


def make_train_step(forward: hk.TransformedWithState,
                    optimizer: optax.GradientTransformation,
                    schedule: Callable[[jax.Array], jax.Array],
                    config: ml_collections.ConfigDict) -> Callable:
  """The pmapped `train_step(state, batch) -> (state, metrics)`.

  `state` is replicated over the local devices and donated; `batch` holds
  per-device slices: 'images' [D, B, H, W, C], 'labels' [D, B, classes]
  (one-hot or MixUp/CutMix-mixed float targets). Metrics (identical on every
  device): loss, top1, top5 (against the targets' argmax), learning_rate,
  grad_norm (global norm of the averaged gradient, before clipping),
  param_norm (global norm of the updated weights) and clipped_fraction
  (units AGC clipped, when AGC is on).

  Args:
    forward: the transformed model.
    optimizer: from `optim.build_optimizer`, applied to the averaged gradient.
    schedule: learning rate as a function of the step (for logging).
    config: the run's config; uses train.label_smoothing,
      train.compute_dtype, optimizer.ema_decay and optimizer.sam.
  """
  dtype = compute_dtype(config.train.compute_dtype)
  smoothing = config.train.label_smoothing
  ema_decay = config.optimizer.ema_decay

  def loss_fn(params, batch, model_state, rng):
    logits_out, new_model_state = forward.apply(
        cast_floats(params, dtype), model_state, rng,
        batch["images"].astype(dtype), is_training=True)
    logits = logits_out["logits"].astype(jnp.float32)
    loss = optax.softmax_cross_entropy(
        logits, smooth_labels(batch["labels"], smoothing)).mean()
    return loss, (logits, new_model_state)

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                             jax.lax.axis_index(AXIS))
    # With rho = 0 this is the plain gradient; either way pmean'ed over AXIS.
    grads, (loss, (logits, model_state)) = optim.sam_gradient(
        lambda p, b: loss_fn(p, b, state.model_state, rng), state.params,
        batch, rho=config.optimizer.sam.rho,
        batch_fraction=config.optimizer.sam.batch_fraction, axis_name=AXIS)
    # BatchNorm statistics: averaged like the gradients, kept in their dtype.
    model_state = jax.tree.map(lambda new, old: new.astype(old.dtype),
                               optim.cross_device_mean(model_state, AXIS),
                               state.model_state)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if ema_decay:
      ema_params = optim.ema_update(state.ema_params, params, state.step,
                                    ema_decay)
      ema_state = optim.ema_update(state.ema_state, model_state, state.step,
                                   ema_decay)
    else:
      ema_params, ema_state = params, model_state
    labels = jnp.argmax(batch["labels"], axis=-1)
    metrics = {
        "loss": loss,
        "top1": topk_correct(logits, labels, 1).mean(),
        "top5": topk_correct(logits, labels, TOP_K).mean(),
    }
    metrics = optim.cross_device_mean(metrics, AXIS)
    metrics["learning_rate"] = schedule(state.step)
    metrics["grad_norm"] = agc.global_norm(grads)  # Shares AGC's reductions.
    metrics["param_norm"] = agc.global_norm(params, unitwise=False)
    fraction = agc.clipped_fraction(opt_state)
    if fraction is not None:
      metrics["clipped_fraction"] = fraction
    new_state = TrainState(
        step=state.step + 1, params=params, model_state=model_state,
        opt_state=opt_state, ema_params=ema_params, ema_state=ema_state,
        rng=state.rng)
    return new_state, metrics

  return jax.pmap(train_step, axis_name=AXIS, donate_argnums=(0,))


class EvalStep(NamedTuple):
  """The pmapped halves of evaluation, from `make_eval_step`.

  Attributes:
    prepare: `(params, model_state, images) -> weights`: the weights with
      their standardisation done (`models.inference`), once per evaluation.
    sums: `(weights, model_state, batch) -> sums` of one batch.
  """
  prepare: Callable
  sums: Callable


def make_eval_step(forward: hk.TransformedWithState,
                   config: ml_collections.ConfigDict) -> EvalStep:
  """Pmapped evaluation of replicated weights; `evaluate` runs it.

  `batch` has 'images' [D, B, H, W, C], integer 'labels' [D, B] and 'mask'
  [D, B] (0 on padding); `sums` returns the sums over all devices of the
  masked loss, top1, top5 and the example count.
  """
  dtype = compute_dtype(config.train.compute_dtype)

  def prepare(params, model_state, images):
    return inference.standardized_params(forward, cast_floats(params, dtype),
                                         model_state, images.astype(dtype))

  def sums(weights, model_state, batch):
    out = inference.apply_standardized(forward, weights, model_state,
                                       batch["images"].astype(dtype))
    logits = out["logits"].astype(jnp.float32)
    labels = batch["labels"].astype(jnp.int32)
    mask = batch["mask"].astype(jnp.float32)
    per_example = {
        "loss": optax.softmax_cross_entropy_with_integer_labels(logits, labels),
        "top1": topk_correct(logits, labels, 1),
        "top5": topk_correct(logits, labels, TOP_K),
        "count": jnp.ones_like(mask),
    }
    totals = {k: jnp.sum(v * mask) for k, v in per_example.items()}
    return jax.lax.psum(totals, AXIS)

  return EvalStep(jax.pmap(prepare, axis_name=AXIS), jax.pmap(sums, axis_name=AXIS))


def evaluate(eval_step: EvalStep, params: Any, model_state: Any,
             batches: Iterable[dict[str, np.ndarray]]) -> dict[str, float]:
  """Mean loss, top1, top5 over the batches (padding excluded) and `count`."""
  totals: dict[str, float] = {}
  weights = None
  for batch in batches:
    if weights is None:
      weights = eval_step.prepare(params, model_state, batch["images"])
    sums = unreplicate(eval_step.sums(weights, model_state, batch))
    for key, value in sums.items():
      totals[key] = totals.get(key, 0.0) + float(value)
  count = totals.pop("count", 0.0)
  if not count:
    raise ValueError("The evaluation split yielded no examples; check the "
                     "data config (split name, data_dir).")
  metrics = {k: v / count for k, v in totals.items()}
  metrics["count"] = count
  return metrics
