"""Open a study folder of any kind from its ``study.json``: a plain study, a tuned study's evaluation stage, or
its ``tune/`` stage (:mod:`.tuning`)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from .runner import StudyFolder
from .spec import Axis, ReportSpec, SlurmSpec, Study, Tuning, checked
from .tuning import evaluation_folder, tuning_folder

__all__ = ["open_folder"]


def open_folder(root: str | Path) -> StudyFolder:
    """The study run in ``root`` as its ``study.json`` describes it (for status, report and agents). A tuned
    study's folder gives its evaluation stage, its ``tune/`` folder the tuning stage (:mod:`.tuning`)."""
    root = Path(root)
    if root.name == "tune" and not (root / "study.json").exists() and (root.parent / "study.json").is_file():
        parent = open_folder(root.parent)
        if parent.study.tune is not None:
            return tuning_folder(parent.root, parent.study)
    try:
        m = json.loads((root / "study.json").read_text())
    except FileNotFoundError:
        raise UserError(f"{root}: not a study folder (no study.json; `ehf study run` makes one)") from None
    except ValueError as e:
        raise UserError(f"{root}/study.json: not valid JSON ({e})") from None
    axes = [Axis(name, values) for name, values in m["axes"].items()]
    tune = Tuning(**m["tune"]) if m.get("tune") else None
    study = Study(
        m["study"],
        m["profile"],
        Path(m["source"]),
        m["config_files"],
        m["base"],
        axes,
        checked(ReportSpec, m.get("report"), root / "study.json", "report"),
        checked(SlurmSpec, m.get("slurm"), root / "study.json", "slurm"),
        m.get("description") or "",
        tune,
    )
    if tune is not None:
        return evaluation_folder(root, study)
    return StudyFolder(root, study)
