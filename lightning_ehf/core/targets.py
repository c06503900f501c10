"""Analytic target densities with exact sampling and exact, normalised log densities.

Every target offers ``sample``, ``log_prob``, a Monte-Carlo ``entropy``, the continuous symmetry it is
invariant under (``symmetry``, a :class:`~.symmetries.Symmetry`) and, for particles, what they are
(``n_particles``, ``particle_dim``, ``identical``, ``translation_invariant``). Pure torch + numpy.

Targets (``make_target(name)``):

* ``ring2d``      radius ~ N(2, 0.25²) truncated at r > 0, uniform angle; so2.
* ``rings2d``     equal mixture of such rings with radii 1, 2, 3 and radial std 0.15; so2.
* ``shell3d``     radius ~ N(2, 0.25²) truncated at r > 0, uniform direction in R³; so3.
* ``particles2d`` 3 particles in 2D: randomly rotated equilateral triangle + N(0, 0.2² I₆); particles.
* ``gmm8``        8 Gaussians (σ = 0.3) on a circle of radius 2; only discrete C₈ symmetry: none.
* ``two_rings4d`` q ∈ R⁴: (q₀, q₁) a ring of radius ~ N(2, 0.25²), independently (q₂, q₃) a ring of radius
                  ~ N(1, 0.2²) (both truncated at r > 0), uniform angles; rotations of the planes (0,1), (2,3).
* ``dw4``         4 particles in 2D with the double-well pair energy Σ_{i<j} 0.9(d_ij − 4)⁴ − 4(d_ij − 4)², kT = 1,
                  on the centre-of-mass-free subspace; particles + translations. Not analytic: a pool target
                  (``finite_pool``) whose train/val/test samples are fixed pools from a seeded MCMC and whose
                  log Z is an importance-sampling estimate with a standard error, both read from
                  ``lightning_ehf/assets/dw4.npz`` (written by ``scripts/make_dw4.py``).
* ``lj13``        13 particles in 3D with the Lennard-Jones energy Σ_{i<j} (1/d_ij)¹² − 2 (1/d_ij)⁶ and a harmonic
                  confinement ½ Σ_i |x_i − x̄|² to their centre of mass, kT = 1; particles + translations. A pool
                  target like dw4, from ``lightning_ehf/assets/lj13.npz`` (written by ``scripts/make_lj13.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import symmetries
from .random import draw
from .symmetries import Symmetry

__all__ = [
    "Target",
    "RadialMixture",
    "PlaneProduct",
    "Particles2D",
    "GMM8",
    "ParticlePool",
    "DoubleWellParticles",
    "LennardJonesCluster",
    "double_well_pair_energy",
    "lennard_jones_energy",
    "TARGETS",
    "make_target",
]

_LOG_2PI = math.log(2.0 * math.pi)
_ASSETS = Path(__file__).resolve().parent.parent / "assets"


def _resolve_device(device: Any) -> torch.device:
    return torch.device(device) if device is not None else torch.get_default_device()


def _log_std_normal_cdf(a: float) -> float:
    """log Φ(a) for a Python float (accurate for large positive a)."""
    tail = 0.5 * math.erfc(abs(a) / math.sqrt(2.0))  # Φ(−|a|)
    return math.log1p(-tail) if a > 0 else math.log(tail)


class Target:
    """Base class: an analytic density on R^dim with exact sampling.

    Subclasses set ``name``, ``dim`` and implement ``sample``, ``log_prob`` and ``symmetry`` (the group the
    density is invariant under; none by default). A target of particles sets ``n_particles`` and
    ``particle_dim`` (coordinates stored particle by particle), ``identical`` when relabelling the particles
    leaves the density unchanged, and ``translation_invariant`` when moving all of them alike does (its
    density lives on the centre-of-mass-free subspace). A target whose samples are a fixed, finite pool per
    split (``finite_pool = True``) also overrides ``sample_split``.
    """

    name: str
    dim: int
    finite_pool: bool = False
    n_particles: int | None = None
    particle_dim: int | None = None
    identical: bool = False
    translation_invariant: bool = False

    @property
    def symmetry(self) -> Symmetry:
        """The continuous group the density is invariant under, acting on its coordinates."""
        return symmetries.no_symmetry(self.dim)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: Any = None,
    ) -> Tensor:
        """Draw ``n`` exact samples, shape ``(n, dim)``; all randomness comes from ``generator``."""
        raise NotImplementedError

    def sample_split(
        self,
        split: str,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: Any = None,
    ) -> Tensor:
        """``n`` samples for the data split ``split`` (``"train"``, ``"val"`` or ``"test"``), shape ``(n, dim)``.

        An analytic target draws fresh exact samples for every split, so this is ``sample(n, …)`` and the
        split name is ignored; a pool target (``finite_pool``) returns ``n`` rows of that split's pool.
        """
        return self.sample(n, generator, dtype, device)

    def log_prob(self, x: Tensor) -> Tensor:
        """Normalised log density of ``x`` (shape ``(..., dim)``) -> shape ``(...)``; differentiable."""
        raise NotImplementedError

    def entropy(self, n: int = 100_000, generator: torch.Generator | None = None) -> tuple[float, float]:
        """Monte-Carlo differential entropy H = −E_p[log p(x)] (float64) and its standard error."""
        lp = self.log_prob(self.sample(n, generator=generator, dtype=torch.float64, device="cpu"))
        return float(-lp.mean()), float(lp.std() / math.sqrt(n))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


class RadialMixture(Target):
    """Isotropic density in R^d (d = 2 or 3) whose radius is a mixture of truncated normals.

    p(x) = Σ_k w_k N_trunc(r; μ_k, s²) / (S_{d−1} r^{d−1}),  r = |x|,
    N_trunc(r; μ, s²) = N(r; μ, s²) / Φ(μ/s) for r > 0,  S₁ = 2π, S₂ = 4π (area of the unit sphere).
    The direction is uniform on the sphere S^{d−1}. p is integrable but infinite at x = 0 (log_prob = +inf).
    """

    def __init__(
        self, name: str, dim: int, radii: Sequence[float], std: float, weights: Sequence[float] | None = None
    ) -> None:
        if dim not in (2, 3):
            raise ValueError(f"RadialMixture supports dim 2 or 3, got {dim}")
        self.name, self.dim = name, dim
        self.radii = [float(r) for r in radii]
        self.std = float(std)
        w = np.full(len(self.radii), 1.0 / len(self.radii)) if weights is None else np.asarray(weights, float)
        self.weights = (w / w.sum()).tolist()
        # log w_k − log s − ½ log 2π − log Φ(μ_k/s): per-component constants of log N_trunc.
        self._log_consts = [
            math.log(wk) - math.log(self.std) - 0.5 * _LOG_2PI - _log_std_normal_cdf(mu / self.std)
            for wk, mu in zip(self.weights, self.radii)
        ]
        self._log_sphere = math.log(2.0 * math.pi) if dim == 2 else math.log(4.0 * math.pi)

    @property
    def symmetry(self) -> Symmetry:
        """SO(d), d = 2 or 3: the density depends on |x| alone."""
        return symmetries.son(self.dim, list(range(self.dim)))

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: Any = None,
    ) -> Tensor:
        device = _resolve_device(device)
        cum = torch.tensor(np.cumsum(self.weights)[:-1].tolist(), dtype=torch.float64, device=device)
        k = torch.searchsorted(
            cum, draw(torch.rand, n, generator=generator, device=device, dtype=torch.float64), right=True
        )
        mu = torch.tensor(self.radii, dtype=dtype, device=device)[k]
        r = mu + self.std * draw(torch.randn, n, generator=generator, device=device, dtype=dtype)
        while bool((bad := r <= 0).any()):  # exact truncation by rejection (rare: μ/s ≥ 6.7 here)
            r[bad] = mu[bad] + self.std * draw(
                torch.randn, int(bad.sum()), generator=generator, device=device, dtype=dtype
            )
        u = draw(torch.randn, n, self.dim, generator=generator, device=device, dtype=dtype)
        return r[:, None] * u / torch.linalg.vector_norm(u, dim=-1, keepdim=True)

    def log_prob(self, x: Tensor) -> Tensor:
        r = torch.linalg.vector_norm(x, dim=-1)
        comps = torch.stack([c - 0.5 * ((r - mu) / self.std) ** 2 for c, mu in zip(self._log_consts, self.radii)])
        return torch.logsumexp(comps, dim=0) - self._log_sphere - (self.dim - 1) * torch.log(r)


class PlaneProduct(Target):
    """Independent 2-D radial densities on consecutive coordinate planes: q = (x₁, …, x_m), x_i ∈ R².

    p(q) = Π_i p_i(x_i), each p_i a 2-D :class:`RadialMixture`; invariant under an independent rotation
    of every plane (2i, 2i+1), its ``symmetry``.
    Sampling draws the planes one after the other from the same generator.
    """

    def __init__(self, name: str, parts: Sequence[RadialMixture]) -> None:
        if not parts or any(p.dim != 2 for p in parts):
            raise ValueError("PlaneProduct needs one or more 2-D radial densities")
        self.name, self.parts, self.dim = name, list(parts), 2 * len(parts)
        self.planes = [[2 * i, 2 * i + 1] for i in range(len(self.parts))]

    @property
    def symmetry(self) -> Symmetry:
        """An independent rotation of every plane (2i, 2i+1)."""
        return symmetries.product(*[symmetries.rotation_plane(self.dim, a, b) for a, b in self.planes])

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: Any = None,
    ) -> Tensor:
        return torch.cat([p.sample(n, generator, dtype, device) for p in self.parts], dim=-1)

    def log_prob(self, x: Tensor) -> Tensor:
        out = self.parts[0].log_prob(x[..., 0:2])
        for i, part in enumerate(self.parts[1:], start=1):
            out = out + part.log_prob(x[..., 2 * i : 2 * i + 2])
        return out


class Particles2D(Target):
    """``n_particles`` particles in 2D: a randomly rotated template plus isotropic Gaussian noise.

    x = R(θ) T + σ ε,  θ ~ U(0, 2π),  ε ~ N(0, I_{2m}), R(θ) acting on every particle. T is the regular
    m-gon of radius ``radius`` with vertices T_k = radius·(cos(π/2 + 2πk/m), sin(π/2 + 2πk/m)).

    p(x) = (1/2π) ∫ N(x; R(θ)T, σ² I) dθ
         = (2πσ²)^{−m} exp(−(|x|² + |T|²)/(2σ²)) I₀(ρ/σ²),
    where x·R(θ)T = a cos θ + b sin θ = ρ cos(θ − θ*), ρ = √(a² + b²),
    a = Σ_k x_k·T_k, b = Σ_k x_k·(J T_k) = Σ_k (y_k T_k,x − x_k T_k,y), J = [[0, −1], [1, 0]].
    Numerically: log p = −m log(2πσ²) − |x − R(θ*)T|²/(2σ²) + log i0e(ρ/σ²), since
    |x|² + |T|² − 2ρ = |x − R(θ*)T|² (computed directly, which avoids cancellation in float32).
    """

    def __init__(
        self, name: str = "particles2d", n_particles: int = 3, radius: float = 1.5, sigma: float = 0.2
    ) -> None:
        self.name, self.n_particles, self.particle_dim, self.dim = name, n_particles, 2, 2 * n_particles
        self.radius, self.sigma = float(radius), float(sigma)
        ang = np.pi / 2 + 2 * np.pi * np.arange(n_particles) / n_particles
        self.template = np.stack([radius * np.cos(ang), radius * np.sin(ang)], axis=-1)  # (m, 2)
        self.template_sq = float((self.template**2).sum())  # |T|²

    @property
    def symmetry(self) -> Symmetry:
        """One rotation of every particle alike. Relabelling the particles is not a symmetry: a transposition
        reverses the template's orientation, which no rotation undoes (``identical`` is False)."""
        return symmetries.particle_rotations(self.n_particles, 2)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: Any = None,
    ) -> Tensor:
        device = _resolve_device(device)
        theta = 2 * math.pi * draw(torch.rand, n, generator=generator, device=device, dtype=dtype)
        c, s = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
        T = torch.as_tensor(self.template, dtype=dtype, device=device)
        mean = torch.stack([c * T[:, 0] - s * T[:, 1], s * T[:, 0] + c * T[:, 1]], dim=-1).reshape(n, self.dim)
        return mean + self.sigma * draw(torch.randn, n, self.dim, generator=generator, device=device, dtype=dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        xs = x.reshape(*x.shape[:-1], self.n_particles, 2)
        T = torch.as_tensor(self.template, dtype=x.dtype, device=x.device)
        a = (xs * T).sum(dim=(-1, -2))
        b = (xs[..., 1] * T[:, 0] - xs[..., 0] * T[:, 1]).sum(dim=-1)
        rho2, tiny = a * a + b * b, torch.finfo(x.dtype).tiny
        rho = torch.sqrt(torch.clamp(rho2, min=tiny))  # safe sqrt: finite gradients at ρ = 0
        c, s = (a / rho)[..., None], (b / rho)[..., None]  # cos θ*, sin θ*, θ* = atan2(b, a)
        resid = xs - torch.stack([c * T[:, 0] - s * T[:, 1], s * T[:, 0] + c * T[:, 1]], dim=-1)
        # |x − R(θ*)T|² = |x|² + |T|² − 2ρ; at ρ = 0 use the right side (θ* undefined there).
        d2 = torch.where(rho2 > tiny, resid.square().sum(dim=(-1, -2)), x.square().sum(-1) + self.template_sq)
        var = self.sigma**2
        return (
            -self.n_particles * math.log(2 * math.pi * var) - d2 / (2 * var) + torch.log(torch.special.i0e(rho / var))
        )


class GMM8(Target):
    """Equal mixture of 8 isotropic Gaussians (σ = 0.3) with means 2·(cos 2πk/8, sin 2πk/8).

    p(x) = (1/8) Σ_k N(x; μ_k, σ² I₂). Invariant only under the discrete rotations by 2π/8
    (``discrete_rotation_order = 8``), so its declared continuous symmetry is ``none``.
    """

    discrete_rotation_order = 8

    def __init__(self, name: str = "gmm8", n_modes: int = 8, radius: float = 2.0, sigma: float = 0.3) -> None:
        self.name, self.dim, self.sigma = name, 2, float(sigma)
        self.discrete_rotation_order = n_modes
        ang = 2 * np.pi * np.arange(n_modes) / n_modes
        self.means = np.stack([radius * np.cos(ang), radius * np.sin(ang)], axis=-1)  # (K, 2)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: Any = None,
    ) -> Tensor:
        device = _resolve_device(device)
        k = draw(torch.randint, len(self.means), (n,), generator=generator, device=device)
        mu = torch.as_tensor(self.means, dtype=dtype, device=device)[k]
        return mu + self.sigma * draw(torch.randn, n, 2, generator=generator, device=device, dtype=dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        mu = torch.as_tensor(self.means, dtype=x.dtype, device=x.device)
        sq = (x[..., None, :] - mu).square().sum(dim=-1)
        var = self.sigma**2
        return torch.logsumexp(-sq / (2 * var), dim=-1) - math.log(len(self.means)) - math.log(2 * math.pi * var)


def double_well_pair_energy(
    x: Tensor, n_particles: int, particle_dim: int, a: float = 0.9, b: float = -4.0, d0: float = 4.0
) -> Tensor:
    """Double-well pair energy of ``n_particles`` particles in R^D, x of shape (..., n·D) -> shape (...):

        E(x) = Σ_{i<j} a (d_ij − d₀)⁴ + b (d_ij − d₀)²,   d_ij = |x_i − x_j|,

    particles stored one after the other, x = (x_1, …, x_n). For a > 0 > b every pair has its minima at
    d = d₀ ± √(−b/(2a)) and a barrier of b²/(4a) at d = d₀ (defaults: d = 2.509 and 5.491, barrier 4.44).
    Invariant under translations, rotations, reflections and relabellings of the particles. Differentiable;
    the gradient of a pair of coincident particles is 0 (its direction is undefined there).
    """
    xs = x.reshape(*x.shape[:-1], n_particles, particle_dim)
    i, j = torch.triu_indices(n_particles, n_particles, 1, device=x.device)
    d2 = (xs[..., i, :] - xs[..., j, :]).square().sum(dim=-1)
    d = torch.sqrt(torch.clamp(d2, min=torch.finfo(x.dtype).tiny))  # safe sqrt: finite gradients at d = 0
    u = d - d0
    return (a * u**4 + b * u**2).sum(dim=-1)


def lennard_jones_energy(
    x: Tensor, n_particles: int, particle_dim: int, epsilon: float = 1.0, r_min: float = 1.0, confinement: float = 1.0
) -> Tensor:
    """Lennard-Jones cluster energy with a harmonic confinement to the centre of mass, x (..., n·D) -> (...):

        E(x) = ε Σ_{i<j} [(r_m/d_ij)¹² − 2 (r_m/d_ij)⁶] + (c/2) Σ_i |x_i − x̄|²,   x̄ = (1/n) Σ_i x_i,

    each pair's minimum −ε at d = r_m. The confinement keeps the cluster bound at any temperature (an
    unconfined cluster evaporates) without fixing its position: E is invariant under translations,
    rotations, reflections and relabellings of the particles. Coincident particles give a huge but finite
    energy: squared distances are floored at r_m² (M/4096)^(−1/6), M the dtype's largest number, so that each
    pair's (r_m/d)¹² stays below M/4096.
    """
    xs = x.reshape(*x.shape[:-1], n_particles, particle_dim)
    centred = xs - xs.mean(dim=-2, keepdim=True)
    i, j = torch.triu_indices(n_particles, n_particles, 1, device=x.device)
    d2 = (xs[..., i, :] - xs[..., j, :]).square().sum(dim=-1)
    floor = r_min * r_min * (torch.finfo(x.dtype).max / 4096.0) ** (-1.0 / 6.0)
    inv6 = (r_min * r_min / torch.clamp(d2, min=floor)) ** 3
    return epsilon * (inv6 * (inv6 - 2.0)).sum(dim=-1) + 0.5 * confinement * centred.square().sum(dim=(-1, -2))


class ParticlePool(Target):
    """A translation-invariant system of identical particles at temperature kT, known through sample pools.

    The density lives on the centre-of-mass-free subspace S = {x ∈ R^{nD}: Σ_i x_i = 0} (dimension
    (n−1)D), with Lebesgue measure in any orthonormal coordinates of S (all give the same measure, so log Z
    does not depend on the basis):

        p(x) = exp(−E(x)/kT) / Z,   Z = ∫_S exp(−E(x)/kT) dx,   log_prob(x) = −E(x)/kT − log Z.

    ``log_prob`` evaluates E of x as given: for an x with a non-zero centroid that is the density of its
    projection onto S (E is translation invariant), not a density on R^{nD}, which has none.

    There is no exact sampler. The samples are fixed pools, one per split (``finite_pool``), each row centre-of-
    mass free, drawn from disjoint sets of independent chains of a seeded MCMC; log Z is an importance-sampling
    estimate with standard error ``log_z_se``. Both are read, on first use, from
    ``lightning_ehf/assets/<name>.npz``, written once by ``scripts/make_<name>.py`` (and never fetched), which
    also stores the energy's ``parameters``: a file for other parameters is refused. Subclasses define
    :meth:`energy`.
    """

    finite_pool = True
    identical = True
    translation_invariant = True
    splits = ("train", "val", "test")

    def __init__(
        self, name: str, n_particles: int, particle_dim: int, parameters: dict[str, float], path: Path | None = None
    ) -> None:
        self.name, self.n_particles, self.particle_dim = name, n_particles, particle_dim
        self.dim = n_particles * particle_dim
        self.parameters = {k: float(v) for k, v in parameters.items()}
        self.kT = self.parameters["kT"]
        self.path = Path(path) if path is not None else _ASSETS / f"{name}.npz"
        self._pools: dict[str, Tensor] | None = None
        self._log_z = self._log_z_se = math.nan

    @property
    def symmetry(self) -> Symmetry:
        """One rotation of every particle alike (E depends on distances alone; translations and relabellings
        are declared by ``translation_invariant`` and ``identical``)."""
        return symmetries.particle_rotations(self.n_particles, self.particle_dim)

    def energy(self, x: Tensor) -> Tensor:
        """E(x), (..., n·D) -> (...)."""
        raise NotImplementedError

    def _load(self) -> dict[str, Tensor]:
        """The pools (float32 CPU tensors, by split), read from ``self.path`` on first use."""
        if self._pools is None:
            if not self.path.is_file():
                raise FileNotFoundError(
                    f"the {self.name} samples file {self.path} is missing; write it with "
                    f"`python scripts/make_{self.name}.py`"
                )
            with np.load(self.path) as data:
                stored = {k: float(data[k]) for k in self.parameters}
                if stored != self.parameters:  # log Z belongs to the energy it was computed for
                    raise ValueError(f"{self.path} holds samples for {stored}, the target is {self.parameters}")
                pools = {s: torch.from_numpy(np.ascontiguousarray(data[s], dtype=np.float32)) for s in self.splits}
                log_z, log_z_se = float(data["log_z"]), float(data["log_z_se"])
            for split, pool in pools.items():
                if pool.ndim != 2 or pool.shape[1] != self.dim:
                    raise ValueError(
                        f"{self.path}: the '{split}' pool has shape {tuple(pool.shape)}, expected (n, {self.dim})"
                    )
            self._pools, self._log_z, self._log_z_se = pools, log_z, log_z_se
        return self._pools

    @property
    def log_z(self) -> float:
        """log Z over the centre-of-mass-free subspace (importance-sampling estimate)."""
        self._load()
        return self._log_z

    @property
    def log_z_se(self) -> float:
        """Standard error of ``log_z``."""
        self._load()
        return self._log_z_se

    def pool_size(self, split: str) -> int:
        """Number of samples in the pool of ``split``."""
        return len(self._pool(split))

    def _pool(self, split: str) -> Tensor:
        if split not in self.splits:
            raise ValueError(f"unknown split '{split}' for {self.name}; choose from {', '.join(self.splits)}")
        return self._load()[split]

    def sample_split(
        self,
        split: str,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: Any = None,
    ) -> Tensor:
        """``n`` distinct rows of the ``split`` pool, shape ``(n, dim)``: the first n of a random permutation
        drawn from ``generator`` (so the seed picks the rows, and for one seed a smaller n takes a subset of
        the rows of a larger one). Raises ``ValueError`` if n exceeds the pool."""
        pool = self._pool(split)
        if not 0 <= n <= len(pool):
            raise ValueError(f"{self.name} has {len(pool)} '{split}' samples; asked for {n}")
        rows = draw(torch.randperm, len(pool), generator=generator, device=torch.device("cpu"))[:n]
        return pool[rows].to(device=_resolve_device(device), dtype=dtype)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: Any = None,
    ) -> Tensor:
        """``n`` distinct rows of the ``test`` pool (see ``sample_split``)."""
        return self.sample_split("test", n, generator, dtype, device)

    def log_prob(self, x: Tensor) -> Tensor:
        return -self.energy(x) / self.kT - self.log_z

    def entropy(self, n: int = 100_000, generator: torch.Generator | None = None) -> tuple[float, float]:
        """H = −mean log p(x) = mean E(x)/kT + log Z over the ``test`` pool (float64), and its standard error.

        Uses the whole pool when ``n`` ≥ its size (the default), else n rows chosen by ``generator``. The
        second value is the combined standard error √(se_MC² + se_logZ²), se_MC = std(log p)/√n: the
        uncertainty of H, and so the uncertainty H adds to KL(p‖q) = −H − E_p[log q]. (The log Z part is
        the same for every model, so it cancels in differences of KLs; evaluating E_p[log q] on the same
        test pool pairs the Monte-Carlo parts.)
        """
        pool = self._pool("test")
        x = (
            pool.to(torch.float64)
            if n >= len(pool)
            else self.sample_split("test", n, generator, dtype=torch.float64, device="cpu")
        )
        lp = self.log_prob(x)
        se_mc = float(lp.std() / math.sqrt(len(x)))
        return float(-lp.mean()), math.hypot(se_mc, self.log_z_se)


class DoubleWellParticles(ParticlePool):
    """``dw4``: 4 particles in 2D with the double-well pair energy (:func:`double_well_pair_energy`), at kT = 1;
    pools of 10000 (``train``), 2000 (``val``) and 5000 (``test``) rows from parallel-tempering MCMC
    (:class:`ParticlePool`, ``scripts/make_dw4.py``)."""

    def __init__(
        self,
        name: str = "dw4",
        n_particles: int = 4,
        particle_dim: int = 2,
        a: float = 0.9,
        b: float = -4.0,
        d0: float = 4.0,
        kT: float = 1.0,
        path: Path | None = None,
    ) -> None:
        super().__init__(name, n_particles, particle_dim, {"a": a, "b": b, "d0": d0, "kT": kT}, path)
        self.a, self.b, self.d0 = self.parameters["a"], self.parameters["b"], self.parameters["d0"]

    def energy(self, x: Tensor) -> Tensor:
        return double_well_pair_energy(x, self.n_particles, self.particle_dim, self.a, self.b, self.d0)


class LennardJonesCluster(ParticlePool):
    """``lj13``: 13 particles in 3D with the Lennard-Jones energy and a harmonic confinement to their centre of
    mass (:func:`lennard_jones_energy`, ε = r_m = c = 1), at kT = 1; pools from MALA chains, log Z by annealed
    importance sampling (:class:`ParticlePool`, ``scripts/make_lj13.py``)."""

    def __init__(
        self,
        name: str = "lj13",
        n_particles: int = 13,
        particle_dim: int = 3,
        epsilon: float = 1.0,
        r_min: float = 1.0,
        confinement: float = 1.0,
        kT: float = 1.0,
        path: Path | None = None,
    ) -> None:
        super().__init__(
            name,
            n_particles,
            particle_dim,
            {"epsilon": epsilon, "r_min": r_min, "confinement": confinement, "kT": kT},
            path,
        )

    def energy(self, x: Tensor) -> Tensor:
        p = self.parameters
        return lennard_jones_energy(x, self.n_particles, self.particle_dim, p["epsilon"], p["r_min"], p["confinement"])


TARGETS: dict[str, Callable[[], Target]] = {
    "ring2d": lambda: RadialMixture("ring2d", 2, radii=[2.0], std=0.25),
    "rings2d": lambda: RadialMixture("rings2d", 2, radii=[1.0, 2.0, 3.0], std=0.15),
    "shell3d": lambda: RadialMixture("shell3d", 3, radii=[2.0], std=0.25),
    "particles2d": lambda: Particles2D("particles2d", n_particles=3, radius=1.5, sigma=0.2),
    "gmm8": lambda: GMM8("gmm8"),
    "two_rings4d": lambda: PlaneProduct(
        "two_rings4d",
        [RadialMixture("ring_a", 2, radii=[2.0], std=0.25), RadialMixture("ring_b", 2, radii=[1.0], std=0.2)],
    ),
    "dw4": lambda: DoubleWellParticles("dw4", n_particles=4, particle_dim=2, a=0.9, b=-4.0, d0=4.0, kT=1.0),
    "lj13": lambda: LennardJonesCluster(
        "lj13", n_particles=13, particle_dim=3, epsilon=1.0, r_min=1.0, confinement=1.0, kT=1.0
    ),
}


def make_target(name: str) -> Target:
    """Build the registered target ``name``; raises ``ValueError`` listing the choices if unknown."""
    if name not in TARGETS:
        raise ValueError(f"unknown target '{name}'; choose from {', '.join(sorted(TARGETS))}")
    return TARGETS[name]()
