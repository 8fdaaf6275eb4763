#!/usr/bin/env bash
# Create ./.venv and install genrec with its dev tools. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# uv resolves and installs the large torch/triton wheels several times faster than pip.
.venv/bin/python -m pip install --quiet --disable-pip-version-check "uv>=0.4"
.venv/bin/python -m uv pip install --quiet --python .venv/bin/python -e ".[dev]"
