"""Features of the data that a symmetry leaves unchanged, and their pullbacks ``g ↦ J(x)ᵀ g``: what invariant
Hamiltonians (``model.invariant``), the equivariant encoder and the flow-matching fields are built from.

* :class:`BlockInvariants`: the squared norm of every rotated block, the untouched coordinates as they are
  (rotations of disjoint coordinate blocks);
* :class:`GramInvariants`: the pairwise inner products ``x_i · x_j`` of n particles (O(D) acting on every
  particle alike);
* :class:`PairDistanceFeatures`: smooth histograms of the squared pair distances and norms of n particles
  (rotations, reflections and relabellings);
* :class:`FramedFeatures`: any of these as a function of centre-of-mass-free coordinates z, ``φ(B z)``.

Every feature map offers ``__call__(x)`` (..., F) and ``pullback(x, g)`` (..., d). Pure torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = ["BlockInvariants", "GramInvariants", "PairDistanceFeatures", "FramedFeatures", "EXP_FLOOR", "BASIS_ELEMENTS"]


class BlockInvariants:
    """Squared norm of every rotated block, and the untouched coordinates as they are."""

    def __init__(self, d: int, blocks: Sequence[Sequence[int]]) -> None:
        self.blocks = [list(b) for b in blocks]
        rotated = {i for b in self.blocks for i in b}
        self.free = [i for i in range(d) if i not in rotated]

    def __call__(self, x: Tensor) -> Tensor:
        feats = [x[..., b].square().sum(-1, keepdim=True) for b in self.blocks]
        if self.free:
            feats.append(x[..., self.free])
        return torch.cat(feats, -1)

    def pullback(self, x: Tensor, g: Tensor) -> Tensor:
        """``J(x)ᵀ g`` for a gradient g in the features: ``2 x_b g_b`` on block b, g itself on free coordinates."""
        out = x.new_zeros(*g.shape[:-1], x.shape[-1])
        for k, b in enumerate(self.blocks):
            out[..., b] = 2.0 * x[..., b] * g[..., k : k + 1]
        if self.free:
            out[..., self.free] = g[..., len(self.blocks) :]
        return out


class GramInvariants:
    """Pairwise inner products ``x_i · x_j`` (i ≤ j) of the particles: O(D)-invariant features."""

    def __init__(self, n_particles: int, particle_dim: int) -> None:
        self.n, self.dim = n_particles, particle_dim
        self.rows, self.cols = torch.triu_indices(n_particles, n_particles)

    def __call__(self, x: Tensor) -> Tensor:
        parts = x.reshape(*x.shape[:-1], self.n, self.dim)
        gram = parts @ parts.transpose(-1, -2)
        return gram[..., self.rows, self.cols]

    def pullback(self, x: Tensor, g: Tensor) -> Tensor:
        """``∂/∂x_a Σ_{i≤j} g_ij x_i·x_j = (S x)_a`` with ``S = G + Gᵀ``, G upper-triangular holding g."""
        upper = g.new_zeros(*g.shape[:-1], self.n, self.n)
        upper[..., self.rows, self.cols] = g
        parts = x.reshape(*x.shape[:-1], self.n, self.dim)
        return ((upper + upper.transpose(-1, -2)) @ parts).reshape(*parts.shape[:-2], self.n * self.dim)


#: Gaussian-basis arguments are clamped here before ``exp``: in float32 exp of arguments below about −87
#: underflows, and on this CPU build underflowing exp runs 35–100× slower than normal values. exp(−60) ≈ 9·10⁻²⁷
#: is zero for every sum it enters.
EXP_FLOOR = -60.0

#: (rows × arguments × bins) elements of the radial bases evaluated at a time, whole rows (points × momenta)
#: each: their temporaries then stay in the cache. Rows are independent, so results do not depend on it.
BASIS_ELEMENTS = 2**18


class _RadialBasis:
    """Gaussian bases ``φ_m(r) = exp(−u²/2)``, ``u = (r − c_m)/w``, of arguments r (rows, R), and the
    (rows, R, M) tensors their derivatives are made of:

        φ'_m = −(u φ_m) / w,   φ''_m = ((u² − 1) φ_m) / w².

    The scalar factors −1/w and 1/w² are applied to the small contracted results, not to (rows, R, M)
    tensors. Without a graph to record, the operations run in place."""

    def __init__(self, centres: Tensor, width: float) -> None:
        self.centres, self.width = centres, float(width)
        self.n_bins = centres.shape[0]
        self._scaled: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def u(self, r: Tensor) -> Tensor:
        """``u = r/w − c/w``, (rows, R, M)."""
        key = (r.dtype, r.device)
        if key not in self._scaled:
            self._scaled[key] = (self.centres / self.width).to(dtype=r.dtype, device=r.device)
        return r[..., None] * (1.0 / self.width) - self._scaled[key]

    def phi_and_u_phi(self, r: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``φ(r)`` and ``u φ(r)`` (written into ``out`` if given), the argument of exp clamped at
        :data:`EXP_FLOOR` (no graph recorded)."""
        u = self.u(r)
        phi = u.square().mul_(-0.5).clamp_min_(EXP_FLOOR).exp_()
        return phi, (u.mul_(phi) if out is None else torch.mul(u, phi, out=out))

    def u_phi_and_curvature(self, r: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``u φ(r)`` (written into ``out`` if given) and ``(u² − 1) φ(r)``; differentiable when r carries a
        graph (a double backward)."""
        u = self.u(r)
        u2 = u.square()
        if torch.is_grad_enabled() and r.requires_grad:
            phi = torch.exp((-0.5 * u2).clamp_min(EXP_FLOOR))
            return u * phi, (u2 - 1.0) * phi
        phi = (u2 * -0.5).clamp_min_(EXP_FLOOR).exp_()
        return (u.mul_(phi) if out is None else torch.mul(u, phi, out=out)), u2.sub_(1.0).mul_(phi)


def _contract(bases: Tensor, g: Tensor) -> Tensor:
    """``Σ_m g_m B_{p,m}`` (rows, R) for bases B (rows, R, M) and weights g (rows, M)."""
    # a row vector times a matrix, per row: several times faster on a CPU than the matrix times a column
    return torch.bmm(g[:, None, :], bases.transpose(1, 2)).squeeze(1)


def _sum_rows(a: Tensor, bases: Tensor) -> Tensor:
    """``Σ_p a_p B_{p,m}`` (rows, M) for weights a (rows, R) and bases B (rows, R, M)."""
    return torch.bmm(a[:, None, :], bases).squeeze(1)


def _row_chunks(r: Tensor, n_bins: int) -> list[slice]:
    """Slices of the rows of r (rows, R), each of about :data:`BASIS_ELEMENTS` basis values."""
    rows, step = r.shape[0], max(1, BASIS_ELEMENTS // max(1, r.shape[1] * n_bins))
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


class _SharedSlope:
    """``u φ(r)`` (rows, R, M) handed from the backward of :class:`_Contract` to the backward of the
    :class:`_Histogram` of the same r, which always runs after it (the histogram feeds the contraction's
    weights): one evaluation of the bases serves both backwards too. Held only between the two."""

    def __init__(self) -> None:
        self.u_phi: Tensor | None = None


class _Histogram(torch.autograd.Function):
    """``f_m(r) = Σ_p φ_m(r_p)`` (rows, M), and with ``with_slope`` also ``u φ(r)`` (rows, R, M, not
    differentiable) for the pullback to reuse: one evaluation of the bases serves both.

    Saves only r; its backward ``∂f/∂r · ḡ = Σ_m ḡ_m φ'_m(r)`` takes ``u φ`` from ``shared`` when the
    contraction's backward left it there, else is :class:`_Contract`, itself differentiable, so forces by
    autograd and their training gradients (a double backward) work too."""

    @staticmethod
    def forward(
        ctx: Any, r: Tensor, basis: _RadialBasis, with_slope: bool, shared: _SharedSlope | None
    ) -> tuple[Tensor, Tensor]:
        rows, m = r.shape[0], basis.n_bins
        hist = r.new_empty(rows, m)
        u_phi = r.new_empty(rows, r.shape[1], m) if with_slope else r.new_empty(0)
        for rs in _row_chunks(r, m):
            phi, _ = basis.phi_and_u_phi(r[rs], u_phi[rs] if with_slope else None)
            torch.sum(phi, 1, out=hist[rs])
        ctx.basis, ctx.shared = basis, shared
        ctx.save_for_backward(r)
        ctx.mark_non_differentiable(u_phi)
        ctx.set_materialize_grads(False)  # no (rows, R, M) zeros for the gradient u_phi never gets
        return hist, u_phi

    @staticmethod
    def backward(ctx: Any, grad_hist: Tensor, grad_u_phi: Tensor) -> tuple[Tensor | None, None, None, None]:
        (r,) = ctx.saved_tensors
        u_phi = None
        if ctx.shared is not None:
            u_phi, ctx.shared.u_phi, ctx.shared = ctx.shared.u_phi, None, None
        if not ctx.needs_input_grad[0] or grad_hist is None:
            return None, None, None, None
        if u_phi is not None and not torch.is_grad_enabled():
            return _contract(u_phi, grad_hist) * (-1.0 / ctx.basis.width), None, None, None
        return _Contract.apply(r, grad_hist, None, ctx.basis, None), None, None, None


class _Contract(torch.autograd.Function):
    """``c_p = Σ_m g_m φ'_m(r_p)`` (rows, R): the coefficients of the pullback ``J(x)ᵀ g``.

    ``u_phi``, when given, is ``u φ(r)`` already computed (:class:`_Histogram`); otherwise the bases are
    evaluated here, a row chunk at a time. Saves only r and g; the backward recomputes the bases
    (closed form: ``∂c_p/∂g_m = φ'_m(r_p)``, ``∂c_p/∂r_p = Σ_m g_m φ''_m(r_p)``), differentiable again when a
    graph is recorded, and leaves ``u φ`` in ``shared`` for the histogram's backward."""

    @staticmethod
    def forward(
        ctx: Any, r: Tensor, g: Tensor, u_phi: Tensor | None, basis: _RadialBasis, shared: _SharedSlope | None
    ) -> Tensor:
        g = g.expand(r.shape[0], -1)
        if u_phi is not None and u_phi.numel():
            out = _contract(u_phi, g)
        else:
            out = r.new_empty(r.shape)
            for rs in _row_chunks(r, basis.n_bins):
                out[rs] = _contract(basis.phi_and_u_phi(r[rs])[1], g[rs])
        ctx.basis, ctx.shared = basis, shared
        ctx.save_for_backward(r, g)
        return out.mul_(-1.0 / basis.width)

    @staticmethod
    def backward(ctx: Any, grad_c: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        r, g = ctx.saved_tensors
        basis, w = ctx.basis, ctx.basis.width
        want_r, want_g = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # the histogram's backward needs u φ only when r needs a gradient, and can reuse it only without a graph
        share = ctx.shared is not None and want_r and not torch.is_grad_enabled()
        kept = r.new_empty(*r.shape, basis.n_bins) if share else None
        grad_r, grad_g = [], []
        for rs in _row_chunks(r, basis.n_bins):
            u_phi, curvature = basis.u_phi_and_curvature(r[rs], kept[rs] if kept is not None else None)
            if want_g:
                grad_g.append(_sum_rows(grad_c[rs], u_phi))
            if want_r:
                grad_r.append(grad_c[rs] * _contract(curvature, g[rs]))
        if kept is not None:
            ctx.shared.u_phi = kept
        ctx.shared = None
        return (
            (torch.cat(grad_r) * (1.0 / w**2) if want_r else None),
            (torch.cat(grad_g) * (-1.0 / w) if want_g else None),
            None,
            None,
            None,
        )


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

    Built to scale with the number of particles: pair differences are one product with the pairs' incidence
    matrix E (``x_i − x_j = (E x)_{ij}``, pulled back by Eᵀ); the bases are evaluated a row chunk at a time
    with their argument clamped (:data:`EXP_FLOOR`); :meth:`with_pullback` evaluates them once for both the
    features and their pullback; and the custom autograd functions keep only the (rows, pairs) arguments
    for the backward, recomputing the bases there, instead of every (rows, pairs, bins) intermediate.
    """

    def __init__(self, n_particles: int, particle_dim: int, n_bins: int = 24, max_distance: float = 8.0) -> None:
        if n_particles < 2 or n_bins < 2:
            raise ValueError("pair-distance features need at least 2 particles and 2 bins")
        self.n, self.dim, self.n_bins = n_particles, particle_dim, n_bins
        rows, cols = torch.triu_indices(n_particles, n_particles, offset=1)
        self.n_pairs = rows.shape[0]
        incidence = torch.zeros(self.n_pairs, n_particles, dtype=torch.float64)
        incidence[torch.arange(self.n_pairs), rows] = 1.0
        incidence[torch.arange(self.n_pairs), cols] = -1.0
        self.incidence = incidence  # (P, n): row (i, j) has +1 at i and −1 at j
        self._incidence: dict[tuple[torch.dtype, torch.device], Tensor] = {}
        s_max = float(max_distance) ** 2
        self.centres = torch.linspace(0.0, s_max, n_bins, dtype=torch.float64)
        self.width = s_max / (n_bins - 1)
        self.basis = _RadialBasis(self.centres, self.width)

    def _incidence_like(self, x: Tensor) -> Tensor:
        key = (x.dtype, x.device)
        if key not in self._incidence:
            self._incidence[key] = self.incidence.to(dtype=x.dtype, device=x.device)
        return self._incidence[key]

    def _arguments(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Particles (rows, D, n) and pair differences (rows, D, P), coordinate-major so that
        ``x_i − x_j = (E x)_{ij}`` is one matrix product, and the bases' arguments: squared pair distances
        (rows, P) and squared norms (rows, n)."""
        parts = x.reshape(-1, self.n, self.dim).transpose(1, 2).contiguous()
        diff = (parts.view(-1, self.n) @ self._incidence_like(x).T).view(parts.shape[0], self.dim, self.n_pairs)
        return parts, diff, diff.square().sum(1), parts.square().sum(1)

    def _gather(self, x: Tensor, parts: Tensor, diff: Tensor, c_pair: Tensor, c_norm: Tensor) -> Tensor:
        """``∂/∂x_i = Σ_j 2 c_ij (x_i − x_j) + 2 c_i x_i`` from the coefficients c_ij (rows, P), c_i (rows, n)."""
        pair = ((2.0 * c_pair[:, None, :] * diff).view(-1, self.n_pairs) @ self._incidence_like(x)).view(parts.shape)
        out = pair + 2.0 * c_norm[:, None, :] * parts
        return out.transpose(1, 2).reshape(*x.shape[:-1], self.n * self.dim)

    def _weights(self, x: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        g = g.expand(*x.shape[:-1], -1).reshape(-1, 2 * self.n_bins)
        return g[:, : self.n_bins], g[:, self.n_bins :]

    def __call__(self, x: Tensor) -> Tensor:
        _, _, r_pair, r_norm = self._arguments(x)
        pair, _ = _Histogram.apply(r_pair, self.basis, False, None)
        norm, _ = _Histogram.apply(r_norm, self.basis, False, None)
        return torch.cat([pair, norm], -1).reshape(*x.shape[:-1], 2 * self.n_bins)

    def pullback(self, x: Tensor, g: Tensor) -> Tensor:
        """``J(x)ᵀ g`` for a gradient g (..., 2·n_bins) in the features."""
        parts, diff, r_pair, r_norm = self._arguments(x)
        g_pair, g_norm = self._weights(x, g)
        return self._gather(
            x,
            parts,
            diff,
            _Contract.apply(r_pair, g_pair, None, self.basis, None),
            _Contract.apply(r_norm, g_norm, None, self.basis, None),
        )

    def with_pullback(self, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """The features φ(x) and the map ``g ↦ J(x)ᵀ g``, sharing one evaluation of the bases."""
        parts, diff, r_pair, r_norm = self._arguments(x)
        shared = (_SharedSlope(), _SharedSlope())
        pair, pair_slope = _Histogram.apply(r_pair, self.basis, True, shared[0])
        norm, norm_slope = _Histogram.apply(r_norm, self.basis, True, shared[1])

        def pullback(g: Tensor) -> Tensor:
            g_pair, g_norm = self._weights(x, g)
            return self._gather(
                x,
                parts,
                diff,
                _Contract.apply(r_pair, g_pair, pair_slope, self.basis, shared[0]),
                _Contract.apply(r_norm, g_norm, norm_slope, self.basis, shared[1]),
            )

        return torch.cat([pair, norm], -1).reshape(*x.shape[:-1], 2 * self.n_bins), pullback


class Subspace(Protocol):
    """An orthonormal basis B of a subspace: ``from_subspace(z) = B z``, ``to_subspace(x) = Bᵀ x``
    (:class:`~.frames.CentreOfMassFrame` is one)."""

    def from_subspace(self, z: Tensor) -> Tensor: ...

    def to_subspace(self, x: Tensor) -> Tensor: ...


class FramedFeatures:
    """Features of the particles, φ(B z), as a function of z; pullback Bᵀ J_φ(Bz)ᵀ g."""

    def __init__(self, features: Any, frame: Subspace) -> None:
        self.features, self.frame = features, frame

    def __call__(self, z: Tensor) -> Tensor:
        return self.features(self.frame.from_subspace(z))

    def pullback(self, z: Tensor, g: Tensor) -> Tensor:
        x = self.frame.from_subspace(z)
        return self.frame.to_subspace(self.features.pullback(x, g))

    def with_pullback(self, z: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """φ(B z) and ``g ↦ Bᵀ J_φ(Bz)ᵀ g``, sharing work when the particles' features can."""
        x = self.frame.from_subspace(z)
        inner = getattr(self.features, "with_pullback", None)
        if inner is None:
            return self.features(x), lambda g: self.frame.to_subspace(self.features.pullback(x, g))
        feats, pullback = inner(x)
        return feats, lambda g: self.frame.to_subspace(pullback(g))
