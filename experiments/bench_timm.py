r"""The PyTorch peer of `nfnets_jax.bench`: timm's NFNet, the same step, timed.

    python experiments/bench_timm.py --arch=dm_nfnet_f0 --resolution=128 --batch=8 --threads=2
    python experiments/bench_timm.py --forward_resolution=256 --json
    python experiments/bench_timm.py --ema_decay=0.99999   # with a weight EMA, as ours

Run it in an environment with torch and timm (neither is a dependency of
nfnets_jax; the test suite never imports them). The timed training step is
the paper's: forward in train mode, softmax cross-entropy, backward, timm's
`adaptive_clip_grad` (AGC, clipping 0.01, on every parameter as timm applies
it) and SGD with Nesterov momentum 0.9, on random images; `--ema_decay` adds
what the JAX step also does, an EMA of the weights (timm's `ModelEmaV3`, as
its train.py's `--model-ema` keeps it). The forward pass is
eval mode under `torch.inference_mode()`. Prints min / median / max seconds
per step, like the JAX benchmark, so the two can be run alternately.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import numpy as np
import timm
import torch
from timm.utils import ModelEmaV3
from timm.utils import agc


def _timed(fn: Callable[[], None], steps: int, warmup: int) -> dict[str, float]:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  t = np.asarray(times)
  return {"min_s": float(t.min()), "median_s": float(np.median(t)),
          "max_s": float(t.max())}


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
    result["train"] = {"resolution": args.resolution,
                       **_timed(train_step, args.steps, args.warmup_steps)}
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
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()
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


if __name__ == "__main__":
  main()
