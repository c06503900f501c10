"""Poisson brackets: a generic autograd version and the closed form for momentum maps.

{f, g} = ∇_q f · ∇_p g − ∇_p f · ∇_q g
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["poisson_bracket", "momentum_map_bracket"]

PhaseFunction = Callable[[Tensor, Tensor], Tensor]


def poisson_bracket(f: PhaseFunction, g: PhaseFunction, q: Tensor, p: Tensor, create_graph: bool = False) -> Tensor:
    """``{f, g}(q, p)`` by autograd for scalar phase-space functions ``f, g: (..., d), (..., d) → (...)``.

    Works for any (also non-linear) f and g, including functions of q only or p only (e.g. the
    coordinates themselves); used to test the closed forms. With ``create_graph`` the result stays
    differentiable, also w.r.t. inputs that require grad (so brackets can be nested).
    """
    with torch.enable_grad():
        q_ = q if create_graph and q.requires_grad else q.detach().requires_grad_(True)
        p_ = p if create_graph and p.requires_grad else p.detach().requires_grad_(True)
        fq, fp = _phase_gradients(f, q_, p_, create_graph)
        gq, gp = _phase_gradients(g, q_, p_, create_graph)
    return (fq * gp).sum(-1) - (fp * gq).sum(-1)


def _phase_gradients(f: PhaseFunction, q: Tensor, p: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
    """``(∂f/∂q, ∂f/∂p)``, zeros for an argument f does not use."""
    out = f(q, p).sum()
    if not out.requires_grad:  # f is constant
        return torch.zeros_like(q), torch.zeros_like(p)
    gq, gp = torch.autograd.grad(out, (q, p), create_graph=create_graph, allow_unused=True)
    return (torch.zeros_like(q) if gq is None else gq), (torch.zeros_like(p) if gp is None else gp)


def momentum_map_bracket(
    matrices: Tensor, offsets: Tensor, q: Tensor, p: Tensor, grad_u: Tensor, grad_k: Tensor
) -> Tensor:
    """``{g_k, H}`` for ``g_k = pᵀ(A_k q + b_k)`` and separable ``H = K(p) + U(q)``, from cached forces:

        {g_k, H} = (A_kᵀ p) · ∇K(p) − (A_k q + b_k) · ∇U(q)

    Args:
        matrices: (k, d, d) generators ``A_k``; offsets: (k, d) ``b_k``.
        q, p, grad_u, grad_k: (..., d).

    Returns:
        (..., k) residuals, one per generator.
    """
    kinetic_term = torch.einsum("kji,...j,...i->...k", matrices, p, grad_k)
    potential_term = torch.einsum("kij,...j,...i->...k", matrices, q, grad_u) + grad_u @ offsets.transpose(0, 1)
    return kinetic_term - potential_term
