#!/usr/bin/env bash
# Create (once) the project's virtual environment with pinned versions in .venv/.
# Re-installs when requirements.lock changes. Installer output goes to .venv/install.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ] || ! cmp -s requirements.lock .venv/.requirements.lock; then
    echo "[venv] installing pinned dependencies into .venv (about a minute) ..." >&2
    "$PY" -m venv .venv
    if ! { .venv/bin/python -m pip install -r requirements.lock \
           && .venv/bin/python -m pip install --no-deps -e . ; } >.venv/install.log 2>&1; then
        tail -n 40 .venv/install.log >&2
        echo "[venv] install failed; full log in .venv/install.log" >&2
        exit 1
    fi
    cp requirements.lock .venv/.requirements.lock
fi
