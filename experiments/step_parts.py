r"""Where an NFNet training step's time goes on this backend, piece by piece.

    python -m experiments.step_parts                      # F0, 128 px, batch 8
    python -m experiments.step_parts --grouped_conv=im2col --no-optimizer
    python -m experiments.step_parts --conv_shapes        # F0's grouped 3x3 convs alone
    python -m experiments.step_parts --compare_weight_grads --steps=16
    python -m experiments.step_parts --compare_updates --steps=16

Times, each jitted on its own (median and min of `--steps` runs): the
train-mode forward pass with the loss, forward and backward, and the update
the training step applies after them (AGC, weight decay, Nesterov SGD, the
weight EMA and the two global norms it logs). `--conv_shapes` times every
grouped-conv formulation on the grouped 3x3 convolutions of F0 at 128 px,
forward and forward + backward. `--compare_weight_grads` times F0's forward
+ backward with each `layers.WEIGHT_GRADS` formulation, alternating them in
one process (they are XLA's: run it with NFNETS_JAX_ONEDNN=0 on a CPU where
oneDNN runs the convolutions). `--compare_updates` alternates that update as the training step
builds it (`optim.sgd_with_weight_decay`, `agc.global_norm`) with the same
update from optax's transformations (`adaptive_grad_clip`,
`add_decayed_weights` then `sgd`, `optax.global_norm`), and counts the
reductions each compiles to. `nfnets_jax.bench` times the whole step.
"""
from __future__ import annotations

import argparse
import functools
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nfnets_jax import agc
from nfnets_jax import host_memory
from nfnets_jax import models
from nfnets_jax import optim
from nfnets_jax import train_step as ts
from nfnets_jax.models import layers

# (batch, side, channels, groups, stride): how many of F0's 22 grouped 3x3
# convs at 128 px have that input (what `bench_timm.py --conv_shapes` finds).
F0_GROUPED_CONVS = {(8, 32, 256, 2, 2): 1, (8, 16, 256, 2, 1): 3, (8, 16, 768, 6, 2): 1,
                    (8, 8, 768, 6, 1): 11, (8, 8, 768, 6, 2): 1, (8, 4, 768, 6, 1): 5}


def seconds(fn: Callable, *args, steps: int) -> list[float]:
  """Seconds of `steps` calls of `fn(*args)`, after one untimed call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return times


def timed(fn: Callable, *args, steps: int) -> str:
  times = seconds(fn, *args, steps=steps)
  return f"median {np.median(times) * 1e3:7.1f} ms, min {min(times) * 1e3:7.1f} ms"


def alternated(fns: dict[str, Callable], *args, steps: int) -> dict[str, list[float]]:
  """Seconds per call of each compiled `fns[name](*args)`, run in turn."""
  times = {name: [] for name in fns}
  for _ in range(steps):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[name].append(time.perf_counter() - start)
  return times


def training_loss(variant: str, resolution: int, batch: int,
                  grouped_conv: str = "auto") -> tuple[Callable, Any, jax.Array]:
  """(loss(params, images), params, images) of an NFNet in training mode."""
  net = models.transform("NFNet", 1000, variant=variant, grouped_conv=grouped_conv)
  key = jax.random.PRNGKey(0)
  images = jax.random.normal(key, (batch, resolution, resolution, 3))
  labels = jax.nn.one_hot(jnp.arange(batch) % 1000, 1000)
  params, state = ts.init_model(net, key, images.shape[1:])

  def loss(p, x):
    out, _ = net.apply(p, state, key, x, is_training=True)
    return optax.softmax_cross_entropy(out["logits"], labels).mean()
  return loss, params, images


def step_parts(args: argparse.Namespace) -> None:
  loss, params, images = training_loss(args.variant, args.resolution, args.batch,
                                       args.grouped_conv)

  print(f"NFNet {args.variant}, {args.resolution} px, batch {args.batch}, "
        f"grouped_conv={args.grouped_conv!r}, {jax.default_backend()}")
  print(f"  forward (train mode)   {timed(jax.jit(loss), params, images, steps=args.steps)}")
  grad = jax.jit(jax.grad(loss))
  print(f"  forward + backward     {timed(grad, params, images, steps=args.steps)}")
  if args.optimizer:
    update, args_ = update_step(grad(params, images), params, args.batch)
    print(f"  update (AGC, decay, SGD, EMA, norms) over "
          f"{sum(p.size for p in jax.tree.leaves(params)) / 1e6:.1f} M params: "
          f"{timed(jax.jit(update), *args_, steps=args.steps)}")


def update_step(grads: Any, params: Any, batch: int, reference: bool = False
                ) -> tuple[Callable, tuple]:
  """(update, its arguments): what the training step does after the backward
  pass; `reference` builds it from optax's own transformations instead."""
  config = optim.default_config()
  optimizer, schedule = optim.build_optimizer(config, batch_size=batch, total_steps=10_000,
                                              steps_per_epoch=100)
  grad_norm, param_norm = agc.global_norm, functools.partial(agc.global_norm, unitwise=False)
  if reference:
    optimizer = optax.chain(
        optax.masked(optax.adaptive_grad_clip(config.clipping, config.clipping_eps),
                     optim.exclusion_mask(config.agc_exclude)),
        optax.add_decayed_weights(config.weight_decay,
                                  optim.exclusion_mask(config.weight_decay_exclude)),
        optax.sgd(schedule, config.momentum, nesterov=config.nesterov))
    grad_norm = param_norm = optax.global_norm

  # The gradients are an argument: closed over, they would be XLA constants
  # and their norms folded away at compile time.
  def update(p, g, opt_state, ema):
    updates, opt_state = optimizer.update(g, opt_state, p)
    new = optax.apply_updates(p, updates)
    ema = optim.ema_update(ema, new, jnp.int32(100), config.ema_decay)
    return new, opt_state, ema, grad_norm(g), param_norm(new)
  return update, (params, grads, optimizer.init(params), params)


def compare_updates(args: argparse.Namespace) -> None:
  loss, params, images = training_loss(args.variant, args.resolution, args.batch,
                                       args.grouped_conv)
  grads = jax.jit(jax.grad(loss))(params, images)
  compiled, fns, outputs = {}, {}, {}
  for name, reference in (("nfnets_jax", False), ("optax chain", True)):
    update, args_ = update_step(grads, params, args.batch, reference)
    compiled[name] = jax.jit(update).lower(*args_).compile()
    fns[name] = functools.partial(compiled[name], *args_)  # Each its own state's form.
    p, _, s, ema = args_
    for _ in range(3):  # Past the first warm-up step, whose learning rate is 0.
      p, s, ema, *norms = compiled[name](p, grads, s, ema)
    outputs[name] = (p, ema, norms)  # The states differ in form (AGC's, optax's).
  difference = max(jax.tree.leaves(jax.tree.map(
      lambda a, b: float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30)),
      *outputs.values())))
  times = alternated(fns, steps=args.steps)
  print(f"NFNet {args.variant} update after the backward pass, {args.steps} alternating "
        f"steps each; after 3 updates, largest relative difference of the outputs {difference:.1e}")
  for name, t in times.items():
    # Each reduction is at least one kernel launch on a GPU.
    reductions = compiled[name].as_text().count(" reduce(")
    print(f"  {name:11s} median {np.median(t) * 1e3:7.1f} ms, min {min(t) * 1e3:7.1f} ms, "
          f"{reductions} reductions in the compiled HLO")


def conv_shapes(args: argparse.Namespace) -> None:
  impls = [i for i in layers.GROUPED_CONV_IMPLS if i != "auto"]
  totals = {impl: np.zeros(2) for impl in impls}
  for (batch, side, channels, groups, stride), count in F0_GROUPED_CONVS.items():
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (batch, side, side, channels))
    w = jax.random.normal(key, (3, 3, channels // groups, channels)) * 0.05
    print(f"{side} px, {channels} channels, {groups} groups, stride {stride} (x{count}):")
    for impl in impls:
      conv = lambda x, w, impl=impl: layers.conv2d(x, w, stride, groups, impl)
      both = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) ** 2), argnums=(0, 1)))
      medians = np.array([np.median(seconds(fn, x, w, steps=args.steps))
                          for fn in (jax.jit(conv), both)])
      totals[impl] += count * medians
      print(f"  {impl:7s} forward median {medians[0] * 1e3:7.1f} ms; "
            f"forward + backward median {medians[1] * 1e3:7.1f} ms")
  print(f"all {sum(F0_GROUPED_CONVS.values())} (medians x count):")
  for impl, (fwd, both) in totals.items():
    print(f"  {impl:7s} forward {fwd * 1e3:7.1f} ms; forward + backward {both * 1e3:7.1f} ms")


def compare_weight_grads(args: argparse.Namespace) -> None:
  grads = {}
  for weight_grad in ("xla", "taps"):
    # The models call conv2d with weight_grad='auto', so this picks what
    # 'auto' means while the step is traced; both are compiled before timing.
    layers.default_weight_grad = lambda weight_grad=weight_grad: weight_grad
    loss, params, images = training_loss(args.variant, args.resolution, args.batch,
                                         args.grouped_conv)
    grads[weight_grad] = jax.jit(jax.grad(loss)).lower(params, images).compile()
    jax.block_until_ready(grads[weight_grad](params, images))
  times = alternated(grads, params, images, steps=args.steps)
  print(f"NFNet {args.variant}, {args.resolution} px, batch {args.batch}, forward + backward, "
        f"{args.steps} alternating steps each")
  for name, t in times.items():
    print(f"  weight_grad={name:5s} median {np.median(t) * 1e3:7.1f} ms, min {min(t) * 1e3:7.1f} ms")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variant", default="F0")
  parser.add_argument("--resolution", type=int, default=128)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--grouped_conv", choices=layers.GROUPED_CONV_IMPLS, default="auto")
  parser.add_argument("--optimizer", action=argparse.BooleanOptionalAction, default=True,
                      help="Also time the update after the backward pass.")
  parser.add_argument("--conv_shapes", action="store_true",
                      help="Time F0's grouped convs per formulation instead.")
  parser.add_argument("--compare_weight_grads", action="store_true",
                      help="Time forward + backward per kernel-gradient formulation instead.")
  parser.add_argument("--compare_updates", action="store_true",
                      help="Time the update against optax's transformations instead.")
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args()
  host_memory.reuse_freed_memory()  # As the command-line tools do.
  if args.conv_shapes:
    conv_shapes(args)
  elif args.compare_weight_grads:
    compare_weight_grads(args)
  elif args.compare_updates:
    compare_updates(args)
  else:
    step_parts(args)


if __name__ == "__main__":
  main()
