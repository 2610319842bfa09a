#!/usr/bin/env bash
# Start the Ray head node of a noisyfr sweep cluster.
#   experiments/launch/ray_head.sh [PORT]        (default 6379; GPUs/CPUs are detected by Ray)
# Then on every other node: experiments/launch/ray_worker.sh HEAD_IP:PORT
# and on any node: noisyfr sweep CONFIG.yaml --address auto --out /shared/runs/NAME
set -euo pipefail
PORT="${1:-6379}"
export RAY_USAGE_STATS_ENABLED=0
ray start --head --port="$PORT" --include-dashboard=false
echo "head started; workers join with: experiments/launch/ray_worker.sh $(hostname -I | awk '{print $1}'):$PORT"
