"""Smoke test of the benchmark harness (`python -m nfnets_jax.bench --json`)."""
import contextlib
import io
import json
import math
import pathlib
import re
import subprocess
import sys

import jax
import pytest

from experiments import profile_step
from nfnets_jax import bench

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent

# One bottleneck block: compiling dominates the cost of this test.
TINY = ["--model=NFResNet", '--model_kwargs={"width": 0.25, "stage_depths": [1]}',
        "--resolution=16", "--batch=1", "--num_classes=10", "--steps=2",
        "--matmul_size=128"]


def _hand_count_macs() -> int:
  """Forward MACs of TINY, layer by layer (output positions x fan-in x outputs)."""
  stem = 8 * 8 * (7 * 7 * 3) * 4  # 7x7 stride 2 to 8x8, 4 channels; max pool to 4x4
  shortcut = 4 * 4 * 4 * 16  # 1x1 projection 4 -> 16 (stage width 64 * 0.25)
  conv0 = 4 * 4 * 4 * 4  # 1x1 to the bottleneck width 16 * 0.25
  conv1 = 4 * 4 * (3 * 3 * 4) * 4
  conv2 = 4 * 4 * 4 * 16
  classifier = 16 * 10
  return stem + shortcut + conv0 + conv1 + conv2 + classifier


@pytest.fixture(scope="module")
def result():
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    bench.main([*TINY, "--json", "--input", "--input_batches=2", "--forward",
                "--forward_resolution=16"])
  lines = stdout.getvalue().strip().splitlines()
  assert len(lines) == 1, "--json must print exactly one line on stdout"
  return json.loads(lines[0])


def test_json_has_every_figure_positive_and_finite(result):
  figures = ["compile_s", "step_time_median_s", "step_time_min_s", "step_time_max_s",
             "images_per_s", "gflop_per_step", "achieved_gflops", "matmul_peak_gflops",
             "peak_fraction", "peak_memory_bytes", "xla_step_memory_bytes",
             "step_time_with_agc_s", "step_time_without_agc_s"]
  for key in figures:
    assert math.isfinite(result[key]) and result[key] > 0, key
  assert result["step_time_iqr_s"] >= 0
  assert result["agc_overhead"] > -1 and math.isfinite(result["agc_overhead"])
  for key in ("batches_per_s", "images_per_s", "headroom"):
    assert math.isfinite(result["input"][key]) and result["input"][key] > 0, key
  for key in ("compile_s", "step_time_median_s", "images_per_s", "achieved_gflops"):
    assert math.isfinite(result["forward"][key]) and result["forward"][key] > 0, key
  assert len(result["load_average_start"]) == 3
  assert result["peak_memory_source"]


def test_figures_follow_their_definitions(result):
  devices = jax.device_count()
  assert result["devices"] == devices and result["global_batch"] == devices
  assert result["gmacs_per_image"] * 1e9 == pytest.approx(_hand_count_macs())
  # 2 FLOPs per MAC, x3 for forward plus backward, for every image of the step.
  assert result["gflop_per_step"] * 1e9 == pytest.approx(6 * _hand_count_macs() * devices)
  assert result["images_per_s"] == pytest.approx(devices / result["step_time_median_s"])
  # The forward pass alone: 2 FLOPs per MAC, no backward.
  forward = result["forward"]
  assert forward["resolution"] == 16 and forward["gmacs_per_image"] * 1e9 == pytest.approx(
      _hand_count_macs())
  assert forward["achieved_gflops"] * 1e9 == pytest.approx(
      2 * _hand_count_macs() * devices / forward["step_time_median_s"])
  assert forward["peak_fraction"] == pytest.approx(
      forward["achieved_gflops"] / result["matmul_peak_gflops"])
  assert result["achieved_gflops"] == pytest.approx(
      result["gflop_per_step"] / result["step_time_median_s"])
  assert result["peak_fraction"] == pytest.approx(
      result["achieved_gflops"] / result["matmul_peak_gflops"])
  # The peak is measured before every step of every variant and once after:
  # the main step, its AGC counterpart and the forward pass here.
  steps = result["steps"] + 1  # One warm-up step by default.
  assert result["matmul_peak_measurements"] == 3 * steps + 1
  low, high = result["matmul_peak_range_gflops"]
  assert low <= result["matmul_peak_gflops"] <= high
  # The default optimizer has AGC, so the counterpart step runs without it.
  assert result["agc_clipping"] == 0.01
  assert result["step_time_with_agc_s"] == result["step_time_median_s"]
  assert result["agc_overhead"] == pytest.approx(
      result["step_time_with_agc_s"] / result["step_time_without_agc_s"] - 1)
  assert result["input"]["headroom"] == pytest.approx(
      result["input"]["batches_per_s"] * result["step_time_median_s"])


def test_table_names_each_figure(result):
  table = bench.format_table(result)
  for label in ("convolutions", "compile", "weight EMA", "step time", "images/s", "GFLOP/s",
                "matmul peak", "peak memory", "AGC overhead", "forward", "input pipeline",
                "load average"):
    assert label in table, label


def test_bad_flags_name_the_fix():
  with pytest.raises(ValueError, match="apply to NFNet"):
    bench.resolve_config(bench.parse_args([*TINY, "--compare_grouped_conv"]))
  with pytest.raises(ValueError, match="must be a JSON object"):
    bench.resolve_config(bench.parse_args([*TINY, "--model_kwargs=width=0.5"]))
  with pytest.raises(ValueError, match="contradicts the config"):
    bench.resolve_config(bench.parse_args(
        ["--config=experiments/digits.py", "--model=ResNet"]))


def test_ema_decay_flag_sets_the_weight_average_the_step_keeps():
  # timm's step keeps no EMA unless asked: --ema_decay=0 times the same work.
  after_two_steps = {}
  for flags in ([], ["--ema_decay=0"]):
    config, num_classes, batch = bench.resolve_config(bench.parse_args([*TINY, *flags]))
    variant = bench.build_variant(config, num_classes, batch)
    start = jax.device_get(variant.state.params)  # Before a step donates it.
    for _ in range(2):  # The first step's learning rate is 0 (warm-up from 0).
      variant.run()
    after_two_steps[bool(flags)] = [jax.tree.leaves(jax.device_get(t)) for t in (
        start, variant.state.params, variant.state.ema_params)]
  start, params, ema = after_two_steps[True]
  assert any((a != b).any() for a, b in zip(start, params))
  assert all((a == b).all() for a, b in zip(ema, params))
  _, params, ema = after_two_steps[False]  # The config's EMA lags the weights.
  assert any((a != b).any() for a, b in zip(ema, params))
  config, _, _ = bench.resolve_config(bench.parse_args([*TINY, "--ema_decay=0.5"]))
  assert config.optimizer.ema_decay == 0.5
  with pytest.raises(ValueError, match="ema_decay must be in"):
    bench.resolve_config(bench.parse_args([*TINY, "--ema_decay=1"]))


def test_matmul_peak_chains_products_too_short_to_time(monkeypatch):
  # A clock that advances 1 ms per reading: every timed dispatch lasts 1 ms,
  # under min_seconds (50 ms), so the peak comes from 50 chained products.
  clock = iter(range(10**6))
  monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock) * 1e-3)
  size = 64
  measure = bench.matmul_peak_meter(jax.numpy.float32, size, reps=2, min_seconds=0.05)
  for _ in range(2):  # Measured anew on each call, from the same 50-product chain.
    assert measure() == pytest.approx(2 * size**3 * 50 * jax.local_device_count() / 1e-3)


def test_timing_the_step_needs_no_tensorflow():
  # Accelerator images often lack TensorFlow; only --input needs the pipeline.
  code = ("import sys; sys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None; "
          "import nfnets_jax.bench, experiments.profile_step")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_profile_step_lists_device_time_by_kind(capsys):
  assert profile_step._kind("input_transpose_fusion_109") == "input_transpose_fusion"
  assert profile_step._kind("loop_add_fusion.12") == "loop_add_fusion"
  kernel = "sm90_xmma_fprop_implicit_gemm_bf16bf16_tilesize128x128x64_g1"
  assert profile_step._kind(kernel) == kernel
  profile_step.main([*TINY, "--top=3"])
  out = capsys.readouterr().out
  assert re.search(r"traced steps took [\d.]+, [\d.]+ ms", out)  # --steps=2
  assert "by kind:" in out and "longest events:" in out
  assert re.search(r"CPU wall time per step \([\d.]+ ms\).*idle \(no op running\) [\d.]+ ms", out)
  assert "by scope:" in out


def test_wall_split_shares_overlaps_and_counts_idle():
  # A runs 0-10, B 5-15: alone, together (half each), alone, then nothing.
  ops = [(0, 10, "A"), (5, 15, "B")]
  assert profile_step.wall_split(ops, [(0, 20)]) == ({"A": 7.5, "B": 7.5}, 5.0)
  # Only the time inside the windows counts: 2-5 A, 5-10 shared, 10-12 B.
  assert profile_step.wall_split(ops, [(2, 12)]) == ({"A": 5.5, "B": 4.5}, 0.0)
  assert profile_step.wall_split(ops, [(0, 3), (16, 18)]) == ({"A": 3.0}, 2.0)
