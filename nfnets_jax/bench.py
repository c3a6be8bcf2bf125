r"""Training-step benchmark: speed, FLOP utilisation, memory, AGC overhead.

    python -m nfnets_jax.bench --model=NFNet --variant=F0 --resolution=128 --batch=8
    python -m nfnets_jax.bench --model=NFResNet --variant=ResNet50 --resolution=128 --batch=8
    python -m nfnets_jax.bench --compare_grouped_conv     # every grouped-conv formulation
    python -m nfnets_jax.bench --config=experiments/digits.py --input   # pipeline headroom
    python -m nfnets_jax.bench --forward --forward_resolution=256  # inference too
    ... --json                                            # one JSON object on stdout

The timed step is the training system's own (`train_step.make_train_step` on
the optimizer of `optim.build_optimizer`): forward, backward, cross-device
mean, AGC, weight decay, SGD and the weight EMA (`--ema_decay=0`: none), on
random images already on the devices. `--forward` also times the inference
forward pass (the evaluation step's model call, eval mode, at the test
resolution, on weights standardised once beforehand as evaluation does). Steps of the
measured variants (e.g. with and without AGC) are interleaved, so load that
changes during the run affects them alike; `python -m nfnets_jax.lockstep`
alternates them step by step with another benchmark process's (timm's, say).
The same command runs on CPU, GPU and TPU; `--batch` is per device.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import os
import resource
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nfnets_jax.models import counting
from nfnets_jax.models import inference
from nfnets_jax import data
from nfnets_jax import host_memory
from nfnets_jax import lockstep
from nfnets_jax.models import layers
from nfnets_jax import models
from nfnets_jax import optim
from nfnets_jax import train_config
from nfnets_jax import train_step as ts

# A model's variant when --variant is not given (timm's names have theirs).
DEFAULT_VARIANTS = {"NFNet": "F0", "NFResNet": "ResNet50", "NFRegNet": "B0",
                    "ResNet": "ResNet50", "SkipInitResNet": "ResNet50",
                    "FixupResNet": "ResNet50"}
# Forward plus backward costs about three forward passes (the backward pass
# computes gradients with respect to both activations and weights).
FORWARD_BACKWARD_FACTOR = 3
# What --compare_grouped_conv times: every formulation but 'auto'.
GROUPED_CONV_FORMULATIONS = tuple(i for i in layers.GROUPED_CONV_IMPLS if i != "auto")
# AGC lambda of the counterpart step when the benchmarked config has no AGC.
DEFAULT_CLIPPING = optim.default_config().clipping
# A long schedule: the few timed steps fall early in the config's warm-up, where
# learning rates are tiny, so no variant diverges while it is timed.
_SCHEDULE_STEPS, _SCHEDULE_STEPS_PER_EPOCH = 100_000, 1_000


def load_experiment_config(spec: str) -> ml_collections.ConfigDict:
  """`get_config()` of an experiment file, `path[:argument]` as for training."""
  path, _, argument = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No experiment config at {path!r}; pass the path of a "
                            "file with get_config(), e.g. experiments/digits.py.")
  module_spec = importlib.util.spec_from_file_location("_bench_experiment", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(argument) if argument else module.get_config()


@dataclasses.dataclass
class Variant:
  """One compiled training step and the state it advances."""
  config: ml_collections.ConfigDict
  step: Callable
  state: Any
  batch: Any
  compile_s: float
  xla_memory_bytes: Optional[int]
  times: list[float] = dataclasses.field(default_factory=list)
  page_faults: list[int] = dataclasses.field(default_factory=list)

  def run(self) -> None:
    """One timed step, waited for; also counts the host page faults it took."""
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    self.times.append(time.perf_counter() - start)
    self.page_faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)


def _random_batch(num_classes: int, per_device_batch: int, resolution: int) -> Any:
  devices = jax.local_device_count()
  rng = np.random.default_rng(0)
  labels = rng.integers(0, num_classes, (devices, per_device_batch))
  batch = {
      "images": rng.standard_normal(
          (devices, per_device_batch, resolution, resolution, 3), np.float32),
      "labels": np.eye(num_classes, dtype=np.float32)[labels],
  }
  return jax.pmap(lambda x: x)(batch)  # Placed once, so no step pays a transfer.


def _xla_memory(compiled: Any) -> Optional[int]:
  """Bytes XLA plans for one device: arguments + outputs + temporaries − donated."""
  stats = compiled.memory_analysis()
  if stats is None:  # Not every backend reports it.
    return None
  return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def build_variant(config: ml_collections.ConfigDict, num_classes: int,
                  per_device_batch: int) -> Variant:
  """Builds and compiles the training step `config` describes."""
  resolution = config.data.train_px
  forward = models.transform(config.model.name, num_classes, **config.model.kwargs)
  optimizer, schedule = optim.build_optimizer(
      config.optimizer, batch_size=per_device_batch * jax.device_count(),
      total_steps=_SCHEDULE_STEPS, steps_per_epoch=_SCHEDULE_STEPS_PER_EPOCH)
  state = ts.replicate(ts.init_train_state(
      forward, optimizer, seed=config.seed, image_shape=(resolution, resolution, 3)))
  batch = _random_batch(num_classes, per_device_batch, resolution)
  step = ts.make_train_step(forward, optimizer, schedule, config)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  return Variant(config, compiled, state, batch, compile_s, _xla_memory(compiled))


def build_forward_variant(config: ml_collections.ConfigDict, num_classes: int,
                          per_device_batch: int, resolution: int) -> Variant:
  """Compiles the inference forward pass as evaluation runs it, logits out.

  The model in eval mode on weights whose standardisation is done once
  (`models.inference`, the evaluation step's `prepare`), outside the timing.
  """
  forward = models.transform(config.model.name, num_classes, **config.model.kwargs)
  dtype = ts.compute_dtype(config.train.compute_dtype)
  params, model_state = ts.init_model(forward, jax.random.PRNGKey(config.seed),
                                      (resolution, resolution, 3))
  batch = _random_batch(num_classes, per_device_batch, resolution)
  images = batch["images"].astype(dtype)
  params, model_state = ts.replicate((params, model_state))
  weights = (ts.make_eval_step(forward, config).prepare(params, model_state, images),
             model_state)
  apply = jax.pmap(lambda w, x: inference.apply_standardized(forward, *w, x)["logits"])
  start = time.perf_counter()
  compiled = apply.lower(weights, images).compile()
  compile_s = time.perf_counter() - start
  # Variant.run's (state, batch) -> (state, output) contract, weights unchanged.
  step = lambda w, x: (w, compiled(w, x))
  return Variant(config, step, weights, images, compile_s, _xla_memory(compiled))


def time_interleaved(variants: Sequence[Variant], num_steps: int, warmup_steps: int = 1,
                     between_steps: Callable[[], None] = lambda: None) -> None:
  """Runs `num_steps` timed steps of every variant, alternating between them.

  `between_steps` runs before each step (warm-up ones too), untimed: under
  `nfnets_jax.lockstep` it hands the CPU to the other benchmarks.
  """
  for _ in range(warmup_steps):
    for variant in variants:
      between_steps()
      variant.run()
  for variant in variants:
    variant.times.clear()
    variant.page_faults.clear()
  for _ in range(num_steps):
    for variant in variants:
      between_steps()
      variant.run()


def matmul_peak_meter(dtype: Any, size: int = 2048, reps: int = 5,
                      min_seconds: float = 0.05) -> Callable[[], float]:
  """A function measuring, each time it is called, the matmul peak FLOP/s.

  The peak: FLOP/s of square matmuls on all local devices at once, best of
  `reps` timings. Each timing is one dispatch of `chain` products in a loop,
  `chain` chosen so that it lasts at least `min_seconds` (at most 64
  products): one 8192^2 bf16 product takes about 1.4 ms on an H200, too short
  to time with its launch and synchronisation. On a CPU one product usually
  lasts longer, so `chain` is 1. Compiled once, so that the peak can be
  measured again between the steps it is compared with.
  """
  devices = jax.local_device_count()
  keys = jax.random.split(jax.random.PRNGKey(0), devices)
  # Random entries of variance 1/size keep the chained products' scale (zeros
  # would run faster than real data on some hardware).
  a = jax.pmap(lambda k: (jax.random.normal(k, (size, size)) / np.sqrt(size)).astype(dtype))(keys)

  def chained(chain: int) -> Callable[[], float]:
    products = jax.pmap(lambda x: jax.lax.fori_loop(0, chain, lambda _, y: y @ x, x))
    products(a).block_until_ready()

    def best_time() -> float:
      best = float("inf")
      for _ in range(reps):
        start = time.perf_counter()
        products(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
      return best
    return best_time

  chain, best_time = 1, chained(1)
  first = best_time()
  if first < min_seconds:
    chain = min(64, int(np.ceil(min_seconds / first)))
    best_time = chained(chain)
  return lambda: 2.0 * size**3 * chain * devices / best_time()


def peak_memory() -> tuple[int, str]:
  """(bytes, what they measure): device peak where the backend reports it."""
  stats = [d.memory_stats() for d in jax.local_devices()]
  if all(s and "peak_bytes_in_use" in s for s in stats):
    return (sum(s["peak_bytes_in_use"] for s in stats),
            "peak_bytes_in_use, summed over devices")
  # Linux reports ru_maxrss in KiB.
  return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
          "process peak RSS (getrusage ru_maxrss): host memory of everything "
          "this run did, runtime libraries included")


def step_stats(times: Sequence[float], global_batch: int) -> dict[str, Any]:
  """Median and spread of step times, the images/s of the median, and the times."""
  t = np.asarray(times)
  q25, median, q75 = np.percentile(t, [25, 50, 75])
  return {
      "step_time_median_s": float(median),
      "step_time_iqr_s": float(q75 - q25),
      "step_time_min_s": float(t.min()),
      "step_time_max_s": float(t.max()),
      "images_per_s": global_batch / float(median),
      "step_times_s": [float(x) for x in t],
  }


def input_throughput(config: ml_collections.ConfigDict, global_batch: int,
                     step_time_s: float, num_batches: int) -> dict[str, Any]:
  """The input pipeline of `config.data` against the measured step time."""
  # Imported here: the pipeline needs TensorFlow, which timing the step does not
  # (an accelerator image may lack it, and its import takes seconds).
  from nfnets_jax.data import throughput  # pylint: disable=g-import-not-at-top
  result = throughput.pipeline_throughput(config.data, global_batch, num_batches)
  return {
      "dataset": config.data.name,
      "batches_per_s": result.batches_per_s,
      "images_per_s": result.images_per_s,
      "headroom": throughput.headroom(result.batches_per_s, step_time_s),
      "required_headroom": throughput.REQUIRED_HEADROOM,
  }


def resolve_config(args: argparse.Namespace) -> tuple[ml_collections.ConfigDict, int, int]:
  """(run config, number of classes, per-device batch) from the flags."""
  devices = jax.device_count()
  if args.config:
    config = load_experiment_config(args.config)
    if args.model and args.model != config.model.name:
      raise ValueError(f"--model={args.model} contradicts the config's model "
                       f"{config.model.name}; drop one of them.")
    num_classes = data.dataset_info(config.data).num_classes
  else:
    model = args.model or "NFNet"
    models.resolve(model)  # An unknown name fails here, naming the known ones.
    config = train_config.base_config(
        model, {"variant": DEFAULT_VARIANTS[model]} if model in DEFAULT_VARIANTS else {})
    config.data.train_px = 128
    config.train.batch_size = 8 * devices
    num_classes = args.num_classes
  kwargs = config.model.kwargs.to_dict()
  if args.variant:
    kwargs["variant"] = args.variant
  try:
    extra = json.loads(args.model_kwargs)
  except json.JSONDecodeError:
    extra = None
  if not isinstance(extra, dict):
    raise ValueError(f"--model_kwargs must be a JSON object such as "
                     f"'{{\"width\": 0.5}}', got {args.model_kwargs!r}.")
  kwargs.update(extra)
  if args.grouped_conv != "auto" or args.compare_grouped_conv:
    if models.resolve(config.model.name)[0] not in (models.NFNet, models.NFRegNet):
      raise ValueError("--grouped_conv and --compare_grouped_conv apply to NFNets and "
                       f"NF-RegNets (grouped 3x3 convs), not {config.model.name}.")
    kwargs["grouped_conv"] = args.grouped_conv
  config.model.kwargs = kwargs
  if args.resolution:
    config.data.train_px = args.resolution
  if args.dtype:
    config.train.compute_dtype = args.dtype
  if args.ema_decay is not None:
    optim.check_ema_decay(args.ema_decay, "--ema_decay")
    config.optimizer.ema_decay = args.ema_decay
  per_device_batch = args.batch or config.train.batch_size // devices
  if per_device_batch <= 0:
    raise ValueError(f"The per-device batch must be positive, got {per_device_batch}; "
                     "set --batch.")
  config.train.batch_size = per_device_batch * devices
  return config, num_classes, per_device_batch


def build_variants(args: argparse.Namespace, config: ml_collections.ConfigDict,
                   num_classes: int, per_device_batch: int,
                   log: Callable[[str], None]) -> dict[str, Variant]:
  """'main' (the config's step) and the counterparts the flags ask for."""
  def build(variant_config: ml_collections.ConfigDict, what: str) -> Variant:
    log(f"compiling {what} ...")
    return build_variant(variant_config, num_classes, per_device_batch)

  if args.compare_grouped_conv and config.model.kwargs.grouped_conv == "auto":
    # Time what training would run on this backend against the alternatives.
    config.model.kwargs.grouped_conv = layers.default_grouped_conv_impl()
  variants = {"main": build(
      config, f"{config.model.name} {config.model.kwargs.to_dict()} at "
      f"{config.data.train_px} px, batch {per_device_batch} x {jax.device_count()} devices")}
  if args.agc_overhead:
    toggled = copy.deepcopy(config)
    toggled.optimizer.clipping = 0.0 if config.optimizer.clipping else DEFAULT_CLIPPING
    variants["agc_toggled"] = build(
        toggled,
        f"the same step {'without' if config.optimizer.clipping else 'with'} AGC")
  if args.compare_grouped_conv:
    for impl in GROUPED_CONV_FORMULATIONS:
      if impl != config.model.kwargs.grouped_conv:
        other = copy.deepcopy(config)
        other.model.kwargs.grouped_conv = impl
        variants[f"grouped_{impl}"] = build(other, f"the same step with grouped_conv={impl!r}")
  if args.forward:
    log(f"compiling the forward pass at {forward_resolution(args, config)} px ...")
    variants["forward"] = build_forward_variant(
        config, num_classes, per_device_batch, forward_resolution(args, config))
  return variants


def forward_resolution(args: argparse.Namespace, config: ml_collections.ConfigDict) -> int:
  """--forward_resolution, else a config's test resolution, else the training one."""
  return args.forward_resolution or (config.data.test_px if args.config
                                     else config.data.train_px)


def benchmark(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
  """Measures everything the flags ask for; returns the figures as a dict."""
  load_start = os.getloadavg()
  config, num_classes, per_device_batch = resolve_config(args)
  variants = build_variants(args, config, num_classes, per_device_batch, log)
  measure_peak = matmul_peak_meter(
      jnp.dtype(ts.compute_dtype(config.train.compute_dtype)), args.matmul_size)
  peaks = []
  turns = lockstep.turns()

  def between_steps():
    # The peak is measured between the steps it is compared with, as the
    # machine's speed moves during a run (by 30% on shared CPUs).
    peaks.append(measure_peak())
    if turns:
      turns.next()

  log(f"timing {args.steps} steps of each of {len(variants)} variant(s) ...")
  time_interleaved(list(variants.values()), args.steps, args.warmup_steps, between_steps)
  peaks.append(measure_peak())

  main = variants["main"]
  global_batch = config.train.batch_size
  kwargs = config.model.kwargs.to_dict()
  result: dict[str, Any] = {
      "model": config.model.name, "model_kwargs": kwargs,
      "resolution": config.data.train_px, "per_device_batch": per_device_batch,
      "devices": jax.device_count(), "global_batch": global_batch,
      "dtype": config.train.compute_dtype, "backend": jax.default_backend(),
      "device_kind": jax.devices()[0].device_kind, "steps": args.steps,
      "agc_clipping": config.optimizer.clipping,
      "ema_decay": config.optimizer.ema_decay or 0.0,
      # What grouped_conv='auto' (and every other convolution) ran.
      "conv_impl": layers.default_grouped_conv_impl(ts.compute_dtype(config.train.compute_dtype)),
      "compile_s": main.compile_s,
      **step_stats(main.times, global_batch),
      # Minor faults of the whole process during each step: host memory
      # touched for the first time (see nfnets_jax/host_memory.py).
      "page_faults_per_step": float(np.median(main.page_faults)),
      "host_memory_reuse": args.host_memory_reuse,
  }
  macs = counting.model_macs(config.model.name, config.data.train_px, num_classes, **kwargs)
  flops_per_step = 2 * macs * FORWARD_BACKWARD_FACTOR * global_batch
  result.update(
      gmacs_per_image=macs / 1e9, gflop_per_step=flops_per_step / 1e9,
      achieved_gflops=flops_per_step / result["step_time_median_s"] / 1e9,
      matmul_peak_gflops=float(np.median(peaks)) / 1e9,
      matmul_peak_range_gflops=[min(peaks) / 1e9, max(peaks) / 1e9],
      matmul_peak_measurements=len(peaks), matmul_size=args.matmul_size,
      xla_step_memory_bytes=main.xla_memory_bytes)
  result["peak_fraction"] = result["achieved_gflops"] / result["matmul_peak_gflops"]

  if "agc_toggled" in variants:
    medians = (result["step_time_median_s"],
               float(np.median(variants["agc_toggled"].times)))
    with_agc, without = medians if config.optimizer.clipping else medians[::-1]
    result.update(step_time_with_agc_s=with_agc, step_time_without_agc_s=without,
                  agc_overhead=with_agc / without - 1.0)
  if args.compare_grouped_conv:
    timed = [main] + [v for name, v in variants.items() if name.startswith("grouped_")]
    grouped = {v.config.model.kwargs.grouped_conv: {
        "compile_s": v.compile_s, **step_stats(v.times, global_batch)} for v in timed}
    for stats in grouped.values():  # Against one feature_group_count conv.
      stats["speedup_over_xla"] = (grouped["xla"]["step_time_median_s"]
                                   / stats["step_time_median_s"])
    result["grouped_conv"] = {
        "fastest": min(grouped, key=lambda k: grouped[k]["step_time_median_s"]),
        "auto": layers.default_grouped_conv_impl(), **grouped}
  if "forward" in variants:
    forward = variants["forward"]
    px = forward_resolution(args, config)
    forward_macs = counting.model_macs(config.model.name, px, num_classes, **kwargs)
    stats = step_stats(forward.times, global_batch)
    achieved = 2 * forward_macs * global_batch / stats["step_time_median_s"] / 1e9
    result["forward"] = {
        "resolution": px, "compile_s": forward.compile_s, **stats,
        "gmacs_per_image": forward_macs / 1e9, "achieved_gflops": achieved,
        "peak_fraction": achieved / result["matmul_peak_gflops"],
        "page_faults_per_step": float(np.median(forward.page_faults)),
        "xla_memory_bytes": forward.xla_memory_bytes}
  if args.input:
    log("measuring the input pipeline ...")
    result["input"] = input_throughput(config, global_batch,
                                       result["step_time_median_s"], args.input_batches)
  result["peak_memory_bytes"], result["peak_memory_source"] = peak_memory()
  result["load_average_start"] = list(load_start)
  result["load_average_end"] = list(os.getloadavg())
  result["cpu_count"] = os.cpu_count()
  return result


def format_table(r: dict[str, Any]) -> str:
  """The figures of `benchmark` as an aligned two-column table."""
  rows = [
      ("model", f"{r['model']} {r['model_kwargs']}"),
      ("input", f"{r['resolution']} px, batch {r['per_device_batch']} x {r['devices']} "
                f"{r['backend']} device(s) ({r['device_kind']}), {r['dtype']}"),
      ("convolutions", f"{r['conv_impl']!r} (grouped_conv='auto')"),
      ("compile", f"{r['compile_s']:.1f} s"),
      ("weight EMA", f"decay {r['ema_decay']:g}" if r["ema_decay"] else "none (--ema_decay=0)"),
      ("step time", f"median {r['step_time_median_s'] * 1e3:.1f} ms, IQR "
                    f"{r['step_time_iqr_s'] * 1e3:.1f} ms, min {r['step_time_min_s'] * 1e3:.1f}"
                    f" / max {r['step_time_max_s'] * 1e3:.1f} ms over {r['steps']} steps"),
      ("throughput", f"{r['images_per_s']:.1f} images/s"),
      ("compute", f"{r['gmacs_per_image']:.4g} GMACs/image fwd; {r['gflop_per_step']:.1f} "
                  f"GFLOP/step (2 x MACs x {FORWARD_BACKWARD_FACTOR})"),
      ("achieved", f"{r['achieved_gflops']:.1f} GFLOP/s = {r['peak_fraction']:.1%} of the "
                   f"{r['matmul_peak_gflops']:.1f} GFLOP/s matmul peak "
                   f"({r['matmul_size']}^2 {r['dtype']}; median of "
                   f"{r['matmul_peak_measurements']} between the steps, "
                   f"{r['matmul_peak_range_gflops'][0]:.1f}-"
                   f"{r['matmul_peak_range_gflops'][1]:.1f})"),
      ("peak memory", f"{r['peak_memory_bytes'] / 2**20:.0f} MiB ({r['peak_memory_source']})"),
      ("page faults", f"{r['page_faults_per_step']:.0f} per step (host memory reuse "
                      f"{'on' if r['host_memory_reuse'] else 'off'})"),
  ]
  if r["xla_step_memory_bytes"] is not None:
    rows.append(("XLA step memory", f"{r['xla_step_memory_bytes'] / 2**20:.1f} MiB per "
                                    "device (args + outputs + temps - donated)"))
  if "agc_overhead" in r:
    rows.append(("AGC overhead", f"{r['agc_overhead']:+.1%} (lambda "
                                 f"{r['agc_clipping'] or DEFAULT_CLIPPING}: "
                                 f"{r['step_time_with_agc_s'] * 1e3:.1f} ms vs "
                                 f"{r['step_time_without_agc_s'] * 1e3:.1f} ms without)"))
  if "grouped_conv" in r:
    g = r["grouped_conv"]
    for impl in GROUPED_CONV_FORMULATIONS:
      rows.append((f"grouped conv {impl}",
                   f"{g[impl]['images_per_s']:.1f} images/s, {g[impl]['speedup_over_xla']:.2f}x "
                   f"over feature_group_count, compile {g[impl]['compile_s']:.1f} s"))
    rows.append(("grouped conv choice", f"fastest {g['fastest']!r}; 'auto' runs {g['auto']!r} "
                                        f"on {r['backend']}"))
  if "forward" in r:
    f = r["forward"]
    rows.append(("forward", f"{f['resolution']} px: median {f['step_time_median_s'] * 1e3:.1f} ms"
                            f" (min {f['step_time_min_s'] * 1e3:.1f} / max "
                            f"{f['step_time_max_s'] * 1e3:.1f}), {f['images_per_s']:.1f} "
                            f"images/s, {f['achieved_gflops']:.1f} GFLOP/s = "
                            f"{f['peak_fraction']:.1%} of peak, compile {f['compile_s']:.1f} s"))
  if "input" in r:
    i = r["input"]
    rows.append(("input pipeline", f"{i['dataset']}: {i['batches_per_s']:.1f} batches/s = "
                                   f"{i['images_per_s']:.0f} images/s; headroom "
                                   f"{i['headroom']:.1f}x (need {i['required_headroom']:g}x)"))
  rows.append(("load average", f"{r['load_average_start'][0]:.2f} at start, "
                               f"{r['load_average_end'][0]:.2f} at end "
                               f"({r['cpu_count']} CPUs)"))
  width = max(len(name) for name, _ in rows)
  return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m nfnets_jax.bench",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--config", help="Experiment config file (path[:arg]); the model, "
                      "batch, resolution, optimizer and data come from it unless "
                      "flags override them.")
  parser.add_argument("--model", choices=sorted(DEFAULT_VARIANTS) + sorted(models.TIMM_MODELS),
                      help="Model, ours or timm's name (default NFNet).")
  parser.add_argument("--variant", help="NFNet 'F0'...'F7+', NF-RegNet 'B0'...'B8' or "
                      "ResNet 'ResNet50'...")
  parser.add_argument("--model_kwargs", default="{}",
                      help="JSON dict of further constructor kwargs.")
  parser.add_argument("--num_classes", type=int, default=1000,
                      help="Classifier outputs (without --config).")
  parser.add_argument("--resolution", type=int, help="Image side in px (default 128).")
  parser.add_argument("--batch", type=int, help="Per-device batch (default 8).")
  parser.add_argument("--dtype", choices=sorted(ts.COMPUTE_DTYPES),
                      help="Compute dtype (default float32).")
  parser.add_argument("--ema_decay", type=float,
                      help="Decay of the weight EMA the step keeps (default: the config's, "
                      "0.99999); 0 keeps none, as timm's step without --model-ema.")
  parser.add_argument("--steps", type=int, default=10, help="Timed steps per variant.")
  parser.add_argument("--warmup_steps", type=int, default=1)
  parser.add_argument("--grouped_conv", choices=layers.GROUPED_CONV_IMPLS, default="auto",
                      help="NFNet grouped-conv formulation.")
  parser.add_argument("--compare_grouped_conv", action="store_true",
                      help="Also time the other grouped-conv formulations (NFNet, NF-RegNet).")
  parser.add_argument("--agc_overhead", action=argparse.BooleanOptionalAction,
                      default=True, help="Also time the step with AGC toggled.")
  parser.add_argument("--forward", action="store_true",
                      help="Also time the inference forward pass (eval mode).")
  parser.add_argument("--forward_resolution", type=int,
                      help="Its image side in px (default: the config's test "
                      "resolution, else --resolution).")
  parser.add_argument("--input", action="store_true",
                      help="Measure the input pipeline of the config's data.")
  parser.add_argument("--input_batches", type=int, default=20)
  parser.add_argument("--matmul_size", type=int, default=2048)
  parser.add_argument("--json", action="store_true", help="Print one JSON object.")
  args = parser.parse_args(argv)
  if args.steps < 1 or args.warmup_steps < 0:
    parser.error("--steps must be >= 1 and --warmup_steps >= 0.")
  return args


def main(argv: Optional[Sequence[str]] = None) -> None:
  reused = host_memory.reuse_freed_memory()
  args = parse_args(argv)
  args.host_memory_reuse = reused
  try:
    # Progress goes to stderr so that --json leaves stdout parseable.
    result = benchmark(args, log=lambda msg: print(msg, file=sys.stderr, flush=True))
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  print(json.dumps(result) if args.json else format_table(result), flush=True)


if __name__ == "__main__":
  main()
