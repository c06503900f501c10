"""Invariant-by-construction models skip the constraint: their brackets are zero, so ``constraint.mode``
becomes ``none`` (said once) and the bracket statistics are never computed."""

from __future__ import annotations

import pytest
import torch

from ehf_testing import tiny
from lightning_ehf.build import make_datamodule, make_module
from lightning_ehf.config.load import load_config, validate
from lightning_ehf.core import flows, make_ehf, so2


def _module(*overrides: str):
    cfg = load_config([], tiny(*overrides))
    validate(cfg)
    return cfg, make_module(cfg, make_datamodule(cfg))


@pytest.mark.parametrize("invariant", [True, False])
def test_invariant_models_do_not_compute_bracket_statistics(invariant, monkeypatch):
    torch.manual_seed(0)
    model = make_ehf(so2(2), blocks=2, leapfrog_steps=2, hidden=8, invariant=invariant)
    calls = []
    original = flows.momentum_map_bracket
    monkeypatch.setattr(flows, "momentum_map_bracket", lambda *a: calls.append(1) or original(*a))
    bound, constraint = model.elbo_and_constraints(torch.randn(5, 2), 3)
    assert bound.shape == (5,) and constraint.shape == (1,)
    if invariant:
        assert not calls and torch.equal(constraint, torch.zeros(1))
        assert model.bracket_residuals(torch.randn(5, 2), torch.randn(5, 2)).abs().max() < 1e-5  # zero indeed
    else:
        assert calls


def test_invariant_run_forces_constraint_mode_none_and_says_so_once(capsys):
    cfg, module = _module("model.invariant=true", "constraint.mode=dual")
    out = capsys.readouterr().out
    assert module.multipliers.mode == "none" and cfg.constraint.mode == "none"
    assert module.hparams["config"]["constraint"]["mode"] == "none"  # the saved config says what ran
    assert out.count("model.invariant=true") == 1 and "constraint.mode=dual" in out
    cfg, module = _module("model.invariant=false", "constraint.mode=dual")
    assert module.multipliers.mode == "dual" and "model.invariant" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "changes, noted",
    [
        (("data.target=particles2d", "model.leapfrog_steps=1"), True),
        (("data.target=particles2d", "model.leapfrog_steps=3"), False),
        (("data.target=particles2d", "model.leapfrog_steps=1", "model.kind=nsf"), False),  # no leapfrog at all
        (("data.target=ring2d", "model.leapfrog_steps=1"), False),  # not particles: the default's own target
    ],
)
def test_a_one_step_particle_model_gets_a_note(changes, noted, capsys):
    """1 leapfrog step (the default, chosen on ring2d) stalled on particles2d: a particle run says so, once."""
    _module("data.regime=finite", "data.n_train=64", *changes)
    assert capsys.readouterr().out.count("note: model.leapfrog_steps=1") == int(noted)
