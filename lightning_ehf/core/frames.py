"""Coordinates on the centre-of-mass-free subspace of a particle system, and identical particles.

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
builds that symmetry. Pure torch.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

from .symmetries import GroupElement, Symmetry
from .targets import Target

__all__ = ["CentreOfMassFrame", "FramedTarget", "PairDistanceFeatures", "permute_particles"]


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
            raise ValueError(f"a centre-of-mass frame needs at least 2 particles of dimension ≥ 1, got "
                             f"{n_particles} of dimension {particle_dim}")
        self.n_particles, self.particle_dim = n_particles, particle_dim
        self.full_dim = n_particles * particle_dim
        self.dim = (n_particles - 1) * particle_dim
        self.basis = torch.kron(_helmert(n_particles), torch.eye(particle_dim, dtype=torch.float64))  # (nD, (n−1)D)

    def __repr__(self) -> str:
        return f"CentreOfMassFrame({self.n_particles} particles × {self.particle_dim})"

    def _check(self, x: Tensor, dim: int, what: str) -> None:
        if x.shape[-1] != dim:
            raise ValueError(f"{what} must have {dim} coordinates in the last dimension, got shape {tuple(x.shape)}")

    def to_subspace(self, x: Tensor) -> Tensor:
        """z = Bᵀ x: (..., nD) → (..., (n−1)D). The centroid of x is dropped."""
        self._check(x, self.full_dim, "configurations")
        return x @ self.basis.to(x)

    def from_subspace(self, z: Tensor) -> Tensor:
        """x = B z: (..., (n−1)D) → (..., nD), the configuration with its centroid at the origin."""
        self._check(z, self.dim, "subspace coordinates")
        return z @ self.basis.to(z).T

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
                raise ValueError(f"generator '{name}' of symmetry '{symmetry.name}' does not preserve the "
                                 "centre-of-mass-free subspace (it acts differently on different particles)")
        restricted = torch.einsum("ia,kij,jb->kab", basis, mats, basis)
        offsets = symmetry.offsets.to(torch.float64) @ basis

        def sample(n: int, generator: Optional[torch.Generator], dtype: torch.dtype, device: torch.device) -> GroupElement:
            g = symmetry.sample(n, generator, dtype, device)
            b = basis.to(dtype=dtype, device=device)
            return GroupElement(b.T @ g.matrix @ b, g.shift @ b)

        invariants = None
        if symmetry.invariants is not None:
            invariants = _FramedFeatures(symmetry.invariants, self)
        return Symmetry(f"{symmetry.name}|com", self.dim, restricted, offsets, list(symmetry.generator_names),
                        sampler=sample, invariants=invariants)


class _FramedFeatures:
    """Features of the particles, φ(B z), as a function of z; pullback Bᵀ J_φ(Bz)ᵀ g."""

    def __init__(self, features: Any, frame: CentreOfMassFrame) -> None:
        self.features, self.frame = features, frame

    def __call__(self, z: Tensor) -> Tensor:
        return self.features(self.frame.from_subspace(z))

    def pullback(self, z: Tensor, g: Tensor) -> Tensor:
        x = self.frame.from_subspace(z)
        return self.frame.to_subspace(self.features.pullback(x, g))


class FramedTarget(Target):
    """A translation-invariant particle target seen in the orthonormal coordinates z of its
    centre-of-mass-free subspace: samples Bᵀ x, ``log_prob(z) = log p(B z)``, entropy unchanged
    (B is an isometry of the subspace, so densities carry no Jacobian)."""

    def __init__(self, target: Target, frame: CentreOfMassFrame) -> None:
        if target.dim != frame.full_dim:
            raise ValueError(f"target {target.name} has dimension {target.dim}, the frame {frame.full_dim}")
        self.target, self.frame = target, frame
        self.name, self.dim = target.name, frame.dim
        self.finite_pool = getattr(target, "finite_pool", False)
        self.symmetry_spec = dict(target.symmetry_spec)

    def sample(self, n: int, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
               device: Any = None) -> Tensor:
        return self.frame.to_subspace(self.target.sample(n, generator, dtype, device))

    def sample_split(self, split: str, n: int, generator: Optional[torch.Generator] = None,
                     dtype: torch.dtype = torch.float32, device: Any = None) -> Tensor:
        return self.frame.to_subspace(self.target.sample_split(split, n, generator, dtype, device))

    def pool_size(self, split: str) -> int:
        """Samples in the pool of ``split`` (pool targets only)."""
        return self.target.pool_size(split)  # type: ignore[attr-defined]

    def log_prob(self, z: Tensor) -> Tensor:
        return self.target.log_prob(self.frame.from_subspace(z))

    def entropy(self, n: int = 100_000, generator: Optional[torch.Generator] = None) -> tuple[float, float]:
        return self.target.entropy(n, generator)


class PairDistanceFeatures:
    """Features of n particles invariant under rotations and reflections of every particle alike, and
    under relabelling: smooth histograms of the squared pair distances and of the squared norms,

        f_m(x) = Σ_{i<j} φ_m(|x_i − x_j|²),   f'_m(x) = Σ_i φ_m(|x_i|²),   φ_m(s) = exp(−(s − c_m)² / (2w²)),

    on ``n_bins`` centres c_m spread evenly over [0, s_max], s_max = ``max_distance``², width
    w = s_max / (n_bins − 1) (radial bases summed over pairs, as in SchNet). The pair part is also
    translation invariant; the norms pin the particles to the origin (for centre-of-mass-free data they
    are distances to the centroid, fixed by the pair distances). Any MLP of these features gives an
    energy with E(Π R x) = E(x). ``pullback`` is the closed form of J(x)ᵀ g:
    ∂/∂x_i = Σ_j 2 c_ij (x_i − x_j) + 2 c_i x_i with c_ij = Σ_m g_m φ'_m(s_ij), c_i = Σ_m g'_m φ'_m(|x_i|²).
    """

    def __init__(self, n_particles: int, particle_dim: int, n_bins: int = 24, max_distance: float = 8.0) -> None:
        if n_particles < 2 or n_bins < 2:
            raise ValueError("pair-distance features need at least 2 particles and 2 bins")
        self.n, self.dim, self.n_bins = n_particles, particle_dim, n_bins
        self.rows, self.cols = torch.triu_indices(n_particles, n_particles, offset=1)
        s_max = float(max_distance) ** 2
        self.centres = torch.linspace(0.0, s_max, n_bins, dtype=torch.float64)
        self.width = s_max / (n_bins - 1)

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        parts = x.reshape(*x.shape[:-1], self.n, self.dim)
        diff = parts[..., self.rows, :] - parts[..., self.cols, :]  # (..., P, D)
        return parts, diff

    def _bases(self, s: Tensor) -> tuple[Tensor, Tensor]:
        """φ_m(s) and dφ_m/ds, (..., m)."""
        u = (s[..., None] - self.centres.to(s)) / self.width
        phi = torch.exp(-0.5 * u.square())
        return phi, -u * phi / self.width

    def __call__(self, x: Tensor) -> Tensor:
        parts, diff = self._parts(x)
        pair, _ = self._bases(diff.square().sum(-1))
        norm, _ = self._bases(parts.square().sum(-1))
        return torch.cat([pair.sum(-2), norm.sum(-2)], -1)

    def pullback(self, x: Tensor, g: Tensor) -> Tensor:
        parts, diff = self._parts(x)
        g_pair, g_norm = g[..., : self.n_bins], g[..., self.n_bins :]
        _, pair_slope = self._bases(diff.square().sum(-1))
        _, norm_slope = self._bases(parts.square().sum(-1))
        pair_grad = 2.0 * (pair_slope * g_pair[..., None, :]).sum(-1)[..., None] * diff  # on x_i; −that on x_j
        out = 2.0 * (norm_slope * g_norm[..., None, :]).sum(-1)[..., None] * parts
        out = out.index_add(-2, self.rows.to(x.device), pair_grad)
        out = out.index_add(-2, self.cols.to(x.device), -pair_grad)
        return out.reshape(*x.shape[:-1], self.n * self.dim)


def permute_particles(x: Tensor, n_particles: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Relabel the particles of every row of x (..., n·D) by its own uniformly random permutation."""
    rows = x.reshape(-1, n_particles, x.shape[-1] // n_particles)
    keys = torch.rand(rows.shape[0], n_particles, generator=generator, device="cpu").to(x.device)
    perm = torch.argsort(keys, dim=-1)
    out = torch.gather(rows, 1, perm[..., None].expand_as(rows))
    return out.reshape(x.shape)
