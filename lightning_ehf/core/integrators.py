"""Leapfrog integration of separable Hamiltonians as pure functions.

    p½ = p − ε/2 ∇U(q);   q' = q + ε ∇K(p½);   p' = p½ − ε/2 ∇U(q')

Each sub-step is a shear, so the map is exactly volume preserving (det J = 1) and its inverse is the
same scheme with −ε (docs/design.md §2). Consecutive half-kicks share one ∇U evaluation, so L steps cost
L + 1 potential gradients and L kinetic gradients.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

__all__ = ["leapfrog", "StateCallback"]

Force = Callable[[Tensor], Tensor]
StateCallback = Callable[[Tensor, Tensor, Tensor, Tensor], None]


def leapfrog(
    q: Tensor,
    p: Tensor,
    grad_u: Force,
    grad_k: Force,
    step: Tensor | float,
    n_steps: int,
    reverse: bool = False,
    on_state: StateCallback | None = None,
) -> tuple[Tensor, Tensor]:
    """Integrate ``n_steps`` leapfrog steps of size ``step`` (``−step`` when ``reverse``).

    Args:
        q, p: positions and momenta, (..., d).
        grad_u, grad_k: ∇U(q) and ∇K(p).
        step: ε > 0, a float or a scalar tensor (learnable step sizes stay in the graph).
        n_steps: L ≥ 1.
        reverse: integrate backwards in time: the exact inverse of the forward map.
        on_state: called as ``on_state(q, p, ∇U(q), ∇K(p))`` at every state where both forces are
            already known (two per step: before and after the drift), so bracket residuals
            ``{g, H}(q, p)`` cost no extra force evaluation.

    Returns:
        ``(q', p')`` after ``n_steps`` steps.
    """
    h = -step if reverse else step
    force = grad_u(q)
    for _ in range(n_steps):
        p = p - 0.5 * h * force
        velocity = grad_k(p)
        if on_state is not None:
            on_state(q, p, force, velocity)
        q = q + h * velocity
        force = grad_u(q)
        if on_state is not None:
            on_state(q, p, force, velocity)
        p = p - 0.5 * h * force
    return q, p
