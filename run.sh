#!/usr/bin/env bash
# Usage:
#   ./run.sh          set up .venv if needed, then run the default experiment
#   ./run.sh setup    make .venv and install requirements.txt
#   ./run.sh test     set up if needed, then run the test suite (extra args go to pytest)
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY="$VENV/bin/python"
STAMP="$VENV/.installed-requirements.txt"

setup() {
  # Re-install only when requirements.txt changed since the last install.
  if [[ -x "$PY" ]] && cmp -s requirements.txt "$STAMP"; then
    return
  fi
  command -v python3 >/dev/null || { echo "run.sh: python3 (3.11+) is required" >&2; exit 1; }
  python3 -m venv "$VENV"
  "$PY" -m pip install --quiet --disable-pip-version-check -r requirements.txt
  cp requirements.txt "$STAMP"
}

export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"

case "${1:-}" in
  setup)
    setup ;;
  test)
    shift
    setup
    exec "$PY" -m pytest tests "$@" ;;
  "")
    setup
    exec "$PY" -m nfnets_jax.train --config=experiments/digits.py --workdir=workdirs/digits ;;
  *)
    echo "usage: ./run.sh [setup|test [pytest args...]]" >&2
    exit 2 ;;
esac
