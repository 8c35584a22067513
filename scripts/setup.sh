#!/usr/bin/env bash
# Sets up minwm: a virtual environment in .venv (or the one already active), torch only if it is
# missing (the CPU build, torch==2.13.0; a torch that is present is never replaced), then the
# package with its test extra. Prints nothing but progress; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${VIRTUAL_ENV:-}" ]; then
  PY="$VIRTUAL_ENV/bin/python"
else
  if [ ! -x .venv/bin/python ]; then
    echo "minwm setup: creating .venv"
    # --system-site-packages: a torch installed system-wide is seen, and kept.
    python3 -m venv --system-site-packages .venv
  fi
  PY="$PWD/.venv/bin/python"
fi

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "minwm setup: torch is missing, installing the CPU build torch==2.13.0"
  "$PY" -m pip install --quiet --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
  "$PY" -c "import torch" # fail loudly if the install did not take
fi

stamp="$(dirname "$(dirname "$PY")")/.minwm-installed"
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$PY" -c "import minwm_env" >/dev/null 2>&1; then
  echo "minwm setup: installing minwm and its dependencies"
  "$PY" -m pip install --quiet --disable-pip-version-check -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
  "$PY" -c "import minwm_env, minwm_train" # fail loudly if the install did not take
  echo "$want" > "$stamp"
fi
export MINWM_PYTHON="$PY"
