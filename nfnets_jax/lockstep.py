r"""Benchmark processes that take turns, so no two of them ever run at once.

On a shared machine the load moves by tens of percent within minutes, more
than the differences worth measuring, so two benchmarks run one after the
other compare two moments as much as two programs. This driver runs several
benchmark commands in strict turns: it starts each one when its first turn
comes and passes a single token around; a process computes only while it
holds it. The benchmarks give the token back between timed steps, so their
steps alternate one by one and step i of each command runs within seconds of
step i of the others. Each cycle of turns starts one command later than the
one before (a b, b a, a b, ... for two). In a fixed order the first of two
identical F0 training benchmarks ran 9.6% slower (paired median; it won 1
of 20 pairs), the first of three 3.5-6% slower. Rotated, in two runs, the
paired medians were 1.014 and 1.019, but the pairs split by which command
went first in their cycle: 0.98 and 0.998 when the first command did (so
ran right after its own previous turn), 1.105 and 1.053 when it followed
the other; a process runs 3-5% faster after its own turn than after
another's, and the rotation gives each command that advantage in half the
pairs. Balanced so (the geometric mean of the two, 1.041 and 1.025) the
first command was still slower: compare programs in both orders
(2026-12-08, the 2-core Intel machine).
It then pairs the steps by index and reports, against
the first command, the median of the per-pair time ratios, that ratio with
the turn order balanced (`balanced_ratio`: over the rotation's phases) and
how many pairs each command won; `--pair=A/B` also compares two other
commands, such as two that do the same work when the first does more.

    python -m nfnets_jax.lockstep --run "ours=python -m nfnets_jax.bench --model=NFNet --variant=F0 --steps=20 --no-agc_overhead --forward --forward_resolution=256 --json" \
        --run "timm=/tmp/torchenv/bin/python experiments/bench_timm.py --steps=20 --forward_resolution=256 --json"

A command takes part by calling `turns()` and `Turns.next()` between its
timed steps (`nfnets_jax.bench` and `experiments/bench_timm.py` do), and by
printing one JSON object as its last line of output, holding
`step_times_s` lists (at the top level for its training steps, or under keys
such as 'train' and 'forward'). The driver passes the token through two
pipes whose descriptors it puts in the `NFNETS_JAX_LOCKSTEP_FDS` environment
variable. Only the standard library is imported here, so the PyTorch
benchmark can load this file in an environment without JAX.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from typing import Optional, Sequence

ENV_VAR = "NFNETS_JAX_LOCKSTEP_FDS"


class Turns:
  """A benchmark's side of the token: `next()` hands it on and waits for it."""

  def __init__(self, fds: str):
    go, done = (int(fd) for fd in fds.split(","))
    self._go = os.fdopen(go, "r")
    self._done = os.fdopen(done, "w")

  def next(self) -> None:
    """Ends this process's turn; returns when its next turn starts."""
    self._done.write("turn\n")
    self._done.flush()
    if not self._go.readline():
      raise RuntimeError("The lockstep driver exited; stopping.")


def turns() -> Optional[Turns]:
  """The token, when this process runs under the driver; None otherwise."""
  fds = os.environ.get(ENV_VAR)
  return Turns(fds) if fds else None


class _Command:
  """One benchmark command, started at its first turn."""

  def __init__(self, name: str, argv: Sequence[str]):
    self.name, self.argv = name, list(argv)
    self.process: Optional[subprocess.Popen] = None
    self.output = tempfile.TemporaryFile("w+")  # A pipe could fill and block it.

  def take_turn(self) -> bool:
    """Runs one turn; False once the command has exited."""
    if self.process is None:
      go_read, self._go = os.pipe()
      done_read, done_write = os.pipe()
      env = {**os.environ, ENV_VAR: f"{go_read},{done_write}"}
      self.process = subprocess.Popen(self.argv, env=env, stdout=self.output,
                                      pass_fds=(go_read, done_write))
      os.close(go_read)
      os.close(done_write)
      self._done_file = os.fdopen(done_read, "r")
    else:
      os.write(self._go, b"go\n")
    if self._done_file.readline():
      return True
    code = self.process.wait()
    os.close(self._go)
    self._done_file.close()
    if code:
      raise RuntimeError(f"{self.name} ({shlex.join(self.argv)}) exited with status {code}.")
    return False

  def result(self) -> dict:
    self.output.seek(0)
    lines = self.output.read().strip().splitlines()
    try:
      return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
      raise RuntimeError(f"{self.name} did not end its output with a JSON object; "
                         "run it with --json.") from None


def run_in_turns(commands: dict[str, Sequence[str]]) -> dict[str, dict]:
  """Runs the commands in strict turns until all exit; their JSON results by name."""
  everyone = [_Command(name, argv) for name, argv in commands.items()]
  running = list(everyone)
  cycle = 0
  while running:
    # Each cycle of turns starts one command later (see the module docstring).
    start = cycle % len(running)
    going_on = {command.name for command in running[start:] + running[:start]
                if command.take_turn()}
    running = [command for command in running if command.name in going_on]
    cycle += 1
  return {command.name: command.result() for command in everyone}


def step_times(result: dict) -> dict[str, list[float]]:
  """{'train': [...], 'forward': [...], ...}: the step times in one result."""
  times = {}
  if "step_times_s" in result:
    times["train"] = result["step_times_s"]
  for key, value in result.items():
    if isinstance(value, dict) and "step_times_s" in value:
      times[key] = value["step_times_s"]
  return times


def balanced_ratio(ratios: Sequence[float], period: int) -> float:
  """The paired ratios with the turn order balanced: the geometric mean, over
  the `period` phases of the rotation (pairs i, i + period, ...), of each
  phase's median; in one phase a command may always run right after itself."""
  medians = [statistics.median(ratios[phase::period])
             for phase in range(min(period, len(ratios)))]
  return math.exp(statistics.fmean(math.log(m) for m in medians))


def compare(results: dict[str, dict],
            period: Optional[int] = None) -> dict[str, dict[str, dict]]:
  """Per kind of step and command: min / median / max, and pairs against the
  first; `period`: how many commands took turns (default: those in `results`)."""
  period = period or len(results)
  times = {name: step_times(result) for name, result in results.items()}
  first = next(iter(times))
  table: dict[str, dict[str, dict]] = {}
  for kind in times[first]:
    for name, by_kind in times.items():
      if kind not in by_kind:
        continue
      t = by_kind[kind]
      row = {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
             "steps": len(t)}
      if name != first:
        pairs = list(zip(times[first][kind], t))
        ratios = [ours / theirs for ours, theirs in pairs]
        row.update(pairs=len(pairs), median_ratio_first_over_this=statistics.median(ratios),
                   balanced_ratio_first_over_this=balanced_ratio(ratios, period),
                   pairs_first_faster=sum(r < 1 for r in ratios))
      table.setdefault(kind, {})[name] = row
  return table


def format_table(table: dict[str, dict[str, dict]]) -> str:
  lines = []
  for kind, rows in table.items():
    first = next(iter(rows))
    for name, row in rows.items():
      text = (f"{kind:8s} {name:12s} median {row['median_s']:.3f} s "
              f"(min {row['min_s']:.3f} / max {row['max_s']:.3f}, {row['steps']} steps)")
      if "pairs" in row:
        text += (f"; {first}/{name} median ratio {row['median_ratio_first_over_this']:.3f} "
                 f"(order-balanced {row['balanced_ratio_first_over_this']:.3f}), "
                 f"{first} faster in {row['pairs_first_faster']}/{row['pairs']} pairs")
      lines.append(text)
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m nfnets_jax.lockstep",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--run", action="append", required=True, metavar="NAME=COMMAND",
                      help="A benchmark command, named; give two or more. The "
                      "first is the one the others are compared with.")
  parser.add_argument("--pair", action="append", default=[], metavar="A/B",
                      help="Also compare command A with command B (two NAMEs of --run), "
                      "step by step as the first is with the others; repeatable.")
  parser.add_argument("--json", action="store_true",
                      help="Print one JSON object: the comparison and every command's result.")
  args = parser.parse_args(argv)
  commands = {}
  for spec in args.run:
    name, sep, command = spec.partition("=")
    if not sep or not name or not command.strip() or name in commands:
      parser.error(f"--run needs a new NAME=COMMAND, got {spec!r}.")
    commands[name] = shlex.split(command)
  pairs = [tuple(spec.split("/")) for spec in args.pair]
  for spec, pair in zip(args.pair, pairs):
    if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(commands):
      parser.error(f"--pair needs two different NAMEs of --run as A/B "
                   f"(names: {', '.join(commands)}), got {spec!r}.")
  try:
    results = run_in_turns(commands)
  except RuntimeError as e:
    sys.exit(f"error: {e}")
  table = compare(results)
  paired = {f"{a}/{b}": compare({a: results[a], b: results[b]}, len(results))
            for a, b in pairs}
  if args.json:
    print(json.dumps({"comparison": table, "pairs": paired, "results": results}), flush=True)
  else:
    print("\n".join([format_table(table), *map(format_table, paired.values())]), flush=True)


if __name__ == "__main__":
  main()
