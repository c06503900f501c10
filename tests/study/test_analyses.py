"""The study analyses (``lightning_ehf.study.analyses``) on real, tiny trained cells and on models with known
answers: a potential with a known well, invariant-by-construction flows (exactly equivariant, charges exactly
conserved) against unconstrained ones, learning curves read from metrics.csv, and ``val/elapsed_s`` carried
across a resume."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from ehf_testing import ENV_DROP, tiny
from lightning_ehf import evaluate
from lightning_ehf.config.load import from_saved
from lightning_ehf.core import make_ehf
from lightning_ehf.core.hamiltonians import Energy
from lightning_ehf.core.metrics import local_minima
from lightning_ehf.core.symmetries import one_parameter_subgroup, so2
from lightning_ehf.study.analyses import ANALYSES

F64 = torch.float64


@dataclass(frozen=True)
class FakeCell:
    name: str
    values: dict


class FakeFolder:
    """What the analyses use of a StudyFolder: ``cells`` and ``cell_dir``."""

    def __init__(self, root: Path, cells: list[FakeCell]) -> None:
        self.root, self.cells = root, cells

    def cell_dir(self, cell: FakeCell) -> Path:
        return self.root / "cells" / cell.name


def rows_of(folder: FakeFolder, state: str = "done") -> list[dict]:
    return [{"cell": c.name, **c.values, "state": state} for c in folder.cells]


def _train(run_dir: Path, *changes: str) -> None:
    from lightning_ehf.cli import main

    assert main(["train", *tiny("data.target=two_rings4d", *changes), f"run.dir={run_dir}"]) == 0


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> FakeFolder:
    """Two tiny cells on two_rings4d (6 steps, validations after steps 3 and 6): invariant by construction,
    and unconstrained."""
    root = tmp_path_factory.mktemp("analyses")
    cells = [
        FakeCell("ehf_invariant-seed0", {"method": "ehf_invariant", "seed": "seed0"}),
        FakeCell("ehf_none-seed0", {"method": "ehf_none", "seed": "seed0"}),
    ]
    folder = FakeFolder(root, cells)
    with pytest.MonkeyPatch.context() as mp:
        for name in ENV_DROP:
            mp.delenv(name, raising=False)
        mp.setenv("WANDB_SILENT", "true")
        _train(folder.cell_dir(cells[0]), "model.invariant=true", "constraint.mode=none")
        _train(folder.cell_dir(cells[1]), "constraint.mode=none")
    return folder


# -- potentials ----------------------------------------------------------------------------------


class Well(Energy):
    """U(q) = (|q| − centre)²."""

    def __init__(self, dim: int, centre: float) -> None:
        super().__init__()
        self.dim, self.centre = dim, centre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.norm(dim=-1) - self.centre).square()


def test_local_minima_of_a_double_well() -> None:
    r = np.linspace(0, 4, 401)
    found = local_minima(r, (r - 1) ** 2 * (r - 3) ** 2)
    assert len(found) == 2 and abs(found[0] - 1) < 1e-3 and abs(found[1] - 3) < 1e-3, found  # grid step 0.01
    assert local_minima(r, (r - 2.013) ** 2) == pytest.approx([2.013], abs=1e-9)  # parabolic refinement: exact
    assert local_minima(r, r**2) == [0.0]  # a well at the origin counts; the far end never does
    assert local_minima(r, -r) == []


@pytest.mark.parametrize("centres", [[2.0], [1.0, 3.0]], ids=["one-well", "wells-1-and-3-sum-to-2"])
def test_potentials_locates_the_minimum_of_a_known_potential(tmp_path, monkeypatch, centres) -> None:
    """(|q| − 1)² + (|q| − 3)² = 2(|q| − 2)² + 2: the summed potential has its minimum at 2 even though no block
    has; with the rings2d radii 1, 2, 3 only the ring at 2 is matched."""
    model = make_ehf(so2(2), blocks=len(centres), hidden=8)
    for block, c in zip(model.flow.blocks, centres):
        block.hamiltonian.potential = Well(2, c)
    config = {"data": {"target": "rings2d"}, "model": {"kind": "ehf"}, "seed": 0}
    monkeypatch.setattr(evaluate, "load_run", lambda path: evaluate.Run(model, from_saved(config), 2, None, Path(path)))
    folder = FakeFolder(
        tmp_path,
        [
            FakeCell("ehf_dual-seed0", {"method": "ehf_dual", "seed": "seed0"}),
            FakeCell("nsf-seed0", {"method": "nsf", "seed": "seed0"}),
        ],
    )
    for cell, kind in zip(folder.cells, ("ehf", "nsf")):
        folder.cell_dir(cell).mkdir(parents=True)
        (folder.cell_dir(cell) / "config.yaml").write_text(f"model:\n  kind: {kind}\ndata:\n  target: rings2d\n")
    rows = rows_of(folder)
    rows[0]["test/kl"] = 0.04  # fits the data (KL ≤ 0.05, no flag)
    md, files = ANALYSES["potentials"](folder, rows, tmp_path / "out")

    data = json.loads((tmp_path / "out" / "potentials.json").read_text())
    (cell,) = data["cells"]  # the nsf cell is skipped
    assert cell["test_kl"] == 0.04 and cell["fits"] is True
    assert "| 1 of 1 | 1.00 / 3 | " in md  # the ring matched by the sum, counted over the cell that fits
    assert len(cell["minima"]) == 1 and abs(cell["minima"][0] - 2.0) < 0.05, cell["minima"]
    for block_minima, c in zip(cell["block_minima"], centres):
        assert len(block_minima) == 1 and abs(block_minima[0] - c) < 0.05
    assert [ring["radius"] for ring in cell["rings"]] == [1.0, 2.0, 3.0]  # read from the target
    assert [ring["within"] for ring in cell["rings"]] == [False, True, False]
    assert cell["rings_matched"] == 1
    # the data-side block alone: its well (the last centre) matches that ring, whatever the sum does
    last = centres[-1]
    assert [ring["within"] for ring in cell["data_side_rings"]] == [abs(r - last) < 0.3 for r in (1.0, 2.0, 3.0)]
    assert cell["data_side_matched"] == 1
    assert "ring r = 2: a minimum lies within 0.3" in md
    assert "ring r = 1: no minimum within 0.3" in md and "ring r = 3: no minimum within 0.3" in md
    assert "not the model's log density" in md and "nsf-seed0" in md
    assert all(p.is_file() for p in files) and any(p.suffix == ".png" for p in files)

    # a flagged cell, or one above the KL bar, does not fit: its rings are counted over every cell only
    for change in ({"under_trained": True}, {"test/kl": 0.2}):
        md, _ = ANALYSES["potentials"](folder, [{**rows[0], **change}, rows[1]], tmp_path / "out")
        assert "| 0 of 1 | — | — |" in md
        assert json.loads((tmp_path / "out" / "potentials.json").read_text())["cells"][0]["fits"] is False


def test_potentials_uses_only_done_cells(tmp_path) -> None:
    folder = FakeFolder(tmp_path, [FakeCell("a", {"method": "ehf_dual"})])
    md, files = ANALYSES["potentials"](folder, rows_of(folder, state="running"), tmp_path / "out")
    assert files == [] and "No done EHF cell" in md


# -- representation ------------------------------------------------------------------------------


def test_one_parameter_subgroup_rotates_its_plane_only() -> None:
    from lightning_ehf.core.symmetries import product, rotation_plane

    sym = product(rotation_plane(4, 0, 1), rotation_plane(4, 2, 3))
    g = one_parameter_subgroup(sym, 1).sample(500, torch.Generator().manual_seed(0), dtype=F64)
    m = g.matrix
    assert torch.allclose(m[:, :2, :2], torch.eye(2, dtype=F64).expand(500, 2, 2), atol=1e-12)
    assert torch.allclose(m[:, :2, 2:], torch.zeros(500, 2, 2, dtype=F64), atol=1e-12)
    assert torch.allclose(m @ m.transpose(1, 2), torch.eye(4, dtype=F64).expand(500, 4, 4), atol=1e-12)
    angle = torch.atan2(m[:, 3, 2], m[:, 2, 2])
    assert angle.min() < -2.8 and angle.max() > 2.8  # the whole circle, not a small neighbourhood of 1


def _randomised_load_run(std: float = 0.4):
    """``load_run`` whose Hamiltonians are then redrawn N(0, std²): the zero-initialised last layers of a 6-step
    model barely move the flow; random ones make the unconstrained flow visibly non-equivariant."""
    real = evaluate.load_run

    def load(path):
        run = real(path)
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for block in run.model.flow.blocks:
                for prm in block.hamiltonian.parameters():
                    prm.copy_(std * torch.randn(prm.shape, generator=gen))
        return run

    return load


def test_representation_invariant_is_exact_unconstrained_is_not(trained, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(evaluate, "load_run", _randomised_load_run())
    md, files = ANALYSES["representation"](trained, rows_of(trained), tmp_path)
    cells = {c["method"]: c for c in json.loads((tmp_path / "representation.json").read_text())["cells"]}
    inv, free = cells["ehf_invariant"], cells["ehf_none"]
    assert inv["generators"] == free["generators"] == ["L01", "L23"]  # symmetry auto: the two planes
    assert (inv["kind"], free["kind"]) == ("invariant", "unconstrained")
    for k in range(2):
        assert inv["equivariance"][k] < 1e-5 and inv["charge_change"][k] < 1e-5, inv
        assert free["equivariance"][k] > 1e-3 and free["charge_change"][k] > 1e-3, free
        assert max(inv["charge_change_blocks"][k]) < 1e-5
        assert free["charge_change_blocks"][k][-1] == pytest.approx(free["charge_change"][k])
    # cross terms: rotating one plane moves the other plane's latent charge only without the symmetry
    assert inv["cross"][0][1] < 1e-5 and inv["cross"][1][0] < 1e-5
    assert free["cross"][0][1] > 1e-3 and free["cross"][1][0] > 1e-3
    assert "| ehf_none | unconstrained | 1 |" in md and "| ehf_invariant | invariant | 1 |" in md
    assert md.index("| ehf_none |") < md.index("| ehf_invariant |")
    assert all(p.is_file() for p in files)


def test_representation_skips_nsf_cells(tmp_path) -> None:
    folder = FakeFolder(tmp_path, [FakeCell("nsf-seed0", {"method": "nsf"})])
    folder.cell_dir(folder.cells[0]).mkdir(parents=True)
    (folder.cell_dir(folder.cells[0]) / "config.yaml").write_text("model:\n  kind: nsf\n")
    md, files = ANALYSES["representation"](folder, rows_of(folder), tmp_path / "out")
    assert files == [] and "nsf-seed0" in md


# -- learning curves -----------------------------------------------------------------------------


def test_learning_curves_from_metrics_csv(trained, tmp_path) -> None:
    md, files = ANALYSES["learning_curves"](trained, rows_of(trained), tmp_path)
    curves = json.loads((tmp_path / "learning_curves.json").read_text())["cells"]
    assert sorted(c["method"] for c in curves) == ["ehf_invariant", "ehf_none"]
    for c in curves:
        assert c["metric"] == "val/kl" and c["steps"] == [3, 6]  # validations after 3 and 6 steps
        assert c["samples"] == [3 * 64, 6 * 64]  # × data.batch_size of the cell's config
        assert all(math.isfinite(v) for v in c["values"])
        assert 0 < c["seconds"][0] < c["seconds"][1]
    assert "| two_rings4d | ehf_none | 1 |" in md and "| two_rings4d | ehf_invariant | 1 |" in md
    assert (tmp_path / "learning_curves.png").is_file() and len(files) == 2


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
@pytest.mark.filterwarnings("ignore:The dirpath has changed")
def test_elapsed_seconds_survive_a_resume(trained, tmp_path, monkeypatch) -> None:
    """``val/elapsed_s`` continues from the training time the checkpoint holds (set to 1000 s here, so a
    restart from 0 cannot pass), and the column only grows."""
    from ehf_testing import csv_rows
    from lightning_ehf.cli import main

    for name in ENV_DROP:
        monkeypatch.delenv(name, raising=False)
    run = tmp_path / "run"
    shutil.copytree(trained.cell_dir(trained.cells[1]), run)
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    first = [float(r["val/elapsed_s"]) for r in csv_rows(run) if "val/elapsed_s" in r]
    assert 0 < first[0] < first[1] <= ckpt["ehf_elapsed_s"] + 1e-6  # (the CSV holds float32 values)
    ckpt["ehf_elapsed_s"] = 1000.0
    torch.save(ckpt, last)
    assert main(["train", "--resume", str(run), "trainer.max_steps=9"]) == 0
    rows = [r for r in csv_rows(run) if "val/elapsed_s" in r]
    assert [int(r["step"]) for r in rows] == [2, 5, 8]
    resumed = float(rows[2]["val/elapsed_s"])
    assert 1000 < resumed < 1060, resumed
    assert torch.load(last, map_location="cpu", weights_only=True)["ehf_elapsed_s"] >= resumed - 1e-3


# -- the cost/quality frontier -------------------------------------------------------------------


def test_pareto_front_keeps_the_undominated_points_in_cost_order() -> None:
    from lightning_ehf.study.analyses import pareto_front

    points = [(1.0, 5.0), (2.0, 3.0), (3.0, 4.0), (4.0, 1.0), (2.0, 6.0), (5.0, 1.0)]
    assert pareto_front(points) == [0, 1, 3]
    assert pareto_front([]) == []


def test_frontier_names_the_cheapest_cell_within_the_margin_of_the_best(trained, tmp_path) -> None:
    from lightning_ehf.study.analyses import FRONTIER_MARGIN

    rows = rows_of(trained)
    # the first cell is the best; the second is within the margin and cheaper, so it is the candidate default
    rows[0].update({"test/kl": 0.100, "wall_time_s": 20.0, "params": 10})
    rows[1].update({"test/kl": 0.100 + FRONTIER_MARGIN / 2, "wall_time_s": 5.0, "params": 20})
    md, files = ANALYSES["frontier"](trained, rows, tmp_path)
    cells = {c["cell"]: c for c in json.loads((tmp_path / "frontier.json").read_text())["cells"]}
    assert cells["ehf_none-seed0"]["candidate"] and not cells["ehf_invariant-seed0"]["candidate"]
    assert cells["ehf_none-seed0"]["pareto"] and cells["ehf_invariant-seed0"]["pareto"]  # cheaper vs better
    assert cells["ehf_none-seed0"]["model"] in md and "★ " in md
    reach = cells["ehf_none-seed0"]["seconds_to_quality"]
    assert reach is None or reach >= 0
    assert (tmp_path / "frontier.png").is_file() and len(files) == 2
    # outside the margin the better cell is the candidate, and the cheaper one stays on the front
    rows[1]["test/kl"] = 0.100 + 2 * FRONTIER_MARGIN
    ANALYSES["frontier"](trained, rows, tmp_path)
    cells = {c["cell"]: c for c in json.loads((tmp_path / "frontier.json").read_text())["cells"]}
    assert cells["ehf_invariant-seed0"]["candidate"] and cells["ehf_none-seed0"]["pareto"]


def test_frontier_pools_the_seeds_of_a_model_and_picks_on_the_mean(trained, tmp_path) -> None:
    """Model a has the single best cell (0.10) but a worse mean (0.20) than model b (0.16, outside the margin): the
    candidate is b, and each model is one point with its seeds' mean, spread and time to quality."""
    source = {"a": trained.cell_dir(trained.cells[0]), "b": trained.cell_dir(trained.cells[1])}
    cells = [FakeCell(f"{m}-seed{s}", {"method": m, "seed": f"seed{s}"}) for m in "ab" for s in (0, 1)]
    folder = FakeFolder(tmp_path / "study", cells)
    for cell in cells:
        shutil.copytree(source[cell.values["method"]], folder.cell_dir(cell))
    rows = rows_of(folder)
    for row, (kl, wall) in zip(rows, [(0.10, 5.0), (0.30, 7.0), (0.15, 20.0), (0.17, 22.0)]):
        row.update({"test/kl": kl, "wall_time_s": wall, "params": 10})
    md, _ = ANALYSES["frontier"](folder, rows, tmp_path / "report")
    report = json.loads((tmp_path / "report" / "frontier.json").read_text())
    models = {m["group"]: m for m in report["models"]}
    assert set(models) == {"a", "b"} and models["a"]["cells"] == ["a-seed0", "a-seed1"]
    assert models["a"]["test_kl"] == pytest.approx(0.20) and models["a"]["wall_s"] == pytest.approx(6.0)
    assert models["a"]["test_kl_std"] == pytest.approx(math.sqrt(0.02))
    assert models["b"]["candidate"] and not models["a"]["candidate"]
    assert models["a"]["pareto"] and models["b"]["pareto"]  # cheaper against better
    assert {c["cell"]: c["candidate"] for c in report["cells"]} == {
        "a-seed0": False, "a-seed1": False, "b-seed0": True, "b-seed1": True
    }  # fmt: skip
    assert 0 <= models["a"]["reached_quality"] <= 2 and "| ★ " in md and "0.2 ± 0.14" in md
