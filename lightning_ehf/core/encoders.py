"""Momentum encoders ``h_φ(p | q)``: variational posteriors over the auxiliary momentum.

They return ``torch.distributions`` objects with ``rsample`` (reparametrised) and ``log_prob``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal

from .hamiltonians import make_mlp

__all__ = [
    "GaussianMomentumEncoder",
    "FullGaussianMomentumEncoder",
    "FlowMomentumEncoder",
    "EquivariantMomentumEncoder",
    "FramedGaussian",
    "ENCODERS",
]

#: The ``encoder`` choices of :func:`~lightning_ehf.core.flows.make_ehf`.
ENCODERS = ("gaussian", "full", "flow", "equivariant")


class GaussianMomentumEncoder(nn.Module):
    """``h(p | q) = N(p; μ(q), diag σ(q)²)`` with μ and log σ from one MLP of q.

    Initialised at ``N(0, σ_p² I)``: the exact posterior of an identity flow.
    """

    def __init__(
        self, dim: int, hidden: int = 64, depth: int = 2, activation: str = "softplus", sigma_p: float = 1.0
    ) -> None:
        super().__init__()
        self.dim = dim
        self.net = make_mlp(dim, 2 * dim, hidden, depth, activation)
        nn.init.zeros_(self.net[-1].weight)
        with torch.no_grad():
            self.net[-1].bias.zero_()
            self.net[-1].bias[dim:] = math.log(sigma_p)

    def forward(self, q: Tensor) -> Distribution:
        mean, log_scale = self.net(q).chunk(2, dim=-1)
        return Independent(Normal(mean, log_scale.clamp(-12.0, 6.0).exp()), 1)


class FullGaussianMomentumEncoder(nn.Module):
    """``h(p | q) = N(p; μ(q), L(q) L(q)ᵀ)`` with a full lower-triangular Cholesky factor ``L`` (positive
    diagonal ``exp``) from one MLP of q: ``d + d(d+1)/2`` outputs.

    A diagonal Gaussian in the data's coordinates cannot fit a posterior whose axes are not the
    coordinate axes, as when the data lie near a plane that no coordinate plane contains (several
    particles rotated together). Initialised at ``N(0, σ_p² I)``, like the diagonal encoder.
    """

    def __init__(
        self, dim: int, hidden: int = 64, depth: int = 2, activation: str = "softplus", sigma_p: float = 1.0
    ) -> None:
        super().__init__()
        self.dim = dim
        rows, cols = torch.tril_indices(dim, dim, offset=-1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.net = make_mlp(dim, 2 * dim + rows.numel(), hidden, depth, activation)
        nn.init.zeros_(self.net[-1].weight)
        with torch.no_grad():
            self.net[-1].bias.zero_()
            self.net[-1].bias[dim : 2 * dim] = math.log(sigma_p)

    def forward(self, q: Tensor) -> Distribution:
        d = self.dim
        out = self.net(q)
        mean, log_diag, lower = out[..., :d], out[..., d : 2 * d], out[..., 2 * d :]
        tril = out.new_zeros(*out.shape[:-1], d, d)
        tril[..., self.rows, self.cols] = lower
        tril = tril + torch.diag_embed(log_diag.clamp(-12.0, 6.0).exp())
        return MultivariateNormal(mean, scale_tril=tril, validate_args=False)


class FlowMomentumEncoder(nn.Module):
    """``h(p | q)``: a conditional normalising flow on p with context q (zuko's masked affine transforms
    in coupling form, two passes each, so sampling and density both cost one network call per transform)
    over the base ``N(0, σ_p² I)``.

    Each transform is ``p_B ← p_B · s(p_A, q) + t(p_A, q)`` for a split (A, B) of the coordinates
    (Dinh et al. 2017), conditioned on q; the splits differ between transforms. The first transform's
    A-half depends on q only, so the family contains the diagonal Gaussian encoder, and it also fits
    correlated and skewed posteriors. The last layer of every conditioner starts at zero: the encoder
    starts at ``N(0, σ_p² I)``, like the Gaussian ones.
    """

    def __init__(self, dim: int, hidden: int = 64, depth: int = 2, transforms: int = 4, sigma_p: float = 1.0) -> None:
        super().__init__()
        from zuko.distributions import DiagNormal
        from zuko.flows import Flow, MaskedAutoregressiveTransform, UnconditionalDistribution

        self.dim = dim
        layers = []
        for t in range(transforms):
            # alternate the two halves of a fixed, seeded shuffle of the coordinates, reshuffled every pair
            order = torch.randperm(dim, generator=torch.Generator().manual_seed(t // 2))
            if t % 2:
                order = dim - 1 - order
            layer = MaskedAutoregressiveTransform(
                dim, context=dim, passes=2, order=order, hidden_features=[hidden] * depth
            )
            last = layer.hyper[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            layers.append(layer)
        base = UnconditionalDistribution(DiagNormal, torch.zeros(dim), torch.full((dim,), float(sigma_p)), buffer=True)
        self.flow = Flow(layers, base)

    def forward(self, q: Tensor) -> Distribution:
        return self.flow(q)


class FramedGaussian(Distribution):
    """``p = μ + F (σ ⊙ z)``, z ~ N(0, I), with an orthonormal frame F (..., d, d): a Gaussian whose
    covariance ``F diag(σ²) Fᵀ`` is aligned with F. ``log|det| = Σ log σ`` since F is orthogonal."""

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, loc: Tensor, scale: Tensor, frame: Tensor) -> None:
        self.loc, self.scale, self.frame = loc, scale, frame
        super().__init__(batch_shape=loc.shape[:-1], event_shape=loc.shape[-1:], validate_args=False)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        shape = torch.Size(sample_shape) + self.loc.shape
        z = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + torch.einsum("...ij,...j->...i", self.frame, self.scale * z)

    def log_prob(self, value: Tensor) -> Tensor:
        z = torch.einsum("...ji,...j->...i", self.frame, value - self.loc) / self.scale
        return -0.5 * z.square().sum(-1) - self.scale.log().sum(-1) - 0.5 * self.loc.shape[-1] * math.log(2 * math.pi)


class EquivariantMomentumEncoder(nn.Module):
    """An encoder with ``h(M p | M q) = h(p | q)`` for rotations M of disjoint 2-D planes.

    In each rotated plane the Gaussian lives in the polar frame of q, ``(q̂, J q̂)``: its mean
    ``a q̂ + b J q̂`` and radial/tangential scales are MLP outputs of the invariants of q. Coordinates
    outside the planes get an ordinary diagonal Gaussian (means/scales from the same invariants).
    Rotating q rotates the frame, so the density is equivariant. The radial/tangential frame also
    fits the ray-shaped posteriors that Hamiltonian flows produce on rings far better than an
    axis-aligned diagonal Gaussian.
    """

    def __init__(
        self,
        dim: int,
        planes: list[list[int]],
        invariants,
        hidden: int = 64,
        depth: int = 2,
        activation: str = "softplus",
        sigma_p: float = 1.0,
    ) -> None:
        super().__init__()
        if not planes or any(len(pl) != 2 for pl in planes):
            raise ValueError("the equivariant encoder needs rotation planes of 2 coordinates each")
        self.dim = dim
        self.planes = [list(pl) for pl in planes]
        rotated = [i for pl in self.planes for i in pl]
        self.free = [i for i in range(dim) if i not in rotated]
        self.invariants = invariants
        n_features = invariants(torch.zeros(1, dim)).shape[-1]
        n_out = 4 * len(self.planes) + 2 * len(self.free)
        self.net = make_mlp(n_features, n_out, hidden, depth, activation)
        nn.init.zeros_(self.net[-1].weight)
        with torch.no_grad():
            bias = self.net[-1].bias
            bias.zero_()
            n_pl = len(self.planes)
            bias[2 * n_pl : 4 * n_pl] = math.log(sigma_p)
            bias[4 * n_pl + len(self.free) :] = math.log(sigma_p)
        # permutation that puts the coordinates in [plane0, plane1, ..., free] order
        order = rotated + self.free
        self.register_buffer("order", torch.tensor(order), persistent=False)
        self.register_buffer("inverse_order", torch.argsort(torch.tensor(order)), persistent=False)

    def forward(self, q: Tensor) -> Distribution:
        n_pl, n_free = len(self.planes), len(self.free)
        out = self.net(self.invariants(q))
        plane_mean = out[..., : 2 * n_pl].reshape(*q.shape[:-1], n_pl, 2)
        plane_log_scale = out[..., 2 * n_pl : 4 * n_pl].reshape(*q.shape[:-1], n_pl, 2)
        free_mean = out[..., 4 * n_pl : 4 * n_pl + n_free]
        free_log_scale = out[..., 4 * n_pl + n_free :]

        qp = q[..., self.order[: 2 * n_pl]].reshape(*q.shape[:-1], n_pl, 2)
        radius = qp.square().sum(-1, keepdim=True).clamp_min(1e-24).sqrt()
        unit = qp / radius
        perp = torch.stack([-unit[..., 1], unit[..., 0]], -1)
        frame_pl = torch.stack([unit, perp], -1)  # (..., n_pl, 2, 2): columns q̂, Jq̂

        d = self.dim
        frame = q.new_zeros(*q.shape[:-1], d, d)
        for i in range(n_pl):
            frame[..., 2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = frame_pl[..., i, :, :]
        for j in range(n_free):
            frame[..., 2 * n_pl + j, 2 * n_pl + j] = 1.0
        mean_local = torch.cat([plane_mean.flatten(-2), free_mean], -1)
        scale = torch.cat([plane_log_scale.flatten(-2), free_log_scale], -1).clamp(-12.0, 6.0).exp()
        # mean in the ordered coordinates, then back to the original order
        loc_ordered = torch.einsum("...ij,...j->...i", frame, mean_local)
        perm = torch.eye(d, dtype=q.dtype, device=q.device)[self.order]  # rows: ordered ← original
        loc = loc_ordered[..., self.inverse_order]
        frame_orig = torch.einsum("ji,...jk->...ik", perm, frame)
        return FramedGaussian(loc, scale, frame_orig)
