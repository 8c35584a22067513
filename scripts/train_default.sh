#!/usr/bin/env bash
# Train (or continue training) the shipped default world model on this machine's CPU.
#
#   bash scripts/train_default.sh            # render + encode the data once, then run the pipeline
#
# Long-running and resumable: each stage checkpoints every few minutes into runs/default/, and
# rerunning continues from the latest checkpoints. On a GPU add --device cuda (it is the
# default when CUDA is available). docs/default_model.md says how the shipped model was trained.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
DATA=runs/default_data
OUT=runs/default
if [ ! -f "$DATA/latents/index.json" ]; then
  "$MINWM_PYTHON" -m minwm_env.data.cli render --out "$DATA" --num-clips 2000 --num-frames 33 --height 64 --width 64 --seed 0 --no-progress
  "$MINWM_PYTHON" -m minwm_env.data.cli encode --data "$DATA" --model default
fi
# Waiting OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning made
# steps ~15x slower whenever another process held a core (0.5 s vs 8 s a step).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec "$MINWM_PYTHON" -m minwm_train.cli pipeline --preset default --data "$DATA" --out "$OUT" "$@"
