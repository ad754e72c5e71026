#!/usr/bin/env bash
# The main job, stage by stage: demo corpus -> manifest -> Beam prepare -> train.
# Every stage prints the exact command it runs, so each step can be reproduced alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DEMO_DIR=${DEMO_DIR:-demo_out}
N=${DEMO_N:-240}
TRAIN_MINUTES=${DEMO_TRAIN_MINUTES:-6}
WORKERS=$(nproc)
mkdir -p "$DEMO_DIR"

run() { echo "+ $*"; "$@"; }
stage() { echo; echo "== $* =="; }

stage "1/3 demo corpus: $N procedurally composed clips rendered with FluidSynth"
run $PY -m manifests.demo --out "$DEMO_DIR/corpus" --n "$N" --seed 0
run $PY -m manifests info "$DEMO_DIR/corpus/manifest.parquet" --audio-root "$DEMO_DIR/corpus"

stage "2/3 Beam prepare: decode, resample, log-mel + PCM, deterministic shards"
run $PY beam_runner.py prepare --manifest "$DEMO_DIR/corpus/manifest.parquet" \
  --audio-root "$DEMO_DIR/corpus" --output "$DEMO_DIR/data" --features mel,pcm \
  --shard-size-mb 64 --direct_num_workers="$WORKERS"

stage "3/3 train a small short-chunk CNN for at most $TRAIN_MINUTES minutes"
RUN="$DEMO_DIR/runs/short_chunk_cnn"
resume=()
[[ -f "$RUN/last.pt" ]] && resume=(--resume)
run $PY -m tagtrain train --data "$DEMO_DIR/data" --model short_chunk_cnn --width 0.25 \
  --epochs 12 --batch-size 16 --workers "$WORKERS" --schedule early_stop --patience 4 \
  --lr 1e-3 --max-minutes "$TRAIN_MINUTES" --out "$RUN" "${resume[@]}"
