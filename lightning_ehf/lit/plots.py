"""Figures of a model during and after training: densities, samples, learned potentials.

Each function writes one PNG and returns its path. For d > 2 the plane of coordinates (0, 1) is
shown, with the other coordinates at 0 (a slice) for densities and potentials.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: plotting leaves the caller's backend and global state alone
from torch import Tensor, nn

from ..core.targets import Target

__all__ = ["plot_density", "plot_samples", "plot_potentials", "make_all_plots"]


def _grid(extent: float, n: int, dim: int, ref: Tensor) -> tuple[np.ndarray, np.ndarray, Tensor]:
    xs = np.linspace(-extent, extent, n)
    gx, gy = np.meshgrid(xs, xs)
    pts = torch.zeros(n * n, dim, dtype=ref.dtype, device=ref.device)
    pts[:, 0] = torch.as_tensor(gx.ravel(), dtype=ref.dtype)
    pts[:, 1] = torch.as_tensor(gy.ravel(), dtype=ref.dtype)
    return gx, gy, pts


def _extent(data: Tensor) -> float:
    return float(data[:, :2].abs().max().clamp_min(1.0)) * 1.15


def _title_slice(dim: int) -> str:
    return "" if dim == 2 else " (slice q₂…=0)"


@torch.no_grad()
def _model_log_density(model: nn.Module, pts: Tensor, k: int = 16, batch: int = 2048) -> Tensor:
    return torch.cat([model.iwae(pts[i : i + batch], k, k) for i in range(0, pts.shape[0], batch)])


def plot_density(model: nn.Module, data: Tensor, path: Path, target: Target | None = None, grid: int = 80) -> Path:
    """Model density (IWAE_16 estimate) beside the target density on a grid."""
    ref = next(iter(model.parameters()))
    dim = data.shape[-1]
    extent = _extent(data)
    gx, gy, pts = _grid(extent, grid, dim, ref)
    panels = [("model", _model_log_density(model, pts).exp().cpu().numpy().reshape(grid, grid))]
    if target is not None:
        panels.append(("target", target.log_prob(pts.double()).exp().cpu().numpy().reshape(grid, grid)))
    fig = Figure(figsize=(4.2 * len(panels), 4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    # IWAE density estimates have rare upward outliers; a shared high quantile keeps the scale honest
    vmax = max(float(np.nanquantile(p, 0.995)) for _, p in panels)
    for ax, (name, dens) in zip(axes[0], panels):
        ax.pcolormesh(gx, gy, dens, shading="auto", vmin=0, vmax=vmax, cmap="viridis")
        ax.set_title(f"{name} density{_title_slice(dim)}")
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def plot_samples(model: nn.Module, data: Tensor, path: Path, n: int = 2000) -> Path:
    """Model samples beside data (the same number of points), coordinates (0, 1)."""
    n = min(n, data.shape[0])
    with torch.no_grad():
        samples = model.sample(n).cpu()
    data = data[:n].cpu()
    extent = _extent(data)
    fig = Figure(figsize=(8.4, 4))
    axes = fig.subplots(1, 2)
    for ax, (name, x) in zip(axes, [("data", data), ("model samples", samples)]):
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.4)
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
        ax.set_aspect("equal")
        ax.set_title(name + ("" if x.shape[-1] == 2 else " (q₀, q₁)"))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def plot_potentials(model: nn.Module, data: Tensor, path: Path, grid: int = 80) -> Path | None:
    """Learned potential ``U_t(q)`` of every block on the (0, 1) plane, and radial profiles
    ``U_t(r e₀)`` when the symmetry is a rotation group."""
    blocks = getattr(getattr(model, "flow", None), "blocks", None)
    if not blocks:
        return None
    ref = next(iter(model.parameters()))
    dim = data.shape[-1]
    extent = _extent(data)
    gx, gy, pts = _grid(extent, grid, dim, ref)
    radial = bool(model.symmetry.rotation_blocks) or model.symmetry.invariants is not None
    n = len(blocks)
    fig = Figure(figsize=(3.4 * (n + int(radial)), 3.2))
    axes = fig.subplots(1, n + int(radial), squeeze=False)
    r = torch.linspace(0, extent, 200, dtype=ref.dtype, device=ref.device)
    line_pts = torch.zeros(200, dim, dtype=ref.dtype, device=ref.device)
    line_pts[:, 0] = r
    with torch.no_grad():
        for t, block in enumerate(blocks):
            u = block.hamiltonian.potential(model.to_standard(pts)).cpu().numpy().reshape(grid, grid)
            ax = axes[0][t]
            ax.pcolormesh(gx, gy, u, shading="auto", cmap="magma")
            ax.set_title(f"U_{t + 1}(q){_title_slice(dim)}")
            ax.set_aspect("equal")
            if radial:
                profile = block.hamiltonian.potential(model.to_standard(line_pts))
                axes[0][n].plot(r.cpu(), (profile - profile[0]).cpu(), label=f"U_{t + 1}")
    if radial:
        axes[0][n].set_title("radial profile U_t(r e₀) − U_t(0)")
        axes[0][n].set_xlabel("r")
        axes[0][n].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def make_all_plots(
    model: nn.Module, data: Tensor, folder: Path, target: Target | None = None, grid: int = 80, tag: str = ""
) -> list[Path]:
    """All figures into ``folder`` (names ``density{tag}.png`` …); returns the written paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_density(model, data, folder / f"density{tag}.png", target, grid),
        plot_samples(model, data, folder / f"samples{tag}.png"),
        plot_potentials(model, data, folder / f"potentials{tag}.png", grid),
    ]
    return [p for p in paths if p is not None]
