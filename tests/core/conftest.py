"""Fixtures of the core tests (``lightning_ehf/core``, the NSF baseline and the model contract).

* ``device``: ``cpu``, plus ``cuda`` when available.
* ``dtype``: float32 and float64 (tests where precision is the point use float64 directly).
* ``randomize``: overwrite every Hamiltonian parameter of a model with N(0, std²) draws, so the
  flow is far from the free motion ``make_ehf`` starts at (its last layers are zero-initialised).
* ``build``: ``make_ehf`` + ``randomize`` + cast to dtype/device, with small, fast defaults.

Every test here starts from the same torch seed (an autouse fixture), so the Monte Carlo checks are
reproducible. The symmetry groups the tests parametrise over are in ``symmetry_zoo.py`` beside this file.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64]


@pytest.fixture(autouse=True)
def _seed_core_tests():
    torch.manual_seed(1234)


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(params=DTYPES, ids=["float32", "float64"])
def dtype(request) -> torch.dtype:
    return request.param


def _randomize(model: torch.nn.Module, std: float = 0.4) -> torch.nn.Module:
    """Normal(0, std²) on all Hamiltonian parameters of every block (weights, biases, log masses)."""
    with torch.no_grad():
        for block in model.flow.blocks:
            params = list(block.hamiltonian.parameters())
            assert params, "a Hamiltonian block without parameters cannot be randomised"
            for prm in params:
                prm.normal_(0.0, std)
    return model


@pytest.fixture
def randomize() -> Callable[..., torch.nn.Module]:
    return _randomize


@pytest.fixture
def build() -> Callable[..., torch.nn.Module]:
    """``build(symmetry, dtype=..., device=..., std=0.4, **make_ehf_kwargs)`` → a randomised EHF."""
    from lightning_ehf.core import make_ehf

    def _build(symmetry, dtype=torch.float64, device="cpu", std=0.4, **kwargs):
        kwargs.setdefault("blocks", 2)
        kwargs.setdefault("leapfrog_steps", 3)
        kwargs.setdefault("step_size", 0.15)
        kwargs.setdefault("hidden", 16)
        model = make_ehf(symmetry, **kwargs)
        _randomize(model, std)
        return model.to(dtype=dtype, device=device)

    return _build
