"""Poisson brackets: a generic autograd version and the closed form for momentum maps.

    {f, g} = ∇_q f · ∇_p g − ∇_p f · ∇_q g
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["poisson_bracket", "momentum_map_bracket"]

PhaseFunction = Callable[[Tensor, Tensor], Tensor]


def poisson_bracket(f: PhaseFunction, g: PhaseFunction, q: Tensor, p: Tensor, create_graph: bool = False) -> Tensor:
    """``{f, g}(q, p)`` by autograd for scalar phase-space functions ``f, g: (..., d), (..., d) → (...)``.

    Works for any (also non-linear) f and g; used to test the closed forms.
    """
    with torch.enable_grad():
        q_ = q.detach().requires_grad_(True)
        p_ = p.detach().requires_grad_(True)
        fq, fp = torch.autograd.grad(f(q_, p_).sum(), (q_, p_), create_graph=create_graph)
        gq, gp = torch.autograd.grad(g(q_, p_).sum(), (q_, p_), create_graph=create_graph)
    return (fq * gp).sum(-1) - (fp * gq).sum(-1)


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
