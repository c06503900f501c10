#!/usr/bin/env bash
# Runs the quick profile of every shipped study with 2 local workers into $OUT (default runs/study), writes each
# report, and copies it (results.md, results.csv, figures) to docs/studies/<study>/. This produced the study
# sections of docs/results.md (2 CPU cores, no GPU). A rerun skips finished cells; pass study names to run
# only those, e.g.  bash scripts/run_studies.sh potentials representation
# NAME:PROFILE runs another profile into $OUT/NAME-PROFILE and docs/studies/NAME_<PROFILE without "quick_">
# (the full profile into docs/studies/NAME, which it replaces), e.g.
#   bash scripts/run_studies.sh data_efficiency:quick_two_rings4d data_efficiency:quick_dw4 infinite_data:full
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/study}
EHF=.venv/bin/ehf
studies=("$@")
[ ${#studies[@]} -eq 0 ] && studies=(data_efficiency potentials representation:full infinite_data:full)
for entry in "${studies[@]}"; do
    s=${entry%%:*}
    p=quick
    [ "$entry" != "$s" ] && p=${entry#*:}
    dir="$OUT/$s-$p"
    docs="docs/studies/$s"
    [ "$p" != quick ] && [ "$p" != full ] && docs="docs/studies/${s}_${p#quick_}"
    echo "== $s: $EHF study run -c configs/study/$s.yaml profile=$p --workers 2 --dir $dir"
    start=$(date +%s)
    $EHF study run -c "configs/study/$s.yaml" profile="$p" --workers 2 --dir "$dir"
    echo "$s ($p): exit $?, $(( $(date +%s) - start )) s of wall time"
    $EHF study report "$dir" > /dev/null && mkdir -p "$docs" \
        && cp "$dir"/report/*.md "$dir"/report/*.csv "$dir"/report/*.png "$docs/" 2>/dev/null
    ls "$dir"/report/*.json >/dev/null 2>&1 && cp "$dir"/report/*.json "$docs/"
done
