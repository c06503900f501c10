"""Separable Hamiltonians ``H(q, p) = K(p) + U(q)`` and their forces.

Each energy is a module mapping (..., d) → (...), with a ``grad`` method returning ∂E/∂x, usable
inside a training graph (``create_graph``) so the flow's parameters receive gradients through the
forces.

Forces are written out in closed form (the *analytic* path): for an MLP with hidden layers
``a_l = W_l h_{l−1} + b_l``, ``h_l = σ(a_l)`` and output ``E = wᵀ h_L``,

    ∇_{h_0} E = W_1ᵀ (σ'(a_1) ⊙ W_2ᵀ (σ'(a_2) ⊙ … W_Lᵀ (σ'(a_L) ⊙ w)))

then pulled back through the input features. It needs no autograd: evaluation builds no graph, and
training differentiates this explicit expression once instead of a double backward. The *autograd*
path (``torch.autograd.grad`` of E) is the reference the analytic one is tested against; select it with
:func:`set_force_path`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import Tensor, nn

__all__ = [
    "Energy",
    "MLPEnergy",
    "QuadraticKinetic",
    "ZeroEnergy",
    "SeparableHamiltonian",
    "make_mlp",
    "set_force_path",
    "FORCE_PATHS",
]

FORCE_PATHS = ("analytic", "autograd")

ACTIVATIONS: dict[str, type[nn.Module]] = {"softplus": nn.Softplus, "tanh": nn.Tanh, "silu": nn.SiLU}


def make_mlp(
    d_in: int, d_out: int, hidden: int, depth: int, activation: str = "softplus", out_bias: bool = True
) -> nn.Sequential:
    """A plain MLP with ``depth`` hidden layers of width ``hidden`` and a smooth activation."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{activation}'; choose from {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    width = d_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
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


def _activation_slope(act: nn.Module, a: Tensor, h: Tensor | None) -> Tensor:
    """σ'(a) for the smooth activations of :func:`make_mlp`; ``h = σ(a)`` where already computed.

    Softplus: ``sigmoid(β a)``. (torch's softplus turns linear above ``β a > 20``, where its slope is
    exactly 1; ``sigmoid(20) = 1 − 2·10⁻⁹`` rounds to 1 in float32, so the two agree to that.)"""
    if isinstance(act, nn.Softplus):
        return torch.sigmoid(a * act.beta) if act.beta != 1 else torch.sigmoid(a)
    if isinstance(act, nn.Tanh):
        return 1.0 - (torch.tanh(a) if h is None else h).square()
    if isinstance(act, nn.SiLU):
        s = torch.sigmoid(a)
        return s * (1.0 + a * (1.0 - s))
    raise TypeError(f"no closed-form derivative for activation {type(act).__name__}")


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
    the invariant-by-construction model (docs/design.md §2). The last layer has no bias (a constant
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
        self.force_path = "analytic"

    def forward(self, x: Tensor) -> Tensor:
        e = self.net(x if self.features is None else self.features(x)).squeeze(-1)
        if self.quadratic_part:
            e = e + 0.5 * x.square().sum(-1)
        return e

    def grad(self, x: Tensor, create_graph: bool) -> Tensor:
        """∂E/∂x, (..., d): the closed form (module docstring), or autograd on the reference path."""
        if self.force_path == "autograd":
            return super().grad(x, create_graph)
        with nullcontext() if create_graph else torch.no_grad():
            return self._analytic_grad(x)

    def _analytic_grad(self, x: Tensor) -> Tensor:
        layers = list(self.net)
        linears, acts = layers[0::2], layers[1::2]
        h, pullback = (x, None) if self.features is None else _features_with_pullback(self.features, x)
        slopes = []
        for i, (linear, act) in enumerate(zip(linears[:-1], acts)):
            a = linear(h)
            last = i == len(acts) - 1
            h = None if last else act(a)  # the force never needs the last hidden activation itself
            slopes.append(_activation_slope(act, a, h))
        g = linears[-1].weight[0]  # ∂E/∂h_L = w, broadcast over the batch
        for linear, slope in zip(reversed(linears[:-1]), reversed(slopes)):
            g = (g * slope) @ linear.weight
        if pullback is not None:
            g = pullback(g)
        if self.quadratic_part:
            g = g + x
        return g


def _features_with_pullback(
    features: Callable[[Tensor], Tensor], x: Tensor
) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """``φ(x)`` and the map ``g ↦ J_φ(x)ᵀ g``. Feature maps with a ``with_pullback`` method share work between
    the two (the pair-distance features evaluate their bases once); any other is pulled back by
    :func:`_pullback`."""
    with_pullback = getattr(features, "with_pullback", None)
    if with_pullback is not None:
        return with_pullback(x)
    return features(x), lambda g: _pullback(features, x, g)


def _pullback(features: Callable[[Tensor], Tensor], x: Tensor, g: Tensor) -> Tensor:
    """``J_φ(x)ᵀ g``: the gradient with respect to x of a function with gradient g in the features φ(x).

    Feature maps that know their Jacobian (the invariants of :mod:`.symmetries`) give it in closed
    form; any other feature map is pulled back with one vector-Jacobian product."""
    pullback = getattr(features, "pullback", None)
    if pullback is not None:
        return pullback(x, g)
    with torch.enable_grad():
        x_ = x if x.requires_grad else x.detach().requires_grad_(True)
        (out,) = torch.autograd.grad(features(x_), x_, g, create_graph=g.requires_grad or x.requires_grad)
    return out


def set_force_path(module: nn.Module, path: str) -> nn.Module:
    """Compute every MLP force in ``module`` by ``path``: ``analytic`` (default) or ``autograd`` (the
    reference). Returns the module."""
    if path not in FORCE_PATHS:
        raise ValueError(f"unknown force path '{path}'; choose from {FORCE_PATHS}")
    for m in module.modules():
        if isinstance(m, MLPEnergy):
            m.force_path = path
    return module


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
