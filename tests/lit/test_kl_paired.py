"""``{stage}/kl_paired``: the KL estimated row by row with the target's own density, against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from lightning_ehf.build import make_datamodule, make_trainer
from lightning_ehf.config.load import load_config
from lightning_ehf.core import no_symmetry
from lightning_ehf.lit.module import EHFModule


class ShiftedTarget(nn.Module):
    """Stands in for a flow: log p̂(q) = log p(q) − c with the target's own log p, so the paired KL estimate
    is exactly c on any rows (the unpaired one, NLL − entropy, only within its Monte-Carlo noise)."""

    def __init__(self, target, shift: float) -> None:
        super().__init__()
        self.target, self.shift = target, shift
        self.symmetry = no_symmetry(target.dim)
        self.generator_names: list[str] = []
        self.unused = nn.Parameter(torch.zeros(()))

    def iwae(self, q: Tensor, k: int, chunk: int) -> Tensor:
        return self.target.log_prob(q.double()) - self.shift

    def elbo_and_constraints(self, q: Tensor, n: int = 1, iwae: bool = False) -> tuple[Tensor, Tensor]:
        return self.iwae(q, 1, 1), q.new_zeros(0)


def test_kl_paired_is_exact_where_nll_minus_entropy_is_noisy(tmp_path):
    cfg = load_config(
        [],
        [
            "data.target=ring2d",
            "data.n_val=400",
            "data.n_test=400",
            "logger.wandb.mode=disabled",
            "plots.enabled=false",
            "progress.mode=none",
            "trainer.accelerator=cpu",
        ],
    )
    dm = make_datamodule(cfg)
    entropy = dm.target.entropy(200_000, generator=torch.Generator().manual_seed(0))[0]
    shift = 0.3
    module = EHFModule(cfg, ShiftedTarget(dm.target, shift), entropy, target_log_prob=dm.target.log_prob)
    out = make_trainer(cfg, tmp_path / "run", "exact").test(module, datamodule=dm, verbose=False)[0]
    assert abs(out["test/kl_paired"] - shift) < 1e-6
    # the unpaired estimate of the same number: right within a few standard errors of the mean NLL
    dm.setup("test")
    spread = float(dm.target.log_prob(dm.test_data.double()).std())
    assert abs(out["test/kl"] - shift) < 4 * spread / math.sqrt(400) + 0.01
    assert spread / math.sqrt(400) > 100 * abs(out["test/kl_paired"] - shift) + 1e-6  # the point of pairing


class TiltedTarget(ShiftedTarget):
    """log p̂(q) = log p(q) − c − a·q₀: the paired KL's rows are c + a·q₀, whose spread is known."""

    def __init__(self, target, shift: float, tilt: float) -> None:
        super().__init__(target, shift)
        self.tilt = tilt

    def iwae(self, q: Tensor, k: int, chunk: int) -> Tensor:
        return super().iwae(q, k, chunk) - self.tilt * q[:, 0].double()


def test_kl_paired_stderr_is_the_standard_error_over_the_test_rows(tmp_path):
    """``test/kl_paired_stderr`` = std(ddof=1)/√n of the per-row paired KL, over the whole split though it
    arrives in several batches (batch size 128, 400 rows)."""
    cfg = load_config(
        [],
        [
            "data.target=ring2d",
            "data.n_val=400",
            "data.n_test=400",
            "data.batch_size=128",
            "logger.wandb.mode=disabled",
            "plots.enabled=false",
            "progress.mode=none",
            "trainer.accelerator=cpu",
        ],
    )
    dm = make_datamodule(cfg)
    module = EHFModule(cfg, TiltedTarget(dm.target, 0.3, 0.5), 0.0, target_log_prob=dm.target.log_prob)
    out = make_trainer(cfg, tmp_path / "run", "tilted").test(module, datamodule=dm, verbose=False)[0]
    dm.setup("test")
    rows = 0.3 + 0.5 * dm.test_data[:, 0].double()
    assert out["test/kl_paired"] == pytest.approx(float(rows.mean()), abs=1e-9)
    assert out["test/kl_paired_stderr"] == pytest.approx(float(rows.std(correction=1)) / math.sqrt(400), rel=1e-9)
    assert out["test/kl_paired_stderr"] > 0.01  # the tilt makes a spread: the test is not vacuous
