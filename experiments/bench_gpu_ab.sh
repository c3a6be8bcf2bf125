#!/usr/bin/env bash
# A/B of the GPU training step between another tree of this repository and
# this one, in alternating processes (3-5 minutes on an H200):
#
#   git archive COMMIT nfnets_jax experiments | tar -x -C /tmp/before
#   experiments/bench_gpu_ab.sh /tmp/before [OUT_DIR]    # default /tmp/nfnets_ab
#
# (On a device machine that receives only the working tree, put the old tree
# under an ignored folder and carry it.) Each side runs `nfnets_jax.bench` on
# NFNet-F0 at 192 px, batch 32, bfloat16, $ROUNDS times (default 2), A then B;
# a JAX compilation cache makes the later rounds skip compiling. Ends with
# each run's median step. PYTHON picks the interpreter as in bench_gpu.sh.
set -u
before=$(cd "$1" && pwd) || exit 2
out=${2:-/tmp/nfnets_ab}
mkdir -p "$out"
default_py=python3
[[ -x .venv/bin/python ]] && default_py=$PWD/.venv/bin/python
py=${PYTHON:-$default_py}
export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/nfnets_jax_cache}
# BENCH_FLAGS replaces the model, size and step flags (e.g. a tiny model on a CPU).
flags=(${BENCH_FLAGS:---model=NFNet --variant=F0 --resolution=192 --batch=32
       --dtype=bfloat16 --matmul_size=8192 --steps=30})
bench=($py -m nfnets_jax.bench "${flags[@]}" --no-agc_overhead --json)
after=$PWD
for round in $(seq "${ROUNDS:-2}"); do
  for side in before after; do
    dir=${!side}
    (cd "$dir" && PYTHONPATH="$dir${PYTHONPATH:+:$PYTHONPATH}" timeout 180 "${bench[@]}") \
      > "$out/${side}_$round.json" 2>> "$out/log.txt"
    echo "${side}_$round: exit $? at ${SECONDS} s" | tee -a "$out/log.txt"
  done
done
$py - "$out" <<'PY'
import glob, json, os, sys
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*_*.json"))):
  try:
    r = json.loads(open(path).read().strip().splitlines()[-1])
  except (ValueError, IndexError):
    print(f"{os.path.basename(path)}: no result"); continue
  print(f"{os.path.basename(path)}: median {r['step_time_median_s'] * 1e3:.2f} ms "
        f"(min {r['step_time_min_s'] * 1e3:.2f} / max {r['step_time_max_s'] * 1e3:.2f}), "
        f"{r['images_per_s']:.0f} images/s, compile {r['compile_s']:.0f} s")
PY
