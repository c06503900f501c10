"""A report of a study whose every cell is flagged (here under-trained: a pilot study) still draws them: open
circles at the cells' values, none of them in a mean."""

from __future__ import annotations

import json

import numpy as np
import yaml

from lightning_ehf.study.report import write_report
from lightning_ehf.study.runner import StudyFolder
from lightning_ehf.study.spec import load_study


def test_report_of_under_trained_cells_only_plots_them(tmp_path, monkeypatch):
    spec = tmp_path / "pilot.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "study": "pilot",
                "base": {"trainer.max_steps": 100, "logger.wandb.mode": "disabled"},
                "axes": {
                    "method": ["ehf_dual", "nsf"],
                    "n_train": {"key": "data.n_train", "values": [128, 1024]},
                    "seed": {"key": "seed", "values": [0, 1]},
                },
                "report": {"x": "n_train", "compare": "method"},
            }
        )
    )
    folder = StudyFolder(tmp_path / "study", load_study(spec))
    folder.write_manifest("ehf study run -c pilot.yaml")
    kl = {}
    for i, cell in enumerate(folder.cells):
        run = folder.cell_dir(cell)
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump({"trainer": {"val_check_interval": 10}}))
        kl[cell.name] = 0.1 + 0.05 * i
        # best step 100 of 100: every cell may still have been improving
        (run / "metrics.json").write_text(
            json.dumps(
                {
                    "test/kl": kl[cell.name],
                    "test/nll": 2 + kl[cell.name],
                    "test/nll_gap": 0.01 * i,
                    "test/invariance_error": 0.02,
                    "best_step": 100,
                    "max_steps": 100,
                    "steps": 100,
                    "params": 1000,
                    "wall_time_s": 1.0,
                }
            )
        )

    import matplotlib.figure

    figures = {}
    save = matplotlib.figure.Figure.savefig

    def keep(fig, path, *args, **kwargs):
        figures[str(path).rsplit("/", 1)[-1]] = fig
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    out = write_report(folder)
    md = out["md"].read_text()
    assert "Under-trained cells (8)" in md
    ax = figures["kl.png"].axes[0]
    circles = [c for c in ax.collections if len(c.get_offsets())]
    drawn = np.concatenate([np.asarray(c.get_offsets()) for c in circles])
    assert sorted(drawn[:, 1].round(6).tolist()) == sorted(round(v, 6) for v in kl.values())  # every cell, once
    assert sorted(set(drawn[:, 0].tolist())) == [128.0, 1024.0]
    for c in circles:  # open: no face colour, an edge colour
        assert np.allclose(c.get_facecolor()[:, 3], 0) and np.all(c.get_edgecolor()[:, 3] > 0)
    assert len({c.get_edgecolor()[0][:3].round(3).tobytes() for c in circles}) == 2  # one colour per method
    assert not ax.lines  # no mean: no cell is good
    assert sorted(t.get_text() for t in figures["kl.png"].legends[0].get_texts()) == [
        "ehf_dual (flagged)",
        "nsf (flagged)",
    ]
    assert (tmp_path / "study" / "report" / "kl.png").stat().st_size > 1000
