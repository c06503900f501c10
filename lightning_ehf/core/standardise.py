"""Group-invariant first and second moments, for standardising data without breaking a symmetry.

A flow's base N(0, σ² I) and its Hamiltonians see coordinates ``q̃ = W⁻¹ (q − μ)``. For the symmetry to
survive, the affine map must commute with the group: ``W`` with every generator (``A_k W = W A_k``)
and ``μ`` fixed by it (``A_k μ = 0``). Then a group element ``M = exp(Σ t_k A_k)`` acts on q̃ exactly
as on q, the brackets ``{g_k, H}`` keep their form, and ``log p(q) = log p̃(q̃) − log |det W|``.

The empirical moments of a finite sample do not commute with the group. We project them: the mean onto
the fixed subspace ``{v : A_k v = 0}``, the covariance onto the commutant ``{X : A_k X = X A_k}``
(orthogonal projections in the Frobenius norm, so for an invariant density they converge to its true
moments), and for identical particles onto covariances that are the same for every relabelling. The
symmetric square root ``W = Σ^{1/2}`` of a covariance in the commutant is in it as well. Pure torch.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["commutant_projection", "fixed_projection", "invariant_moments", "MAX_STANDARDISE_DIM"]

#: The commutant is found from a (d² × d²) eigenproblem, so standardising under a group is limited to this
#: dimension (without a group there is no limit).
MAX_STANDARDISE_DIM = 48


def _null_space(m: Tensor, rtol: float = 1e-9) -> Tensor:
    """Orthonormal basis (columns) of the null space of ``m`` (rows × n), float64."""
    if m.shape[0] == 0:
        return torch.eye(m.shape[1], dtype=torch.float64)
    gram = m.T @ m
    evals, evecs = torch.linalg.eigh(gram)
    tol = rtol * max(1.0, evals.abs().max().item())
    return evecs[:, evals <= tol]


def fixed_projection(generators: Tensor) -> Tensor:
    """(d, d): the orthogonal projection onto the vectors every generator annihilates, ``{v : A_k v = 0}``."""
    k, d, _ = generators.shape
    basis = _null_space(generators.to(torch.float64).reshape(k * d, d))
    return basis @ basis.T


def commutant_projection(generators: Tensor, matrix: Tensor) -> Tensor:
    """The orthogonal (Frobenius) projection of ``matrix`` (d, d) onto ``{X : A_k X = X A_k for all k}``."""
    k, d, _ = generators.shape
    if k == 0:  # no symmetry: every matrix commutes
        return matrix.to(torch.float64).clone()
    if d > MAX_STANDARDISE_DIM:
        raise ValueError(f"standardising needs dimension ≤ {MAX_STANDARDISE_DIM} (a d² × d² eigenproblem), got {d}")
    a = generators.to(torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    # vec(A X − X A) = (I ⊗ A − Aᵀ ⊗ I) vec(X) with column-major vec; row-major flatten uses (A ⊗ I − I ⊗ Aᵀ)
    ops = torch.cat([torch.kron(ak, eye) - torch.kron(eye, ak.T.contiguous()) for ak in a], 0)
    basis = _null_space(ops)
    flat = matrix.to(torch.float64).reshape(-1)
    return (basis @ (basis.T @ flat)).reshape(d, d)


def _relabelling_average(matrix: Tensor, n_particles: int) -> Tensor:
    """The average of ``(P ⊗ I) X (P ⊗ I)ᵀ`` over all permutations P of n particles: every diagonal block
    becomes the mean diagonal block and every off-diagonal block the mean off-diagonal block."""
    d = matrix.shape[-1]
    dp = d // n_particles
    blocks = matrix.reshape(n_particles, dp, n_particles, dp).transpose(1, 2)  # (n, n, D, D)
    diag = torch.eye(n_particles, dtype=torch.bool)
    on = blocks[diag].mean(0)
    off = blocks[~diag].mean(0) if n_particles > 1 else torch.zeros_like(on)
    out = torch.where(diag[:, :, None, None], on, off)
    return out.transpose(1, 2).reshape(d, d)


def invariant_moments(
    x: Tensor, generators: Tensor, n_particles: int | None = None, basis: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The mean and covariance of the rows of x (N, d), projected so that they commute with the group.

    Args:
        x: samples, (N, d) with N ≥ 2.
        generators: the Lie algebra generators A_k acting on x, (k, d, d).
        n_particles: if given, the particles (blocks of d/n coordinates) are identical, and the moments are
            also averaged over relabellings.
        basis: if the rows are coordinates ``z = Bᵀ y`` of particles ``y`` in a subspace (a centre-of-mass
            frame, B of shape (n·D, d)), relabellings are averaged in y and the result mapped back to z.

    Returns:
        ``(μ, Σ)`` in float64: ``A_k μ = 0`` and ``A_k Σ = Σ A_k`` to round-off.
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples of shape (N, d), got {tuple(x.shape)}")
    x = x.to(torch.float64)
    mean, cov = x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])
    if n_particles is not None:
        b = basis.to(torch.float64) if basis is not None else None
        mean_y = mean @ b.T if b is not None else mean
        cov_y = b @ cov @ b.T if b is not None else cov
        mean_y = mean_y.reshape(n_particles, -1).mean(0).repeat(n_particles)
        cov_y = _relabelling_average(cov_y, n_particles)
        mean, cov = (mean_y @ b, b.T @ cov_y @ b) if b is not None else (mean_y, cov_y)
    mean = fixed_projection(generators) @ mean
    cov = commutant_projection(generators, cov)
    return mean, 0.5 * (cov + cov.T)
