"""``ehf study report`` on a study folder written by hand: the spread over seeds is the sample standard
deviation (``numpy.std(ddof=1)``), and seed-by-seed pairs count only seeds where both cells are done
(never a pending, interrupted or failed one)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from ehf_testing import markdown_table
from lightning_ehf import cli
from lightning_ehf.study.runner import StudyFolder
from lightning_ehf.study.spec import load_study

KL = {("ehf_dual", 0): 0.1, ("ehf_dual", 1): 0.4, ("ehf_dual", 2): 1.0, ("ehf_none", 0): 0.3, ("ehf_none", 2): 0.2}
NOT_DONE = {("ehf_dual", 3): "interrupted", ("ehf_none", 1): "pending", ("ehf_none", 3): "failed"}


@pytest.fixture
def report(tmp_path, capsys) -> str:
    """results.md of a 2 methods × 4 seeds study: five cells done, three not (see NOT_DONE)."""
    spec = tmp_path / "s.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "study": "hand",
                "base": {"logger.wandb.mode": "disabled"},
                "axes": {"method": ["ehf_dual", "ehf_none"], "seed": {"key": "seed", "values": [0, 1, 2, 3]}},
                "report": {"compare": "method", "pairs": [["ehf_dual", "ehf_none"]]},
            }
        )
    )
    folder = StudyFolder(tmp_path / "study", load_study(spec))
    folder.write_manifest("ehf study run -c s.yaml")
    for cell in folder.cells:
        key = (cell.values["method"], int(cell.values["seed"][4:]))
        run = folder.cell_dir(cell)
        (run / "checkpoints").mkdir(parents=True)
        state = NOT_DONE.get(key)
        if state == "interrupted":
            (run / "checkpoints" / "last.ckpt").write_bytes(b"")
        elif state == "failed":
            folder.log_path(cell).parent.mkdir(parents=True, exist_ok=True)
            folder.state_path(cell).write_text(json.dumps({"state": "failed", "rc": 1}))
        elif state is None:
            (run / "config.yaml").write_text("trainer:\n  val_check_interval: 10\n")
            gap = 1.0 if key[0] == "ehf_dual" else 2.0
            (run / "metrics.json").write_text(
                json.dumps(
                    {
                        "test/kl": KL[key],
                        "test/nll": 1.0 + KL[key],
                        "test/nll_gap": gap,
                        "best_step": 50,
                        "max_steps": 100,
                    }
                )
            )
    states = {c.name: s.state for c, s in zip(folder.cells, folder.states())}
    assert sorted(states.values()).count("done") == 5 and "pending" in states.values(), states
    assert cli.main(["study", "report", str(folder.root)]) == 0
    capsys.readouterr()
    return (folder.root / "report" / "results.md").read_text()


def test_report_spread_is_the_sample_standard_deviation(report):
    table = markdown_table(report, "method")
    for method in ("ehf_dual", "ehf_none"):
        kl = [v for (m, _), v in KL.items() if m == method]
        assert table[method]["test KL"] == f"{np.mean(kl):.3f} ± {np.std(kl, ddof=1):.3f}", table[method]
        assert table[method]["seeds"] == f"{len(kl)}/4"


def test_pairs_count_only_seeds_where_both_cells_are_done(report):
    (row,) = markdown_table(report, "comparison").values()
    both = [s for s in range(4) if ("ehf_dual", s) in KL and ("ehf_none", s) in KL]  # seeds 0 and 2
    delta = np.mean([KL[("ehf_dual", s)] - KL[("ehf_none", s)] for s in both])
    wins = sum(KL[("ehf_dual", s)] < KL[("ehf_none", s)] for s in both)
    assert (row["seeds"], row["lower test KL"], row["mean Δ KL"]) == (
        str(len(both)),
        f"{wins}/{len(both)}",
        f"{delta:+.3f}",
    ), row
    assert (row["smaller gap"], row["mean Δ gap"]) == (f"{len(both)}/{len(both)}", "-1.000"), row


def test_analyses_spread_is_the_sample_standard_deviation():
    from lightning_ehf.study.analyses import _mean_std

    values = [0.1, 0.4, 1.0]
    assert _mean_std(values) == f"{np.mean(values):.3g} ± {np.std(values, ddof=1):.2g}"
    assert _mean_std([0.25, float("nan")]) == "0.25"  # one value: no spread
