"""Separable Hamiltonians ``H(q, p) = K(p) + U(q)`` and their forces.

Each energy is a module mapping (..., d) → (...), with a ``grad`` method returning ∂E/∂x, usable
inside a training graph (``create_graph``) so the flow's parameters receive gradients through the
forces. ``QuadraticKinetic`` has an analytic gradient; MLP energies use autograd.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

__all__ = [
    "Energy",
    "MLPEnergy",
    "QuadraticKinetic",
    "ZeroEnergy",
    "SeparableHamiltonian",
    "make_mlp",
]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"softplus": nn.Softplus, "tanh": nn.Tanh, "silu": nn.SiLU}


def make_mlp(d_in: int, d_out: int, hidden: int, depth: int, activation: str = "softplus", out_bias: bool = True) -> nn.Sequential:
    """A plain MLP with ``depth`` hidden layers of width ``hidden`` and a smooth activation."""
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation '{activation}'; choose from {sorted(_ACTIVATIONS)}")
    layers: list[nn.Module] = []
    width = d_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), _ACTIVATIONS[activation]()]
        width = hidden
    layers.append(nn.Linear(width, d_out, bias=out_bias))
    return nn.Sequential(*layers)


class Energy(nn.Module):
    """A scalar energy E(x) on (..., d) with gradient ∂E/∂x."""

    dim: int

    def grad(self, x: Tensor, create_graph: bool) -> Tensor:
        """∂E/∂x, (..., d). Differentiable w.r.t. parameters when ``create_graph``."""
        with torch.enable_grad():
            x_ = x if x.requires_grad else x.detach().requires_grad_(True)
            energy = self(x_)
            (g,) = torch.autograd.grad(energy.sum(), x_, create_graph=create_graph)
        return g


class ZeroEnergy(Energy):
    """E ≡ 0 (e.g. no potential): gradient exactly zero."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[:-1])

    def grad(self, x: Tensor, create_graph: bool) -> Tensor:
        return torch.zeros_like(x)


class MLPEnergy(Energy):
    """``E(x) = MLP(φ(x)) [+ ½|x|²]``.

    ``features`` φ defaults to the identity; with group-invariant features (squared norms of
    rotated blocks, or the particles' Gram matrix) ``E(g·x) = E(x)`` exactly, so ``{g_k, H} ≡ 0``:
    the invariant-by-construction model (DESIGN.md §2). The last layer has no bias (a constant
    shift has no force, and an unused bias breaks DDP) and starts at zero, so the flow starts as
    free motion. ``quadratic_part`` adds a fixed ``½|x|²`` (a kinetic energy must grow at infinity).
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 64,
        depth: int = 2,
        activation: str = "softplus",
        features: Callable[[Tensor], Tensor] | None = None,
        quadratic_part: bool = False,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.features = features
        n_features = dim if features is None else features(torch.zeros(1, dim)).shape[-1]
        self.net = make_mlp(n_features, 1, hidden, depth, activation, out_bias=False)
        if zero_init:
            nn.init.zeros_(self.net[-1].weight)
        self.quadratic_part = quadratic_part

    def forward(self, x: Tensor) -> Tensor:
        e = self.net(x if self.features is None else self.features(x)).squeeze(-1)
        if self.quadratic_part:
            e = e + 0.5 * x.square().sum(-1)
        return e


class QuadraticKinetic(Energy):
    """``K(p) = ½ |p|² / m`` with a learnable (or fixed) positive scalar mass ``m = exp(log_mass)``.

    A scalar mass keeps K invariant under every rotation group.
    """

    def __init__(self, dim: int, mass: float = 1.0, learn_mass: bool = True) -> None:
        super().__init__()
        self.dim = dim
        log_mass = torch.tensor(math.log(mass))
        if learn_mass:
            self.log_mass = nn.Parameter(log_mass)
        else:
            self.register_buffer("log_mass", log_mass)

    def forward(self, p: Tensor) -> Tensor:
        return 0.5 * p.square().sum(-1) * torch.exp(-self.log_mass)

    def grad(self, p: Tensor, create_graph: bool) -> Tensor:
        inv_mass = torch.exp(-self.log_mass)
        if not create_graph:
            inv_mass = inv_mass.detach()
        return p * inv_mass


class SeparableHamiltonian(nn.Module):
    """``H(q, p) = K(p) + U(q)``."""

    def __init__(self, potential: Energy, kinetic: Energy) -> None:
        super().__init__()
        self.potential = potential
        self.kinetic = kinetic

    def forward(self, q: Tensor, p: Tensor) -> Tensor:
        return self.kinetic(p) + self.potential(q)
