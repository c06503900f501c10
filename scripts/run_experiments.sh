#!/usr/bin/env bash
# Runs every shipped experiment at its full budget (seed 0), one after another, into $OUT (default /tmp/exp).
# This produced the table in docs/results.md (2 CPU cores, no GPU).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/exp}
EHF=.venv/bin/ehf
run() { name=$1; shift; echo "== $name: ehf train $*"; $EHF train "$@" logger.wandb.mode=disabled run.dir="$OUT/$name" > "$OUT/$name.log" 2>&1; echo "$name rc=$?"; }
rm -rf "$OUT"; mkdir -p "$OUT"
run ring2d_finite -c configs/experiment/ring2d_finite.yaml
run ring2d_nsf model.kind=nsf
run ring2d_none constraint.mode=none
run gmm8 -c configs/experiment/gmm8.yaml
run gmm8_none -c configs/experiment/gmm8.yaml constraint.mode=none
run shell3d -c configs/experiment/shell3d.yaml
run particles2d -c configs/experiment/particles2d.yaml
run rings2d -c configs/experiment/rings2d.yaml
run dw4 -c configs/experiment/dw4.yaml

.venv/bin/python scripts/results_table.py "$OUT"
