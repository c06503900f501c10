"""efm cells beside the other methods of a study run without them: per target and n_train, test KL (mean ± sample
std over seeds, flagged cells included and named), wall time, parameters, function evaluations per likelihood, and
the paired difference efm − method per seed with its 95 % Student-t interval (the README summary's pairing and flags).

Usage: python scripts/efm_beside_study.py EFM_RESULTS.csv STUDY_RESULTS.csv
(e.g. docs/studies/data_efficiency_efm/results.csv docs/studies/data_efficiency/results.csv)."""

import csv
import sys

from lightning_ehf.study.statistics import mean_std
from lightning_ehf.study.summary import paired_interval, row_flags

METHODS = ("efm", "ehf_invariant", "ehf_dual", "ehf_none", "nsf_aug", "nsf")


def main(efm_csv: str, study_csv: str) -> None:
    cells: dict[tuple[str, str], dict[str, dict[str, dict[str, str]]]] = {}
    for path in (study_csv, efm_csv):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row["state"] == "done":
                    cells.setdefault((row["target"], row["n_train"]), {}).setdefault(row["method"], {})[row["seed"]] = (
                        row
                    )
    for (target, n_train), methods in cells.items():
        if "efm" not in methods:
            continue
        print(f"## {target} {n_train}")
        for method in (m for m in METHODS if m in methods):
            seeds = methods[method]
            mean, std = mean_std([float(r["test/kl"]) for r in seeds.values()])
            wall = mean_std([float(r["wall_time_s"]) for r in seeds.values()])[0]
            line = f"{method:14s} KL {mean:.3f} ± {std:.3f} (n={len(seeds)}) wall {wall:.0f}s"
            line += f" params {next(iter(seeds.values()))['params']}"
            nfe = [float(r["test/nfe"]) for r in seeds.values() if r.get("test/nfe")]
            if nfe:
                line += f" nfe {sum(nfe) / len(nfe):.0f}"
            flagged = {s: row_flags(r) for s, r in seeds.items() if row_flags(r)}
            if flagged:
                line += f" flagged {flagged}"
            if method != "efm":
                shared = sorted(set(seeds) & set(methods["efm"]))
                diffs = [float(methods["efm"][s]["test/kl"]) - float(seeds[s]["test/kl"]) for s in shared]
                diff, low, high = paired_interval(diffs)
                line += f" | efm − {method}: {diff:+.3f} [{low:+.3f}, {high:+.3f}]"
                line += f", efm lower in {sum(d < 0 for d in diffs)}/{len(diffs)} seeds"
            print(line)


if __name__ == "__main__":
    main(*sys.argv[1:3])
