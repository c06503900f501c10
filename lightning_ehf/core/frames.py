"""Coordinates on the centre-of-mass-free subspace of a particle system, and relabelling identical particles.

A system of n particles in R^D whose density is invariant under translations, p(x + 1⊗t) = p(x), has
no normalisable density on R^{nD}. It has one on the subspace {Σ_i x_i = 0} (dimension (n−1)D), in
orthonormal coordinates z:

    x = B z,   z = Bᵀ x,   B = H ⊗ I_D,

where the columns of H (n × (n−1)) are the normalised Helmert contrasts
h_k = (1, …, 1, −k, 0, …, 0) / √(k(k+1)) (k ones), orthonormal and orthogonal to (1, …, 1). Bᵀ x removes
the centroid (Bᵀ(1⊗t) = 0), B Bᵀ = (I − 11ᵀ/n) ⊗ I_D is the projection onto the subspace, and since B is
an isometry of the subspace, densities in z are densities on the subspace with no Jacobian term.

A linear symmetry M that commutes with that projection (a rotation applied to every particle, a
relabelling of the particles) acts on z as Bᵀ M B, and its generators A as Bᵀ A B; :meth:`restrict`
builds that symmetry (its invariant features seen in z: :class:`~.invariants.FramedFeatures`). Pure torch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .invariants import FramedFeatures
from .symmetries import GroupElement, Symmetry

__all__ = ["CentreOfMassFrame", "permute_particles"]


def _helmert(n: int) -> Tensor:
    """n × (n−1) orthonormal basis of the vectors of R^n that sum to zero (Helmert contrasts), float64."""
    h = torch.zeros(n, n - 1, dtype=torch.float64)
    for k in range(1, n):
        h[:k, k - 1] = 1.0
        h[k, k - 1] = -float(k)
        h[:, k - 1] /= math.sqrt(k * (k + 1))
    return h


class CentreOfMassFrame:
    """Orthonormal coordinates z ∈ R^{(n−1)D} of the centre-of-mass-free configurations x ∈ R^{nD}.

    Particles are stored particle by particle: x = (x_1, …, x_n), x_i ∈ R^D (module docstring).
    """

    def __init__(self, n_particles: int, particle_dim: int) -> None:
        if n_particles < 2 or particle_dim < 1:
            raise ValueError(
                f"a centre-of-mass frame needs at least 2 particles of dimension ≥ 1, got "
                f"{n_particles} of dimension {particle_dim}"
            )
        self.n_particles, self.particle_dim = n_particles, particle_dim
        self.full_dim = n_particles * particle_dim
        self.dim = (n_particles - 1) * particle_dim
        self.basis = torch.kron(_helmert(n_particles), torch.eye(particle_dim, dtype=torch.float64))  # (nD, (n−1)D)
        self._basis_cache: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def __repr__(self) -> str:
        return f"CentreOfMassFrame({self.n_particles} particles × {self.particle_dim})"

    def _check(self, x: Tensor, dim: int, what: str) -> None:
        if x.shape[-1] != dim:
            raise ValueError(f"{what} must have {dim} coordinates in the last dimension, got shape {tuple(x.shape)}")

    def _basis_like(self, x: Tensor) -> Tensor:
        key = (x.dtype, x.device)
        if key not in self._basis_cache:
            self._basis_cache[key] = self.basis.to(dtype=x.dtype, device=x.device)
        return self._basis_cache[key]

    def to_subspace(self, x: Tensor) -> Tensor:
        """z = Bᵀ x: (..., nD) → (..., (n−1)D). The centroid of x is dropped."""
        self._check(x, self.full_dim, "configurations")
        return x @ self._basis_like(x)

    def from_subspace(self, z: Tensor) -> Tensor:
        """x = B z: (..., (n−1)D) → (..., nD), the configuration with its centroid at the origin."""
        self._check(z, self.dim, "subspace coordinates")
        return z @ self._basis_like(z).T

    def restrict(self, symmetry: Symmetry) -> Symmetry:
        """The symmetry acting on z: generators Bᵀ A_k B, shifts Bᵀ b_k, group elements Bᵀ M B.

        Raises ``ValueError`` when a generator does not preserve the subspace (A P ≠ P A with the
        projection P = B Bᵀ), since its action on z would then not be a group action."""
        if symmetry.dim != self.full_dim:
            raise ValueError(f"symmetry acts on dimension {symmetry.dim}, the particles have {self.full_dim}")
        basis = self.basis
        proj = basis @ basis.T
        mats = symmetry.matrices.to(torch.float64)
        for a, name in zip(mats, symmetry.generator_names):
            if not torch.allclose(a @ proj, proj @ a, atol=1e-9):
                raise ValueError(
                    f"generator '{name}' of symmetry '{symmetry.name}' does not preserve the "
                    "centre-of-mass-free subspace (it acts differently on different particles)"
                )
        restricted = torch.einsum("ia,kij,jb->kab", basis, mats, basis)
        offsets = symmetry.offsets.to(torch.float64) @ basis

        def sample(n: int, generator: torch.Generator | None, dtype: torch.dtype, device: torch.device) -> GroupElement:
            g = symmetry.sample(n, generator, dtype, device)
            b = basis.to(dtype=dtype, device=device)
            return GroupElement(b.T @ g.matrix @ b, g.shift @ b)

        invariants = None
        if symmetry.invariants is not None:
            invariants = FramedFeatures(symmetry.invariants, self)
        return Symmetry(
            f"{symmetry.name}|com",
            self.dim,
            restricted,
            offsets,
            list(symmetry.generator_names),
            sampler=sample,
            invariants=invariants,
        )


def permute_particles(x: Tensor, n_particles: int, generator: torch.Generator | None = None) -> Tensor:
    """Relabel the particles of every row of x (..., n·D) by its own uniformly random permutation."""
    rows = x.reshape(-1, n_particles, x.shape[-1] // n_particles)
    keys = torch.rand(rows.shape[0], n_particles, generator=generator, device="cpu").to(x.device)
    perm = torch.argsort(keys, dim=-1)
    out = torch.gather(rows, 1, perm[..., None].expand_as(rows))
    return out.reshape(x.shape)
