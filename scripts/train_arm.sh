#!/usr/bin/env bash
# Train the robot-arm world model (docs/robots.md) on this machine's CPU, resumably:
#
#   bash scripts/train_arm.sh            # render + encode the arm clips once, run the pipeline, then ship
#
# Renders 1500 clips of the arm world (minwm-data render --world arm: the Pusher arm with position
# servos, joint-target actions, a fixed camera), encodes them, trains stages 0 -> 1 -> 2a -> 2c of the
# `arm` training preset into runs/arm/, and writes runs/arm/ship: stage 2c's model with the sampler
# chosen by measurement (docs/robots.md). Rerunning continues from the latest checkpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
DATA=runs/arm_data
OUT=runs/arm
if [ ! -f "$DATA/latents/index.json" ]; then
  "$MINWM_PYTHON" -m minwm_env.data.cli render --world arm --out "$DATA" --num-clips 1500 --num-frames 33 --height 64 --width 64 --seed 0 --no-progress
  "$MINWM_PYTHON" -m minwm_env.data.cli encode --data "$DATA" --model default --no-progress
fi
"$MINWM_PYTHON" -m minwm_train.cli pipeline --preset arm --data "$DATA" --out "$OUT" --until stage2c "$@"
"$MINWM_PYTHON" - "$OUT" <<'PY'
import sys
from minwm_env.models import load_model

out = sys.argv[1]
load_model(f"{out}/stage2c/model", sampler_timesteps=(1000.0,)).save_pretrained(f"{out}/ship")
print(f"shipped arm model: {out}/ship")
PY
