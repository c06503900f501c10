"""efm cells beside the other methods of a study run without them: per target and n_train, test KL (mean ± sample
std over seeds, flagged cells included), wall time, parameters, function evaluations per likelihood, and the paired
difference efm − method per seed with its 95 % Student-t interval.

Usage: python scripts/efm_beside_study.py EFM_RESULTS.csv STUDY_RESULTS.csv
(e.g. docs/studies/data_efficiency_efm/results.csv docs/studies/data_efficiency/results.csv)."""

import csv
import sys

from lightning_ehf.study.statistics import FLAGS, mean_std, t_interval

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
            flagged = [s for s, r in seeds.items() if any(r.get(flag) == "True" for flag in FLAGS)]
            if flagged:
                line += f" flagged {flagged}"
            if method != "efm":
                shared = sorted(set(seeds) & set(methods["efm"]))
                diffs = [float(methods["efm"][s]["test/kl"]) - float(seeds[s]["test/kl"]) for s in shared]
                interval = t_interval(diffs)
                line += f" | efm − {method}: {sum(diffs) / len(diffs):+.3f}"
                line += f" [{interval[0]:+.3f}, {interval[1]:+.3f}]" if interval else ""
                line += f", efm lower in {sum(d < 0 for d in diffs)}/{len(diffs)} seeds"
            print(line)


if __name__ == "__main__":
    main(*sys.argv[1:3])
