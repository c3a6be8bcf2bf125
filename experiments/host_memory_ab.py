r"""NFNet forward + backward with and without host-memory reuse, in one process.

    python -m experiments.host_memory_ab

Alternates phases of `--steps` steps: glibc's default mmap and trimming
('default'), then `nfnets_jax.host_memory`'s settings ('reuse'), `--cycles`
times, so slow drifts of a shared machine hit both alike. One arena is set
for the whole process first (an arena limit cannot be lifted once threads
have arenas), so the phases differ in mmap and trimming only; a process
without it (the opt-out) faults more than the 'default' phase here. Prints
the median and min step time and the median page faults of each phase; the
first step of each phase is not counted.
"""
from __future__ import annotations

import argparse
import ctypes
import resource
import statistics
import time

import jax

from experiments import step_parts
from nfnets_jax import host_memory

_LIBC = ctypes.CDLL("libc.so.6")

# glibc's defaults: dynamic mmap threshold with at most 65536 mappings, and
# a 128 KiB trim threshold (M_MMAP_MAX, M_TRIM_THRESHOLD in mallopt(3)).
_DEFAULTS = ((host_memory.M_MMAP_MAX, 65536), (host_memory.M_TRIM_THRESHOLD, 128 * 1024))
_REUSE = ((host_memory.M_MMAP_MAX, 0), (host_memory.M_TRIM_THRESHOLD, host_memory.INT_MAX))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--variant", default="F0")
  parser.add_argument("--resolution", type=int, default=128)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--cycles", type=int, default=4)
  args = parser.parse_args()
  _LIBC.mallopt(host_memory.M_ARENA_MAX, 1)  # Before JAX starts its threads.

  loss, params, images = step_parts.training_loss(args.variant, args.resolution, args.batch)
  grad = jax.jit(jax.grad(loss))
  jax.block_until_ready(grad(params, images))
  times = {"default": [], "reuse": []}
  faults = {"default": [], "reuse": []}
  for _ in range(args.cycles):
    for phase, settings in (("default", _DEFAULTS), ("reuse", _REUSE)):
      for param, value in settings:
        _LIBC.mallopt(param, value)
      _LIBC.malloc_trim(0)  # Each phase starts from a trimmed heap.
      for i in range(args.steps):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        jax.block_until_ready(grad(params, images))
        if i:
          times[phase].append(time.perf_counter() - start)
          faults[phase].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  print(f"NFNet {args.variant}, {args.resolution} px, batch {args.batch}, forward + backward, "
        f"{args.cycles} cycles of {args.steps} steps")
  for phase in times:
    print(f"  {phase:8s} median {statistics.median(times[phase]) * 1e3:6.0f} ms, "
          f"min {min(times[phase]) * 1e3:6.0f} ms, "
          f"page faults per step {statistics.median(faults[phase]):8.0f}")


if __name__ == "__main__":
  main()
