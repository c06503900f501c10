"""The map from the data's coordinates to the coordinates a density model works in, owned by the model.

Two maps compose, each optional:

* the centre-of-mass frame of a translation-invariant particle system (:class:`~.frames.CentreOfMassFrame`):
  ``z = Bᵀ x``, (n·D) → ((n−1)·D). B is an isometry of the centre-of-mass-free subspace, so densities
  on it carry no Jacobian term;
* the standardisation ``q̃ = W⁻¹ (z − μ)`` (:mod:`.standardise`), with ``log |det ∂q̃/∂z| = −log |det W|``.

A model with density ``p̃`` in its own coordinates then has, in the data's coordinates,

    log p(x) = log p̃(W⁻¹ (Bᵀ x − μ)) − log |det W|,

and its samples are mapped back by ``x = B (W q̃ + μ)`` (centre of mass at the origin). Pure torch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .frames import CentreOfMassFrame
from .invariants import FramedFeatures
from .symmetries import Invariants, Symmetry

__all__ = ["DataMap"]


class DataMap(nn.Module):
    """``x ↦ q̃ = W⁻¹ (Bᵀ x − μ)`` (module docstring): an optional centre-of-mass frame, then the
    standardisation (the identity until :meth:`standardise`).

    The standardisation's ``μ``, ``W``, ``W⁻¹`` and ``log |det W|`` are buffers saved with the model; the
    frame is fixed by the particles' shape, so it is not saved (the config rebuilds it)."""

    _STANDARDISATION = ("loc", "scale", "scale_inv", "log_det")

    def __init__(self, data_dim: int, frame: CentreOfMassFrame | None = None) -> None:
        super().__init__()
        if frame is not None and frame.full_dim != data_dim:
            raise ValueError(f"the centre-of-mass frame has {frame.full_dim} coordinates, the data {data_dim}")
        self.frame = frame
        self.data_dim = int(data_dim)
        d = frame.dim if frame is not None else self.data_dim
        self.register_buffer("loc", torch.zeros(d))
        self.register_buffer("scale", torch.eye(d))
        self.register_buffer("scale_inv", torch.eye(d))
        self.register_buffer("log_det", torch.zeros(()))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # checkpoints written before standardisation existed hold no such buffers: they were the identity
        for name in self._STANDARDISATION:
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def dim(self) -> int:
        """The model's coordinates: ``(n−1)·D`` with a centre-of-mass frame, else the data's."""
        return int(self.loc.shape[0])

    def extra_repr(self) -> str:
        return f"data_dim={self.data_dim}, dim={self.dim}, frame={self.frame!r}"

    def describe(self) -> str:
        """One line on the model's coordinates (empty when they are the data's own)."""
        f = self.frame
        if f is None:
            return ""
        return (
            f"{f.n_particles} particles × {f.particle_dim} in centre-of-mass-free coordinates "
            f"(d={f.full_dim} → {f.dim})"
        )

    def sample_note(self) -> str:
        """What samples mapped back to the data's coordinates look like (empty without a frame)."""
        f = self.frame
        return "" if f is None else f" ({f.n_particles} particles × {f.particle_dim}, centre of mass at the origin)"

    def restrict(self, symmetry: Symmetry) -> Symmetry:
        """The data's symmetry acting on the frame's coordinates (:meth:`.CentreOfMassFrame.restrict`;
        the symmetry itself without a frame). The standardisation commutes with the group, so it keeps it."""
        return self.frame.restrict(symmetry) if self.frame is not None else symmetry

    def restrict_features(self, features: Invariants) -> Invariants:
        """Invariant features of the data's particles as features of the frame's coordinates
        (:class:`~.invariants.FramedFeatures`; the features themselves without a frame), as :meth:`restrict`
        gives the symmetry's own."""
        return FramedFeatures(features, self.frame) if self.frame is not None else features

    def to_frame(self, x: Tensor) -> Tensor:
        """``z = Bᵀ x`` (x itself without a frame): the coordinates the standardisation's moments are of."""
        return self.frame.to_subspace(x) if self.frame is not None else x

    def from_frame(self, z: Tensor) -> Tensor:
        """``x = B z``, the configuration with its centre of mass at the origin (z itself without a frame)."""
        return self.frame.from_subspace(z) if self.frame is not None else z

    def to_model(self, x: Tensor) -> Tensor:
        """``q̃ = W⁻¹ (Bᵀ x − μ)``: data coordinates (..., data_dim) → model coordinates (..., dim)."""
        return (self.to_frame(x) - self.loc) @ self.scale_inv

    def from_model(self, q: Tensor) -> Tensor:
        """``x = B (W q̃ + μ)``: model coordinates (..., dim) → data coordinates (..., data_dim)."""
        return self.from_frame(q @ self.scale + self.loc)

    def standardise(self, mean: Tensor, cov: Tensor, generators: Tensor, atol: float = 1e-6) -> None:
        """Set ``μ = mean`` and ``W = cov^{1/2}`` (symmetric square root), both in the frame's coordinates,
        so that ``log p(x) = log p̃(q̃) − log |det W|``.

        ``mean`` and ``cov`` must commute with the group of generators A_k (k, d, d) in those coordinates
        (:func:`~.standardise.invariant_moments` makes them so): ``A_k μ = 0`` and ``A_k Σ = Σ A_k``,
        otherwise the symmetry would not survive the map and ``ValueError`` is raised."""
        d = self.dim
        mean, cov = mean.to(torch.float64), cov.to(torch.float64)
        if mean.shape != (d,) or cov.shape != (d, d):
            raise ValueError(
                f"standardise needs a mean ({d},) and a covariance ({d}, {d}), got {tuple(mean.shape)}, "
                f"{tuple(cov.shape)}"
            )
        evals, evecs = torch.linalg.eigh(0.5 * (cov + cov.T))
        if evals.min() <= 1e-12 * max(1.0, evals.max().item()):
            raise ValueError("standardise: the covariance is singular (a direction with no variance)")
        a = generators.to(torch.float64)
        if len(a):
            if (a @ mean).abs().max() > atol * max(1.0, mean.abs().max().item()):
                raise ValueError("standardise: the mean is moved by the group (A_k μ ≠ 0); project it first")
            if (a @ cov - cov @ a).abs().max() > atol * max(1.0, cov.abs().max().item()):
                raise ValueError("standardise: the covariance does not commute with the group's generators")
        w = evecs @ torch.diag(evals.sqrt()) @ evecs.T
        w_inv = evecs @ torch.diag(evals.rsqrt()) @ evecs.T
        ref = self.scale
        self.loc.copy_(mean.to(ref))
        self.scale.copy_(w.to(ref))
        self.scale_inv.copy_(w_inv.to(ref))
        self.log_det.copy_((0.5 * evals.log().sum()).to(ref))
