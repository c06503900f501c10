"""The README's summary table and its cost figure are recomputed from the studies' raw files, so the text
cannot drift from the data; the statistics behind them against hand computations."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pytest

from lightning_ehf.study.summary import (
    SUMMARY_STUDIES,
    compare_study,
    markdown,
    paired_interval,
    row_flags,
    step_cost_ratios,
)

ROOT = Path(__file__).resolve().parents[2]
STUDIES = ROOT / "docs" / "studies"


def _readme_block(document: str = "README.md") -> list[str]:
    text = (ROOT / document).read_text()
    block = text.split("<!-- summary-table:start -->\n", 1)[1].split("\n<!-- summary-table:end -->", 1)[0]
    return block.splitlines()


@pytest.mark.parametrize("document", ["README.md", "docs/results.md"])
def test_summary_table_is_the_raw_files_table(document):
    comparisons = [c for name in SUMMARY_STUDIES for c in compare_study(STUDIES / name / "results.csv")]
    assert _readme_block(document) == markdown(comparisons)


def test_readme_summary_lists_every_loss_and_tie_of_the_studies():
    verdicts = [line.rsplit("|", 2)[-2].strip() for line in _readme_block()[2:]]
    assert any(v.startswith("loss") for v in verdicts) and "tie" in verdicts
    # every study with an EHF arm and a peer is in the summary (none left out because it holds losses)
    for folder in STUDIES.iterdir():
        raw = folder / "results.csv"
        if raw.is_file() and compare_study(raw) and folder.name != "data_efficiency_nsf_fine_validation":
            assert folder.name in SUMMARY_STUDIES, folder.name


def test_readme_step_cost_range_is_the_raw_files_range():
    ratios = [r for name in SUMMARY_STUDIES for r in step_cost_ratios(STUDIES / name / "results.csv")]
    quoted = re.search(
        r"EHF step \(validation included\) cost\s+(\d+)–(\d+)× an NSF step", (ROOT / "README.md").read_text()
    )
    assert quoted, "the README's cost sentence moved"
    assert (int(quoted[1]), int(quoted[2])) == (math.floor(min(ratios)), math.ceil(max(ratios)))


def test_paired_interval_against_a_hand_computation():
    # d = (-0.1, -0.3, -0.2): mean -0.2, s = 0.1, t_{0.975, 2} = 4.302653, half width 4.302653 · 0.1 / √3
    mean, low, high = paired_interval([-0.1, -0.3, -0.2])
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert mean == pytest.approx(-0.2)
    assert (low, high) == (pytest.approx(-0.2 - half, abs=1e-6), pytest.approx(-0.2 + half, abs=1e-6))
    assert paired_interval([0.5])[1:] == (-math.inf, math.inf)


@pytest.mark.parametrize(
    "row,expected",
    [
        ({"best_step": "900", "max_steps": "1000", "stopped_early": "True"}, ["under-trained"]),  # the ≥ boundary
        ({"best_step": "899", "max_steps": "1000", "stopped_early": "True"}, []),
        ({"best_step": "400", "max_steps": "1000", "stopped_early": "False"}, ["hit the cap"]),
        (
            {"best_step": "400", "max_steps": "1000", "stopped_early": "True", "val/kl": "6.0", "test/kl": "4.9"},
            ["diverged after best"],
        ),
        ({"best_step": "400", "max_steps": "1000", "stopped_early": "True", "val/kl": "5.8", "test/kl": "4.9"}, []),
        (
            {"best_step": "50", "max_steps": "1000", "stopped_early": "True", "first_validation_best": "True"},
            ["best at the 1st validation"],
        ),
    ],
)
def test_row_flags(row, expected):
    assert row_flags(row) == expected


def test_row_flags_read_the_reports_flag_columns_and_know_fixed_budgets():
    capped = {"best_step": "400", "max_steps": "1000", "stopped_early": "False", "steps": "1000"}
    assert row_flags(capped, early_stopping=False) == []  # a learning curve runs to its cap by design
    assert row_flags({**capped, "hit_cap": "False", "diverged_after_best": "True"}) == ["diverged after best"]


def test_verdicts_follow_the_interval(tmp_path):
    """A peer better in every seed by a steady margin is a loss; a noisy difference is a tie."""
    path = tmp_path / "study" / "results.csv"
    path.parent.mkdir()
    fields = [
        "cell",
        "method",
        "target",
        "seed",
        "state",
        "best_step",
        "max_steps",
        "steps",
        "stopped_early",
        "test/kl",
    ]
    rows = []
    for seed, (ehf, nsf, aug) in enumerate([(0.50, 0.30, 0.9), (0.52, 0.31, 0.1), (0.49, 0.29, 0.9)]):
        for method, kl in (("ehf_dual", ehf), ("nsf", nsf), ("nsf_aug", aug)):
            rows.append(
                {
                    "cell": f"{method}-{seed}",
                    "method": method,
                    "target": "t",
                    "seed": f"seed{seed}",
                    "state": "done",
                    "best_step": "100",
                    "max_steps": "1000",
                    "steps": "300",
                    "stopped_early": "True",
                    "test/kl": kl,
                }
            )
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    (only,) = compare_study(path)
    assert (only.arm, only.other, only.seeds, only.flagged) == ("ehf_dual", "nsf", 3, 0)  # the stronger peer
    assert only.verdict == "loss" and only.mean == pytest.approx(0.2033333, abs=1e-6)
