#!/usr/bin/env bash
# Set up, then run the whole test suite (CPU, a few minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec "$MINWM_PYTHON" -m pytest -q "$@"
