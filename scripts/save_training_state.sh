#!/usr/bin/env bash
# Copy the default model's latest training state (per stage: the latest checkpoint, config,
# metrics, the exported model) from runs/default/ into training_state/default/ for committing.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=runs/default
for stage_dir in "$OUT"/stage*/; do
  stage=$(basename "$stage_dir")
  latest="$stage_dir/checkpoints/latest"
  [ -f "$latest" ] || continue
  name=$(cat "$latest")
  dest=training_state/default/$stage
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp/checkpoints"
  cp -r "$stage_dir/checkpoints/$name" "$dest.tmp/checkpoints/"
  cp "$latest" "$dest.tmp/checkpoints/latest"
  cp "$stage_dir/config.json" "$dest.tmp/" 2>/dev/null || true
  cp "$stage_dir/metrics.jsonl" "$dest.tmp/" 2>/dev/null || true
  [ -f "$stage_dir/ode_pairs.safetensors" ] && cp "$stage_dir/ode_pairs.safetensors" "$dest.tmp/"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
  echo "saved $stage at $name"
done
