"""The report's statistics on a study folder written by hand: each flag on its own cell (the under-trained
boundary included), means over unflagged cells beside means over all done cells, paired differences with
Student-t intervals against a hand computation, feasibility ratios and fractions, and the estimator sentence."""

from __future__ import annotations

import csv
import json
import math
import statistics

import pytest
import yaml

from ehf_testing import markdown_table
from lightning_ehf.study.report import cell_rows, write_report
from lightning_ehf.study.runner import StudyFolder
from lightning_ehf.study.spec import load_study
from lightning_ehf.study.statistics import diverged_after_best, t_interval, under_trained

# two-sided 95 % Student-t quantiles t_{0.975, df}, from printed tables
T975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305}
SQRT_TOL = math.sqrt(1e-3)
BASE = {
    "best_step": 500,
    "max_steps": 1000,
    "steps": 700,
    "stopped_early": True,
    "best_val_nll": 1.0,
    "val/nll_iw8": 1.1,
    "iw_samples": 16,
    "params": 100,
    "wall_time_s": 1.0,
}
# (method, seed) -> test KL and what makes the cell flagged, if anything
CELLS = {
    ("ehf_dual", 0): {"test/kl": 0.10, "test/bracket_rms/L01": 0.030, "test/bracket_rms/L02": 0.020},
    ("ehf_dual", 1): {"test/kl": 0.20, "test/bracket_rms/L01": 0.0345, "test/bracket_rms/L02": 0.001},
    ("ehf_dual", 2): {"test/kl": 0.05, "test/bracket_rms/L01": 0.050, "val/nll_iw8": 2.5},  # diverged after best
    ("ehf_dual", 3): {
        "test/kl": 0.07,
        "test/bracket_rms/L01": 0.031,
        "steps": 1000,
        "stopped_early": False,
    },  # hit the cap
    ("nsf", 0): {"test/kl": 0.30},
    ("nsf", 1): {"test/kl": 0.25},
    ("nsf", 2): {"test/kl": 0.43},
    ("nsf", 3): {"test/kl": 0.50, "best_step": 900, "steps": 950},  # under-trained: exactly 0.9 × cap
}
FLAGGED = {("ehf_dual", 2), ("ehf_dual", 3), ("nsf", 3)}


def _config(method: str, patience: int | None = 5) -> dict:
    return {
        "model": {"kind": "ehf" if method.startswith("ehf") else "nsf"},
        "constraint": {"mode": "dual" if method == "ehf_dual" else "none", "tolerance": 1e-3},
        "trainer": {"patience": patience, "val_check_interval": 50},
        "eval": {"iw_samples": 16, "val_iw_samples": 8},
    }


def _folder(tmp_path, axes: dict, report: dict | None = None) -> StudyFolder:
    spec = tmp_path / "s.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"study": "stats", "base": {"logger.wandb.mode": "disabled"}, "axes": axes, "report": report or {}}
        )
    )
    folder = StudyFolder(tmp_path / "study", load_study(spec))
    folder.write_manifest("ehf study run -c s.yaml")
    return folder


def _write_cell(folder: StudyFolder, cell, config: dict, metrics: dict, history: list[float] | None = None) -> None:
    run = folder.cell_dir(cell)
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.json").write_text(json.dumps(metrics))
    if history is not None:
        with open(run / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", "train/loss", "val/nll_iw8"])
            writer.writeheader()
            for i, value in enumerate(history):  # a training row between validations, as the CSV logger writes
                writer.writerow({"step": 50 * i, "train/loss": 1.0, "val/nll_iw8": ""})
                writer.writerow({"step": 50 * (i + 1), "train/loss": "", "val/nll_iw8": value})


@pytest.fixture
def study(tmp_path):
    """2 methods × 4 seeds, three cells flagged (see CELLS); returns (results.md, results.csv rows by cell)."""
    folder = _folder(
        tmp_path,
        {"method": ["ehf_dual", "nsf"], "seed": {"key": "seed", "values": [0, 1, 2, 3]}},
        {"compare": "method", "pairs": [["ehf_dual", "nsf"]]},
    )
    for cell in folder.cells:
        key = (cell.values["method"], int(cell.values["seed"][4:]))
        kl = CELLS[key]["test/kl"]
        metrics = {
            **BASE,
            "test/nll": 1.0 + kl,
            "test/nll_gap": 0.1,
            "test/kl_paired": kl,
            "test/kl_paired_stderr": 0.001 + 0.002 * key[1],
            **CELLS[key],
        }
        _write_cell(folder, cell, _config(key[0]), metrics)
    out = write_report(folder)
    with open(out["csv"], newline="") as f:
        rows = {r["cell"]: r for r in csv.DictReader(f)}
    return out["md"].read_text(), rows


def _kl(method: str, flagged: bool | None = None) -> list[float]:
    return [
        v["test/kl"]
        for (m, s), v in CELLS.items()
        if m == method and (flagged is None or ((m, s) in FLAGGED) == flagged)
    ]


def test_each_flag_marks_its_own_cell_and_only_that(study):
    _, rows = study
    expected = {"ehf_dual-seed2": "diverged_after_best", "ehf_dual-seed3": "hit_cap", "nsf-seed3": "under_trained"}
    for cell, row in rows.items():
        carried = {
            f for f in ("under_trained", "hit_cap", "diverged_after_best", "first_validation_best") if row[f] == "True"
        }
        assert carried == ({expected[cell]} if cell in expected else set()), (cell, carried)
        assert row["flagged"] == str(cell in expected)


def test_under_trained_boundary_is_included():
    assert under_trained(900, 1000) and not under_trained(899, 1000)
    assert under_trained(1000, 1000) and not under_trained(None, 1000) and not under_trained(900, None)


def test_means_over_unflagged_cells_sit_beside_means_over_all_done(study):
    md, _ = study
    table = markdown_table(md, "method")
    for method in ("ehf_dual", "nsf"):
        good, every = _kl(method, flagged=False), _kl(method)
        assert table[method]["test KL"] == f"{statistics.mean(good):.3f} ± {statistics.stdev(good):.3f}"
        assert table[method]["test KL (all done)"] == f"{statistics.mean(every):.3f} ± {statistics.stdev(every):.3f}"
        assert table[method]["seeds"] == f"{len(good)}/4"
    assert table["ehf_dual"]["flags"] == "1 hit the cap, 1 diverged after best"
    assert table["nsf"]["flags"] == "1 under-trained"
    # the largest row error of an unflagged cell (seeds 0 and 1 of ehf_dual: 0.001, 0.003)
    assert table["ehf_dual"]["paired KL row s.e."] == "≤ 0.003"
    for title, cells in (
        ("Cells that diverged after their best step", "`ehf_dual-seed2`"),
        ("Cells that hit the cap", "`ehf_dual-seed3`"),
        ("Under-trained cells", "`nsf-seed3`"),
    ):
        assert f"{title} (1): {cells}" in md


def test_paired_interval_matches_a_hand_computation(study):
    md, _ = study
    (row,) = markdown_table(md, "comparison").values()
    for label, seeds in (("", [0, 1]), ("all done: ", [0, 1, 2, 3])):
        diffs = [CELLS[("ehf_dual", s)]["test/kl"] - CELLS[("nsf", s)]["test/kl"] for s in seeds]
        n = len(diffs)
        mean = sum(diffs) / n
        std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
        half = T975[n - 1] * std / math.sqrt(n)
        assert row[f"{label}seeds"] == str(n)
        assert row[f"{label}mean Δ KL"] == f"{mean:+.3f}"
        assert row[f"{label}95% CI Δ KL"] == f"[{mean - half:+.3f}, {mean + half:+.3f}]", (label, row)
    assert row["lower test KL"] == "2/2"
    assert row["95% CI Δ gap"] == "[+0.000, +0.000]"  # equal gaps: a zero-width interval
    assert "every seed" not in md.lower()


def test_t_interval_against_printed_quantiles():
    diffs = [-0.031, -0.294, -0.015]  # particles2d at 128, dual − none: one seed carries the mean
    lo, hi = t_interval(diffs)
    mean, std = statistics.mean(diffs), statistics.stdev(diffs)
    assert lo == pytest.approx(mean - T975[2] * std / math.sqrt(3), abs=1e-8)
    assert hi == pytest.approx(mean + T975[2] * std / math.sqrt(3), abs=1e-8)
    assert lo < 0 < hi  # not significant
    assert t_interval([0.5]) is None


def test_feasibility_ratio_and_fraction_within_tolerance(study):
    md, rows = study
    ratios = {
        s: max(v for k, v in CELLS[("ehf_dual", s)].items() if k.startswith("test/bracket_rms/")) / SQRT_TOL
        for s in range(4)
    }
    for s, ratio in ratios.items():
        assert float(rows[f"ehf_dual-seed{s}"]["feasibility"]) == pytest.approx(ratio, rel=1e-9)
    assert all(rows[f"nsf-seed{s}"]["feasibility"] == "" for s in range(4))  # unconstrained: no ratio
    within = sum(r <= 1.1 for r in ratios.values())
    assert within == 3  # 0.95, 1.09 and 0.98 in, 1.58 out
    table = markdown_table(md, "method")
    assert table["ehf_dual"]["feasible (≤ 1.1×)"] == f"{within}/4" and table["nsf"]["feasible (≤ 1.1×)"] == "—"
    values = list(ratios.values())
    assert table["ehf_dual"]["RMS/√ε"] == f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"
    assert f"within 1.1× (in this study {within} of 4 done constrained cells)" in md


def test_estimator_sentence_when_ehf_sits_beside_an_exact_likelihood(study, tmp_path):
    md, _ = study
    assert md.count("estimators differ") == 1
    assert "(IWAE, K = 16) upper bounds on its NLL" in md and "NSF's are exact likelihoods" in md
    (tmp_path / "ehf_only").mkdir()
    folder = _folder(tmp_path / "ehf_only", {"method": ["ehf_dual"], "seed": {"key": "seed", "values": [0]}})
    _write_cell(folder, folder.cells[0], _config("ehf_dual"), {**BASE, "test/kl": 0.1})
    assert "estimators differ" not in write_report(folder)["md"].read_text()


def test_hit_cap_needs_early_stopping_and_diverged_reads_older_runs_history(tmp_path):
    """hit_cap: only where trainer.patience was set; diverged_after_best: from metrics.csv when metrics.json
    predates best_val_nll, and a non-finite last validation counts."""
    folder = _folder(tmp_path, {"seed": {"key": "seed", "values": [0, 1, 2, 3, 4]}})
    at_cap = {**BASE, "steps": 1000, "stopped_early": False}
    old = {k: v for k, v in BASE.items() if k != "best_val_nll"}
    cases = [
        (_config("nsf", patience=None), at_cap, None),  # no early stopping: reaching the cap says nothing
        (_config("nsf"), at_cap, None),
        (_config("nsf"), {**old, "val/nll_iw8": 2.3}, [3.0, 1.2, 2.3]),  # 2.3 − 1.2 > 1 nat
        (_config("nsf"), {**old, "val/nll_iw8": 2.1}, [3.0, 1.2, 2.1]),  # 0.9 nat: not diverged
        (_config("nsf"), {**BASE, "val/nll_iw8": float("nan")}, None),
    ]
    for cell, (config, metrics, history) in zip(folder.cells, cases):
        _write_cell(folder, cell, config, metrics, history)
    rows = cell_rows(folder)
    assert [r["hit_cap"] for r in rows] == [False, True, False, False, False]
    assert [r["diverged_after_best"] for r in rows] == [False, False, True, False, True]
    assert rows[2]["best_val_nll"] == pytest.approx(1.2) and rows[3]["best_val_nll"] == pytest.approx(1.2)
    assert not diverged_after_best(None, 1.0) and not diverged_after_best(5.0, None)
