#!/usr/bin/env bash
# Set up, then run the whole test suite (CPU, a few minutes on 2 cores).
# The suite runs in MINWM_TEST_WORKERS pytest-xdist workers (default 2, one per core of the CI
# machine; 0 runs it in this one process), each test file whole in one worker so that a file's
# module-scoped fixtures are built once.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec "$MINWM_PYTHON" -m pytest -q -n "${MINWM_TEST_WORKERS:-2}" --dist loadfile "$@"
