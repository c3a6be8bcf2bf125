#!/usr/bin/env bash
# Usage:
#   ./run.sh              set up .venv if needed, then run the default experiment
#   ./run.sh setup        make .venv, install requirements.txt and the package
#   ./run.sh test         set up if needed, then run the test suite (extra args go to pytest)
#   ./run.sh accelerator  print the accelerator set-up would install JAX for
#
# Set-up installs the JAX build of the pinned version for the machine's
# accelerator: an NVIDIA GPU (CUDA 13 or 12, from the driver nvidia-smi
# reports), a TPU, or none (CPU). ACCELERATOR=cpu|cuda12|cuda13|tpu overrides
# the detection.
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY="$VENV/bin/python"
STAMP="$VENV/.installed"

jax_version() {
  sed -n 's/^jax==\(.*\)$/\1/p' requirements.txt
}

detect_accelerator() {
  if [[ -n "${ACCELERATOR:-}" ]]; then
    echo "$ACCELERATOR"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    local cuda
    cuda=$(nvidia-smi | sed -n 's/.*CUDA Version: *\([0-9]*\).*/\1/p' | head -n 1)
    if [[ "${cuda:-0}" -ge 13 ]]; then echo cuda13; else echo cuda12; fi
  elif compgen -G "/dev/accel*" >/dev/null || [[ -n "${TPU_ACCELERATOR_TYPE:-}" ]]; then
    echo tpu
  else
    echo cpu
  fi
}

# The pip requirement that adds the accelerator's JAX build (none for cpu).
accelerator_requirement() {
  case "$1" in
    cpu) ;;
    cuda12|cuda13|tpu) echo "jax[$1]==$(jax_version)" ;;
    *) echo "run.sh: unknown ACCELERATOR=$1; use cpu, cuda12, cuda13 or tpu" >&2
       exit 2 ;;
  esac
}

setup() {
  local accelerator requirement
  accelerator=$(detect_accelerator)
  requirement=$(accelerator_requirement "$accelerator")
  # Re-install only when requirements.txt or the accelerator changed.
  if [[ -x "$PY" ]] && [[ -f "$STAMP" ]] &&
     [[ "$(cat "$STAMP")" == "$(cat requirements.txt; echo "$accelerator")" ]]; then
    return
  fi
  command -v python3 >/dev/null || { echo "run.sh: python3 (3.11+) is required" >&2; exit 1; }
  echo "run.sh: setting up $VENV for $accelerator (once)" >&2
  python3 -m venv "$VENV"
  "$PY" -m pip install --quiet --disable-pip-version-check -r requirements.txt
  if [[ -n "$requirement" ]]; then
    "$PY" -m pip install --quiet --disable-pip-version-check "$requirement"
  fi
  # The package itself, editable: console scripts and imports from anywhere.
  "$PY" -m pip install --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation -e .
  { cat requirements.txt; echo "$accelerator"; } > "$STAMP"
}

case "${1:-}" in
  setup)
    setup ;;
  test)
    shift
    setup
    exec "$PY" -m pytest tests "$@" ;;
  accelerator)
    accelerator=$(detect_accelerator)
    requirement=$(accelerator_requirement "$accelerator")
    echo "$accelerator $requirement" ;;
  "")
    setup
    exec "$PY" -m nfnets_jax.train --config=experiments/digits.py --workdir=workdirs/digits ;;
  *)
    echo "usage: ./run.sh [setup|test [pytest args...]|accelerator]" >&2
    exit 2 ;;
esac
