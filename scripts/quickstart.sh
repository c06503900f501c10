#!/usr/bin/env bash
# Fresh machine -> trained default experiment (ring2d, dual constraint) and its printed results.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
exec .venv/bin/ehf train "$@"
