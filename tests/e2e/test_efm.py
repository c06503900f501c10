"""``model.kind=efm`` through the whole pipeline: a tiny run lowers the validation NLL and writes the usual
metrics (plus the solver's function evaluations), ``ehf eval`` and ``ehf sample`` work from its checkpoint,
the EHF-only options are ignored or refused as for the NSF baseline, and the study presets include it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ehf_testing import csv_rows, tiny
from lightning_ehf import cli
from lightning_ehf.errors import ConfigError

EFM = ("model.kind=efm", "trainer.max_steps=120", "trainer.val_check_interval=20", "data.batch_size=128",
       "data.n_val=256", "data.n_test=256", "model.hidden=32", "optim.warmup_steps=10", "optim.lr=1e-2",
       "model.efm_atol=1e-4", "model.efm_rtol=1e-4")  # fmt: skip


@pytest.mark.slow
def test_efm_trains_lowers_validation_nll_and_evaluates_and_samples(tmp_path, ehf_clean_env, capsys):
    run_dir = tmp_path / "run"
    # EHF-only keys (constraint, encoder, IWAE objective) are accepted and ignored, as for nsf
    assert (
        cli.main(
            [
                "train",
                *tiny(*EFM, "optim.objective=iwae", "optim.elbo_samples=4", "model.encoder=full"),
                f"run.dir={run_dir}",
            ]
        )
        == 0
    )
    rows = csv_rows(run_dir)
    nll = [float(r["val/nll_iw4"]) for r in rows if "val/nll_iw4" in r]
    assert len(nll) >= 5 and nll[-1] < nll[0] - 0.3, nll
    assert any("train/fm_loss" in r for r in rows)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/nll"] == metrics["test/elbo"] * -1  # one exact likelihood, reported as both
    assert metrics["test/kl"] < 0.3, metrics["test/kl"]
    assert metrics["test/nfe"] > 6 and metrics["test/divergence_exact"] == 1.0
    assert metrics["test/invariance_noise"] == 0.0 and metrics["test/invariance_error"] < 1e-2
    assert not any(k.startswith(("test/bracket_rms", "test/lambda/")) for k in metrics)
    capsys.readouterr()

    assert cli.main(["eval", "--ckpt", str(run_dir), "--n", "64"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n"] == 64 and abs(summary["kl"]) < 0.5
    out = tmp_path / "samples.npy"
    assert cli.main(["sample", "--ckpt", str(run_dir), "--n", "300", "--out", str(out)]) == 0
    x = np.load(out)
    radius = np.linalg.norm(x, axis=1)
    assert x.shape == (300, 2) and abs(float(np.median(radius)) - 2.0) < 0.3  # ring2d: radius 2


@pytest.mark.slow
def test_efm_resume_ends_where_the_uninterrupted_run_ends(tmp_path, ehf_clean_env):
    base = tiny(*EFM, "trainer.max_steps=60", "data.n_val=64", "data.n_test=64", "optim.scheduler=none")
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert cli.main(["train", *base, f"run.dir={whole}"]) == 0
    assert cli.main(["train", *base, "trainer.max_steps=40", f"run.dir={split}"]) == 0
    assert cli.main(["train", "--resume", str(split), "trainer.max_steps=60"]) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, split))
    assert b["steps"] == 60
    assert a["test/nll"] == b["test/nll"] and a["val/nll_iw4"] == b["val/nll_iw4"]


def test_efm_refuses_groups_it_has_no_field_for():
    from lightning_ehf.build import make_datamodule, make_model
    from lightning_ehf.config.load import load_config

    cfg = load_config([], ["model.kind=efm", "symmetry.group=matrices", "symmetry.matrices=[[[0,1],[-1,0]]]"])
    with pytest.raises(ConfigError, match="model.kind: no equivariant vector field"):
        make_model(cfg, make_datamodule(cfg).symmetry)
    cfg = load_config(
        ["configs/experiment/dw4.yaml"],
        ["model.kind=efm", "symmetry.group=rotations", "symmetry.planes=[[0,1]]", "symmetry.particle_dim=2"],
    )
    with pytest.raises(ConfigError, match="symmetry.group: model.kind=efm on particles"):
        make_model(cfg, make_datamodule(cfg).symmetry)


def test_efm_on_the_shipped_particle_experiments_matches_ehf_in_size():
    """dw4 (invariant EHF: model.invariant is accepted for efm, which is equivariant anyway) and particles2d."""
    from lightning_ehf.build import make_datamodule, make_model
    from lightning_ehf.config.load import load_config
    from lightning_ehf.core.flow_matching import ParticleVelocity

    for name in ("dw4", "particles2d"):
        sizes = {}
        for kind in ("ehf", "efm"):
            cfg = load_config([f"configs/experiment/{name}.yaml"], [f"model.kind={kind}"])
            model = make_model(cfg, make_datamodule(cfg).symmetry)
            sizes[kind] = sum(p.numel() for p in model.parameters())
        assert isinstance(model.field, ParticleVelocity) and model.field.identical == (name == "dw4")
        assert 0.7 < sizes["efm"] / sizes["ehf"] < 1.5, sizes


def test_data_efficiency_study_has_an_efm_cell_on_every_target():
    from lightning_ehf.study.spec import METHODS, load_study

    assert METHODS["efm"]["model.kind"] == "efm"
    path = Path(__file__).resolve().parents[2] / "configs" / "study" / "data_efficiency.yaml"
    cells = load_study(path, "full").cells()
    targets = {c.values["target"] for c in cells}
    assert targets == {c.values["target"] for c in cells if c.values["method"] == "efm"}
    for profile in ("quick", "quick_two_rings4d", "quick_particles2d_std", "quick_dw4", "dw4", "dw4_sizes"):
        assert any(c.values["method"] == "efm" for c in load_study(path, profile).cells()), profile


def test_efm_cells_of_the_data_efficiency_study_match_ehf_in_size():
    """``model.efm_hidden`` sets the vector field's width: on every target of the study, efm has within 0.8-1.25×
    the parameters of the constrained EHF it is compared with (the default width would give ring targets 4,482
    against about 57,000)."""
    from lightning_ehf.build import make_datamodule, make_model
    from lightning_ehf.config.load import load_config
    from lightning_ehf.study.spec import load_study

    path = Path(__file__).resolve().parents[2] / "configs" / "study" / "data_efficiency.yaml"
    cells = [
        c
        for c in load_study(path, "full").cells()
        if c.values["n_train"] == "n_train1024"
        and c.values["seed"] == "seed0"
        and c.values["method"] in ("ehf_dual", "efm")
    ]
    sizes: dict[str, dict[str, int]] = {}
    for cell in cells:
        cfg = load_config(overrides=cell.overrides)
        model = make_model(cfg, make_datamodule(cfg).symmetry)
        sizes.setdefault(cell.values["target"], {})[cell.values["method"]] = sum(p.numel() for p in model.parameters())
    assert len(sizes) == 8
    for target, size in sizes.items():
        assert 0.8 < size["efm"] / size["ehf_dual"] < 1.25, (target, size)
