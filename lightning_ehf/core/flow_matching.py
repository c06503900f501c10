"""Equivariant flow matching: a continuous normalising flow whose velocity field commutes with the group,
trained without simulation by regressing the velocity of straight paths between paired base and data points.

**Flow.** ``dx/dt = v(x, t)`` for t ∈ [0, 1] carries the base ``p_0 = N(0, σ² I)`` (t = 0) to the model
``p_1`` (t = 1). Sampling integrates x_0 ~ p_0 forwards. The likelihood follows the instantaneous
change of variables (Chen et al. 2018):

    log p_1(x_1) = log p_0(x_0) − ∫_0^1 ∇·v(x_t, t) dt,

solved backwards from x_1 as one ODE in (x, ∫ ∇·v) with dopri5 (``torchdiffeq``). The divergence is exact
(one backward pass per coordinate) up to :data:`EXACT_DIVERGENCE_MAX_DIM` coordinates; above that it is
Hutchinson's estimate ``εᵀ (∂v/∂x) ε`` (Rademacher ε, fixed along each solve), and the model says so.

**Training** (conditional flow matching with minibatch optimal transport; Lipman et al. 2023, Tong et al.
2024): pair a batch of base points with a batch of data by the assignment that minimises the summed squared
distance, draw t ~ U(0, 1) and regress the straight path's velocity,

    L = E ‖v(x_t, t) − (x_1 − x_0)‖²,   x_t = (1 − t) x_0 + t x_1.

**Equivariance** (Köhler et al. 2020; Satorras et al. 2021; Klein, Krämer, Noé 2023). If v(g·x, t) = g·v(x, t)
for every group element g and the base is invariant, the flow commutes with g and p_1 is invariant. The
pairing then compares orbits rather than points: each (base, data) pair is aligned over the group
(relabellings by the Hungarian algorithm, rotations by Kabsch's SVD; for rotations of single vectors the
closed form) before the costs enter the assignment, and the aligned base point replaces the drawn one (a
group element applied to a sample of an invariant base is again a sample of it).

Vector fields here:

* :class:`MLPVelocity`: no symmetry, an MLP of (x, t).
* :class:`BlockRotationVelocity`: rotations of disjoint coordinate blocks (so2, so3 on one vector,
  ``rotations`` of planes): each block's vector times an MLP of the group invariants and t, plus, in a
  plane, the vector turned by 90° times another; unrotated coordinates get the MLP's output as it is.
* :class:`ParticleVelocity`: n particles in R^D rotated alike: EGNN layers (Satorras et al. 2021):
  messages from MLPs of squared distances and t, coordinate updates along differences; identical
  particles share one embedding (relabelling-equivariant), labelled ones get their own; with a
  centre-of-mass frame the field acts in the centre-of-mass-free coordinates (translation invariant).

Pure torch; ``scipy.optimize.linear_sum_assignment`` and ``torchdiffeq`` are imported on first use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .coordinates import DataMap
from .exact import ExactLikelihood
from .hamiltonians import make_mlp
from .random import draw
from .symmetries import Symmetry

__all__ = [
    "EXACT_DIVERGENCE_MAX_DIM",
    "MLPVelocity",
    "BlockRotationVelocity",
    "ParticleVelocity",
    "EuclideanAligner",
    "BlockRotationAligner",
    "ParticleAligner",
    "kabsch",
    "ot_pair",
    "flow_matching_loss",
    "divergence",
    "ode_log_prob",
    "ode_sample",
    "EquivariantFlowMatching",
    "make_efm",
]

#: Largest dimension with the exact divergence; above it, Hutchinson's estimate.
EXACT_DIVERGENCE_MAX_DIM = 64

Field = Callable[[Tensor, Tensor], Tensor]


def _time_column(t: Tensor, x: Tensor) -> Tensor:
    """t as a (..., 1) column matching x: a scalar (the ODE's time) or one time per row."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[:-1]).unsqueeze(-1) if t.ndim == 0 else t.reshape(*x.shape[:-1], 1)


# -- vector fields -------------------------------------------------------------------------------


class MLPVelocity(nn.Module):
    """``v(x, t) = MLP([x, t])``: no symmetry."""

    def __init__(self, dim: int, hidden: int = 64, depth: int = 2, activation: str = "softplus") -> None:
        super().__init__()
        self.dim = dim
        self.net = make_mlp(dim + 1, dim, hidden, depth, activation)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.net(torch.cat([x, _time_column(t, x)], -1))


class BlockRotationVelocity(nn.Module):
    """Rotations of disjoint coordinate blocks b (each by its own SO(|b|)), free coordinates untouched:

        v_b(x, t) = a_b(f, t) x_b + [|b| = 2] c_b(f, t) J x_b,     v_free(x, t) = w(f, t),

    with ``f(x)`` the group invariants (squared block norms and the free coordinates; the symmetry's own
    features) and a, c, w the outputs of one MLP. ``J`` turns a plane by 90°; it commutes with SO(2), so
    both terms are equivariant (for |b| ≥ 3 only multiples of x_b are)."""

    def __init__(
        self,
        dim: int,
        blocks: Sequence[Sequence[int]],
        invariants: Callable[[Tensor], Tensor],
        hidden: int = 64,
        depth: int = 2,
        activation: str = "softplus",
    ) -> None:
        super().__init__()
        self.dim = dim
        self.blocks = [list(b) for b in blocks]
        rotated = {i for b in self.blocks for i in b}
        self.free = [i for i in range(dim) if i not in rotated]
        self.invariants = invariants
        n_features = int(invariants(torch.zeros(1, dim, dtype=torch.float64)).shape[-1])
        self.planes = [k for k, b in enumerate(self.blocks) if len(b) == 2]
        n_out = len(self.blocks) + len(self.planes) + len(self.free)
        self.net = make_mlp(n_features + 1, n_out, hidden, depth, activation)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        out = self.net(torch.cat([self.invariants(x), _time_column(t, x)], -1))
        parts: dict[int, Tensor] = {}
        n_blocks = len(self.blocks)
        for k, b in enumerate(self.blocks):
            xb = x[..., b]
            vb = out[..., k : k + 1] * xb
            if k in self.planes:
                turned = torch.stack([-xb[..., 1], xb[..., 0]], -1)  # J x_b
                vb = vb + out[..., n_blocks + self.planes.index(k), None] * turned
            for j, i in enumerate(b):
                parts[i] = vb[..., j]
        offset = n_blocks + len(self.planes)
        for j, i in enumerate(self.free):
            parts[i] = out[..., offset + j]
        return torch.stack([parts[i] for i in range(self.dim)], -1)


class _EGNNLayer(nn.Module):
    """One EGNN layer on (h, x): messages m_ij = φ_e(h_i, h_j, |x_i − x_j|², t), whose first linear map is
    split into per-particle parts (the same map, n times fewer products), weights of the coordinate update
    a linear read-out of m_ij, node update h_i + φ_h(h_i, Σ_j m_ij)."""

    def __init__(self, hidden: int, n_dir: int, activation: str, update_nodes: bool = True) -> None:
        super().__init__()
        self.source = nn.Linear(hidden, hidden)
        self.dest = nn.Linear(hidden, hidden, bias=False)
        self.scalars = nn.Linear(2, hidden, bias=False)  # |x_i − x_j|² and t
        self.message = nn.Linear(hidden, hidden)
        self.act = make_mlp(1, 1, 1, 1, activation)[1]
        self.coord = nn.Linear(hidden, n_dir)
        with torch.no_grad():  # start near the identity map: small coordinate updates (as in EGNN)
            self.coord.weight.mul_(1e-2)
            self.coord.bias.zero_()
        # the last layer's node features feed nothing when no origin term reads them: no parameters for them
        self.node = make_mlp(2 * hidden, hidden, hidden, 1, activation) if update_nodes else None

    def forward(self, h: Tensor, d2_t: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """h: (b, n, H), d2_t: (b, n, n, 2), mask: (1, n, n, 1) → new h, coordinate weights (b, n, n, n_dir)."""
        pre = self.source(h)[:, :, None] + self.dest(h)[:, None] + self.scalars(d2_t)
        m = self.act(self.message(self.act(pre))) * mask
        h = h + self.node(torch.cat([h, m.sum(2)], -1)) if self.node is not None else h
        return h, self.coord(m) * mask


class ParticleVelocity(nn.Module):
    """EGNN velocity field of n particles in R^D (Satorras et al. 2021), rotation equivariant.

    Node features start from an embedding of (label, |x_i|², t), where the label is one shared vector for
    identical particles and a one-hot of the particle index otherwise. Each of ``layers`` layers computes

        m_ij = φ_e(h_i, h_j, |x_i − x_j|², t),
        x_i ← x_i + 1/(n−1) Σ_{j≠i} [w(m_ij) u_ij + (D = 2) w_J(m_ij) J u_ij],   u_ij = (x_i − x_j)/(|x_i − x_j| + 1),
        h_i ← h_i + φ_h(h_i, Σ_j m_ij),

    and ``v = x^L − x^0``. Differences are rotated like x, and squared distances are invariant, so v is
    rotation equivariant; with identical particles it is also relabelling equivariant. In 2-D the J terms
    let the field (and the density) tell a configuration from its mirror image, since the group is SO(2),
    not O(2). Without a centre-of-mass frame the density need not be translation invariant: a term
    ``ψ(h_i) x_i + (D = 2) ψ_J(h_i) J x_i`` ties the field to the origin. With a frame (``basis`` B, the
    orthonormal centre-of-mass-free coordinates z = Bᵀ x), the field takes z, acts on x = B z and returns
    Bᵀ v, which also removes any common drift (translation invariance)."""

    def __init__(
        self,
        n_particles: int,
        particle_dim: int,
        hidden: int = 64,
        layers: int = 3,
        activation: str = "softplus",
        identical: bool = False,
        basis: Tensor | None = None,
    ) -> None:
        super().__init__()
        if n_particles < 2 or particle_dim < 2:
            raise ValueError(
                f"an EGNN field needs at least 2 particles of dimension ≥ 2, got {n_particles}×{particle_dim}"
            )
        self.n, self.d_particle = n_particles, particle_dim
        self.identical = identical
        self.chiral = particle_dim == 2
        self.dim = n_particles * particle_dim if basis is None else basis.shape[1]
        # fixed by the config: rebuilt with the model, not stored in checkpoints
        self.register_buffer("basis", None if basis is None else basis.clone().to(torch.float32), persistent=False)
        self.register_buffer("off_diagonal", 1.0 - torch.eye(n_particles), persistent=False)
        n_dir = 2 if self.chiral else 1
        self.embed = nn.Linear((1 if identical else n_particles) + 2, hidden)
        self.layers = nn.ModuleList(
            [_EGNNLayer(hidden, n_dir, activation, update_nodes=i < layers - 1 or basis is None) for i in range(layers)]
        )
        self.origin = make_mlp(hidden, n_dir, hidden, 1, activation) if basis is None else None

    @staticmethod
    def _turn(u: Tensor) -> Tensor:
        return torch.stack([-u[..., 1], u[..., 0]], -1)

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        lead = z.shape[:-1]
        x = z @ self.basis.to(z).T if self.basis is not None else z
        x = x.reshape(-1, self.n, self.d_particle)
        b = x.shape[0]
        tc = _time_column(t, z).reshape(b, 1, 1)
        labels = (
            x.new_ones(b, self.n, 1)
            if self.identical
            else torch.eye(self.n, dtype=x.dtype, device=x.device).expand(b, self.n, self.n)
        )
        h = self.embed(torch.cat([labels, x.square().sum(-1, keepdim=True), tc.expand(b, self.n, 1)], -1))
        mask = self.off_diagonal.to(x)[None, :, :, None]
        t_edge = tc[..., None].expand(b, self.n, self.n, 1)
        pos = x
        for layer in self.layers:
            diff = pos[:, :, None] - pos[:, None, :]  # (b, i, j, D): x_i − x_j
            d2 = diff.square().sum(-1, keepdim=True)
            h, w = layer(h, torch.cat([d2, t_edge], -1), mask)
            u = diff / (torch.sqrt(d2 + 1e-12) + 1.0)
            step = w[..., :1] * u
            if self.chiral:
                step = step + w[..., 1:2] * self._turn(u)
            pos = pos + step.sum(2) / (self.n - 1)
        v = pos - x
        if self.origin is not None:
            s = self.origin(h)
            v = v + s[..., :1] * x
            if self.chiral:
                v = v + s[..., 1:2] * self._turn(x)
        v = v.reshape(b, self.n * self.d_particle)
        if self.basis is not None:
            v = v @ self.basis.to(v)
        return v.reshape(*lead, self.dim)


# -- pairing: minibatch optimal transport over group orbits ----------------------------------------


def kabsch(y: Tensor, x: Tensor) -> Tensor:
    """The proper rotations R (det +1) that minimise ``Σ_k |x_k − R y_k|²`` for point sets y, x:
    (..., n, D) → (..., D, D) (Kabsch 1976: SVD of ``Σ_k x_k y_kᵀ``, the sign of the last singular
    direction fixed so that det R = 1)."""
    cov = x.transpose(-1, -2) @ y  # Σ_k x_k y_kᵀ
    u, _, vh = torch.linalg.svd(cov)
    sign = torch.sign(torch.linalg.det(u @ vh))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    fix = torch.ones(*cov.shape[:-1], dtype=cov.dtype, device=cov.device)
    fix[..., -1] = sign
    return (u * fix[..., None, :]) @ vh


class EuclideanAligner:
    """No group: the cost of a pair is ``|x_1 − x_0|²`` and nothing is moved."""

    def __call__(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        """``cost[i, j]`` of data i with base j and ``aligned[i, j]`` (base j moved onto data i's orbit)."""
        return torch.cdist(x1, x0).square(), x0[None].expand(x1.shape[0], -1, -1)


class BlockRotationAligner:
    """Independent rotations of coordinate blocks: rotating base point j's block b onto the direction of
    data point i's leaves ``(|x_1b| − |x_0b|)²``, the smallest distance over the block's SO(|b|) (|b| ≥ 2)."""

    def __init__(self, dim: int, blocks: Sequence[Sequence[int]]) -> None:
        self.blocks = [list(b) for b in blocks]
        rotated = {i for b in self.blocks for i in b}
        self.free = [i for i in range(dim) if i not in rotated]

    def __call__(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        n1, n0 = x1.shape[0], x0.shape[0]
        aligned = x0[None].expand(n1, n0, -1).clone()
        cost = x0.new_zeros(n1, n0)
        for b in self.blocks:
            r0 = x0[:, b].norm(dim=-1)  # (n0,)
            r1 = x1[:, b].norm(dim=-1)  # (n1,)
            direction = x1[:, b] / r1.clamp_min(1e-12)[:, None]
            aligned[:, :, b] = r0[None, :, None] * direction[:, None, :]
            cost += (r1[:, None] - r0[None, :]).square()
        if self.free:
            cost += torch.cdist(x1[:, self.free], x0[:, self.free]).square()
        return cost, aligned


class ParticleAligner:
    """n particles in R^D: each (data, base) pair is aligned over rotations (Kabsch) and, for identical
    particles, relabellings (Hungarian algorithm), alternating ``rounds`` times (Klein, Krämer, Noé 2023).
    The first relabelling matches the particles' norms (distances to the centroid or the origin, which no
    rotation changes), later ones their positions after the rotation found so far. A local search: it
    finds the exact alignment of a rotated, relabelled copy with distinct norms, and a good one otherwise. Works in particle coordinates x;
    with a frame (``basis`` B) the inputs and outputs are centre-of-mass-free coordinates z = Bᵀ x."""

    def __init__(
        self, n_particles: int, particle_dim: int, identical: bool, basis: Tensor | None = None, rounds: int = 2
    ) -> None:
        self.n, self.d, self.identical, self.basis = n_particles, particle_dim, identical, basis
        self.rounds = rounds if identical else 1

    def _relabel(self, y: Tensor, x: Tensor, radial: bool = False) -> Tensor:
        """For every pair, y's particles permuted onto x's by the Hungarian algorithm on their squared
        distances, or (``radial``) on the squared differences of their norms, which no rotation changes: (P, n, D)."""
        from scipy.optimize import linear_sum_assignment

        if radial:
            cost_t = (x.norm(dim=-1)[..., :, None] - y.norm(dim=-1)[..., None, :]).square()
        else:
            cost_t = torch.cdist(x, y).square()
        cost = cost_t.detach().cpu().double().numpy()  # (P, n_x, n_y)
        order = torch.empty(cost.shape[0], self.n, dtype=torch.long)
        for k in range(cost.shape[0]):
            _, cols = linear_sum_assignment(cost[k])
            order[k] = torch.from_numpy(cols)
        return torch.gather(y, 1, order.to(y.device)[..., None].expand_as(y))

    def __call__(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        n1, n0 = x1.shape[0], x0.shape[0]
        basis = self.basis.to(x0) if self.basis is not None else None
        to_x = (lambda z: z @ basis.T) if basis is not None else (lambda z: z)
        p0 = to_x(x0).reshape(1, n0, self.n, self.d).expand(n1, -1, -1, -1).reshape(-1, self.n, self.d)
        p1 = to_x(x1).reshape(n1, 1, self.n, self.d).expand(-1, n0, -1, -1).reshape(-1, self.n, self.d)
        y = p0
        for k in range(self.rounds):
            if self.identical:  # first by norms (rotation invariant), then by positions once rotated
                y = self._relabel(y, p1, radial=k == 0)
            y = y @ kabsch(y, p1).transpose(-1, -2)
        cost = (p1 - y).square().sum((-1, -2)).reshape(n1, n0)
        y = y.reshape(n1, n0, self.n * self.d)
        aligned = y @ basis if basis is not None else y
        return cost, aligned


Aligner = Callable[[Tensor, Tensor], "tuple[Tensor, Tensor]"]


@torch.no_grad()
def ot_pair(x0: Tensor, x1: Tensor, aligner: Aligner | None = None) -> Tensor:
    """Base points re-ordered (and aligned over the group) so that row i pairs with data row i: the
    minibatch optimal-transport plan with uniform weights, i.e. the assignment that minimises the summed
    aligned squared distances (``scipy.optimize.linear_sum_assignment``)."""
    from scipy.optimize import linear_sum_assignment

    if x0.shape != x1.shape:
        raise ValueError(
            f"a minibatch OT pairing needs batches of equal shape, got {tuple(x0.shape)} and {tuple(x1.shape)}"
        )
    cost, aligned = (aligner or EuclideanAligner())(x0, x1)
    rows, cols = linear_sum_assignment(cost.detach().cpu().double().numpy())
    rows_t = torch.as_tensor(rows, device=x0.device)
    cols_t = torch.as_tensor(cols, device=x0.device)
    out = torch.empty_like(x0)
    out[rows_t] = aligned[rows_t, cols_t]
    return out


def flow_matching_loss(field: Field, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
    """``mean_i ‖v(x_t, t) − (x_1 − x_0)‖²`` on the straight paths x_t = (1 − t) x_0 + t x_1, t: (n,)."""
    tc = t.reshape(-1, 1).to(x0)
    xt = (1 - tc) * x0 + tc * x1
    return (field(xt, t.to(x0)) - (x1 - x0)).square().sum(-1).mean()


# -- the ODE: likelihood and sampling -------------------------------------------------------------


def divergence(v: Tensor, x: Tensor, noise: Tensor | None = None) -> Tensor:
    """``∇·v`` per row, (n,): exact with one backward pass per coordinate, or Hutchinson's
    ``εᵀ (∂v/∂x) ε`` with the given noise ε (n, d). Rows must not depend on each other."""
    if noise is not None:
        (g,) = torch.autograd.grad(v, x, noise)
        return (g * noise).sum(-1)
    d = x.shape[-1]
    # the d backward passes (one per unit cotangent e_i, giving row i of the Jacobian) run as one batched pass
    basis = torch.eye(d, dtype=x.dtype, device=x.device)[:, None, :].expand(d, *x.shape)
    (rows,) = torch.autograd.grad(v, x, basis, is_grads_batched=True)  # (d, n, d): ∂v_i/∂x
    return torch.diagonal(rows, dim1=0, dim2=2).sum(-1)


class _Counted:
    """Wraps a right-hand side and counts its evaluations."""

    def __init__(self, fn: Callable[[Tensor, object], object]) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, t: Tensor, state: object) -> object:
        self.calls += 1
        return self.fn(t, state)


def ode_log_prob(
    field: Field,
    x1: Tensor,
    base_log_prob: Callable[[Tensor], Tensor],
    atol: float = 1e-5,
    rtol: float = 1e-5,
    noise: Tensor | None = None,
) -> tuple[Tensor, int]:
    """``log p_1(x_1)`` by solving ``d(x, ℓ)/dt = (v, ∇·v)`` from t = 1 to 0 with dopri5:
    ``log p_1(x_1) = log p_0(x_0) + ℓ(0)``, ``ℓ(1) = 0``. Graph-free (nothing is kept for a backward pass).
    ``noise``: Hutchinson's ε (exact divergence when None). Returns the log-density (n,) and the number of
    function evaluations."""
    from torchdiffeq import odeint

    def rhs(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            x = state[0].detach().requires_grad_(True)
            v = field(x, t)
            div = divergence(v, x, noise)
        return v.detach(), div.detach()

    counted = _Counted(rhs)
    times = torch.tensor([1.0, 0.0], dtype=x1.dtype, device=x1.device)
    with torch.no_grad():
        xs, ls = odeint(counted, (x1.detach(), x1.new_zeros(x1.shape[0])), times, atol=atol, rtol=rtol, method="dopri5")
        return base_log_prob(xs[-1]) + ls[-1], counted.calls


def ode_sample(field: Field, x0: Tensor, atol: float = 1e-5, rtol: float = 1e-5) -> tuple[Tensor, int]:
    """x_1 from x_0 by solving dx/dt = v(x, t) from t = 0 to 1 with dopri5; and the number of evaluations."""
    from torchdiffeq import odeint

    counted = _Counted(lambda t, x: field(x, t))
    times = torch.tensor([0.0, 1.0], dtype=x0.dtype, device=x0.device)
    with torch.no_grad():
        return odeint(counted, x0, times, atol=atol, rtol=rtol, method="dopri5")[-1], counted.calls


# -- the model -----------------------------------------------------------------------------------


class EquivariantFlowMatching(ExactLikelihood, nn.Module):
    """A continuous flow from ``N(0, σ² I)`` trained by flow matching, behind the interface the training
    module and the command line use for every model (``elbo_and_constraints``, ``elbo``, ``iwae``,
    ``sample``, ``symmetry``, ``generator_names``). Its likelihood is the ODE's (no momenta, no bound), so
    the "ELBO" and "IWAE" are both ``log p(x)``; it has no Hamiltonians, hence no constraints.

    ``last_nfe``: function evaluations of the last likelihood solve; ``exact_divergence``: whether the
    likelihood uses the exact divergence (else Hutchinson's estimate: an unbiased, noisy log-density)."""

    exact_likelihood = True

    def __init__(
        self,
        symmetry: Symmetry,
        field: nn.Module,
        aligner: Aligner | None = None,
        sigma: float = 1.0,
        atol: float = 1e-5,
        rtol: float = 1e-5,
        data_map: DataMap | None = None,
    ) -> None:
        super().__init__()
        if sigma <= 0 or atol <= 0 or rtol <= 0:
            raise ValueError(f"sigma, atol and rtol must be positive, got {sigma}, {atol}, {rtol}")
        self.symmetry = symmetry  # in the model's coordinates
        self.dim = symmetry.dim
        self.data_map = data_map if data_map is not None else DataMap(symmetry.dim)
        self.generator_names: list[str] = []
        self.field = field
        self.aligner = aligner
        self.sigma, self.atol, self.rtol = float(sigma), float(atol), float(rtol)
        self.exact_divergence = self.dim <= EXACT_DIVERGENCE_MAX_DIM
        self.last_nfe = 0

    def base_log_prob(self, x: Tensor) -> Tensor:
        d = self.dim
        return -0.5 * d * math.log(2 * math.pi * self.sigma**2) - 0.5 * x.square().sum(-1) / self.sigma**2

    def flow_matching_loss(self, x1: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The training loss on a data batch (data coordinates): base draws paired by minibatch OT over the
        group orbits, in the model's coordinates."""
        x1 = self.data_map.to_model(x1)
        x0 = self.sigma * draw(torch.randn, *x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        x0 = ot_pair(x0, x1.detach(), self.aligner)
        t = draw(torch.rand, x1.shape[0], generator=generator, device=x1.device, dtype=x1.dtype)
        return flow_matching_loss(self.field, x0, x1, t)

    def model_log_prob(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.dim)
        noise = None
        if not self.exact_divergence:
            noise = torch.randint(0, 2, rows.shape, device=rows.device).to(rows.dtype) * 2 - 1
        logp, self.last_nfe = ode_log_prob(self.field, rows, self.base_log_prob, self.atol, self.rtol, noise)
        return logp.reshape(lead)

    def model_sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        ref = next(iter(self.parameters()))
        x0 = self.sigma * draw(torch.randn, n, self.dim, generator=generator, device=ref.device, dtype=ref.dtype)
        x1, _ = ode_sample(self.field, x0, self.atol, self.rtol)
        return x1


def make_efm(
    symmetry: Symmetry,
    *,
    particles: tuple[int, int] | None = None,
    identical: bool = False,
    basis: Tensor | None = None,
    hidden: int = 64,
    depth: int = 2,
    layers: int = 3,
    activation: str = "softplus",
    sigma: float = 1.0,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    data_map: DataMap | None = None,
) -> EquivariantFlowMatching:
    """The flow-matching model for a symmetry: an EGNN field for ``particles`` = (n, D) rotated alike
    (``identical``: relabelling too; ``basis``: the centre-of-mass frame's B, the model then lives in its
    coordinates), a block-rotation field for rotations of disjoint blocks, a plain MLP without generators.
    ``data_map``: from the data's coordinates to the model's (those ``symmetry`` acts on). Raises
    ``ValueError`` for groups none of them is equivariant under."""
    if particles is not None:
        n, d = particles
        field: nn.Module = ParticleVelocity(n, d, hidden, layers, activation, identical, basis)
        aligner: Aligner = ParticleAligner(n, d, identical, basis)
    elif symmetry.num_generators == 0:
        field, aligner = MLPVelocity(symmetry.dim, hidden, depth, activation), EuclideanAligner()
    elif symmetry.rotation_blocks and symmetry.invariants is not None:
        field = BlockRotationVelocity(
            symmetry.dim, symmetry.rotation_blocks, symmetry.invariants, hidden, depth, activation
        )
        aligner = BlockRotationAligner(symmetry.dim, symmetry.rotation_blocks)
    else:
        raise ValueError(
            f"no equivariant vector field for symmetry '{symmetry.name}': efm supports none, "
            "rotations of disjoint coordinate blocks (so2, so3, rotations) and particles rotated alike"
        )
    if field.dim != symmetry.dim:
        raise ValueError(f"the vector field acts on dimension {field.dim}, the symmetry on {symmetry.dim}")
    return EquivariantFlowMatching(symmetry, field, aligner, sigma, atol, rtol, data_map)
