#!/usr/bin/env bash
# Install everything, then run the main job on its embedded default: the online trainer on the
# synthetic stream (no Kafka, no Docker), publishing to the local registry ./registry.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/genrec train --max-events 20000 --publish-every-events 5000 "$@"
.venv/bin/genrec registry list
