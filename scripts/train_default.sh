#!/usr/bin/env bash
# Train (or continue training) the shipped default world model on this machine's CPU.
#
#   bash scripts/train_default.sh            # render + encode the data once, run the pipeline, then ship
#
# The depth net first (runs/depth: python -m minwm_train.depth, rendered frames of the training
# layouts), then stages 0 -> 1 -> 2a -> 2c (the `default-v4g` training preset: default-v2b's
# warped reference and validity as input channels, warped through the depth net's depth instead
# of one plane, the output gated to the pixels the warp never saw), then runs/default-v4g/ship:
# stage 2c's model set to sample in one step (x0 at t = 1000) with a 32-frame view memory and the
# fill net drawing what the warp never saw, what minwm_env/assets/minwm-default holds (v6.1: with
# the depth net fine-tuned 8 000 steps on 16 000 frames into runs/depth_ft, and the transformer's
# correction blurred by 2 px before it is added, ModelSettings.residual_smooth).
# The fill net (python -m minwm_train.fill) trains on its own rendered pairs and turns, apart
# from the stages: 30 000 steps on pairs (L1, then a patch critic at weight 0.05) into
# runs/fill, then on turns of three steps streamed through it into runs/fill_roll (to 33 500),
# then with half the turns orbiting into runs/fill_orbit (to 36 500).
# (MINWM_PRESET=default-v4 trains the model before v5's recipe into runs/default-v4, default-v2b
# the one before; neither has a fill net.)
#
# Long-running and resumable: each stage checkpoints every few minutes into runs/default/, and
# rerunning continues from the latest checkpoints. On a GPU add --device cuda (it is the
# default when CUDA is available). docs/default_model.md says how the shipped model was trained.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
DATA=runs/default_data
PRESET=${MINWM_PRESET:-default-v4g}
OUT=runs/$PRESET
if [ ! -f "$DATA/latents/index.json" ]; then
  "$MINWM_PYTHON" -m minwm_env.data.cli render --out "$DATA" --num-clips 2000 --num-frames 33 --height 64 --width 64 --seed 0 --no-progress
  "$MINWM_PYTHON" -m minwm_env.data.cli encode --data "$DATA" --model default
fi
DEPTH=()
if [[ "$PRESET" == default-v4* ]]; then
  if [ ! -f runs/depth/model/config.json ]; then
    "$MINWM_PYTHON" -m minwm_train.depth --out runs/depth --num-frames 8000 --steps 2500 --no-progress
  fi
  DEPTH=(--depth-model runs/depth/model)
  if [ "$PRESET" = default-v4g ]; then  # v6.1 ships the depth net fine-tuned (the stages keep the first)
    "$MINWM_PYTHON" -m minwm_train.depth --out runs/depth_ft --init runs/depth/model --num-frames 16000 \
      --steps 8000 --lr 5e-4 --checkpoint-every 250 --no-progress
  fi
fi
"$MINWM_PYTHON" -m minwm_train.cli pipeline --preset "$PRESET" --data "$DATA" --out "$OUT" --until stage2c "${DEPTH[@]}" "$@"
FILL=()
if [ "$PRESET" = default-v4g ]; then
  if [ ! -f runs/fill_orbit/checkpoint/state.json ]; then
    if [ ! -f runs/fill_roll/checkpoint/state.json ]; then
      "$MINWM_PYTHON" -m minwm_train.fill --out runs/fill --steps 30000 --no-progress
      mkdir -p runs/fill_roll && cp -r runs/fill/checkpoint runs/fill_roll/
    fi
    "$MINWM_PYTHON" -m minwm_train.fill --out runs/fill_roll --steps 33500 --rollout-steps 3 --num-turns 800 \
      --held-out-turns 64 --no-progress
    mkdir -p runs/fill_orbit && cp -r runs/fill_roll/checkpoint runs/fill_orbit/
  fi
  "$MINWM_PYTHON" -m minwm_train.fill --out runs/fill_orbit --steps "${MINWM_FILL_STEPS:-36500}" --rollout-steps 3 \
    --num-turns 800 --held-out-turns 64 --orbit 0.5 --no-progress
  FILL=(runs/fill_orbit/model)
fi
"$MINWM_PYTHON" - "$OUT" "$PRESET" "${FILL[@]}" <<'EOF'
import sys
from minwm_env.models import load_model

out, preset, *fill = sys.argv[1:]
# one step (measured better than four on the previous model), and a view memory (measured better
# than none on revisits) that sharpens from frames within 0.5 units (seen pixels +1.23 dB over the
# plane warp pooled, against +0.75 without; docs/default_model.md)
memory = {"memory_frames": 32, "memory_sharpen": 0.5} if preset != "default" else {}
# v6: the fill net draws what the warp never saw (Frechet distance far from the start 41.1 against 57.2);
# v6.1: the fine-tuned depth net (orbited object 6.6 px from the truth's against 9.5) and the transformer's
# correction blurred by 2 px (Frechet 40.3 -> 37.8: no 8x8 tiles over the drawing)
drawn = {"fill": fill[0], "warp_fill": "net", "depth": "runs/depth_ft/model", "residual_smooth": 2.0} if fill else {}
load_model(f"{out}/stage2c/model", sampler_timesteps=(1000.0,), **memory, **drawn).save_pretrained(f"{out}/ship")
print(f"shipped model: {out}/ship (copy it to minwm_env/assets/minwm-default to ship it)")
EOF
