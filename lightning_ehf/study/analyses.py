"""Study-specific analyses that ``ehf study report`` runs when a study file names them under
``report.analyses``. Each takes the study folder, the report's rows (one per cell) and the output folder,
and returns (markdown section, files written).

* ``learning_curves``: validation KL (or NLL) against samples seen and against training time, per target
  and method (mean over seeds, min–max band).
* ``potentials``: radial profiles of every block's potential ``U_t`` and of ``Σ_t U_t``, the located minima
  of the sum, and whether a minimum lies within ``RING_TOLERANCE`` of each ring radius of the target.
* ``representation``: per-subgroup equivariance error of the learned flow and conservation of every
  generator's charge ``g_k = pᵀA_k q`` along it, constrained against unconstrained EHF.
* ``frontier``: test KL against wall time per target and model (pooled over seeds), the Pareto front (no other
  model both cheaper and better on average), the time to validation KL ≤ ``QUALITY_KL``, and the candidate
  default: the cheapest model within ``FRONTIER_MARGIN`` nats of the best mean test KL.

Only cells in state ``done`` are used. Heavy imports (torch, matplotlib) happen inside the functions:
``spec.load_study`` imports this module to check the names.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..config.load import from_saved
from ..config.schema import Config
from .statistics import is_flagged, mean_std

__all__ = [
    "ANALYSES",
    "FRONTIER_MARGIN",
    "QUALITY_KL",
    "RING_TOLERANCE",
    "pareto_front",
]

Analysis = Callable[[Any, list[dict[str, Any]], Path], tuple[str, list[Path]]]

#: the candidate default of a frontier is the cheapest model within this many nats of the best mean test KL
FRONTIER_MARGIN = 0.005
#: the frontier's quality bar: time to the first validation KL at or below it
QUALITY_KL = 0.05
#: a ring counts as found when a located minimum of the summed potential lies this close to its radius
RING_TOLERANCE = 0.3
#: a cell's potentials speak for the data only when its flow fits them: test KL at most this, and no flag
POTENTIALS_FIT_KL = 0.05
_R_MAX, _N_R, _N_THETA = 4.0, 401, 64  # radial profile: r ∈ [0, 4] in steps of 0.01, 64 angles
_N_STATES = 256  # test points for the representation measures
_N_GROUP_DRAWS = 4  # group elements per point and generator


# -- shared helpers ------------------------------------------------------------------------------


def _done(folder: Any, rows: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], Any, Path]]:
    """(row, cell, cell folder) of every done cell, in the folder's cell order."""
    cells = {c.name: c for c in folder.cells}
    out = []
    for row in rows:
        cell = cells.get(row.get("cell"))
        if row.get("state") == "done" and cell is not None:
            out.append((row, cell, Path(folder.cell_dir(cell))))
    return out


def _method(row: dict[str, Any], cell: Any) -> str:
    """The value on the ``method`` axis, else every axis value but the seed."""
    if "method" in cell.values:
        return str(cell.values["method"])
    return "-".join(str(v) for k, v in cell.values.items() if k != "seed") or cell.name


def _seed(cell: Any) -> str:
    return str(cell.values.get("seed", "-"))


def _config(cell_dir: Path) -> Config:
    """The cell's saved config (the schema defaults where it has none)."""
    import yaml

    path = cell_dir / "config.yaml"
    return from_saved((yaml.safe_load(path.read_text()) if path.is_file() else None) or {})


def _kind(cfg: Config) -> str:
    """``invariant`` (by construction), ``constrained`` (penalty or dual), ``unconstrained``, or the model kind
    of a model without Hamiltonians (``nsf``, ``efm``)."""
    if cfg.model.kind in ("nsf", "efm"):
        return cfg.model.kind
    if cfg.model.invariant:
        return "invariant"
    return "unconstrained" if cfg.constraint.mode == "none" else f"constrained ({cfg.constraint.mode})"


def _load(cell_dir: Path) -> Any:
    from ..evaluate import load_run

    best = cell_dir / "checkpoints" / "best.ckpt"
    return load_run(best if best.is_file() else cell_dir)


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}g}"


def _number(value: Any) -> float | None:
    """A results row's entry as a finite float (None when empty, missing or not a finite number)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _mean_std(values: Sequence[float]) -> str:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "–"
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{mean:.3g}"
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return f"{mean:.3g} ± {std:.2g}"


def _figure(**kwargs: Any) -> Any:
    """A matplotlib Figure outside pyplot: drawing it leaves the caller's backend and global state alone."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _plain(x: Any) -> Any:
    """JSON-safe: NaN and infinities as null, numpy scalars as Python numbers."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "item") and not hasattr(x, "__len__"):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(data), indent=2) + "\n")
    return path


# -- potentials ----------------------------------------------------------------------------------


def _ring_radii(target_name: str | None) -> list[float]:
    """Ring radii of the target in the plane (0, 1): ``radii`` of a radial target, or of its first plane."""
    if not target_name:
        return []
    from ..core.targets import make_target

    t = make_target(target_name)
    radii = getattr(t, "radii", None)
    if radii is None and getattr(t, "parts", None):
        radii = getattr(t.parts[0], "radii", None)
    return [float(x) for x in radii or []]


def _target_of(cell: Any, cfg: Config) -> str:
    return str(cell.values.get("target") or cfg.data.target or "data")


def _ring_match(radius: float, minima: Sequence[float]) -> dict[str, Any]:
    """The located minimum nearest a ring radius, its distance, and whether it lies within RING_TOLERANCE."""
    near = min(minima, key=lambda m: abs(m - radius)) if minima else None
    dist = abs(near - radius) if near is not None else None
    return {
        "radius": radius,
        "nearest_minimum": near,
        "distance": dist,
        "within": dist is not None and dist <= RING_TOLERANCE,
    }


def potentials(folder: Any, rows: list[dict[str, Any]], out_dir: Path) -> tuple[str, list[Path]]:
    import numpy as np

    from ..core.metrics import local_minima, radial_profiles

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, skipped = [], []
    for row, cell, cell_dir in _done(folder, rows):
        cfg = _config(cell_dir)
        if cfg.model.kind in ("nsf", "efm"):
            skipped.append(cell.name)
            continue
        run = _load(cell_dir)
        r, u = radial_profiles(run.model, _R_MAX, _N_R, _N_THETA)
        minima = local_minima(r, u.sum(0))
        block_minima = [local_minima(r, ut) for ut in u]
        radii = _ring_radii(run.config.data.target)
        rings = [_ring_match(radius, minima) for radius in radii]
        data_side = [_ring_match(radius, block_minima[-1]) for radius in radii]
        kl = _number(row.get("test/kl"))
        results.append(
            {
                "cell": cell.name,
                "target": _target_of(cell, run.config),
                "method": _method(row, cell),
                "seed": _seed(cell),
                "test_kl": kl,
                "fits": kl is not None and kl <= POTENTIALS_FIT_KL and not is_flagged(row),
                "minima": minima,
                "block_minima": block_minima,
                "rings": rings,
                "rings_matched": sum(x["within"] for x in rings),
                "data_side_rings": data_side,
                "data_side_matched": sum(x["within"] for x in data_side),
                "r": r,
                "u": u,
            }
        )
    if not results:
        return (
            "## Potentials\n\nNo done EHF cell to analyse"
            + (f" (nsf cells have no potentials: {', '.join(skipped)})" if skipped else "")
            + ".\n"
        ), []

    files: list[Path] = []
    targets = list(dict.fromkeys(x["target"] for x in results))
    for target in targets:
        for method in dict.fromkeys(x["method"] for x in results if x["target"] == target):
            mine = [x for x in results if x["method"] == method and x["target"] == target]
            fig = _figure(figsize=(max(6.5, 4.2 * len(mine)), 3.6))
            axes = fig.subplots(1, len(mine), squeeze=False)
            for ax, x in zip(axes[0], mine):
                r, u = x["r"], x["u"]
                for t, ut in enumerate(u):
                    ax.plot(r, ut - ut[0], lw=0.8, alpha=0.6, label=f"U_{t + 1}")
                total = u.sum(0)
                ax.plot(r, total - total[0], color="black", lw=2, label="Σ_t U_t")
                for ring in x["rings"]:
                    ax.axvline(ring["radius"], color="grey", ls="--", lw=0.8)
                for m in x["minima"]:
                    ax.plot([m], [np.interp(m, r, total) - total[0]], "rv", ms=8)
                ax.set_title(f"{method} {x['seed']}", fontsize=9)
                ax.set_xlabel("r")
            axes[0][0].set_ylabel("angular mean of U(r), minus U(0)")
            axes[0][0].legend(fontsize=6, ncol=2)
            fig.suptitle(f"{target}, {method}: U_t and Σ_t U_t (dashed: ring radii; ▼: minima of the sum)", fontsize=9)
            fig.tight_layout()
            path = out_dir / (f"potentials_{method}.png" if len(targets) == 1 else f"potentials_{target}_{method}.png")
            fig.savefig(path, dpi=90)
            files.append(path)

    md = [
        "## Potentials",
        "",
        f"Radial profile of each block's potential, U_t(r) = mean over {_N_THETA} angles θ of "
        f"U_t(r cos θ, r sin θ) (other coordinates 0) on r ∈ [0, {_R_MAX:g}] (step {_R_MAX / (_N_R - 1):g}), and of "
        "their sum; local minima of the sum (parabolic refinement; wells shallower than 0.1 % of the profile's range "
        f"are ignored). A ring counts as found when a minimum lies within {RING_TOLERANCE} of its radius. Two measures, "
        "fixed before the runs: the minima of the sum, and the minima of the data-side block's U_T alone (the last "
        "block of the generative direction, which acts on the data's coordinates directly). Only a cell that fits "
        f"the data (test KL ≤ {POTENTIALS_FIT_KL:g}, no flag) says where a model of the data puts its wells; the "
        "summary counts rings over those cells, and over every cell beside them. The summed "
        "potential is not the model's log density (each block acts on the state the previous ones produced, and "
        "momenta and kinetic energies shape the flow too); the paper looks at the potentials because the flow's "
        "Hamiltonians carry its structure.",
        "",
    ]
    for target in targets:
        group = [x for x in results if x["target"] == target]
        radii = [ring["radius"] for ring in group[0]["rings"]]
        header = ["cell", "method", "seed", "test KL", f"fits (≤ {POTENTIALS_FIT_KL:g})", "minima of Σ_t U_t (r)"]
        for radius in radii:
            header += [f"r={radius:g}: nearest", "distance", f"within {RING_TOLERANCE}"]
        table = []
        for x in group:
            line = [
                x["cell"],
                x["method"],
                x["seed"],
                _fmt(x["test_kl"]),
                "yes" if x["fits"] else "no",
                ", ".join(f"{m:.2f}" for m in x["minima"]) or "none",
            ]
            for ring in x["rings"]:
                line += [_fmt(ring["nearest_minimum"]), _fmt(ring["distance"]), "yes" if ring["within"] else "no"]
            table.append(line)
        summary = []
        for method in dict.fromkeys(x["method"] for x in group):
            mine = [x for x in group if x["method"] == method]
            per_ring = [f"{sum(x['rings'][i]['within'] for x in mine)}/{len(mine)}" for i in range(len(radii))]
            data_side = sum(x["data_side_matched"] for x in mine) / len(mine)
            fit = [x for x in mine if x["fits"]]
            summary.append(
                [
                    method,
                    str(len(mine)),
                    f"{sum(x['rings_matched'] for x in mine) / len(mine):.2f} / {len(radii)}",
                    *per_ring,
                    f"{data_side:.2f} / {len(radii)}",
                    f"{len(fit)} of {len(mine)}",
                    _rings_over(fit, "rings_matched", len(radii)),
                    _rings_over(fit, "data_side_matched", len(radii)),
                ]
            )
        md += [
            f"### {target}"
            + (
                f" (ring radii {', '.join(f'{x:g}' for x in radii)})"
                if radii
                else " (no ring radii known for this target)"
            ),
            "",
            _table(header, table),
            "",
            "Rings found per method: the mean over seeds of the number of rings matched, and per ring the seeds "
            "that match it; the mean number matched by the data-side block U_T alone; and both means again over "
            f"the cells that fit the data (test KL ≤ {POTENTIALS_FIT_KL:g}, no flag):",
            "",
            _table(
                [
                    "method",
                    "seeds",
                    "rings matched by the sum (mean)",
                    *[f"r={x:g}" for x in radii],
                    "rings matched by U_T (mean)",
                    "cells that fit",
                    "by the sum, cells that fit",
                    "by U_T, cells that fit",
                ],
                summary,
            ),
            "",
        ]
        for x in group:
            for ring in x["rings"]:
                if ring["within"]:
                    md.append(
                        f"- {x['cell']}: ring r = {ring['radius']:g}: a minimum lies within {RING_TOLERANCE} "
                        f"(at {ring['nearest_minimum']:.2f})."
                    )
                else:
                    where = (
                        f"the nearest is at {ring['nearest_minimum']:.2f}, {ring['distance']:.2f} away"
                        if ring["nearest_minimum"] is not None
                        else "no minimum was located"
                    )
                    md.append(
                        f"- {x['cell']}: ring r = {ring['radius']:g}: no minimum within {RING_TOLERANCE} ({where})."
                    )
        md.append("")
    if skipped:
        md.append(f"Skipped (nsf: no Hamiltonians): {', '.join(skipped)}.\n")
    md += [f"![{p.stem}]({p.name})" for p in files]
    data = [{k: v for k, v in x.items() if k not in ("r", "u")} for x in results]
    files.append(_write_json(out_dir / "potentials.json", {"tolerance": RING_TOLERANCE, "cells": data}))
    return "\n".join(md) + "\n", files


def _rings_over(cells: list[dict[str, Any]], key: str, rings: int) -> str:
    """The mean of ``key`` (rings matched) over ``cells``, out of ``rings``; — without cells."""
    return f"{sum(x[key] for x in cells) / len(cells):.2f} / {rings}" if cells else "—"


# -- representation ------------------------------------------------------------------------------


def representation(folder: Any, rows: list[dict[str, Any]], out_dir: Path) -> tuple[str, list[Path]]:
    from ..core.metrics import representation_measures

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, skipped = [], []
    for row, cell, cell_dir in _done(folder, rows):
        cfg = _config(cell_dir)
        if _kind(cfg) in ("nsf", "efm"):
            skipped.append(cell.name)
            continue
        run = _load(cell_dir)
        if run.model.symmetry.num_generators == 0:
            skipped.append(cell.name)
            continue
        q = run.split_data("test")[:_N_STATES]
        measures = representation_measures(run.model, q, seed=run.config.seed, n_draws=_N_GROUP_DRAWS)
        results.append(
            {
                "cell": cell.name,
                "target": _target_of(cell, run.config),
                "method": _method(row, cell),
                "seed": _seed(cell),
                "kind": _kind(run.config),
                **measures,
            }
        )
    if not results:
        return (
            "## Representation\n\nNo done EHF cell with a symmetry to analyse"
            + (f" (skipped: {', '.join(skipped)})" if skipped else "")
            + ".\n"
        ), []
    md = [
        "## Representation",
        "",
        f"On {_N_STATES} test points q of each cell's target, with momenta p ~ h(p | q) from the cell's encoder, and the "
        "learned flow in the density direction Φ⁻¹ (data → base), evaluated in float64:",
        "",
        f"- equivariance error of generator k: mean of ‖Φ⁻¹(g·s) − g·Φ⁻¹(s)‖ / ‖g·Φ⁻¹(s)‖ over states s = (q, p) "
        f"and {_N_GROUP_DRAWS} draws per state of g = exp(t A_k) from that generator's subgroup alone (t uniform on "
        "[0, 2π) for a plane rotation);",
        "- charge change of generator k: RMS(g_k(Φ⁻¹(s)) − g_k(s)) / RMS(g_k(s)) with the charge g_k = pᵀA_k q "
        "(0 when {g_k, H_t} = 0 for every block: Noether; leapfrog keeps these charges exactly too);",
        "- rotating k → change of j: RMS(g_j(Φ⁻¹(g·s)) − g_j(Φ⁻¹(s))) / RMS(g_j(Φ⁻¹(s))) for g in subgroup k: does "
        "acting on the data with one subgroup move the latent charge of another (0 for an equivariant flow).",
        "",
        "Rows: unconstrained (ehf_none), constrained (penalty, dual), invariant by construction; mean ± std over seeds.",
        "",
    ]
    files: list[Path] = []
    targets = list(dict.fromkeys(x["target"] for x in results))
    order = {"unconstrained": 0, "invariant": 2}
    for target in targets:
        group = [x for x in results if x["target"] == target]
        names = group[0]["generators"]
        methods = sorted(
            dict.fromkeys(x["method"] for x in group),
            key=lambda mth: order.get(next(x["kind"] for x in group if x["method"] == mth), 1),
        )
        cross_pairs = [(k, j) for k in range(len(names)) for j in range(len(names)) if k != j]
        header = [
            "method",
            "kind",
            "seeds",
            *[f"equivariance error {n}" for n in names],
            *[f"charge change {n}" for n in names],
            *[f"rotating {names[k]} → change of {names[j]}" for k, j in cross_pairs],
        ]
        table = []
        for method in methods:
            mine = [x for x in group if x["method"] == method]
            line = [method, mine[0]["kind"], str(len(mine))]
            line += [_mean_std([x["equivariance"][k] for x in mine]) for k in range(len(names))]
            line += [_mean_std([x["charge_change"][k] for x in mine]) for k in range(len(names))]
            line += [_mean_std([x["cross"][k][j] for x in mine]) for k, j in cross_pairs]
            table.append(line)
        per_cell = [
            [
                x["cell"],
                *[_fmt(v) for v in x["equivariance"]],
                *[_fmt(v) for v in x["charge_change"]],
                *[_fmt(x["cross"][k][j]) for k, j in cross_pairs],
            ]
            for x in group
        ]
        png = out_dir / ("representation.png" if len(targets) == 1 else f"representation_{target}.png")
        _representation_bars(group, methods, names, png, target)
        files.append(png)
        md += [
            f"### {target} (generators {', '.join(names)})",
            "",
            _table(header, table),
            "",
            "Per cell:",
            "",
            _table(["cell", *header[3:]], per_cell),
            "",
            f"![representation {target}]({png.name})",
            "",
        ]
    if skipped:
        md.append(f"Skipped (nsf, or no generators: nothing to measure): {', '.join(skipped)}.\n")
    files.append(_write_json(out_dir / "representation.json", {"cells": results}))
    return "\n".join(md) + "\n", files


def _representation_bars(
    group: list[dict[str, Any]], methods: list[str], names: list[str], png: Path, target: str
) -> None:
    """Bars per measure (equivariance and charge change per generator), one bar per method: mean over seeds,
    whiskers ± std (clipped at the log axis' floor)."""
    import numpy as np

    labels = [f"equiv. {n}" for n in names] + [f"Δcharge {n}" for n in names]
    fig = _figure(figsize=(max(5.0, 0.9 * len(labels) * max(1, len(methods))), 3.8))
    ax = fig.subplots()
    width = 0.8 / max(1, len(methods))
    floor = 1e-17
    for i, method in enumerate(methods):
        mine = [x for x in group if x["method"] == method]
        vals = np.array([[*x["equivariance"], *x["charge_change"]] for x in mine], dtype=float)
        mean = np.maximum(vals.mean(0), floor)
        std = vals.std(0, ddof=1) if len(mine) > 1 else np.zeros_like(mean)
        ax.bar(
            np.arange(len(labels)) + (i - (len(methods) - 1) / 2) * width,
            mean,
            width,
            yerr=[np.minimum(std, mean - floor / 2), std],
            capsize=2,
            label=f"{method} ({mine[0]['kind']})",
        )
    ax.set_xticks(np.arange(len(labels)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("relative error (mean ± std over seeds)")
    ax.set_title(f"{target}: per-subgroup equivariance and charge conservation of Φ⁻¹", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=90)


# -- learning curves -----------------------------------------------------------------------------


def _curve(cell_dir: Path) -> dict[str, Any] | None:
    """Validation rows of a cell's metrics.csv: step, samples seen, training seconds, the metric."""
    path = cell_dir / "metrics.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = list(reader)
    key = "val/kl" if "val/kl" in fields else next((k for k in fields if k.startswith("val/nll_iw")), None)
    if key is None:
        return None
    cfg = _config(cell_dir)
    devices = cfg.trainer.devices
    devices = devices if isinstance(devices, int) and devices > 0 else len(devices) if isinstance(devices, list) else 1
    batch = cfg.data.batch_size * devices * cfg.trainer.num_nodes
    steps, values, seconds = [], [], []
    for r in rows:
        if r.get(key, "") == "" or r.get("step", "") == "":
            continue
        # Lightning logs a validation after N optimiser steps at step N − 1
        steps.append(int(float(r["step"])) + 1)
        values.append(float(r[key]))
        t = r.get("val/elapsed_s", "")
        seconds.append(float(t) if t != "" else math.nan)
    if not steps:
        return None
    return {
        "metric": key,
        "steps": steps,
        "samples": [s * batch for s in steps],
        "seconds": seconds,
        "values": values,
        "batch": batch,
    }


def _band(xs: Sequence[Sequence[float]], ys: Sequence[Sequence[float]], on_grid: bool):
    """Mean, min and max over curves: at shared x values (samples), or interpolated on a common grid (time)."""
    import numpy as np

    if not on_grid:
        grid = sorted({x for c in xs for x in c})
        table = np.full((len(xs), len(grid)), np.nan)
        index = {x: i for i, x in enumerate(grid)}
        for row, (cx, cy) in enumerate(zip(xs, ys)):
            for x, y in zip(cx, cy):
                table[row, index[x]] = y
        grid = np.asarray(grid, dtype=float)
    else:
        pairs = [(np.asarray(cx, float), np.asarray(cy, float)) for cx, cy in zip(xs, ys)]
        pairs = [(cx[np.isfinite(cx)], cy[np.isfinite(cx)]) for cx, cy in pairs]
        pairs = [(cx, cy) for cx, cy in pairs if len(cx)]
        if not pairs:
            return None
        grid = np.linspace(min(cx.min() for cx, _ in pairs), max(cx.max() for cx, _ in pairs), 200)
        table = np.stack(
            [np.where((grid >= cx.min()) & (grid <= cx.max()), np.interp(grid, cx, cy), np.nan) for cx, cy in pairs]
        )
    keep = np.isfinite(table).any(0)
    table, grid = table[:, keep], grid[keep]
    return grid, np.nanmean(table, 0), np.nanmin(table, 0), np.nanmax(table, 0)


def learning_curves(folder: Any, rows: list[dict[str, Any]], out_dir: Path) -> tuple[str, list[Path]]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    curves, missing = [], []
    for row, cell, cell_dir in _done(folder, rows):
        c = _curve(cell_dir)
        if c is None:
            missing.append(cell.name)
            continue
        panel = str(cell.values.get("target", _config(cell_dir).data.target or "all"))
        curves.append({"cell": cell.name, "method": _method(row, cell), "seed": _seed(cell), "panel": panel, **c})
    if not curves:
        return "## Learning curves\n\nNo done cell with validation rows in metrics.csv.\n", []
    panels = list(dict.fromkeys(c["panel"] for c in curves))
    methods = list(dict.fromkeys(c["method"] for c in curves))
    no_clock = sorted({c["cell"] for c in curves if all(math.isnan(s) for s in c["seconds"])})
    metric_names = sorted({c["metric"] for c in curves})
    ylabel = "validation KL (nats)" if metric_names == ["val/kl"] else f"validation {', '.join(metric_names)}"

    from matplotlib import rcParams

    fig = _figure(figsize=(4.6 * len(panels), 7.0))
    axes = fig.subplots(2, len(panels), squeeze=False)
    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    summary = []
    for col, panel in enumerate(panels):
        for i, method in enumerate(methods):
            mine = [c for c in curves if c["panel"] == panel and c["method"] == method]
            if not mine:
                continue
            colour = colours[i % len(colours)]
            for ax, xkey, on_grid in ((axes[0][col], "samples", False), (axes[1][col], "seconds", True)):
                band = _band([c[xkey] for c in mine], [c["values"] for c in mine], on_grid)
                if band is None:
                    continue
                x, mean, lo, hi = band
                ax.plot(x, mean, color=colour, label=f"{method} ({len(mine)})")
                ax.fill_between(x, lo, hi, color=colour, alpha=0.2, lw=0)
            finals = [c["values"][-1] for c in mine]
            bests = [min(c["values"]) for c in mine]
            secs = [c["seconds"][-1] for c in mine]
            per_k = [1000 * c["seconds"][-1] / c["steps"][-1] for c in mine if not math.isnan(c["seconds"][-1])]
            summary.append(
                [
                    panel,
                    method,
                    str(len(mine)),
                    _mean_std(finals),
                    _mean_std(bests),
                    _fmt(sum(c["samples"][-1] for c in mine) / len(mine)),
                    _mean_std(secs),
                    _mean_std(per_k),
                ]
            )
        positive = all(v > 0 for c in curves if c["panel"] == panel for v in c["values"])
        for row_i, xlabel in enumerate(("samples seen", "training time (s, validation excluded)")):
            ax = axes[row_i][col]
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            if positive:
                ax.set_yscale("log")
            if row_i == 0:
                ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
            ax.set_title(panel, fontsize=10)
            ax.legend(fontsize=7)
    fig.tight_layout()
    png = out_dir / "learning_curves.png"
    fig.savefig(png, dpi=90)
    js = _write_json(out_dir / "learning_curves.json", {"cells": curves})
    md = [
        "## Learning curves",
        "",
        f"{ylabel} at every validation against samples seen (optimiser steps × global batch) and against training "
        "time (`val/elapsed_s`: wall-clock seconds of training so far, validation excluded, carried across resumes). "
        "Lines: mean over seeds; bands: min–max (on the time axis, curves are interpolated onto a common grid).",
        "",
        _table(
            ["target", "method", "seeds", "final", "best", "samples seen", "training s", "s per 1000 steps"], summary
        ),
        "",
    ]
    if no_clock:
        md.append(
            f"No `val/elapsed_s` in metrics.csv (runs from before it was logged): {', '.join(no_clock)}; "
            "they are missing from the time axis.\n"
        )
    if missing:
        md.append(f"No validation rows: {', '.join(missing)}.\n")
    md.append(f"![learning curves]({png.name})")
    return "\n".join(md) + "\n", [png, js]


# -- the cost/quality frontier ---------------------------------------------------------------------


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, loss) that no other point dominates (as cheap or cheaper and as good or better,
    one of them strictly), in increasing cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front: list[int] = []
    best = math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def _model_label(cfg: Config) -> str:
    return f"{cfg.model.blocks}×{cfg.model.leapfrog_steps} h{cfg.model.hidden} b{cfg.data.batch_size}"


def _frontier_models(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells of each model (every axis but ``seed`` equal), pooled over seeds: mean test KL ± sample std, mean
    wall time, how many seeds reached the quality bar and their median time to it; the Pareto front and the
    candidate default are decided on these means, per panel."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["panel"], c["group"]), []).append(c)
    models = []
    for (panel, group), mine in groups.items():
        mean, std = mean_std([c["test_kl"] for c in mine])
        reached = [c["seconds_to_quality"] for c in mine if c["seconds_to_quality"] is not None]
        models.append(
            {
                "panel": panel,
                "group": group,
                "model": mine[0]["model"],
                "seeds": len(mine),
                "test_kl": mean,
                "test_kl_std": std if len(mine) > 1 else None,
                "wall_s": sum(c["wall_s"] for c in mine) / len(mine),
                "reached_quality": len(reached),
                "seconds_to_quality": statistics.median(reached) if reached else None,
                "params": mine[0]["params"],
                "cells": [c["cell"] for c in mine],
            }
        )
    for panel in dict.fromkeys(m["panel"] for m in models):
        mine = [m for m in models if m["panel"] == panel]
        labels = [m["model"] for m in mine]
        for m in mine:  # two models that differ only in a non-model axis (e.g. the method) say which
            if labels.count(m["model"]) > 1:
                m["model"] = f"{m['model']} ({m['group']})"
        front = set(pareto_front([(m["wall_s"], m["test_kl"]) for m in mine]))
        best = min(m["test_kl"] for m in mine)
        candidate = min((m for m in mine if m["test_kl"] <= best + FRONTIER_MARGIN), key=lambda m: m["wall_s"])
        for i, m in enumerate(mine):
            m["pareto"], m["candidate"] = i in front, m is candidate
    return models


def frontier(folder: Any, rows: list[dict[str, Any]], out_dir: Path) -> tuple[str, list[Path]]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = []
    for row, cell, cell_dir in _done(folder, rows):
        kl, wall = row.get("test/kl"), row.get("wall_time_s")
        if kl in (None, "") or wall in (None, ""):
            continue
        cfg = _config(cell_dir)
        curve = _curve(cell_dir)
        reach = None
        if curve is not None and curve["metric"] == "val/kl":
            reach = next((t for t, v in zip(curve["seconds"], curve["values"]) if v <= QUALITY_KL), None)
        cells.append(
            {
                "cell": cell.name,
                "panel": str(cell.values.get("target", cfg.data.target or "all")),
                "group": "-".join(v for k, v in cell.values.items() if k not in ("seed", "target")) or "all",
                "model": _model_label(cfg),
                "test_kl": float(kl),
                "wall_s": float(wall),
                "seconds_to_quality": reach,
                "params": row.get("params"),
            }
        )
    if not cells:
        return "## Cost/quality frontier\n\nNo done cell with a test KL and a wall time.\n", []
    models = _frontier_models(cells)
    of_cell = {name: m for m in models for name in m["cells"]}
    for c in cells:
        c.update({key: of_cell[c["cell"]][key] for key in ("model", "pareto", "candidate")})
    panels = list(dict.fromkeys(m["panel"] for m in models))
    fig = _figure(figsize=(5.2 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    md = [
        "## Cost/quality frontier",
        "",
        "Test KL against wall time (training, validation and test) per model, over its seeds: mean ± sample std of "
        "the test KL, mean wall time. *Pareto*: no other model of the target is both cheaper and better on these "
        f"means. *Candidate default* (★): the cheapest model within {FRONTIER_MARGIN} nats of the target's best mean "
        f"test KL. *To KL ≤ {QUALITY_KL}*: how many seeds reached a validation KL at or below it, and the median "
        "training seconds (validation excluded) of those that did (–: none). Model: blocks × leapfrog steps, width, "
        "batch.",
        "",
    ]
    for ax, panel in zip(axes, panels):
        mine = sorted((m for m in models if m["panel"] == panel), key=lambda m: m["wall_s"])
        seeds = [c for c in cells if c["panel"] == panel]
        ax.scatter([c["wall_s"] for c in seeds], [c["test_kl"] for c in seeds], s=10, color="0.7", label="seeds")
        ax.errorbar([m["wall_s"] for m in mine], [m["test_kl"] for m in mine], yerr=[m["test_kl_std"] or 0 for m in mine],
                    fmt="o", ms=4, color="0.3", elinewidth=0.8, label="models (mean ± std)")  # fmt: skip
        on_front = [m for m in mine if m["pareto"]]
        ax.plot(
            [m["wall_s"] for m in on_front], [m["test_kl"] for m in on_front], "-", color="C0", label="Pareto front"
        )
        for m in on_front:
            ax.annotate(m["model"], (m["wall_s"], m["test_kl"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        candidate = next(m for m in mine if m["candidate"])
        ax.scatter([candidate["wall_s"]], [candidate["test_kl"]], marker="*", s=160, color="C3", zorder=3,
                   label=f"candidate: {candidate['model']}")  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("wall time per run (s)")
        ax.set_ylabel("test KL (nats)")
        ax.set_title(panel, fontsize=10)
        ax.legend(fontsize=7)
        md += [
            f"### {panel}",
            "",
            _table(
                [
                    "model",
                    "seeds",
                    "test KL",
                    "wall s",
                    f"to KL ≤ {QUALITY_KL}: seeds, median training s",
                    "params",
                    "Pareto",
                ],
                [
                    [
                        ("★ " if m["candidate"] else "") + m["model"],
                        str(m["seeds"]),
                        _fmt(m["test_kl"], 4) + ("" if m["test_kl_std"] is None else f" ± {m['test_kl_std']:.2g}"),
                        f"{m['wall_s']:.0f}",
                        f"{m['reached_quality']}/{m['seeds']}"
                        + ("" if m["seconds_to_quality"] is None else f", {m['seconds_to_quality']:.0f}"),
                        str(m["params"]),
                        "yes" if m["pareto"] else "",
                    ]
                    for m in mine
                ],
            ),
            "",
        ]
    fig.tight_layout()
    png = out_dir / "frontier.png"
    fig.savefig(png, dpi=90)
    js = _write_json(out_dir / "frontier.json", {"models": models, "cells": cells})
    md.append(f"![cost/quality frontier]({png.name})")
    return "\n".join(md) + "\n", [png, js]


ANALYSES: dict[str, Analysis] = {
    "frontier": frontier,
    "learning_curves": learning_curves,
    "potentials": potentials,
    "representation": representation,
}
