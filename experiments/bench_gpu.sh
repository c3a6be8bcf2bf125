#!/usr/bin/env bash
# The GPU figures of the README's "On a GPU" table, in one go (4-7 minutes on an H200):
#
#   experiments/bench_gpu.sh [OUT_DIR]      # default /tmp/nfnets_bench_gpu
#   PYTHON=python3 experiments/bench_gpu.sh  # another interpreter than .venv's
#
# NFNet-F0 at its training resolution (192 px, batch 32, bfloat16) with the AGC
# overhead and the 256 px forward pass; a profile of that step; every
# grouped-conv formulation of it; NFNet-F1 at its 224 px. Each result is a
# JSON file (nfnets_jax.bench --json) in OUT_DIR; a table of them ends the
# output. Each run has a time limit and all stop at $BUDGET_S seconds (default 900).
set -u
out=${1:-/tmp/nfnets_bench_gpu}
mkdir -p "$out"
# ./run.sh setup's environment if there is one, else the python3 on PATH.
default_py=python3
[[ -x .venv/bin/python ]] && default_py=.venv/bin/python
py=${PYTHON:-$default_py}
export PYTHONUNBUFFERED=1
# Later runs of an already compiled step load it instead of compiling again.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/nfnets_jax_cache}
deadline=$((SECONDS + ${BUDGET_S:-900}))
log="$out/log.txt"

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit \
  --format=csv 2>&1 | tee -a "$log"
$py -c "import jax, jaxlib, haiku, optax; print('jax', jax.__version__, 'jaxlib', \
jaxlib.__version__, 'haiku', haiku.__version__, 'optax', optax.__version__, jax.devices())" \
  2>&1 | tee -a "$log"

# run NAME SECONDS COMMAND...: at most SECONDS, and never past the deadline.
run() {
  local name=$1 limit=$2; shift 2
  local left=$((deadline - SECONDS))
  ((left < limit)) && limit=$left
  if ((limit < 20)); then echo "$name: skipped, out of time" | tee -a "$log"; return; fi
  echo "== $name (at most ${limit} s): $*" >> "$log"
  timeout "$limit" "$@" > "$out/$name" 2>> "$log"
  echo "$name: exit $? after $((SECONDS - ${start:-0})) s" | tee -a "$log"
}
bench=($py -m nfnets_jax.bench --model=NFNet --dtype=bfloat16 --matmul_size=8192 --json)
start=$SECONDS
run f0.json 240 "${bench[@]}" --variant=F0 --resolution=192 --batch=32 --steps=20 \
  --forward --forward_resolution=256
run profile_f0.txt 120 $py -m experiments.profile_step --model=NFNet --variant=F0 \
  --resolution=192 --batch=32 --dtype=bfloat16 --steps=5 --top=30 \
  --trace_dir=/tmp/nfnets_trace --hlo=/tmp/f0_step.hlo.txt
gzip -c /tmp/f0_step.hlo.txt > "$out/f0_step.hlo.txt.gz" 2>/dev/null
run f0_grouped.json 240 "${bench[@]}" --variant=F0 --resolution=192 --batch=32 --steps=10 \
  --no-agc_overhead --compare_grouped_conv
run f1.json 180 "${bench[@]}" --variant=F1 --resolution=224 --batch=32 --steps=10 \
  --no-agc_overhead

$py - "$out" <<'EOF'
import json, os, sys
out = sys.argv[1]
def load(name):
  try:
    with open(os.path.join(out, name)) as f:
      return json.loads(f.read().strip().splitlines()[-1])
  except (OSError, ValueError, IndexError):
    return None
for name in ("f0.json", "f0_grouped.json", "f1.json"):
  r = load(name)
  if r is None:
    print(f"{name}: no result"); continue
  print(f"{name}: {r['model_kwargs']['variant']} {r['resolution']} px batch {r['global_batch']} "
        f"{r['dtype']} on {r['device_kind']}: step median {r['step_time_median_s']*1e3:.1f} ms "
        f"(min {r['step_time_min_s']*1e3:.1f} / max {r['step_time_max_s']*1e3:.1f}), "
        f"{r['images_per_s']:.0f} images/s, {r['achieved_gflops']/1e3:.1f} TFLOP/s = "
        f"{r['peak_fraction']:.1%} of {r['matmul_peak_gflops']/1e3:.0f} TFLOP/s matmul peak; "
        f"compile {r['compile_s']:.0f} s; grouped_conv={r['model_kwargs'].get('grouped_conv')}")
  if "agc_overhead" in r:
    print(f"  AGC overhead {r['agc_overhead']:+.1%}")
  if "forward" in r:
    f = r["forward"]
    print(f"  forward {f['resolution']} px: median {f['step_time_median_s']*1e3:.1f} ms "
          f"(min {f['step_time_min_s']*1e3:.1f} / max {f['step_time_max_s']*1e3:.1f}), "
          f"{f['images_per_s']:.0f} images/s, {f['peak_fraction']:.1%} of peak")
  for impl, g in r.get("grouped_conv", {}).items():
    if isinstance(g, dict):
      print(f"  grouped {impl}: median {g['step_time_median_s']*1e3:.1f} ms, "
            f"{g['speedup_over_xla']:.2f}x over xla, compile {g['compile_s']:.0f} s")
  if "grouped_conv" in r:
    print(f"  fastest {r['grouped_conv']['fastest']!r}, auto {r['grouped_conv']['auto']!r}")
EOF
