"""The compiled training objective (core/compiled.py): the same losses as eager mode step by step, and
eager mode when compiling fails."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from ehf_testing import tiny
from lightning_ehf.build import make_datamodule, make_module
from lightning_ehf.config.load import load_config, validate
from lightning_ehf.core import make_ehf, so2
from lightning_ehf.core.compiled import CompiledObjective


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = make_ehf(so2(2), blocks=1, leapfrog_steps=1, hidden=8, encoder="equivariant")
    with torch.no_grad():  # away from the zero-initialised start, where every force vanishes
        for name, prm in model.named_parameters():
            if prm.ndim > 0 and "encoder" not in name:
                prm.normal_(0.0, 0.3)
    return model


def _train(compiled: bool, steps: int) -> tuple[list[float], CompiledObjective | None]:
    """``steps`` Adam steps on −ELBO + Σ C (2 momenta per point), the same random numbers at each step."""
    model = _tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    q = 2.0 * torch.randn(32, 2, generator=torch.Generator().manual_seed(0))

    def objective(x: torch.Tensor):
        return model.elbo_and_constraints(x, 2)

    fn = CompiledObjective(objective) if compiled else None
    losses = []
    for step in range(steps):
        torch.manual_seed(step)
        bound, constraint = (fn or objective)(q)
        loss = -bound.mean() + constraint.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, fn


@pytest.mark.slow
def test_compiled_losses_match_eager_over_50_steps():
    """Forward and backward compiled (inductor) from the first step: 50 optimiser steps give the losses of
    eager mode to 1e-5, so the compiled gradients are right too (they drive the later losses)."""
    eager, _ = _train(False, 50)
    compiled, fn = _train(True, 50)
    assert fn is not None and not fn.failed and fn.compile_seconds is not None
    assert max(abs(a - b) for a, b in zip(eager, compiled)) <= 1e-5 * max(1.0, max(map(abs, eager)))
    assert abs(eager[-1] - eager[0]) > 0.1  # the model moved: the comparison covers training, not one point


def test_a_failing_compilation_warns_once_and_trains_eagerly(monkeypatch):
    calls = []

    def broken_compile(fn, **kwargs):
        def run(*args):
            calls.append(1)
            raise RuntimeError("no C++ compiler here")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    eager, _ = _train(False, 3)
    with pytest.warns(UserWarning, match="training eagerly"):
        fallback, fn = _train(True, 3)
    assert fn is not None and fn.failed and len(calls) == 1  # tried once, then eager
    assert fallback == eager


@pytest.mark.parametrize("enabled", [True, False])
def test_trainer_compile_routes_the_training_objective_through_torch_compile(enabled, monkeypatch):
    compiled_calls = []

    def recording_compile(fn, **kwargs):
        assert kwargs["dynamic"] is False  # one compilation per batch shape

        def run(*args):
            compiled_calls.append(args[0].shape)
            return fn(*args)

        return run

    monkeypatch.setattr(torch, "compile", recording_compile)
    cfg = load_config([], tiny("trainer.max_steps=3", f"trainer.compile={str(enabled).lower()}"))
    validate(cfg)
    dm = make_datamodule(cfg)
    L.seed_everything(0, verbose=False)
    module = make_module(cfg, dm)
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        inference_mode=False,
    )
    trainer.fit(module, datamodule=dm)
    assert compiled_calls == ([torch.Size([64, 2])] * 3 if enabled else [])
