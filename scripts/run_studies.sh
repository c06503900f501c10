#!/usr/bin/env bash
# Runs the quick profile of every shipped study with 2 local workers into $OUT (default runs/study), writes each
# report, and copies it (results.md, results.csv, figures) to docs/studies/<study>/. This produced the study
# sections of docs/results.md (2 CPU cores, no GPU). A rerun skips finished cells; pass study names to run
# only those, e.g.  bash scripts/run_studies.sh potentials representation
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/study}
EHF=.venv/bin/ehf
studies=("$@")
[ ${#studies[@]} -eq 0 ] && studies=(data_efficiency potentials representation infinite_data)
for s in "${studies[@]}"; do
    dir="$OUT/$s-quick"
    echo "== $s: $EHF study run -c configs/study/$s.yaml profile=quick --workers 2 --dir $dir"
    start=$(date +%s)
    $EHF study run -c "configs/study/$s.yaml" profile=quick --workers 2 --dir "$dir"
    echo "$s: exit $?, $(( $(date +%s) - start )) s of wall time"
    $EHF study report "$dir" > /dev/null && mkdir -p "docs/studies/$s" \
        && cp "$dir"/report/*.md "$dir"/report/*.csv "$dir"/report/*.png "docs/studies/$s/" 2>/dev/null
    ls "$dir"/report/*.json >/dev/null 2>&1 && cp "$dir"/report/*.json "docs/studies/$s/"
done
