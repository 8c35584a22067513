#!/usr/bin/env bash
# Train (or continue training) the shipped default world model on this machine's CPU.
#
#   bash scripts/train_default.sh            # render + encode the data once, then run the pipeline
#
# Long-running and resumable: each stage checkpoints every few minutes into runs/default/.
# A fresh machine first restores the committed training state (training_state/default/), so
# a later session continues where the last one stopped. scripts/save_training_state.sh copies
# the latest checkpoints back into training_state/ for committing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
DATA=runs/default_data
OUT=runs/default
if [ ! -f "$DATA/latents/index.json" ]; then
  "$MINWM_PYTHON" -m minwm_env.data.cli render --out "$DATA" --num-clips 2000 --num-frames 33 --height 64 --width 64 --seed 0 --no-progress
  "$MINWM_PYTHON" -m minwm_env.data.cli encode --data "$DATA" --model default
fi
if [ -d training_state/default ]; then
  for stage_dir in training_state/default/*/; do
    stage=$(basename "$stage_dir")
    if [ ! -d "$OUT/$stage/checkpoints" ]; then
      mkdir -p "$OUT/$stage"
      cp -r "$stage_dir"/. "$OUT/$stage/"
    fi
  done
fi
# Waiting OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning made
# steps ~15x slower whenever another process held a core (0.5 s vs 8 s a step).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec "$MINWM_PYTHON" -m minwm_train.cli pipeline --preset default --data "$DATA" --out "$OUT" "$@"
