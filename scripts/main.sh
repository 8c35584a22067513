#!/usr/bin/env bash
# The main job: set up, then run the latency benchmark on the tiny preset and print its table.
# (Once the shipped default world model exists, this becomes a rollout of it.)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
mkdir -p outputs
exec "$MINWM_PYTHON" benchmarks/latency.py --preset tiny --json outputs/latency_tiny.json "$@"
