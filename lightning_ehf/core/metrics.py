"""Pure diagnostics of how symmetric a learned density is (docs/design.md §4 metric names)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .symmetries import GroupElement, Symmetry

__all__ = ["invariance_error", "equivariance_error", "relative_equivariance_errors", "bracket_rms"]

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
