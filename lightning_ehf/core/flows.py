"""The Equivariant Hamiltonian Flow: base density, Hamiltonian blocks, momentum encoder.

Sampling: ``s_0 ~ π``, ``s_T = Φ(s_0)`` with ``Φ = Φ_T ∘ … ∘ Φ_1`` (each block L leapfrog steps of
its own ``H_t = K_t(p) + U_t(q)``); return ``q_T``. Density: ``log p_θ(q, p) = log π(Φ⁻¹(q, p))``
(det J = 1). The marginal over q is bounded with the momentum encoder ``h_φ(p | q)``:

    ELBO(q)   = E_{p ~ h(·|q)} [ log π(Φ⁻¹(q, p)) − log h(p | q) ]
    IWAE_K(q) = E log (1/K) Σ_k π(Φ⁻¹(q, p_k)) / h(p_k | q)

(Rezende et al. 2019, arXiv:1909.13739; Toth et al. 2019, arXiv:1909.13789.)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .brackets import momentum_map_bracket
from .coordinates import DataMap
from .hamiltonians import SeparableHamiltonian, set_force_path
from .integrators import leapfrog
from .random import draw
from .reversible import reversible_leapfrog
from .symmetries import Symmetry

#: ``reversible="auto"`` turns the memory-flat backward on from this many leapfrog steps per block:
#: below it the stored states are small and storing them is faster (see docs/benchmarks.md).
REVERSIBLE_AUTO_STEPS = 32

#: on a CPU, graph-free density evaluation runs the flow on at most this many (point, momentum) rows at a
#: time: a slice's activations stay in the cache, which is faster than one pass streaming all rows through
#: memory (measured in docs/benchmarks.md). A GPU gets every row at once. Rows are independent, so the result
#: does not depend on it.
EVAL_ROWS = 1024

__all__ = [
    "GaussianBase",
    "HamiltonianBlock",
    "HamiltonianFlow",
    "EquivariantHamiltonianFlow",
    "ConstraintStats",
    "make_ehf",
    "REVERSIBLE_AUTO_STEPS",
    "EVAL_ROWS",
]


class GaussianBase(nn.Module):
    """``π(q, p) = N(q; 0, σ_q² I) N(p; 0, σ_p² I)``: invariant under every rotation group."""

    def __init__(self, dim: int, sigma_q: float = 1.0, sigma_p: float = 1.0) -> None:
        super().__init__()
        if sigma_q <= 0 or sigma_p <= 0:
            raise ValueError(f"base scales must be positive, got sigma_q={sigma_q}, sigma_p={sigma_p}")
        self.dim = dim
        self.sigma_q = float(sigma_q)
        self.sigma_p = float(sigma_p)

    def log_prob(self, q: Tensor, p: Tensor) -> Tensor:
        """``log π(q, p)``, (..., d), (..., d) → (...)."""
        d = self.dim
        const = -d * math.log(2 * math.pi) - d * math.log(self.sigma_q) - d * math.log(self.sigma_p)
        return const - 0.5 * (q.square().sum(-1) / self.sigma_q**2 + p.square().sum(-1) / self.sigma_p**2)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> tuple[Tensor, Tensor]:
        z = draw(torch.randn, 2, n, self.dim, generator=generator, device=torch.device(device or "cpu"), dtype=dtype)
        return self.sigma_q * z[0], self.sigma_p * z[1]

    def check_invariant(self, symmetry: Symmetry, atol: float = 1e-8) -> None:
        """Raise ``ValueError`` naming the first generator this base is not invariant under.

        An isotropic Gaussian is invariant exactly under linear actions with antisymmetric ``A``
        (rotations); a translation (``b ≠ 0``) or a scaling/shear is refused.
        """
        for name, a, b in zip(symmetry.generator_names, symmetry.matrices, symmetry.offsets):
            if torch.any(b.abs() > atol):
                raise ValueError(
                    f"the Gaussian base density is not invariant under generator '{name}' of symmetry "
                    f"'{symmetry.name}': it translates q (offset ≠ 0); use centre-of-mass-free coordinates instead"
                )
            if torch.any((a + a.transpose(0, 1)).abs() > atol):
                raise ValueError(
                    f"the Gaussian base density is not invariant under generator '{name}' of symmetry "
                    f"'{symmetry.name}': its matrix is not antisymmetric (not a rotation)"
                )


class HamiltonianBlock(nn.Module):
    """``Φ_t``: L leapfrog steps of ``H_t = K_t(p) + U_t(q)`` with step ``ε_t`` (positive: ``exp`` of a
    parameter when learnable, a buffer when fixed).

    ``reversible``: in training, recompute the visited states from the block's output in the backward
    pass instead of storing them (:mod:`.reversible`): memory flat in L, at a multiple of the step time
    (docs/benchmarks.md).
    """

    def __init__(
        self,
        hamiltonian: SeparableHamiltonian,
        n_steps: int,
        step_size: float,
        learn_step_size: bool = True,
        reversible: bool = False,
    ) -> None:
        super().__init__()
        if n_steps < 1 or step_size <= 0:
            raise ValueError(f"need n_steps ≥ 1 and step_size > 0, got {n_steps}, {step_size}")
        self.hamiltonian = hamiltonian
        self.n_steps = int(n_steps)
        self.reversible = bool(reversible)
        log_step = torch.tensor(math.log(step_size))
        if learn_step_size:
            self.log_step = nn.Parameter(log_step)
        else:
            self.register_buffer("log_step", log_step)

    @property
    def step_size(self) -> Tensor:
        return self.log_step.exp()

    def integrate(
        self, q: Tensor, p: Tensor, reverse: bool, create_graph: bool, stats: ConstraintStats | None = None
    ) -> tuple[Tensor, Tensor]:
        """L leapfrog steps (backwards in time when ``reverse``); residuals of the visited states go
        into ``stats``. ``create_graph``: differentiable with respect to the parameters."""
        if self.reversible and create_graph and (stats is None or stats.record is None):
            generators = (stats.matrices, stats.offsets) if stats is not None else None
            q, p, sum_sq = reversible_leapfrog(self, q, p, reverse, generators)
            if stats is not None:
                stats.add(sum_sq, 2 * self.n_steps)
            return q, p
        h = self.hamiltonian
        return leapfrog(
            q,
            p,
            grad_u=lambda x: h.potential.grad(x, create_graph),
            grad_k=lambda x: h.kinetic.grad(x, create_graph),
            step=self.step_size if create_graph else self.step_size.detach(),
            n_steps=self.n_steps,
            reverse=reverse,
            on_state=stats.on_state if stats is not None else None,
        )


class HamiltonianFlow(nn.Module):
    """``Φ = Φ_T ∘ … ∘ Φ_1``; ``forward`` is the sampling direction, ``inverse`` the density direction."""

    def __init__(self, blocks: list[HamiltonianBlock]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, q: Tensor, p: Tensor, stats: ConstraintStats | None = None) -> tuple[Tensor, Tensor]:
        graph = torch.is_grad_enabled()
        for block in self.blocks:
            q, p = block.integrate(q, p, reverse=False, create_graph=graph, stats=stats)
        return q, p

    def inverse(self, q: Tensor, p: Tensor, stats: ConstraintStats | None = None) -> tuple[Tensor, Tensor]:
        graph = torch.is_grad_enabled()
        for t in reversed(range(len(self.blocks))):
            q, p = self.blocks[t].integrate(q, p, reverse=True, create_graph=graph, stats=stats)
        return q, p


class ConstraintStats:
    """Accumulates ``{g_k, H_t}(s)²`` over the states the flow visits (all blocks, all sub-steps).

    States are collected as the leapfrog reports them and their residuals computed in one batched
    call when the statistic is read: a few tensor operations per flow instead of per state."""

    def __init__(self, matrices: Tensor, offsets: Tensor) -> None:
        self.matrices, self.offsets = matrices, offsets
        self.sum_sq: Tensor | None = None
        self.count = 0
        self.record: list[Tensor] | None = None
        self._pending: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []

    def on_state(self, q: Tensor, p: Tensor, grad_u: Tensor, grad_k: Tensor) -> None:
        """The leapfrog's state callback: the state and the forces it already computed there."""
        self._pending.append((q, p, grad_u, grad_k))

    def _flush(self) -> None:
        if not self._pending:
            return
        q, p, grad_u, grad_k = (torch.stack(parts) for parts in zip(*self._pending))  # (S, ..., d)
        r = momentum_map_bracket(self.matrices, self.offsets, q, p, grad_u, grad_k)  # (S, ..., k)
        # mean over the batch, summed over the S states; k = 0 for a group without generators
        self.add(r.square().flatten(1, -2).mean(1).sum(0), len(self._pending))
        if self.record is not None:
            self.record.extend(r.unbind(0))
        self._pending = []

    def add(self, sum_sq: Tensor, count: int) -> None:
        """Add ``Σ mean_batch {g_k, H}²`` over ``count`` states, (k,)."""
        self.sum_sq = sum_sq if self.sum_sq is None else self.sum_sq + sum_sq
        self.count += count

    def residuals(self) -> list[Tensor]:
        """``{g_k, H}`` at every recorded state, in visiting order (needs ``record`` set before)."""
        self._flush()
        assert self.record is not None, "set stats.record = [] before integrating"
        return self.record

    def mean_square(self) -> Tensor:
        """``C_k = E_s[{g_k, H}(s)²]``, (k,)."""
        self._flush()
        if self.sum_sq is None:
            return self.matrices.new_zeros(self.matrices.shape[0])
        return self.sum_sq / self.count


class EquivariantHamiltonianFlow(nn.Module):
    """The EHF model (docs/design.md §2): Gaussian base, Hamiltonian flow, momentum encoder, symmetry.

    Public methods validate shapes, then delegate. All tensors follow the model's dtype/device. A
    :class:`~lightning_ehf.core.density.DensityModel` whose likelihood is bounded (ELBO, IWAE), not exact.

    ``invariant``: the Hamiltonians are functions of the group's invariants, so every bracket ``{g_k, H_t}``
    is zero by construction; :meth:`elbo_and_constraints` then does not compute them (it returns zeros).
    """

    exact_likelihood = False

    def __init__(
        self,
        base: GaussianBase,
        flow: HamiltonianFlow,
        encoder: nn.Module,
        symmetry: Symmetry,
        invariant: bool = False,
        data_map: DataMap | None = None,
    ) -> None:
        super().__init__()
        self.invariant = bool(invariant)
        if symmetry.dim != base.dim:
            raise ValueError(f"symmetry acts on dimension {symmetry.dim} but the model has dimension {base.dim}")
        data_map = data_map if data_map is not None else DataMap(base.dim)
        if data_map.dim != base.dim:
            raise ValueError(f"the data map leads to dimension {data_map.dim} but the model has dimension {base.dim}")
        base.check_invariant(symmetry)
        self.base = base
        self.flow = flow
        self.encoder = encoder
        self.symmetry = symmetry
        self.register_buffer("generators", symmetry.matrices.clone().to(torch.get_default_dtype()), persistent=False)
        self.register_buffer(
            "generator_offsets", symmetry.offsets.clone().to(torch.get_default_dtype()), persistent=False
        )
        # data coordinates → the flow's: centre-of-mass frame and standardisation (saved in checkpoints)
        self.data_map = data_map

    #: where checkpoints written before the data map held the standardisation kept its buffers
    _OLD_STANDARDISATION = {
        "data_loc": "loc",
        "data_scale": "scale",
        "data_scale_inv": "scale_inv",
        "data_log_det": "log_det",
    }

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        for old, new in self._OLD_STANDARDISATION.items():
            if prefix + old in state_dict:
                state_dict[f"{prefix}data_map.{new}"] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def dim(self) -> int:
        """The flow's coordinates (the data's, less the centre of mass with a frame)."""
        return self.base.dim

    @property
    def data_dim(self) -> int:
        """The data's coordinates, which :meth:`log_joint`, the bounds and :meth:`sample` take and return."""
        return self.data_map.data_dim

    @property
    def generator_names(self) -> list[str]:
        return self.symmetry.generator_names

    def _check(self, x: Tensor, name: str = "q") -> None:
        dim = self.data_dim if name == "q" else self.dim
        if x.ndim < 1 or x.shape[-1] != dim:
            raise ValueError(f"{name} must have shape (..., {dim}), got {tuple(x.shape)}")

    def _stats(self) -> ConstraintStats:
        return ConstraintStats(self.generators, self.generator_offsets)

    # -- data coordinates ----------------------------------------------------------------------

    def standardise(self, mean: Tensor, cov: Tensor, atol: float = 1e-6) -> EquivariantHamiltonianFlow:
        """Let the flow model ``q̃ = W⁻¹ (z − μ)`` with ``W = cov^{1/2}`` (symmetric square root), z the
        data in the frame's coordinates, so that the base ``N(0, σ_q² I)`` starts near the data's scale in
        every direction: ``log p(q) = log p̃(q̃) − log |det W|`` (:meth:`.DataMap.standardise`).

        ``mean`` and ``cov`` must commute with the group (:func:`~.standardise.invariant_moments` makes
        them so): ``A_k μ = 0`` and ``A_k Σ = Σ A_k``, otherwise the symmetry would not survive the map
        and ``ValueError`` is raised."""
        self.data_map.standardise(mean, cov, self.symmetry.matrices, atol)
        return self

    def to_standard(self, q: Tensor) -> Tensor:
        """``q̃ = W⁻¹ (Bᵀ q − μ)``: data coordinates → the coordinates the flow models (:class:`.DataMap`)."""
        return self.data_map.to_model(q)

    def from_standard(self, q: Tensor) -> Tensor:
        """``q = B (W q̃ + μ)``: the flow's coordinates → data coordinates."""
        return self.data_map.from_model(q)

    # -- joint density -------------------------------------------------------------------------

    def log_joint(self, q: Tensor, p: Tensor, stats: ConstraintStats | None = None) -> Tensor:
        """``log p_θ(q, p) = log π(Φ⁻¹(q̃, p)) − log |det W|`` of data coordinates q (no Jacobian for the
        centre-of-mass frame, an isometry); residuals go into ``stats`` if given."""
        self._check(q)
        self._check(p, "p")
        return self._log_joint_standard(self.to_standard(q), p, stats) - self.data_map.log_det

    def _log_joint_standard(self, q: Tensor, p: Tensor, stats: ConstraintStats | None = None) -> Tensor:
        """``log π(Φ⁻¹(q̃, p))`` of standardised coordinates."""
        q0, p0 = self.flow.inverse(q, p, stats)
        return self.base.log_prob(q0, p0)

    def bracket_residuals(self, q: Tensor, p: Tensor) -> Tensor:
        """``{g_k, H_t}(s)`` at every state the inverse flow visits from ``(q, p)``: (S, ..., k)."""
        self._check(q)
        self._check(p, "p")
        stats = self._stats()
        stats.record = []
        self._log_joint_standard(self.to_standard(q), p, stats)
        return torch.stack(stats.residuals())

    # -- marginal bounds -----------------------------------------------------------------------

    def elbo_and_constraints(
        self, q: Tensor, n: int = 1, constraints: bool = True, iwae: bool = False, estimator: str = "reparam"
    ) -> tuple[Tensor, Tensor]:
        """A lower bound on ``log p_θ(q)`` per data point q (B, data coordinates) from ``n`` reparameterised momentum samples,
        and ``C_k`` (k,): the mean squared bracket over all visited states (for the Lagrangian; zeros when
        ``constraints`` is off, or the model is invariant by construction). The bound is the ELBO, the mean of the log-weights
        ``log p_θ(q, p_i) − log h(p_i | q)``, or with ``iwae`` their log-mean-exp, the IWAE bound
        (Burda et al. 2016), which is tighter (≥ the ELBO of the same samples) and equals it at ``n = 1``.

        ``estimator`` chooses the encoder's gradient; the value of the bound and the flow's gradient are
        the same either way.

        * ``reparam``: the plain reparameterisation gradient.
        * ``dreg``: ``log h`` is evaluated with the encoder's parameters held fixed, so the encoder learns
          only through the path ``φ → p → log w``; the score term dropped has zero mean. With ``iwae`` the
          gradient reaching each sample ``p_i`` is also multiplied by its normalised weight ``w̃_i``, giving
          ``Σ_i w̃_i² ∂log w_i/∂p_i ∂p_i/∂φ``: the doubly reparameterised gradient (Tucker et al. 2019,
          arXiv:1810.04152), unbiased, whose signal-to-noise ratio does not decay as ``n`` grows. With the
          ELBO it is the sticking-the-landing gradient (Roeder et al. 2017), zero once ``h`` is the exact
          posterior. The constraint's pull on the encoder (through the states ``p`` leads to) is weighted
          by ``w̃_i`` too.
        """
        self._check(q)
        q = self.to_standard(q)
        posterior = self.encoder(q)
        p = posterior.rsample((n,))  # (n, B, d)
        stats = self._stats() if constraints and not self.invariant else None
        if estimator == "dreg":
            log_h = _log_prob_held_fixed(self.encoder, q, p)
        elif estimator == "reparam":
            log_h = posterior.log_prob(p)
        else:
            raise ValueError(f"estimator must be 'reparam' or 'dreg', not {estimator!r}")
        log_w = self._log_joint_standard(q.expand_as(p), p, stats) - log_h - self.data_map.log_det
        if estimator == "dreg" and iwae and p.requires_grad:
            weights = torch.softmax(log_w.detach(), 0).unsqueeze(-1)  # w̃_i, (n, B, 1)
            p.register_hook(lambda grad: grad * weights)
        bound = torch.logsumexp(log_w, 0) - math.log(n) if iwae else log_w.mean(0)
        return bound, stats.mean_square() if stats is not None else self.generators.new_zeros(self.generators.shape[0])

    def elbo(self, q: Tensor, n: int = 1) -> Tensor:
        """``E_{h}[log p_θ(q, p) − log h(p | q)]`` per data point, Monte Carlo with ``n`` samples."""
        return self.elbo_and_constraints(q, n, constraints=False)[0]

    def iwae(self, q: Tensor, k: int = 256, chunk: int = 64) -> Tensor:
        """Importance-weighted bound ``log (1/K) Σ p_θ(q, p_k) / h(p_k | q)`` per data point q (B, data coordinates).

        Momenta are drawn in chunks of ``chunk`` so large K fits in memory.
        """
        self._check(q)
        if k < 1 or chunk < 1:
            raise ValueError(f"need k ≥ 1 and chunk ≥ 1, got k={k}, chunk={chunk}")
        q = self.to_standard(q)
        posterior = self.encoder(q)
        graph_free = not torch.is_grad_enabled()
        log_joint = self._density() if graph_free else self._log_joint_standard
        log_w = []
        done = 0
        while done < k:
            m = min(chunk, k - done)
            p = posterior.sample((m,))
            q_m = q.expand_as(p)
            if graph_free and p.device.type == "cpu" and p.shape[:-1].numel() > EVAL_ROWS:
                # rows are independent: the same momenta, evaluated a cache-sized slice at a time
                rows_q, rows_p = q_m.reshape(-1, q.shape[-1]), p.reshape(-1, p.shape[-1])
                joint = torch.cat([log_joint(a, b) for a, b in zip(rows_q.split(EVAL_ROWS), rows_p.split(EVAL_ROWS))])
                joint = joint.reshape(p.shape[:-1])
            else:
                joint = log_joint(q_m, p)
            log_w.append(joint - posterior.log_prob(p))
            done += m
        return torch.logsumexp(torch.cat(log_w, 0), 0) - math.log(k) - self.data_map.log_det

    def compile_density(self, enabled: bool = True) -> EquivariantHamiltonianFlow:
        """Evaluate densities without autograd through ``torch.compile`` (when enabled): faster per call
        once compiled, but compiling costs seconds to minutes per new input shape, so it pays off only for
        large evaluations (docs/benchmarks.md). Falls back to eager evaluation if compilation fails."""
        self._compiled_log_joint = torch.compile(self._log_joint_standard, dynamic=True) if enabled else None
        return self

    def _density(self) -> Callable[[Tensor, Tensor], Tensor]:
        compiled = getattr(self, "_compiled_log_joint", None)
        if compiled is None:
            return self._log_joint_standard

        def guarded(q: Tensor, p: Tensor) -> Tensor:
            try:
                return compiled(q, p)
            except Exception as err:  # compilation can fail on a platform without a compiler: stay eager
                warnings.warn(
                    f"torch.compile of the density failed ({type(err).__name__}: {err}); evaluating eagerly",
                    stacklevel=2,
                )
                self._compiled_log_joint = None
                return self._log_joint_standard(q, p)

        return guarded

    # -- sampling ------------------------------------------------------------------------------

    def sample_joint(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Exact samples ``(q, p) = Φ(s_0)``, ``s_0 ~ π``, q in data coordinates (centre of mass at the origin
        with a frame)."""
        ref = self.generators
        q0, p0 = self.base.sample(n, generator, dtype=ref.dtype, device=ref.device)
        q, p = self.flow(q0, p0)
        return self.from_standard(q), p

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples of q, (n, data_dim)."""
        return self.sample_joint(n, generator)[0]


class _EncoderLogProb(nn.Module):
    """``(q, p) ↦ log h(p | q)`` as one call, so that ``functional_call`` can swap the encoder's parameters
    for the whole evaluation (some encoders, zuko's flows among them, read their parameters lazily)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, q: Tensor, p: Tensor) -> Tensor:
        return self.encoder(q).log_prob(p)


def _log_prob_held_fixed(encoder: nn.Module, q: Tensor, p: Tensor) -> Tensor:
    """``log h(p | q)`` with gradients to ``p`` (and q) but none to the encoder's parameters."""
    held = {f"encoder.{name}": t.detach() for name, t in encoder.named_parameters()}
    return torch.func.functional_call(_EncoderLogProb(encoder), held, (q, p), strict=False)


def make_ehf(
    symmetry: Symmetry,
    blocks: int = 4,
    leapfrog_steps: int = 4,
    step_size: float = 0.2,
    learn_step_size: bool = True,
    hidden: int = 64,
    depth: int = 2,
    activation: str = "softplus",
    kinetic: str = "mlp",
    invariant: bool = False,
    encoder: str = "gaussian",
    sigma_q: float = 1.0,
    sigma_p: float = 1.0,
    forces: str = "analytic",
    reversible: bool | str = "auto",
    data_map: DataMap | None = None,
    kinetic_features: Callable[[Tensor], Tensor] | None = None,
) -> EquivariantHamiltonianFlow:
    """Assemble an EHF from plain arguments (``build`` maps the config onto these).

    ``kinetic``: ``quadratic`` (``½|p|²/m``, learnable mass) or ``mlp`` (``½|p|² + MLP(p)``).
    ``invariant``: U and K are MLPs of the symmetry's invariant features, so ``{g_k, H} ≡ 0``.
    ``encoder``: ``gaussian`` (diagonal), ``full`` (full covariance), ``flow`` (a conditional coupling
    flow) or ``equivariant`` (polar frame per rotation plane).
    ``forces``: ``analytic`` (closed form) or ``autograd`` (the reference path).
    ``reversible``: memory-flat backward in every block (True/False), or ``auto``: when
    ``leapfrog_steps ≥ REVERSIBLE_AUTO_STEPS``.
    ``data_map``: from the data's coordinates to the flow's (:class:`.DataMap`; ``symmetry`` acts on the
    flow's), the identity when None.
    ``kinetic_features``: invariant features of the momenta for an invariant ``mlp`` kinetic energy (a histogram
    of their own scale), the symmetry's invariants when None.
    """
    from .encoders import (
        ENCODERS,
        EquivariantMomentumEncoder,
        FlowMomentumEncoder,
        FullGaussianMomentumEncoder,
        GaussianMomentumEncoder,
    )
    from .hamiltonians import MLPEnergy, QuadraticKinetic

    d = symmetry.dim
    if kinetic not in ("quadratic", "mlp"):
        raise ValueError(f"unknown kinetic energy '{kinetic}'; choose quadratic or mlp")
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder '{encoder}'; choose from {', '.join(ENCODERS)}")
    features = None
    if invariant:
        if symmetry.invariants is None:
            raise ValueError(
                f"symmetry '{symmetry.name}' has no invariant features; invariant Hamiltonians need a rotation group"
            )
        features = symmetry.invariants
    if kinetic_features is not None and not (invariant and kinetic == "mlp"):
        raise ValueError("kinetic_features are for an invariant mlp kinetic energy (invariant=True, kinetic='mlp')")
    if reversible not in (True, False, "auto"):
        raise ValueError(f"reversible must be True, False or 'auto', got {reversible!r}")
    use_reversible = leapfrog_steps >= REVERSIBLE_AUTO_STEPS if reversible == "auto" else bool(reversible)
    base = GaussianBase(d, sigma_q, sigma_p)
    flow_blocks = []
    for _ in range(blocks):
        potential = MLPEnergy(d, hidden, depth, activation, features=features)
        if kinetic == "quadratic":
            kin = QuadraticKinetic(d)
        else:
            kin = MLPEnergy(d, hidden, depth, activation, features=kinetic_features or features, quadratic_part=True)
        flow_blocks.append(
            HamiltonianBlock(
                SeparableHamiltonian(potential, kin),
                leapfrog_steps,
                step_size,
                learn_step_size,
                reversible=use_reversible,
            )
        )
    if encoder == "equivariant":
        planes = symmetry.rotation_blocks
        if not planes or any(len(b) != 2 for b in planes) or symmetry.invariants is None:
            raise ValueError(
                f"the equivariant encoder needs rotations of disjoint 2-D planes; symmetry '{symmetry.name}' is not"
            )
        enc: nn.Module = EquivariantMomentumEncoder(d, planes, symmetry.invariants, hidden, depth, activation, sigma_p)
    elif encoder == "full":
        enc = FullGaussianMomentumEncoder(d, hidden, depth, activation, sigma_p)
    elif encoder == "flow":
        enc = FlowMomentumEncoder(d, hidden, depth, sigma_p=sigma_p)
    else:
        enc = GaussianMomentumEncoder(d, hidden, depth, activation, sigma_p)
    model = EquivariantHamiltonianFlow(
        base, HamiltonianFlow(flow_blocks), enc, symmetry, invariant=invariant, data_map=data_map
    )
    return set_force_path(model, forces)
