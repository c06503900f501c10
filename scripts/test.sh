#!/usr/bin/env bash
# Fresh machine -> lint, format check and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -q -n 2 --timeout 900 "$@"
