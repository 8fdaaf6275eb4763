#!/usr/bin/env bash
# Install everything and run the main job on its embedded default data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/genrec train-offline --model hstu --epochs 3 --out runs/demo "$@"
