#!/usr/bin/env bash
# The main job: set up, roll the shipped default world model out from a rendered start frame
# along a scripted camera path (ground truth side by side in the mp4), then evaluate it against
# the ground truth on held-out paths in a scene layout it never saw (report.md + plots).
#
#   bash scripts/main.sh                  # writes outputs/main/rollout/ and outputs/main/eval/
#
# About a minute on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
OUT=${MINWM_MAIN_OUT:-outputs/main}
"$MINWM_PYTHON" -m minwm_env.rollout --model minwm-default --pose-string "w*8,l*8,w*4,j*8,d*4,s*4,stay*4" \
  --seed 0 --out "$OUT/rollout"
"$MINWM_PYTHON" -m minwm_env.eval.cli --model minwm-default --out "$OUT/eval" --scene-seed 100 --seed 1234 \
  --num-paths 4 --chunks 8 --drift-chunks 16 --drift-paths 4 --suites adherence drift controllability idle \
  --no-hardware "$@"
echo "main job done: $OUT/rollout/rollout.mp4 (model | ground truth), $OUT/rollout/steps.png, $OUT/eval/report.md"
