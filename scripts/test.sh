#!/usr/bin/env bash
# Fresh machine -> the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
exec .venv/bin/python -m pytest -q -n 2 --timeout 900 "$@"
