"""Run figures: an EHF model gets its density, samples and the potentials of its blocks; a baseline without
Hamiltonians (NSF) gets density and samples only."""

from __future__ import annotations

import torch

from lightning_ehf.baselines import NSFModel
from lightning_ehf.core import make_ehf, so2
from lightning_ehf.lit.plots import make_all_plots


def test_make_all_plots_writes_the_figures_each_model_has(tmp_path):
    torch.manual_seed(0)
    data = torch.randn(64, 2)
    for name, model, expected in (
        ("ehf", make_ehf(so2(2), blocks=2, hidden=8), {"density", "samples", "potentials"}),
        ("nsf", NSFModel(so2(2), transforms=1, hidden=8), {"density", "samples"}),
    ):
        folder = tmp_path / name
        paths = make_all_plots(model, data, folder, grid=8)
        assert {p.stem for p in paths} == expected
        assert {p.stem for p in folder.glob("*.png")} == expected
        assert all(p.stat().st_size > 1000 for p in paths)
