"""``ehf study report DIR``: ``results.csv`` (one row per cell), ``results.md`` (mean ± std over seeds,
under-trained and missing cells marked) and PNG plots, under ``DIR/report/``."""

from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

from .runner import StudyFolder

__all__ = ["UNDER_TRAINED_FRACTION", "cell_rows", "write_report"]

#: a cell whose best validation falls in the last 10 % of its step cap may still have been improving
UNDER_TRAINED_FRACTION = 0.9
SEED_AXIS = "seed"

# (metrics.json key, column title, digits)
COLUMNS = [
    ("test/kl", "test KL", 3),
    ("test/kl_paired", "paired KL", 3),
    ("test/nll", "test NLL", 3),
    ("test/nll_gap", "test − train NLL", 3),
    ("test/invariance_error", "invariance error", 3),
    ("best_step", "best step", 0),
    ("wall_time_s", "wall s", 0),
]


def cell_rows(folder: StudyFolder) -> list[dict[str, Any]]:
    """One dict per cell: its axis values, state, ``under_trained``, and every metrics.json entry."""
    rows = []
    for st in folder.states():
        cell = st.cell
        row: dict[str, Any] = {"cell": cell.name, **cell.values, "state": st.state}
        path = folder.cell_dir(cell) / "metrics.json"
        if st.state == "done":
            row.update(json.loads(path.read_text()))
            best, cap = row.get("best_step"), row.get("max_steps")
            row["under_trained"] = bool(best is not None and cap and best > UNDER_TRAINED_FRACTION * cap)
            row["first_validation_best"] = bool(best is not None and best <= _val_interval(folder.cell_dir(cell)))
        rows.append(row)
    return rows


def _val_interval(run: Path) -> int:
    import yaml

    try:
        return int(yaml.safe_load((run / "config.yaml").read_text())["trainer"]["val_check_interval"])
    except (OSError, KeyError, TypeError, ValueError):
        return 0


def _fmt(x: Optional[float], digits: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}f}"


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def _groups(rows: list[dict[str, Any]], axes: list[str]) -> dict[tuple, list[dict[str, Any]]]:
    keys = [a for a in axes if a != SEED_AXIS]
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[a] for a in keys)].append(r)
    return groups


def _axis_number(folder: StudyFolder, axis: str, value: str) -> Optional[float]:
    """The numeric value behind a value name of a one-key axis (``n_train128`` -> 128), else None."""
    for a in folder.study.axes:
        if a.name == axis:
            ov = a.values.get(value, {})
            if len(ov) == 1:
                v = next(iter(ov.values()))
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    return float(v)
    return None


def _markdown_table(folder: StudyFolder, rows: list[dict[str, Any]]) -> list[str]:
    axes = [a.name for a in folder.study.axes]
    keys = [a for a in axes if a != SEED_AXIS]
    # the paired KL exists only on targets with a known density (and in runs that logged it)
    columns = [c for c in COLUMNS if c[0] != "test/kl_paired" or any(r.get(c[0]) is not None for r in rows)]
    head = [*keys, "seeds", *[title for _, title, _ in columns], "params"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, group in _groups(rows, axes).items():
        done = [r for r in group if r["state"] == "done"]
        good = [r for r in done if not r["under_trained"]]
        seeds = f"{len(good)}/{len(group)}"
        if len(done) > len(good):
            seeds += f" ({len(done) - len(good)} under-trained)"
        early = sum(bool(r.get("first_validation_best")) for r in good)
        if early:
            seeds += f" ({early} best at the 1st validation)"
        cells = []
        for metric, _, digits in columns:
            vals = [float(r[metric]) for r in good if r.get(metric) is not None]
            if not vals:
                cells.append("—")
            elif len(vals) == 1:
                cells.append(_fmt(vals[0], digits))
            else:
                m, s = _mean_std(vals)
                cells.append(f"{_fmt(m, digits)} ± {_fmt(s, digits)}")
        params = sorted({int(r["params"]) for r in done if r.get("params") is not None})
        lines.append("| " + " | ".join([*key, seeds, *cells, ", ".join(map(str, params)) or "—"]) + " |")
    return lines


def _paired(folder: StudyFolder, rows: list[dict[str, Any]]) -> list[str]:
    """Seed-by-seed comparisons ``report.pairs: [[A, B], ...]`` of two values of the ``compare`` axis, in
    every group of the other axes: in how many seeds A has the lower test KL and the smaller test − train
    gap than B, and the mean differences (A − B). Only seeds where both cells are done and not
    under-trained count."""
    rep = folder.study.report
    compare = rep.get("compare")
    present = {a.name: list(a.values) for a in folder.study.axes}  # in the study file's order
    pairs = [p for p in rep.get("pairs") or [] if compare and set(p) <= set(present.get(compare, []))]
    if not pairs:
        return []
    others = [a.name for a in folder.study.axes if a.name not in (compare, SEED_AXIS)]
    by_key = {(tuple(r[a] for a in others), r[compare], r.get(SEED_AXIS)): r for r in rows}
    lines = ["", "## Seed-by-seed comparisons", "",
             "Per group, over the seeds where both cells are done and not under-trained: how often the first method "
             "has the lower value, and the mean difference (first − second; negative favours the first).", "",
             "| " + " | ".join([*others, "comparison", "seeds", "lower test KL", "mean Δ KL", "smaller gap", "mean Δ gap"])
             + " |", "|" + "---|" * (len(others) + 6)]
    groups = sorted({k[0] for k in by_key}, key=lambda g: [present[a].index(v) for a, v in zip(others, g)])
    seeds = sorted({k[2] for k in by_key}, key=str)
    for first, second in pairs:
        for group in groups:
            both = []
            for seed in seeds:
                a, b = by_key.get((group, first, seed)), by_key.get((group, second, seed))
                if a and b and a["state"] == b["state"] == "done" and not a["under_trained"] and not b["under_trained"]:
                    both.append((a, b))
            cells = [f"{first} vs {second}", str(len(both))]
            for metric in ("test/kl", "test/nll_gap"):
                pairs_m = [(float(a[metric]), float(b[metric])) for a, b in both
                           if a.get(metric) is not None and b.get(metric) is not None]
                if pairs_m:
                    wins = sum(x < y for x, y in pairs_m)
                    cells += [f"{wins}/{len(pairs_m)}", f"{sum(x - y for x, y in pairs_m) / len(pairs_m):+.3f}"]
                else:
                    cells += ["—", "—"]
            lines.append("| " + " | ".join([*group, *cells]) + " |")
    return lines


def _plot(folder: StudyFolder, rows: list[dict[str, Any]], metric: str, ylabel: str, path: Path,
          log_y: bool = False) -> Optional[Path]:
    rep = folder.study.report
    x_axis, panel_axis, compare_axis = rep.get("x"), rep.get("panel"), rep.get("compare")
    if not x_axis:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_values = {a.name: list(a.values) for a in folder.study.axes}
    panels = axes_values.get(panel_axis, [None]) if panel_axis else [None]
    lines = axes_values.get(compare_axis, [None]) if compare_axis else [None]
    xs = axes_values[x_axis]
    numeric = all((_axis_number(folder, x_axis, v) or 0) > 0 for v in xs)
    fig, axs = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, panel in zip(axs[0], panels):
        positive = True  # a log axis only when every point of the panel is above 0
        for line in lines:
            px, py, pe, open_x, open_y = [], [], [], [], []
            for i, xv in enumerate(xs):
                sel = [r for r in rows if r[x_axis] == xv and (panel is None or r[panel_axis] == panel)
                       and (line is None or r[compare_axis] == line) and r["state"] == "done"
                       and r.get(metric) is not None]
                good = [float(r[metric]) for r in sel if not r["under_trained"]]
                x = _axis_number(folder, x_axis, xv) if numeric else float(i)
                if good:
                    m, s = _mean_std(good)
                    px.append(x), py.append(m), pe.append(s)
                for r in sel:
                    if r["under_trained"]:
                        open_x.append(x), open_y.append(float(r[metric]))
            positive &= all(y > 0 for y in py + open_y)
            color = f"C{lines.index(line) % 10}"  # one colour per line, for its means and its open circles
            if px:
                # on a log axis a bar reaching 0 or below is cut at a tenth of the mean
                low = [min(e, 0.9 * y) if log_y and y > 0 else e for y, e in zip(py, pe)]
                ax.errorbar(px, py, yerr=[low, pe], marker="o", ms=4, capsize=3, color=color,
                            label=str(line) if line else None)
            if open_x:  # drawn also when no cell of the line is good (a pilot study): the plot is never empty
                ax.scatter(open_x, open_y, facecolors="none", edgecolors=color, s=30,
                           label=None if px else f"{line} (under-trained)" if line else "under-trained")
        if numeric:
            ax.set_xscale("log", base=2)
        else:
            ax.set_xticks(range(len(xs)), xs, rotation=30)
        if log_y and positive:
            ax.set_yscale("log")
        ax.set_xlabel(x_axis)
        ax.set_ylabel(ylabel)
        if panel is not None:
            ax.set_title(str(panel))
        ax.grid(alpha=0.3)
    handles, labels = axs[0][0].get_legend_handles_labels()
    if labels:
        fig.legend(handles, labels, loc="center right", fontsize=8)
        fig.tight_layout(rect=(0, 0, 0.86, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _hardware() -> str:
    from ..system import hardware

    h = hardware()
    return (f"{h['cores']} CPU cores ({h['cpu']}), {h.get('gpu', 'no GPU')}, torch {h['torch']}, "
            f"Python {h['python']}")


def _split_statement(base: dict[str, Any]) -> str:
    frac = base.get("data.val_fraction")
    parts = []
    if base.get("data.regime") == "finite" and frac:
        parts.append(f"finite regime: of each cell's n_train samples, {frac:.0%} validate and the rest train "
                     "(a cell has seen n_train samples in all)")
    elif base.get("data.regime") == "finite":
        parts.append(f"finite regime: n_train training samples and {base.get('data.n_val', 1000)} fresh validation samples")
    else:
        parts.append("infinite regime: fresh samples every step")
    parts.append(f"test: {base.get('data.n_test', 5000)} held-out samples (fresh draws; for a pool target such as dw4, rows "
                 f"of its test pool), IWAE K = {base.get('eval.iw_samples', 256)}")
    if base.get("trainer.patience"):
        parts.append(f"validation every {base.get('trainer.val_check_interval', 500)} steps "
                     f"(K = {base.get('eval.val_iw_samples') or base.get('eval.iw_samples', 256)}); "
                     f"early stop after {base['trainer.patience']} validations without improvement; "
                     f"cap {base.get('trainer.max_steps', 2000)} steps; the best validation's checkpoint is tested")
    return "; ".join(parts) + "."


def _wandb_summary(folder: StudyFolder, rows: list[dict[str, Any]], columns: list[str], mode: str, out: Path) -> str:
    """One W&B run per report holding the ``results`` table (one row per cell), in the study's W&B mode."""
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    base = folder.study.base
    run = wandb.init(project=str(base.get("logger.wandb.project", "lightning_ehf")), entity=base.get("logger.wandb.entity"),
                     dir=str(out), mode=mode, job_type="study-report", group=folder.study.name,
                     name=f"study-{folder.study.name}-{folder.study.profile}",
                     config={"study": folder.study.name, "profile": folder.study.profile}, reinit="finish_previous")
    table = wandb.Table(columns=columns, data=[[_table_value(r.get(c)) for c in columns] for r in rows])
    run.log({"results": table})
    run_dir = str(Path(run.dir).parent)
    run.finish()
    return run_dir


def _table_value(v: Any) -> Any:
    return v if v is None or isinstance(v, (int, float, str, bool)) else str(v)


def write_report(folder: StudyFolder) -> dict[str, Any]:
    """Write ``DIR/report/{results.csv,results.md,*.png}`` (plus analyses named by the study file).
    Returns {"md": path, "csv": path, "files": [paths]}."""
    from .analyses import ANALYSES
    from .tuning import tuning_section

    out = folder.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = cell_rows(folder)
    files: list[Path] = []

    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    csv_path = out / "results.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    files.append(csv_path)

    manifest = json.loads((folder.root / "study.json").read_text())
    done = [r for r in rows if r["state"] == "done"]
    under = [r["cell"] for r in done if r["under_trained"]]
    wall = sum(float(r.get("wall_time_s") or 0) for r in done)
    md = [f"# Study `{folder.study.name}` (profile `{folder.study.profile}`)", ""]
    if folder.study.description:
        md += [folder.study.description, ""]
    md += [f"- command: `{manifest.get('command', '')}`",
           f"- cells: {len(done)} of {len(rows)} done"
           + (f"; **{len(rows) - len(done)} missing** (not in any mean)" if len(done) < len(rows) else ""),
           f"- data and budget: {_split_statement(folder.study.base)}",
           f"- hardware of this report: {_hardware()}",
           f"- training + test time summed over cells: {wall / 60:.1f} min",
           f"- mean ± std over seeds of the cells that are done and not under-trained; a cell is "
           f"*under-trained* when its best validation step lies in the last "
           f"{100 * (1 - UNDER_TRAINED_FRACTION):.0f} % of its step cap (it may still have been improving): "
           f"such cells are counted in `seeds` but left out of every mean and drawn as open circles. A cell whose "
           f"best step is its first validation is counted but flagged: its optimum may lie before that validation",
           ""]
    md += _markdown_table(folder, rows)
    if under:
        md += ["", f"Under-trained cells ({len(under)}): " + ", ".join(f"`{c}`" for c in under)]
    failed = [r["cell"] for r in rows if r["state"] == "failed"]
    if failed:
        md += ["", f"Failed cells ({len(failed)}): " + ", ".join(f"`{c}`" for c in failed)
               + f" (logs in `{folder.root / 'logs'}`)"]
    md += _paired(folder, rows)
    for metric, label, name, log_y in (("test/kl", "test KL (nats)", "kl", True),
                                       ("test/nll_gap", "test − train NLL (nats)", "gap", False),
                                       ("test/invariance_error", "invariance error", "invariance", False)):
        if any(r.get(metric) is not None for r in done):
            p = _plot(folder, rows, metric, label, out / f"{name}.png", log_y)
            if p is not None:
                files.append(p)
                md += ["", f"![{label}]({p.name})"]
    for name in folder.study.report.get("analyses") or []:
        section, extra = ANALYSES[name](folder, rows, out)
        md += ["", section]
        files += extra
    section, extra = tuning_section(folder, out)  # a tuned study: what each method chose
    md += section
    files += extra
    mode = str(folder.study.base.get("logger.wandb.mode", "offline"))
    if mode != "disabled":
        run_dir = _wandb_summary(folder, rows, columns, mode, out)
        md += ["", f"W&B summary table (`results`, {mode}): `{run_dir}`"
               + (" (upload with `wandb sync`)" if mode == "offline" else "")]
    md_path = out / "results.md"
    md_path.write_text("\n".join(md) + "\n")
    files.insert(1, md_path)
    return {"md": md_path, "csv": csv_path, "files": files}
