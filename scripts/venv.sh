#!/usr/bin/env bash
# Create (once) the project's virtual environment with pinned versions in .venv/.
# Re-installs when the lock file or the torch choice changes. Installer output goes to .venv/install.log.
#
# Which torch 2.13.0 build: EHF_TORCH=default|cpu|cuda (default: default)
#   default  what `pip install torch==2.13.0` resolves to on this machine: from PyPI, the CUDA 13.0 build on
#            Linux x86_64 (with about 3 GB of CUDA libraries) and the CPU build on macOS, Windows and Linux arm64;
#            a local wheel when pip is configured with one (find-links)
#   cpu      the CPU build from PyTorch's CPU wheel index (https://download.pytorch.org/whl/cpu), on any machine
#   cuda     requirements-cuda.lock: the CUDA 13.0 build and the CUDA libraries it pins (Linux x86_64, NVIDIA
#            driver for CUDA 13)
# `bash scripts/venv.sh --dry-run` prints the install commands and changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
CPU_INDEX=https://download.pytorch.org/whl/cpu
TORCH=${EHF_TORCH:-default}
case "$TORCH" in
    default) LOCK=requirements.lock; FIRST=() ;;
    cpu) LOCK=requirements.lock; FIRST=(--index-url "$CPU_INDEX" torch==2.13.0) ;;
    cuda) LOCK=requirements-cuda.lock; FIRST=() ;;
    *) echo "[venv] EHF_TORCH=$TORCH: choose default, cpu or cuda" >&2; exit 2 ;;
esac
STEPS=()
[ ${#FIRST[@]} -gt 0 ] && STEPS+=(".venv/bin/python -m pip install ${FIRST[*]}")
STEPS+=(".venv/bin/python -m pip install -r $LOCK" ".venv/bin/python -m pip install --no-deps -e .")
if [ "${1:-}" = "--dry-run" ]; then
    echo "EHF_TORCH=$TORCH"
    printf '%s\n' "$PY -m venv .venv" "${STEPS[@]}"
    exit 0
fi
STAMP=$(cat "$LOCK"; echo "EHF_TORCH=$TORCH")
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.requirements.lock 2>/dev/null)" != "$STAMP" ]; then
    echo "[venv] installing pinned dependencies into .venv (EHF_TORCH=$TORCH; a few minutes) ..." >&2
    "$PY" -m venv .venv
    for step in "${STEPS[@]}"; do
        if ! $step >>.venv/install.log 2>&1; then
            tail -n 40 .venv/install.log >&2
            echo "[venv] install failed ($step); full log in .venv/install.log" >&2
            exit 1
        fi
    done
    printf '%s\n' "$STAMP" >.venv/.requirements.lock
    .venv/bin/python -c "import torch; c = torch.version.cuda; print(f'[venv] torch {torch.__version__}: '
        + (f'CUDA {c} build' if c else 'CPU build') + ' (EHF_TORCH=default|cpu|cuda picks another)')" >&2
fi
