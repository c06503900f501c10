"""A CSV logger that a resumed run appends to instead of overwriting."""

from __future__ import annotations

import csv
import os

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from typing_extensions import override

__all__ = ["RunCSVLogger"]


class _ResumingWriter(ExperimentWriter):
    """Keeps the rows of ``metrics.csv`` logged before ``resume_step`` (later rows belong to the part
    of the killed run that is being redone) and appends after them."""

    def __init__(self, log_dir: str, resume_step: int | None) -> None:
        self._resume_step = resume_step
        super().__init__(log_dir)

    @override
    def _check_log_dir_exists(self) -> None:
        if not os.path.isfile(self.metrics_file_path):
            return  # a fresh run folder (config.yaml is already there): nothing to delete, nothing to warn
        if self._resume_step is None:
            return super()._check_log_dir_exists()
        with open(self.metrics_file_path, newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("step", "") != "" and int(float(r["step"])) < self._resume_step]
        with open(self.metrics_file_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = sorted(k for k in keys)


class RunCSVLogger(CSVLogger):
    """``metrics.csv`` directly in the run folder; appends when resuming at ``resume_step``."""

    def __init__(self, run_dir: str, resume_step: int | None = None) -> None:
        super().__init__(save_dir=run_dir, name="", version="")
        self._resume_step = resume_step

    @property
    @rank_zero_experiment
    @override
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumingWriter(self.log_dir, self._resume_step)
        return self._experiment
