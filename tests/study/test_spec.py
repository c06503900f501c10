"""Study files: where ``base`` (or a profile's ``base``) and an axis set the same key, each cell gets the
axis value (the study file's documented rule), in its overrides and in the config it runs with."""

from __future__ import annotations

import yaml

from lightning_ehf.study.runner import StudyFolder
from lightning_ehf.study.spec import load_study

BASE = {
    "data.regime": "finite",
    "data.n_train": 50,
    "model.hidden": 8,
    "optim.lr": 0.01,
    "constraint.mode": "penalty",
    "logger.wandb.mode": "disabled",
}


def test_an_axis_value_wins_over_base_and_profile_base(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "study": "collide",
                "base": BASE,
                "axes": {
                    "method": ["ehf_none", "ehf_dual"],  # presets set constraint.mode, which base sets too
                    "n_train": {"key": "data.n_train", "values": [64, 128]},
                    "width": {"w16": {"model.hidden": 16}, "base_width": {}},
                },
                "profiles": {"full": {}, "small": {"base": {"model.hidden": 12, "data.n_train": 7, "optim.lr": 0.02}}},
            }
        )
    )
    for profile, hidden, lr in (("full", 8, 0.01), ("small", 12, 0.02)):
        folder = StudyFolder(tmp_path / str(profile), load_study(spec, profile))
        assert len(folder.cells) == 8
        for cell in folder.cells:
            mode = {"ehf_none": "none", "ehf_dual": "dual"}[cell.values["method"]]
            n_train = {"n_train64": 64, "n_train128": 128}[cell.values["n_train"]]
            width = 16 if cell.values["width"] == "w16" else hidden
            cfg = folder.config(cell)
            assert (cfg["constraint"]["mode"], cfg["data"]["n_train"], cfg["model"]["hidden"], cfg["optim"]["lr"]) == (
                mode,
                n_train,
                width,
                lr,
            ), cell.name
            # one entry per key: what the cell's `ehf train` command gets is unambiguous
            keys = [item.split("=", 1)[0] for item in cell.overrides]
            assert len(keys) == len(set(keys)), cell.overrides
            assert f"data.n_train={n_train}" in cell.overrides and f"constraint.mode={mode}" in cell.overrides


def test_study_json_keeps_typed_report_and_slurm_and_an_earlier_one_still_opens(tmp_path):
    """``study.json`` holds the report and slurm sections as plain mappings; one written before they were typed
    (the report as given, with null for an empty list) opens with the same values; a broken one names its key."""
    import json

    import pytest

    from lightning_ehf.errors import ConfigError
    from lightning_ehf.study.folders import open_folder

    spec = tmp_path / "s.yaml"
    axes = {"method": ["ehf_none", "ehf_dual"], "seed": {"key": "seed", "values": [0, 1]}}
    report = {"x": "seed", "compare": "method", "pairs": [["ehf_dual", "ehf_none"]]}
    spec.write_text(yaml.safe_dump({"base": BASE, "axes": axes, "report": report, "slurm": {"time_min": 5}}))
    folder = StudyFolder(tmp_path / "d", load_study(spec))
    folder.write_manifest("ehf study run")
    manifest = json.loads((folder.root / "study.json").read_text())
    assert manifest["report"] == {**report, "panel": None, "analyses": []}
    assert manifest["slurm"]["time_min"] == 5 and manifest["slurm"]["cpus_per_cell"] == 2
    opened = open_folder(folder.root).study
    assert (opened.report, opened.slurm) == (folder.study.report, folder.study.slurm)

    manifest["report"] = {"x": "seed", "pairs": None}
    (folder.root / "study.json").write_text(json.dumps(manifest))
    earlier = open_folder(folder.root).study
    assert (earlier.report.x, earlier.report.compare, earlier.report.pairs, earlier.slurm.time_min) == (
        "seed",
        None,
        [],
        5,
    )
    manifest["slurm"]["cpus_per_cell"] = "2"
    (folder.root / "study.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"study\.json: slurm\.cpus_per_cell: expected an integer"):
        open_folder(folder.root)
