r"""The PyTorch peer of `nfnets_jax.bench`: timm's NFNet, the same step, timed.

    python experiments/bench_timm.py --arch=dm_nfnet_f0 --resolution=128 --batch=8 --threads=2
    python experiments/bench_timm.py --forward_resolution=256 --json
    python experiments/bench_timm.py --ema_decay=0.99999   # with a weight EMA, as ours
    python experiments/bench_timm.py --conv_shapes         # the model's grouped convs alone
    python experiments/bench_timm.py --profile --steps=3   # where timm's step spends its time

Run it in an environment with torch and timm (neither is a dependency of
nfnets_jax; the test suite never imports them). The timed training step is
the paper's: forward in train mode, softmax cross-entropy, backward, timm's
`adaptive_clip_grad` (AGC, clipping 0.01, on every parameter as timm applies
it) and SGD with Nesterov momentum 0.9, on random images; `--ema_decay` adds
what the JAX step also does, an EMA of the weights (timm's `ModelEmaV3`, as
its train.py's `--model-ema` keeps it). The forward pass is
eval mode under `torch.inference_mode()`. Prints min / median / max seconds
per step, like the JAX benchmark, so the two can be run alternately, or step
by step in turns under `python -m nfnets_jax.lockstep`.
`--conv_shapes` times each distinct grouped convolution of the model at
`--resolution` (found by running it once), forward and forward + backward
(input and kernel gradients), as `python -m experiments.step_parts
--conv_shapes` times ours. `--profile` runs the timed training steps under
`torch.profiler` and prints PyTorch's operators by self CPU time per step,
the peer of `python -m experiments.profile_step`.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import pathlib
import time
from typing import Callable

import numpy as np
import timm
import torch
from timm.utils import ModelEmaV3
from timm.utils import agc


def _lockstep_turns():
  """The token of `nfnets_jax.lockstep`'s driver, when it runs this script."""
  # Loaded by path: it needs only the standard library, while importing the
  # nfnets_jax package would import JAX, which this environment may lack.
  path = pathlib.Path(__file__).resolve().parents[1] / "nfnets_jax" / "lockstep.py"
  spec = importlib.util.spec_from_file_location("nfnets_jax_lockstep", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.turns()


_TURNS = _lockstep_turns()


def _timed(fn: Callable[[], None], steps: int, warmup: int) -> dict[str, object]:
  times = []
  for i in range(warmup + steps):
    if _TURNS:
      _TURNS.next()  # Under the lockstep driver: the other benchmarks' turn.
    start = time.perf_counter()
    fn()
    if i >= warmup:
      times.append(time.perf_counter() - start)
  t = np.asarray(times)
  return {"min_s": float(t.min()), "median_s": float(np.median(t)),
          "max_s": float(t.max()), "step_times_s": times}


def _self_times(profiler: torch.profiler.profile, steps: int) -> list[dict[str, object]]:
  """PyTorch's operators by self CPU time per traced step, longest first."""
  ops = [{"name": e.key, "self_ms": e.self_cpu_time_total / 1e3 / steps,
          "calls": e.count / steps} for e in profiler.key_averages()]
  return sorted(ops, key=lambda op: -op["self_ms"])


def benchmark(args: argparse.Namespace) -> dict[str, object]:
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  model = timm.create_model(args.arch, pretrained=False, num_classes=1000)
  result: dict[str, object] = {
      "arch": args.arch, "torch": torch.__version__, "timm": timm.__version__,
      "threads": torch.get_num_threads(), "batch": args.batch}
  images = torch.randn(args.batch, 3, args.resolution, args.resolution)
  labels = torch.randint(0, 1000, (args.batch,))
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                              nesterov=True, weight_decay=2e-5)
  ema = ModelEmaV3(model, decay=args.ema_decay) if args.ema_decay else None
  result["ema_decay"] = args.ema_decay

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    agc.adaptive_clip_grad(model.parameters(), clip_factor=args.clipping)
    optimizer.step()
    if ema is not None:
      ema.update(model)

  if args.train:
    model.train()
    for _ in range(args.warmup_steps):
      train_step()
    profiler = torch.profiler.profile() if args.profile else contextlib.nullcontext()
    with profiler:
      result["train"] = {"resolution": args.resolution,
                         **_timed(train_step, args.steps, warmup=0)}
    if args.profile:
      result["profile"] = _self_times(profiler, args.steps)
  if args.forward_resolution:
    model.eval()
    test_images = torch.randn(args.batch, 3, args.forward_resolution,
                              args.forward_resolution)

    def forward():
      with torch.inference_mode():
        model(test_images)

    result["forward"] = {"resolution": args.forward_resolution,
                         **_timed(forward, args.steps, args.warmup_steps)}
  return result


def grouped_convs(model: torch.nn.Module, images: torch.Tensor
                  ) -> dict[tuple[int, int, int, int, int], int]:
  """{(batch, side, channels, groups, stride): how many} of the model's grouped convs."""
  shapes: dict[tuple[int, int, int, int, int], int] = {}

  def record(module, inputs, _):
    n, c, h, _ = inputs[0].shape
    key = (n, h, c, module.groups, module.stride[0])
    shapes[key] = shapes.get(key, 0) + 1

  hooks = [m.register_forward_hook(record) for m in model.modules()
           if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
  with torch.inference_mode():
    model(images)
  for hook in hooks:
    hook.remove()
  return shapes


def conv_shapes(args: argparse.Namespace) -> list[dict[str, object]]:
  """Forward and forward + backward seconds of each grouped conv of the model."""
  torch.set_num_threads(args.threads)
  model = timm.create_model(args.arch, pretrained=False).eval()
  images = torch.randn(args.batch, 3, args.resolution, args.resolution)
  rows = []
  for (n, side, channels, groups, stride), count in grouped_convs(model, images).items():
    x = torch.randn(n, channels, side, side, requires_grad=True)
    w = torch.randn(channels, channels // groups, 3, 3, requires_grad=True)
    conv = lambda: torch.nn.functional.conv2d(x, w, None, stride, 1, 1, groups)

    def both():
      out = conv()
      out.backward(torch.ones_like(out))

    rows.append({"batch": n, "side": side, "channels": channels, "groups": groups,
                 "stride": stride, "count": count,
                 "forward": _timed(conv, args.steps, args.warmup_steps),
                 "forward_backward": _timed(both, args.steps, args.warmup_steps)})
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--arch", default="dm_nfnet_f0")
  parser.add_argument("--resolution", type=int, default=128)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--clipping", type=float, default=0.01)
  parser.add_argument("--ema_decay", type=float, default=0.0,
                      help="Also keep an EMA of the weights with this decay (0: none).")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup_steps", type=int, default=2)
  parser.add_argument("--train", action=argparse.BooleanOptionalAction, default=True,
                      help="Time the training step.")
  parser.add_argument("--forward_resolution", type=int,
                      help="Also time the eval-mode forward pass at this side.")
  parser.add_argument("--profile", action="store_true",
                      help="Profile the timed training steps (their times then include the profiler's overhead).")
  parser.add_argument("--conv_shapes", action="store_true",
                      help="Time the model's grouped convolutions alone instead.")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()
  if args.conv_shapes:
    rows = conv_shapes(args)
    if args.json:
      print(json.dumps(rows))
      return
    totals = [0.0, 0.0]
    for r in rows:
      fwd, both = r["forward"]["median_s"], r["forward_backward"]["median_s"]
      totals[0] += r["count"] * fwd
      totals[1] += r["count"] * both
      print(f"{r['side']} px, {r['channels']} channels, {r['groups']} groups, stride "
            f"{r['stride']} (x{r['count']}): forward median {fwd * 1e3:6.1f} ms; "
            f"forward + backward median {both * 1e3:6.1f} ms")
    print(f"all {sum(r['count'] for r in rows)}: forward {totals[0] * 1e3:.1f} ms, "
          f"forward + backward {totals[1] * 1e3:.1f} ms (medians x count)")
    return
  result = benchmark(args)
  if args.json:
    print(json.dumps(result))
    return
  print(f"{args.arch}: torch {result['torch']}, timm {result['timm']}, "
        f"{result['threads']} threads, batch {args.batch}")
  for name in ("train", "forward"):
    if name in result:
      r = result[name]
      print(f"  {name} {r['resolution']} px: min {r['min_s']:.3f} s, median "
            f"{r['median_s']:.3f} s, max {r['max_s']:.3f} s per step")
  if "profile" in result:
    print("  self CPU time per profiled step, by PyTorch operator:")
    for op in result["profile"][:25]:
      print(f"    {op['self_ms']:9.1f} ms x{op['calls']:<6.1f} {op['name']}")


if __name__ == "__main__":
  main()
