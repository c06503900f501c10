"""Analytic target densities with exact sampling and exact, normalised log densities.

Every target offers ``sample``, ``log_prob``, a Monte-Carlo ``entropy`` and a ``symmetry_spec``
naming the continuous symmetry it is invariant under. Pure torch + numpy.

Targets (``make_target(name)``):

* ``ring2d``      radius ~ N(2, 0.25²) truncated at r > 0, uniform angle; so2.
* ``rings2d``     equal mixture of such rings with radii 1, 2, 3 and radial std 0.15; so2.
* ``shell3d``     radius ~ N(2, 0.25²) truncated at r > 0, uniform direction in R³; so3.
* ``particles2d`` 3 particles in 2D: randomly rotated equilateral triangle + N(0, 0.2² I₆); particles.
* ``gmm8``        8 Gaussians (σ = 0.3) on a circle of radius 2; only discrete C₈ symmetry: none.
* ``two_rings4d`` q ∈ R⁴: (q₀, q₁) a ring of radius ~ N(2, 0.25²), independently (q₂, q₃) a ring of radius
                  ~ N(1, 0.2²) (both truncated at r > 0), uniform angles; rotations of the planes (0,1), (2,3).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .random import draw

__all__ = ["Target", "RadialMixture", "PlaneProduct", "Particles2D", "GMM8", "TARGETS", "make_target"]

_LOG_2PI = math.log(2.0 * math.pi)


def _resolve_device(device: Any) -> torch.device:
    return torch.device(device) if device is not None else torch.get_default_device()


def _log_std_normal_cdf(a: float) -> float:
    """log Φ(a) for a Python float (accurate for large positive a)."""
    tail = 0.5 * math.erfc(abs(a) / math.sqrt(2.0))  # Φ(−|a|)
    return math.log1p(-tail) if a > 0 else math.log(tail)


class Target:
    """Base class: an analytic density on R^dim with exact sampling.

    Subclasses set ``name``, ``dim``, ``symmetry_spec`` and implement ``sample`` and ``log_prob``.
    """

    name: str
    dim: int
    symmetry_spec: dict[str, Any]

    def sample(self, n: int, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
               device: Any = None) -> Tensor:
        """Draw ``n`` exact samples, shape ``(n, dim)``; all randomness comes from ``generator``."""
        raise NotImplementedError

    def log_prob(self, x: Tensor) -> Tensor:
        """Normalised log density of ``x`` (shape ``(..., dim)``) -> shape ``(...)``; differentiable."""
        raise NotImplementedError

    def entropy(self, n: int = 100_000, generator: Optional[torch.Generator] = None) -> tuple[float, float]:
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

    def __init__(self, name: str, dim: int, radii: Sequence[float], std: float,
                 weights: Optional[Sequence[float]] = None) -> None:
        if dim not in (2, 3):
            raise ValueError(f"RadialMixture supports dim 2 or 3, got {dim}")
        self.name, self.dim = name, dim
        self.radii = [float(r) for r in radii]
        self.std = float(std)
        w = np.full(len(self.radii), 1.0 / len(self.radii)) if weights is None else np.asarray(weights, float)
        self.weights = (w / w.sum()).tolist()
        # log w_k − log s − ½ log 2π − log Φ(μ_k/s): per-component constants of log N_trunc.
        self._log_consts = [math.log(wk) - math.log(self.std) - 0.5 * _LOG_2PI - _log_std_normal_cdf(mu / self.std)
                            for wk, mu in zip(self.weights, self.radii)]
        self._log_sphere = math.log(2.0 * math.pi) if dim == 2 else math.log(4.0 * math.pi)
        self.symmetry_spec = ({"group": "so2", "coords": [0, 1]} if dim == 2
                              else {"group": "so3", "coords": [0, 1, 2]})

    def sample(self, n: int, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
               device: Any = None) -> Tensor:
        device = _resolve_device(device)
        cum = torch.tensor(np.cumsum(self.weights)[:-1].tolist(), dtype=torch.float64, device=device)
        k = torch.searchsorted(cum, draw(torch.rand, n, generator=generator, device=device, dtype=torch.float64),
                               right=True)
        mu = torch.tensor(self.radii, dtype=dtype, device=device)[k]
        r = mu + self.std * draw(torch.randn, n, generator=generator, device=device, dtype=dtype)
        while bool((bad := r <= 0).any()):  # exact truncation by rejection (rare: μ/s ≥ 6.7 here)
            r[bad] = mu[bad] + self.std * draw(torch.randn, int(bad.sum()), generator=generator, device=device,
                                                dtype=dtype)
        u = draw(torch.randn, n, self.dim, generator=generator, device=device, dtype=dtype)
        return r[:, None] * u / torch.linalg.vector_norm(u, dim=-1, keepdim=True)

    def log_prob(self, x: Tensor) -> Tensor:
        r = torch.linalg.vector_norm(x, dim=-1)
        comps = torch.stack([c - 0.5 * ((r - mu) / self.std) ** 2 for c, mu in zip(self._log_consts, self.radii)])
        return torch.logsumexp(comps, dim=0) - self._log_sphere - (self.dim - 1) * torch.log(r)


class PlaneProduct(Target):
    """Independent 2-D radial densities on consecutive coordinate planes: q = (x₁, …, x_m), x_i ∈ R².

    p(q) = Π_i p_i(x_i), each p_i a 2-D :class:`RadialMixture`; invariant under an independent rotation
    of every plane (2i, 2i+1), declared as ``{"group": "rotations", "planes": [[0, 1], [2, 3], …]}``.
    Sampling draws the planes one after the other from the same generator.
    """

    def __init__(self, name: str, parts: Sequence[RadialMixture]) -> None:
        if not parts or any(p.dim != 2 for p in parts):
            raise ValueError("PlaneProduct needs one or more 2-D radial densities")
        self.name, self.parts, self.dim = name, list(parts), 2 * len(parts)
        self.planes = [[2 * i, 2 * i + 1] for i in range(len(self.parts))]
        self.symmetry_spec = {"group": "rotations", "planes": [list(pl) for pl in self.planes]}

    def sample(self, n: int, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
               device: Any = None) -> Tensor:
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

    def __init__(self, name: str = "particles2d", n_particles: int = 3, radius: float = 1.5,
                 sigma: float = 0.2) -> None:
        self.name, self.n_particles, self.dim = name, n_particles, 2 * n_particles
        self.radius, self.sigma = float(radius), float(sigma)
        ang = np.pi / 2 + 2 * np.pi * np.arange(n_particles) / n_particles
        self.template = np.stack([radius * np.cos(ang), radius * np.sin(ang)], axis=-1)  # (m, 2)
        self.template_sq = float((self.template ** 2).sum())  # |T|²
        self.symmetry_spec = {"group": "particles", "particle_dim": 2}

    def sample(self, n: int, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
               device: Any = None) -> Tensor:
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
        var = self.sigma ** 2
        return (-self.n_particles * math.log(2 * math.pi * var) - d2 / (2 * var)
                + torch.log(torch.special.i0e(rho / var)))


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
        self.symmetry_spec = {"group": "none"}

    def sample(self, n: int, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
               device: Any = None) -> Tensor:
        device = _resolve_device(device)
        k = draw(torch.randint, len(self.means), (n,), generator=generator, device=device)
        mu = torch.as_tensor(self.means, dtype=dtype, device=device)[k]
        return mu + self.sigma * draw(torch.randn, n, 2, generator=generator, device=device, dtype=dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        mu = torch.as_tensor(self.means, dtype=x.dtype, device=x.device)
        sq = (x[..., None, :] - mu).square().sum(dim=-1)
        var = self.sigma ** 2
        return torch.logsumexp(-sq / (2 * var), dim=-1) - math.log(len(self.means)) - math.log(2 * math.pi * var)


TARGETS: dict[str, Callable[[], Target]] = {
    "ring2d": lambda: RadialMixture("ring2d", 2, radii=[2.0], std=0.25),
    "rings2d": lambda: RadialMixture("rings2d", 2, radii=[1.0, 2.0, 3.0], std=0.15),
    "shell3d": lambda: RadialMixture("shell3d", 3, radii=[2.0], std=0.25),
    "particles2d": lambda: Particles2D("particles2d", n_particles=3, radius=1.5, sigma=0.2),
    "gmm8": lambda: GMM8("gmm8"),
    "two_rings4d": lambda: PlaneProduct("two_rings4d", [RadialMixture("ring_a", 2, radii=[2.0], std=0.25),
                                                        RadialMixture("ring_b", 2, radii=[1.0], std=0.2)]),
}


def make_target(name: str) -> Target:
    """Build the registered target ``name``; raises ``ValueError`` listing the choices if unknown."""
    if name not in TARGETS:
        raise ValueError(f"unknown target '{name}'; choose from {', '.join(sorted(TARGETS))}")
    return TARGETS[name]()
