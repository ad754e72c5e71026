#!/usr/bin/env bash
# The main job, stage by stage. Each stage prints the exact command it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DEMO_DIR=${DEMO_DIR:-demo_out}
N=${DEMO_N:-240}
mkdir -p "$DEMO_DIR"

run() { echo "+ $*"; "$@"; }

echo "== 1. demo corpus =="
run $PY -m manifests.demo --out "$DEMO_DIR/corpus" --n "$N" --seed 0
