"""Pure diagnostics of a learned density: how symmetric it is (docs/design.md §4 metric names), how its flow
carries the symmetry's charges, and where its potentials have their wells."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .symmetries import GroupElement, Symmetry, one_parameter_subgroup

__all__ = [
    "bracket_rms",
    "equivariance_error",
    "invariance_error",
    "local_minima",
    "radial_profiles",
    "relative_equivariance_errors",
    "representation_measures",
]

PhaseMap = Callable[[Tensor, Tensor], "tuple[Tensor, Tensor]"]


@torch.no_grad()
def invariance_error(
    model: nn.Module,
    q: Tensor,
    symmetry: Symmetry,
    n_group: int = 4,
    k: int = 32,
    chunk: int = 64,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """``E |log p̂(q) − log p̂(g·q)|`` over random group elements g, and its noise floor.

    ``log p̂`` is the IWAE_k estimate, itself random; the noise floor ``E |log p̂(q) − log p̂'(q)|``
    compares two independent estimates at the same q. An invariant model has error ≈ floor.
    """
    reference = model.iwae(q, k, chunk)
    # an exact likelihood (efm) repeats itself: its floor is 0 and one evaluation serves both
    repeat = reference if getattr(model, "exact_likelihood", False) else model.iwae(q, k, chunk)
    errors = []
    for _ in range(n_group):
        g = symmetry.sample(q.shape[0], generator, dtype=q.dtype, device=q.device)
        errors.append((model.iwae(g.act_q(q), k, chunk) - repeat).abs().mean())
    return float(torch.stack(errors).mean()), float((reference - repeat).abs().mean())


@torch.no_grad()
def equivariance_error(model: nn.Module, n: int, symmetry: Symmetry, generator: torch.Generator | None = None) -> float:
    """Relative ``‖Φ(g·s) − g·Φ(s)‖ / ‖Φ(s)‖`` averaged over base samples s and group elements g."""
    ref = next(iter(model.parameters()))
    q0, p0 = model.base.sample(n, generator, dtype=ref.dtype, device="cpu")
    q0, p0 = q0.to(ref.device), p0.to(ref.device)
    g = symmetry.sample(n, generator, dtype=ref.dtype, device=ref.device)
    return float(relative_equivariance_errors(model.flow, q0, p0, g).mean())


@torch.no_grad()
def relative_equivariance_errors(flow: PhaseMap, q: Tensor, p: Tensor, g: GroupElement) -> Tensor:
    """``‖F(g·s) − g·F(s)‖ / ‖g·F(s)‖`` for each state ``s = (q, p)`` (one group element per row) and a
    phase-space map ``F`` (a flow's ``forward`` or ``inverse``): (n,)."""
    q1, p1 = flow(q, p)
    q2, p2 = flow(*g.act(q, p))
    gq1, gp1 = g.act(q1, p1)
    diff = torch.cat([q2 - gq1, p2 - gp1], -1).norm(dim=-1)
    scale = torch.cat([gq1, gp1], -1).norm(dim=-1).clamp_min(1e-12)
    return diff / scale


@torch.no_grad()
def bracket_rms(model: nn.Module, q: Tensor, p: Tensor) -> Tensor:
    """Root mean square of ``{g_k, H_t}`` over every state the inverse flow visits from (q, p): (k,)."""
    r = model.bracket_residuals(q, p)
    return r.square().flatten(0, -2).mean(0).sqrt()


def representation_measures(model: nn.Module, q: Tensor, seed: int = 0, n_draws: int = 4) -> dict[str, Any]:
    """Per-generator measures of an EHF ``model`` (evaluated in float64) at data ``q`` (n, d), with momenta
    ``p ~ h(p | q)`` from its encoder and the flow in the density direction ``Φ⁻¹`` (data → base):

    * ``equivariance[k]``: mean over states and ``n_draws`` elements ``g = exp(t A_k)`` of the k-th generator's
      subgroup of ``‖Φ⁻¹(g·s) − g·Φ⁻¹(s)‖ / ‖g·Φ⁻¹(s)‖`` (:func:`relative_equivariance_errors`);
    * ``charge_change[k]``: ``RMS(g_k(Φ⁻¹(s)) − g_k(s)) / RMS(g_k(s))``, ``g_k = pᵀ(A_k q + b_k)``;
      ``charge_change_blocks[k][t]``: the same after the first t + 1 blocks (in the density direction);
    * ``cross[k][j]``: ``RMS(g_j(Φ⁻¹(g·s)) − g_j(Φ⁻¹(s))) / RMS(g_j(Φ⁻¹(s)))`` for ``g`` in subgroup k: how much
      acting with generator k's subgroup on the data changes the base-space charge j (0 for an equivariant flow:
      commuting generators, and a group element keeps its own charge).
    """
    m = copy.deepcopy(model).to(torch.float64).eval()
    sym = m.symmetry
    q = q.to(torch.float64)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(int(seed))
        q = m.to_standard(q)  # the coordinates the flow acts on (the group acts on them alike)
        p = m.encoder(q).sample()
        charges = lambda a, b: sym.momentum_maps(a, b)  # noqa: E731  (..., k)
        g0 = charges(q, p)
        qt, pt = q, p
        steps = []  # the charges after each block, in the density direction (the inverse flow's order)
        for t in reversed(range(len(m.flow.blocks))):
            qt, pt = m.flow.blocks[t].integrate(qt, pt, reverse=True, create_graph=False)
            steps.append(charges(qt, pt))
        g_base = steps[-1]

        def rms(x: torch.Tensor) -> torch.Tensor:
            return x.square().mean(0).sqrt()

        scale = rms(g0).clamp_min(1e-300)
        out: dict[str, Any] = {"generators": list(sym.generator_names), "n": int(q.shape[0])}
        out["charge_change"] = (rms(g_base - g0) / scale).tolist()
        out["charge_change_blocks"] = torch.stack([rms(gt - g0) / scale for gt in steps], 1).tolist()
        out["charge_rms"] = scale.tolist()
        eq, cross = [], []
        for k in range(sym.num_generators):
            sub = one_parameter_subgroup(sym, k)
            errs, moved = [], []
            for _ in range(n_draws):
                g = sub.sample(q.shape[0], gen, dtype=torch.float64)
                errs.append(relative_equivariance_errors(m.flow.inverse, q, p, g))
                moved.append(charges(*m.flow.inverse(*g.act(q, p))) - g_base)
            eq.append(float(torch.cat(errs).mean()))
            cross.append((rms(torch.cat(moved)) / rms(g_base).clamp_min(1e-300)).tolist())
        out["equivariance"] = eq
        out["cross"] = cross
    return out


def radial_profiles(model: nn.Module, r_max: float = 4.0, n_r: int = 401, n_theta: int = 64) -> tuple[Any, Any]:
    """``(r, U)``: radii (n_r,) and the angular mean of every block's potential on the plane (0, 1), other
    coordinates 0: ``U[t, i] = (1/n_θ) Σ_j U_t(r_i (cos θ_j, sin θ_j, 0, …))`` (float64 numpy, (T, n_r))."""
    m = copy.deepcopy(model).to(torch.float64)
    r = torch.linspace(0.0, r_max, n_r, dtype=torch.float64)
    theta = 2 * math.pi * torch.arange(n_theta, dtype=torch.float64) / n_theta
    pts = torch.zeros(n_r, n_theta, m.data_dim, dtype=torch.float64)
    pts[..., 0] = r[:, None] * torch.cos(theta)
    pts[..., 1] = r[:, None] * torch.sin(theta)
    with torch.no_grad():
        std = m.to_standard(pts)
        u = torch.stack([block.hamiltonian.potential(std).mean(-1) for block in m.flow.blocks])
    return r.numpy(), u.numpy()


def local_minima(r: Any, u: Any, rel_prominence: float = 1e-3) -> list[float]:
    """Local minima of a sampled profile ``u(r)``, refined by a parabola through the three grid points.
    ``r = 0`` counts when ``u`` rises from it (a radial profile is even in r there); the far end never does.
    Minima shallower than ``rel_prominence`` × (max − min of u) on either side are wiggles, not wells."""
    u = np.asarray(u, dtype=float)
    r = np.asarray(r, dtype=float)
    span = float(u.max() - u.min())
    if span <= 0 or len(u) < 3:
        return []
    floor = rel_prominence * span
    found = []
    for i in range(len(u) - 1):
        if i == 0:
            if u[1] <= u[0]:
                continue
            left_rise = math.inf
        else:
            if not (u[i] < u[i - 1] and u[i] <= u[i + 1]):
                continue
            j = i - 1  # it must be a real well: the profile rises on both sides
            while j > 0 and u[j - 1] >= u[j]:
                j -= 1
            left_rise = float(u[j:i].max() - u[i])
        k = i + 1
        while k < len(u) - 1 and u[k + 1] >= u[k]:
            k += 1
        right_rise = float(u[i + 1 : k + 1].max() - u[i])
        if min(left_rise, right_rise) < floor:
            continue
        x = float(r[i])
        if 0 < i:
            denom = u[i + 1] - 2 * u[i] + u[i - 1]
            if denom > 0:
                x = float(r[i] - 0.5 * (r[1] - r[0]) * (u[i + 1] - u[i - 1]) / denom)
        found.append(x)
    return found
