#!/usr/bin/env bash
# Both paper-scale sweeps on the current Ray cluster (or a local one), resuming where they stopped.
#   experiments/launch/run_casia.sh [RUNS_DIR] [extra overrides, e.g. data.train=/data/casia/train.rec]
set -euo pipefail
RUNS="${1:-runs}"
shift || true
ADDRESS="${RAY_ADDRESS:-}"
for kind in closed open; do
  out="$RUNS/casia_$kind"
  args=(experiments/configs/casia_$kind.yaml --out "$out" "$@")
  if [ -n "$ADDRESS" ]; then args+=(--address "$ADDRESS"); fi
  if [ -f "$out/sweep.json" ]; then args+=(--resume); fi
  noisyfr sweep "${args[@]}"
done
