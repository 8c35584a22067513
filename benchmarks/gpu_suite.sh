#!/usr/bin/env bash
# Every full-size speed and memory figure in one short run, for the rare GPU lease (issue 24).
#
#   bash benchmarks/gpu_suite.sh [OUT]           # on a CUDA machine: Wan2.1-1.3B (and HunyuanVideo-1.5 8.3B)
#   MINWM_SUITE=cpu bash benchmarks/gpu_suite.sh # the same scripts at tiny size on the CPU (CI runs this)
#
# Writes OUT/suite.json (default outputs/gpu_suite): the latency table (first chunk of the
# bidirectional 50-step CFG sampler vs AR multi-step vs AR few-step, with and without the VAE),
# steady chunks 5 and 200, decoded frames/s and peak memory (benchmarks/latency.py), again with the
# static-shape cache and a compiled forward (CUDA graphs: --compile reduce-overhead); folded vs
# separate clean writes per steady chunk (benchmarks/fold_writes.py); parameters and FLOP
# ratios on meta tensors (benchmarks/flops.py); the memory plan of the env's stream against
# 16 GiB, computed on meta tensors (benchmarks/memory_plan.py). Each step has its own time limit so the whole
# suite stays under 10 minutes on a GPU; a step that fails or runs out is recorded as such and
# the others still run. BENCHMARKS.md says how its figures were taken.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/gpu_suite}
PY=${MINWM_PYTHON:-python}
mkdir -p "$OUT"
MODE=${MINWM_SUITE:-auto}
if [ "$MODE" = auto ]; then
  if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then MODE=gpu; else MODE=cpu; fi
fi
STEPS=()
step() {  # step NAME SECONDS COMMAND...: run it under a time limit, note its status
  local name=$1 limit=$2; shift 2
  echo "gpu_suite: $name (limit ${limit}s)" >&2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  STEPS+=("$name:$rc:$((SECONDS - start))")
  [ $rc -eq 0 ] || echo "gpu_suite: $name failed (exit $rc), see $OUT/$name.log" >&2
}
if [ "$MODE" = gpu ]; then
  step latency_wan 240 "$PY" benchmarks/latency.py --preset wan21-1.3b --device cuda --dtype bfloat16 \
    --json "$OUT/latency_wan.json"
  step latency_wan_compiled 150 "$PY" benchmarks/latency.py --preset wan21-1.3b --device cuda --dtype bfloat16 \
    --compile reduce-overhead --clip-frames 17 --bidir-steps 4 --late-chunk 50 --no-flops \
    --json "$OUT/latency_wan_compiled.json"
  step fold_wan 90 "$PY" benchmarks/fold_writes.py --model wan21-1.3b --device cuda --dtype bfloat16 --chunks 20 \
    --json "$OUT/fold_wan.json"
  step flops 60 "$PY" benchmarks/flops.py --json "$OUT/flops.json"
  step memory_plan 180 "$PY" benchmarks/memory_plan.py --json "$OUT/memory_plan.json"
  step latency_hy15 180 "$PY" benchmarks/latency.py --preset hy15-8b --device cuda --dtype bfloat16 \
    --clip-frames 121 --bidir-steps 50 --late-chunk 50 --no-flops --json "$OUT/latency_hy15.json"
else
  step latency_wan 300 "$PY" benchmarks/latency.py --preset tiny --early-chunk 2 --late-chunk 6 \
    --clip-frames 17 --bidir-steps 4 --no-flops --json "$OUT/latency_wan.json"
  step latency_wan_compiled 300 "$PY" benchmarks/latency.py --preset tiny --compile aot_eager --early-chunk 2 \
    --late-chunk 4 --clip-frames 9 --bidir-steps 2 --no-flops --json "$OUT/latency_wan_compiled.json"
  step fold_wan 120 "$PY" benchmarks/fold_writes.py --model tiny --chunks 3 --json "$OUT/fold_wan.json"
  step flops 120 "$PY" benchmarks/flops.py --presets wan21-1.3b --json "$OUT/flops.json"
  step memory_plan 120 "$PY" benchmarks/memory_plan.py --no-variants --json "$OUT/memory_plan.json"
fi
"$PY" - "$OUT" "$MODE" "${STEPS[@]}" <<'PYEOF'
import json, sys, time
from pathlib import Path
out, mode, steps = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
suite = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "mode": mode, "steps": {}}
for item in steps:
    name, rc, seconds = item.rsplit(":", 2)
    result = out / f"{name}.json"
    suite["steps"][name] = {"exit": int(rc), "seconds": int(seconds),
                            "result": json.loads(result.read_text()) if result.is_file() and rc == "0" else None}
(out / "suite.json").write_text(json.dumps(suite, indent=2))
failed = [n for n, s in suite["steps"].items() if s["exit"] != 0]
print(f"gpu_suite ({mode}): {out / 'suite.json'}" + (f"; failed: {failed}" if failed else ""))
sys.exit(1 if failed else 0)
PYEOF
