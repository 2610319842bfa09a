#!/usr/bin/env bash
# Join a node to a running Ray head: experiments/launch/ray_worker.sh HEAD_IP:PORT
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 HEAD_IP:PORT" >&2
  exit 2
fi
export RAY_USAGE_STATS_ENABLED=0
ray start --address="$1"
