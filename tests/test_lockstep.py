"""nfnets_jax.lockstep: benchmark processes take strict turns, never overlapping."""
import json
import pathlib
import statistics
import subprocess
import sys
import textwrap

import pytest

from nfnets_jax import bench
from nfnets_jax import lockstep

# A benchmark stand-in. It loads lockstep.py by path, without the nfnets_jax
# package (as the PyTorch benchmark does), busy-waits through each "step"
# and logs the step's start and end on the system-wide monotonic clock.
WORKER = textwrap.dedent("""
    import importlib.util, json, sys, time
    spec = importlib.util.spec_from_file_location("lockstep", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    turns = module.turns()
    name, steps, seconds = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    times = []
    with open(sys.argv[5], "a") as log:
      for _ in range(steps):
        turns.next()
        start = time.monotonic()
        while time.monotonic() - start < seconds:
          pass
        end = time.monotonic()
        times.append(end - start)
        log.write(f"{name} {start} {end}\\n")
        log.flush()
    print("progress lines come first")
    print(json.dumps({"step_times_s": times, "forward": {"step_times_s": times[:2]}}))
    sys.exit(int(sys.argv[6]) if len(sys.argv) > 6 else 0)
""")
LOCKSTEP = pathlib.Path(lockstep.__file__)


def _worker(tmp_path, name, steps, seconds, *exit_code):
  script = tmp_path / "worker.py"
  script.write_text(WORKER)
  return [sys.executable, str(script), str(LOCKSTEP), name, str(steps), str(seconds),
          str(tmp_path / "log.txt"), *map(str, exit_code)]


def test_steps_alternate_and_never_overlap(tmp_path):
  results = lockstep.run_in_turns({
      "a": _worker(tmp_path, "a", 6, 0.02),
      "b": _worker(tmp_path, "b", 4, 0.03),
      "c": _worker(tmp_path, "c", 5, 0.01)})
  assert list(results) == ["a", "b", "c"]  # The order given, not the order they exited.
  assert [len(r["step_times_s"]) for r in results.values()] == [6, 4, 5]
  steps = sorted((float(start), float(end), name) for name, start, end in
                 (line.split() for line in (tmp_path / "log.txt").read_text().splitlines()))
  for (_, end, _), (next_start, _, _) in zip(steps, steps[1:]):
    assert end <= next_start  # Only the process holding the token computes.
  # Each cycle of turns starts one command later; the first cycle starts the
  # three (no steps), then bca, cab, abc, bca; b has ended, so ca; then a.
  assert [name for *_, name in steps] == list("bca" + "cab" + "abc" + "bca" + "ca" + "a")


def test_compare_pairs_steps_by_index_against_the_first():
  results = {"ours": {"step_times_s": [1.0, 2.0, 3.0], "forward": {"step_times_s": [1.0, 1.0]}},
             "theirs": {"train": {"step_times_s": [2.0, 1.0, 4.0]},
                        "forward": {"step_times_s": [2.0, 4.0]}}}
  table = lockstep.compare(results)
  assert table["train"]["ours"] == {"median_s": 2.0, "min_s": 1.0, "max_s": 3.0, "steps": 3}
  theirs = table["train"]["theirs"]
  # Ratios 1/2, 2/1, 3/4: median 0.75; ours faster in the first and third pairs.
  assert theirs["median_ratio_first_over_this"] == pytest.approx(0.75)
  assert (theirs["pairs"], theirs["pairs_first_faster"]) == (3, 2)
  forward = table["forward"]["theirs"]
  assert forward["median_ratio_first_over_this"] == pytest.approx((0.5 + 0.25) / 2)
  assert "train" in lockstep.format_table(table) and "2/3 pairs" in lockstep.format_table(table)


def test_failing_or_silent_commands_are_named(tmp_path):
  with pytest.raises(RuntimeError, match="b .*exited with status 3"):
    lockstep.run_in_turns({"a": _worker(tmp_path, "a", 2, 0.0),
                           "b": _worker(tmp_path, "b", 1, 0.0, 3)})
  with pytest.raises(RuntimeError, match="quiet did not end its output with a JSON"):
    lockstep.run_in_turns({"quiet": [sys.executable, "-c", "print('no json')"]})


def test_main_rejects_malformed_runs(capsys):
  with pytest.raises(SystemExit):
    lockstep.main(["--run", "no-equals-sign"])
  assert "NAME=COMMAND" in capsys.readouterr().err
  for pair in ("x/z", "x/x", "x", "x/y/x"):
    with pytest.raises(SystemExit):
      lockstep.main(["--run", "x=true", "--run", "y=true", "--pair", pair])
    assert "--pair needs two different NAMEs of --run" in capsys.readouterr().err


def test_bench_hands_the_token_on_before_every_step():
  events = []

  class Fake:
    def __init__(self, name):
      self.name, self.times, self.page_faults = name, [], []

    def run(self):
      events.append(self.name)

  bench.time_interleaved([Fake("a"), Fake("b")], num_steps=2, warmup_steps=1,
                         between_steps=lambda: events.append("|"))
  assert "".join(events) == "|a|b" * 3


def test_no_driver_no_turns(monkeypatch):
  monkeypatch.delenv(lockstep.ENV_VAR, raising=False)
  assert lockstep.turns() is None


def test_driver_end_to_end_prints_the_table(tmp_path):
  runs = [arg for name in "xyz" for arg in
          ("--run", f"{name}=" + " ".join(_worker(tmp_path, name, 3, 0.002)))]
  done = subprocess.run(
      [sys.executable, "-m", "nfnets_jax.lockstep", "--json", *runs, "--pair=z/y"],
      capture_output=True, text=True, check=True)
  out = json.loads(done.stdout)
  assert set(out["comparison"]) == {"train", "forward"}
  assert out["comparison"]["train"]["y"]["pairs"] == 3
  assert len(out["results"]["x"]["step_times_s"]) == 3
  # The extra pair: z's steps against y's, by index, as the first's are.
  z_over_y = [z / y for z, y in zip(out["results"]["z"]["step_times_s"],
                                    out["results"]["y"]["step_times_s"])]
  row = out["pairs"]["z/y"]["train"]["y"]
  assert row["median_ratio_first_over_this"] == pytest.approx(statistics.median(z_over_y))
  assert row["pairs_first_faster"] == sum(r < 1 for r in z_over_y)
  text = subprocess.run([sys.executable, "-m", "nfnets_jax.lockstep", *runs, "--pair=z/y"],
                        capture_output=True, text=True, check=True).stdout
  assert "z/y median ratio" in text and "x/y median ratio" in text


def test_the_balanced_ratio_weighs_each_phase_of_the_rotation_alike():
  # Two commands: in alternate pairs the first runs right after its own turn.
  ours = {"step_times_s": [0.9, 1.2, 0.9, 1.2, 0.9, 1.2, 0.9]}
  theirs = {"step_times_s": [1.0] * 7}
  row = lockstep.compare({"ours": ours, "theirs": theirs})["train"]["theirs"]
  assert row["median_ratio_first_over_this"] == pytest.approx(0.9)  # 4 of the 7 pairs.
  assert row["balanced_ratio_first_over_this"] == pytest.approx((0.9 * 1.2) ** 0.5)
  # Under a rotation of three commands the phases are pairs 0, 3 / 1, 4 / 2, 5.
  ours3 = {"step_times_s": [0.9, 1.2, 1.0, 0.9, 1.2, 1.0]}
  row = lockstep.compare({"ours": ours3, "theirs": theirs}, period=3)["train"]["theirs"]
  assert row["balanced_ratio_first_over_this"] == pytest.approx((0.9 * 1.2 * 1.0) ** (1 / 3))
  assert "order-balanced 1.039" in lockstep.format_table(
      lockstep.compare({"ours": ours, "theirs": theirs}))
