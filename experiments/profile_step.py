r"""Where the benchmarked training step spends its device time, op by op.

    python -m experiments.profile_step --model=NFNet --variant=F0 --resolution=128 --batch=8
    python -m experiments.profile_step --variant=F0 --resolution=192 --batch=32 \
        --dtype=bfloat16 --trace_dir=/tmp/f0_trace --hlo=/tmp/f0_step.hlo.txt

Builds the step `nfnets_jax.bench` times (the same flags), runs
`--warmup_steps` untraced steps, traces `--steps` more with
`jax.profiler.trace`, and reads the trace back with `jax.profiler.ProfileData`.
It prints, per profiled line (a GPU's streams, the CPU's threads), the time
per step by kind of event (XLA's instance numbers dropped: every
'input_transpose_fusion') and the events that took most time. Events can
nest (on the CPU, `ThunkExecutor::Execute` encloses the ops it runs), so a
line's total and shares count nested time twice there; a GPU stream's
kernels do not nest. `--hlo` also
writes the compiled step's HLO text, whose fusion names the GPU's kernels
and the CPU's ops carry, and whose metadata names each op's model scope.
On the CPU it then splits each step's wall time among the ops XLA's threads
ran (an instant shared by two ops counts half to each), by kind and by
model scope (forward or backward, and the op's last two modules), and
counts the time no op was running as idle. Idle time follows asynchronous
ops: a dot XLA hands to Eigen (kind 'dot', 'dot_general') returns at once
and computes on the thread pool afterwards, so its cost shows up as idle.
TensorBoard's profile plugin and Perfetto open the trace directory too.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
from typing import Callable, Optional, Sequence

import jax

from nfnets_jax import bench
from nfnets_jax import host_memory


def _kind(name: str) -> str:
  """An event's name without XLA's instance number: 'loop_add_fusion_12' -> 'loop_add_fusion'."""
  return re.sub(r"[._]\d+$", "", name)


def _table(events: list[tuple[str, int]], key: Callable[[str], str], num_steps: int,
           total_ms: float, top: int) -> list[str]:
  """The `top` groups of `events` (name, ns) by `key(name)`, longest first."""
  totals: dict[str, float] = collections.defaultdict(float)
  counts: dict[str, int] = collections.Counter()
  for name, ns in events:
    totals[key(name)] += ns
    counts[key(name)] += 1
  rows = []
  for name, ns in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
    ms = ns / 1e6 / num_steps
    rows.append(f"  {ms:9.3f} ms {ms / total_ms:6.1%} x{counts[name] / num_steps:<6.1f} "
                f"{name[:110]}")
  return rows


# Events on XLA's CPU threads that enclose or bracket ops rather than being ops.
_NOT_OPS = ("ThunkExecutor", "end:", "Slinky", "ThreadpoolListener")
_CPU_STEP = "ThunkExecutor::Execute (wait for completion)"


def wall_split(ops: Sequence[tuple[int, int, str]], windows: Sequence[tuple[int, int]]
               ) -> tuple[dict[str, float], float]:
  """({label: ns}, idle ns) of the time inside `windows` (start, end).

  `ops` are (start, end, label) intervals that may overlap: each instant
  is shared equally among the ops running then, or counted idle if none.
  """
  edges = sorted({t for a, b, _ in ops for t in (a, b)} | {t for w in windows for t in w})
  starts = sorted(ops)
  shares: dict[str, float] = collections.defaultdict(float)
  idle, running, next_op = 0.0, [], 0
  for left, right in zip(edges, edges[1:]):
    while next_op < len(starts) and starts[next_op][0] <= left:
      running.append(starts[next_op])
      next_op += 1
    running = [op for op in running if op[1] > left]
    inside = sum(max(0, min(right, b) - max(left, a)) for a, b in windows)
    if not inside:
      continue
    if not running:
      idle += inside
    for _, _, label in running:
      shares[label] += inside / len(running)
  return dict(shares), idle


def _scopes(hlo_text: str) -> dict[str, str]:
  """{instruction: 'forward|backward module/module'} from the HLO's op_name metadata."""
  scopes = {}
  for m in re.finditer(r'%([\w.\-]+) = [^\n]*?metadata=\{op_name="([^"]*)"', hlo_text):
    name, op = m.groups()
    direction = "backward" if "transpose(jvp(" in op else "forward"
    modules = [p for p in re.sub(r"\w+\(|\)", "", op).split("/")[1:-1] if p and p != "~"]
    scope = re.sub(r"_[0-9]+", "", "/".join(modules[-2:]))
    scopes.setdefault(name, f"{direction} {scope}" if scope else
                      "outside the model (loss, optimizer, metrics)")
  return scopes


def cpu_wall_time(profile: jax.profiler.ProfileData, hlo_text: str, top: int) -> str:
  """Each CPU step's wall time split among its ops (`wall_split`), by kind and scope."""
  ops, windows = [], []
  for plane in profile.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_XLA"):
        continue
      for e in line.events:
        interval = (e.start_ns, e.start_ns + e.duration_ns)
        if e.name == _CPU_STEP:
          windows.append(interval)
        elif not e.name.startswith(_NOT_OPS):
          ops.append((*interval, e.name))
  if not windows:
    return ""
  shares, idle = wall_split(ops, windows)
  step_ms = sum(b - a for a, b in windows) / 1e6 / len(windows)
  scopes = _scopes(hlo_text)
  out = [f"\nCPU wall time per step ({step_ms:.1f} ms), split among the ops running together; "
         f"idle (no op running) {idle / 1e6 / len(windows):.1f} ms"]
  for title, key in (("by kind", _kind), ("by scope", lambda n: scopes.get(n, "(no metadata)"))):
    totals: dict[str, float] = collections.defaultdict(float)
    for name, ns in shares.items():
      totals[key(name)] += ns
    out.append(f" {title}:")
    for name, ns in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
      ms = ns / 1e6 / len(windows)
      out.append(f"  {ms:9.3f} ms {ms / step_ms:6.1%} {name[:110]}")
  return "\n".join(out)


def summarize(profile: jax.profiler.ProfileData, num_steps: int, top: int) -> str:
  """Per line of the trace: time by kind of event, then the `top` longest events.

  Times are summed over the traced steps and divided by their number.
  """
  out = []
  for plane in profile.planes:
    for line in plane.lines:
      events = [(event.name, event.duration_ns) for event in line.events]
      total_ms = sum(ns for _, ns in events) / 1e6 / num_steps
      if not total_ms:
        continue
      out.append(f"\n{plane.name} | {line.name}: {total_ms:.2f} ms per step in "
                 f"{len(events) / num_steps:.0f} events\n by kind:")
      out += _table(events, _kind, num_steps, total_ms, top)
      out.append(" longest events:")
      out += _table(events, lambda name: name, num_steps, total_ms, top)
  return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--trace_dir", help="Where the trace goes (default: a temporary folder).")
  parser.add_argument("--hlo", help="Also write the compiled step's HLO text here.")
  parser.add_argument("--top", type=int, default=25, help="Events listed per line.")
  own, rest = parser.parse_known_args(argv)
  host_memory.reuse_freed_memory()
  args = bench.parse_args(["--no-agc_overhead", *rest])
  config, num_classes, per_device_batch = bench.resolve_config(args)
  variant = bench.build_variant(config, num_classes, per_device_batch)
  hlo_text = variant.step.as_text()
  if own.hlo:
    with open(own.hlo, "w") as f:
      f.write(hlo_text)
  for _ in range(max(args.warmup_steps, 1)):
    variant.run()
  trace_dir = own.trace_dir or tempfile.mkdtemp(prefix="profile_step_")
  with jax.profiler.trace(trace_dir):
    for _ in range(args.steps):
      variant.run()
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
                 key=os.path.getmtime)
  if not paths:
    sys.exit(f"error: jax.profiler.trace wrote no .xplane.pb under {trace_dir}")
  times = variant.times[-args.steps:]
  print(f"{config.model.name} {config.model.kwargs.to_dict()} at {config.data.train_px} px, "
        f"batch {per_device_batch} x {jax.device_count()} {jax.default_backend()}, "
        f"{config.train.compute_dtype}: traced steps took "
        f"{', '.join(f'{t * 1e3:.1f}' for t in times)} ms; trace {paths[-1]}")
  profile = jax.profiler.ProfileData.from_file(paths[-1])
  print(summarize(profile, args.steps, own.top))
  print(cpu_wall_time(profile, hlo_text, own.top))


if __name__ == "__main__":
  main()
