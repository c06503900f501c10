"""``metrics.csv`` of a resumed run: the rows logged before the resume step are kept (once), the rows of the
part being redone are dropped, and new rows are appended after them."""

from __future__ import annotations

import csv

from lightning_ehf.lit.loggers import RunCSVLogger


def _steps(path) -> list[int]:
    with open(path, newline="") as f:
        return [int(float(r["step"])) for r in csv.DictReader(f)]


def test_resumed_csv_keeps_the_rows_before_the_resume_step(tmp_path):
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("step,train/loss\n" + "".join(f"{s},{0.1 * s}\n" for s in range(0, 12)))
    logger = RunCSVLogger(str(tmp_path), resume_step=7)
    logger.log_metrics({"train/loss": 9.0}, step=7)
    logger.save()
    assert _steps(metrics) == [0, 1, 2, 3, 4, 5, 6, 7]  # 7..11 of the killed run replaced by the new 7
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    logger = RunCSVLogger(str(fresh))
    logger.log_metrics({"train/loss": 1.0}, step=0)
    logger.save()
    assert _steps(fresh / "metrics.csv") == [0]
