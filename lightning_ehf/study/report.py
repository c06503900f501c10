"""``ehf study report DIR``: ``results.csv`` (one row per cell, with its flags), ``results.md`` (mean ± std over
seeds beside all-cell means, flagged and missing cells marked, paired comparisons with t-intervals, feasibility of
constrained cells) and PNG plots, under ``DIR/report/``."""

from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from .runner import StudyFolder
from .statistics import (
    CONFIDENCE,
    DIVERGED_NATS,
    FEASIBLE_FACTOR,
    FLAGS,
    UNDER_TRAINED_FRACTION,
    cell_flags,
    is_flagged,
    mean_std,
    t_interval,
)

__all__ = ["UNDER_TRAINED_FRACTION", "cell_rows", "write_report"]

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
#: metrics whose mean over every done cell stands beside the mean over unflagged cells
ALL_DONE_METRICS = ("test/kl", "test/kl_paired")
ALL_DONE = "(all done)"
PAIRED_STDERR = "test/kl_paired_stderr"


def cell_rows(folder: StudyFolder) -> list[dict[str, Any]]:
    """One dict per cell: its axis values, state, ``model_kind``, every metrics.json entry and, for a done cell,
    its flags (``under_trained``, ``hit_cap``, ``diverged_after_best``, ``first_validation_best``),
    ``flagged``, ``best_val_nll`` and ``feasibility`` (see :mod:`.statistics`)."""
    rows = []
    for st in folder.states():
        cell = st.cell
        run = folder.cell_dir(cell)
        row: dict[str, Any] = {"cell": cell.name, **cell.values, "state": st.state}
        if st.state == "done":
            config = _saved_config(run)
            row["model_kind"] = (config.get("model") or {}).get("kind")
            metrics = json.loads((run / "metrics.json").read_text())
            row.update(metrics)
            row.update(cell_flags(metrics, config, run))
        rows.append(row)
    return rows


def _saved_config(run: Path) -> dict[str, Any]:
    """The run's config.yaml as plain containers (empty if missing or unreadable)."""
    import yaml

    try:
        config = yaml.safe_load((run / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def _fmt(x: float | None, digits: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}f}"


def _groups(rows: list[dict[str, Any]], axes: list[str]) -> dict[tuple, list[dict[str, Any]]]:
    keys = [a for a in axes if a != SEED_AXIS]
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[a] for a in keys)].append(r)
    return groups


def _axis_number(folder: StudyFolder, axis: str, value: str) -> float | None:
    """The numeric value behind a value name of a one-key axis (``n_train128`` -> 128), else None."""
    for a in folder.study.axes:
        if a.name == axis:
            ov = a.values.get(value, {})
            if len(ov) == 1:
                v = next(iter(ov.values()))
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    return float(v)
    return None


def _mean_cell(rows: list[dict[str, Any]], metric: str, digits: int) -> str:
    """``mean ± std`` of a metric over rows (one value: itself; none: —)."""
    vals = [float(r[metric]) for r in rows if r.get(metric) is not None]
    if not vals:
        return "—"
    if len(vals) == 1:
        return _fmt(vals[0], digits)
    m, s = mean_std(vals)
    return f"{_fmt(m, digits)} ± {_fmt(s, digits)}"


def _flag_counts(done: list[dict[str, Any]]) -> str:
    """How many of a group's done cells carry each flag: ``2 under-trained, 1 hit the cap`` (— if none)."""
    counts = [f"{n} {phrase}" for flag, phrase in FLAGS.items() if (n := sum(bool(r.get(flag)) for r in done))]
    return ", ".join(counts) or "—"


def _feasibility_cells(done: list[dict[str, Any]]) -> list[str]:
    """The group's cells within ``FEASIBLE_FACTOR`` of the tolerance (of those with a ratio), and the ratio's mean ± std."""
    ratios = [float(r["feasibility"]) for r in done if r.get("feasibility") is not None]
    if not ratios:
        return ["—", "—"]
    within = sum(x <= FEASIBLE_FACTOR for x in ratios)
    return [f"{within}/{len(ratios)}", _mean_cell(done, "feasibility", 2)]


def _markdown_table(folder: StudyFolder, rows: list[dict[str, Any]]) -> list[str]:
    axes = [a.name for a in folder.study.axes]
    keys = [a for a in axes if a != SEED_AXIS]
    # the paired KL exists only on targets with a known density (and in runs that logged it)
    columns = [c for c in COLUMNS if c[0] != "test/kl_paired" or any(r.get(c[0]) is not None for r in rows)]
    titles = []
    for metric, title, _ in columns:
        titles += [title, f"{title} {ALL_DONE}"] if metric in ALL_DONE_METRICS else [title]
    stderr = any(r.get(PAIRED_STDERR) is not None for r in rows)
    feasible = any(r.get("feasibility") is not None for r in rows)
    head = [
        *keys,
        "seeds",
        "flags",
        *titles,
        *(["paired KL row s.e."] if stderr else []),
        *([f"feasible (≤ {FEASIBLE_FACTOR}×)", "RMS/√ε"] if feasible else []),
        "params",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, group in _groups(rows, axes).items():
        done = [r for r in group if r["state"] == "done"]
        good = [r for r in done if not is_flagged(r)]
        cells = [f"{len(good)}/{len(group)}", _flag_counts(done)]
        for metric, _, digits in columns:
            cells.append(_mean_cell(good, metric, digits))
            if metric in ALL_DONE_METRICS:
                cells.append(_mean_cell(done, metric, digits))
        if stderr:  # the largest per-cell standard error over its test rows: the measurement's own noise
            errs = [float(r[PAIRED_STDERR]) for r in good if r.get(PAIRED_STDERR) is not None]
            cells.append(f"≤ {max(errs):.2g}" if errs else "—")
        cells += _feasibility_cells(done) if feasible else []
        params = sorted({int(r["params"]) for r in done if r.get("params") is not None})
        lines.append("| " + " | ".join([*key, *cells, ", ".join(map(str, params)) or "—"]) + " |")
    return lines


def _difference_cells(pairs: list[tuple[dict[str, Any], dict[str, Any]]], metric: str, wins: bool = True) -> list[str]:
    """Over seed pairs (A, B): how often A is lower (``wins``), the mean of A − B and its t-interval."""
    values = [
        (float(a[metric]), float(b[metric]))
        for a, b in pairs
        if a.get(metric) is not None and b.get(metric) is not None
    ]
    if not values:
        return ["—"] * (3 if wins else 2)
    diffs = [x - y for x, y in values]
    interval = t_interval(diffs)
    cells = [f"{sum(x < y for x, y in values)}/{len(values)}"] if wins else []
    return cells + [f"{sum(diffs) / len(diffs):+.3f}", f"[{interval[0]:+.3f}, {interval[1]:+.3f}]" if interval else "—"]


def _paired(folder: StudyFolder, rows: list[dict[str, Any]]) -> list[str]:
    """Seed-by-seed comparisons ``report.pairs: [[A, B], ...]`` of two values of the ``compare`` axis, in
    every group of the other axes: over the seeds where both cells are done and neither is flagged, in how many
    A has the lower test KL and the smaller test − train gap than B, the mean differences (A − B) and their
    t-intervals; then the KL difference again over every seed where both cells are done, flagged or not."""
    rep = folder.study.report
    compare = rep.compare
    present = {a.name: list(a.values) for a in folder.study.axes}  # in the study file's order
    pairs = [p for p in rep.pairs if compare and set(p) <= set(present.get(compare, []))]
    if not pairs:
        return []
    others = [a.name for a in folder.study.axes if a.name not in (compare, SEED_AXIS)]
    by_key = {(tuple(r[a] for a in others), r[compare], r.get(SEED_AXIS)): r for r in rows}
    ci = f"{CONFIDENCE:.0%} CI"
    head = [
        *others,
        "comparison",
        "seeds",
        "lower test KL",
        "mean Δ KL",
        f"{ci} Δ KL",
        "smaller gap",
        "mean Δ gap",
        f"{ci} Δ gap",
        "all done: seeds",
        "all done: mean Δ KL",
        f"all done: {ci} Δ KL",
    ]
    lines = [
        "",
        "## Seed-by-seed comparisons",
        "",
        "Per group, over the seeds where both cells are done and neither is flagged: how often the first method "
        "has the lower value, the mean difference (first − second; negative favours the first) and its "
        f"{CONFIDENCE:.0%} Student-t interval (n − 1 degrees of freedom; none below 2 seeds). A count of lower "
        "values is a sign count (its smallest one-sided p with n seeds is 2⁻ⁿ: 0.125 with 3), so a difference "
        "is supported only where its interval excludes 0. The last three columns repeat the KL difference over "
        "all seeds where both cells are done, flagged cells included.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    groups = sorted({k[0] for k in by_key}, key=lambda g: [present[a].index(v) for a, v in zip(others, g)])
    seeds = sorted({k[2] for k in by_key}, key=str)
    for first, second in pairs:
        for group in groups:
            done = [
                (a, b)
                for a, b in ((by_key.get((group, first, s)), by_key.get((group, second, s))) for s in seeds)
                if a and b and a["state"] == b["state"] == "done"
            ]
            clean = [(a, b) for a, b in done if not is_flagged(a) and not is_flagged(b)]
            cells = [
                f"{first} vs {second}",
                str(len(clean)),
                *_difference_cells(clean, "test/kl"),
                *_difference_cells(clean, "test/nll_gap"),
                str(len(done)),
                *_difference_cells(done, "test/kl", wins=False),
            ]
            lines.append("| " + " | ".join([*group, *cells]) + " |")
    return lines


def _plot(
    folder: StudyFolder, rows: list[dict[str, Any]], metric: str, ylabel: str, path: Path, log_y: bool = False
) -> Path | None:
    rep = folder.study.report
    x_axis, panel_axis, compare_axis = rep.x, rep.panel, rep.compare
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
                sel = [
                    r
                    for r in rows
                    if r[x_axis] == xv
                    and (panel is None or r[panel_axis] == panel)
                    and (line is None or r[compare_axis] == line)
                    and r["state"] == "done"
                    and r.get(metric) is not None
                ]
                good = [float(r[metric]) for r in sel if not is_flagged(r)]
                x = _axis_number(folder, x_axis, xv) if numeric else float(i)
                if good:
                    m, s = mean_std(good)
                    px.append(x), py.append(m), pe.append(s)
                for r in sel:
                    if is_flagged(r):
                        open_x.append(x), open_y.append(float(r[metric]))
            positive &= all(y > 0 for y in py + open_y)
            color = f"C{lines.index(line) % 10}"  # one colour per line, for its means and its open circles
            if px:
                # on a log axis a bar reaching 0 or below is cut at a tenth of the mean
                low = [min(e, 0.9 * y) if log_y and y > 0 else e for y, e in zip(py, pe)]
                ax.errorbar(
                    px, py, yerr=[low, pe], marker="o", ms=4, capsize=3, color=color, label=str(line) if line else None
                )
            if open_x:  # drawn also when no cell of the line is good (a pilot study): the plot is never empty
                ax.scatter(
                    open_x,
                    open_y,
                    facecolors="none",
                    edgecolors=color,
                    s=30,
                    label=None if px else f"{line} (flagged)" if line else "flagged",
                )
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
    return f"{h['cores']} CPU cores ({h['cpu']}), {h.get('gpu', 'no GPU')}, torch {h['torch']}, Python {h['python']}"


def _split_statement(base: dict[str, Any]) -> str:
    frac = base.get("data.val_fraction")
    parts = []
    if base.get("data.regime") == "finite" and frac:
        parts.append(
            f"finite regime: of each cell's n_train samples, {frac:.0%} validate and the rest train "
            "(a cell has seen n_train samples in all)"
        )
    elif base.get("data.regime") == "finite":
        parts.append(
            f"finite regime: n_train training samples and {base.get('data.n_val', 1000)} fresh validation samples"
        )
    else:
        parts.append("infinite regime: fresh samples every step")
    parts.append(
        f"test: {base.get('data.n_test', 5000)} held-out samples (fresh draws; for a pool target such as dw4, rows "
        f"of its test pool), IWAE K = {base.get('eval.iw_samples', 256)}"
    )
    if base.get("trainer.patience"):
        parts.append(
            f"validation every {base.get('trainer.val_check_interval', 500)} steps "
            f"(K = {base.get('eval.val_iw_samples') or base.get('eval.iw_samples', 256)}); "
            f"early stop after {base['trainer.patience']} validations without improvement; "
            f"cap {base.get('trainer.max_steps', 2000)} steps; the best validation's checkpoint is tested"
        )
    return "; ".join(parts) + "."


def _wandb_summary(folder: StudyFolder, rows: list[dict[str, Any]], columns: list[str], mode: str, out: Path) -> str:
    """One W&B run per report holding the ``results`` table (one row per cell), in the study's W&B mode."""
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    base = folder.study.base
    run = wandb.init(
        project=str(base.get("logger.wandb.project", "lightning_ehf")),
        entity=base.get("logger.wandb.entity"),
        dir=str(out),
        mode=mode,
        job_type="study-report",
        group=folder.study.name,
        name=f"study-{folder.study.name}-{folder.study.profile}",
        config={"study": folder.study.name, "profile": folder.study.profile},
        reinit="finish_previous",
    )
    table = wandb.Table(columns=columns, data=[[_table_value(r.get(c)) for c in columns] for r in rows])
    run.log({"results": table})
    run_dir = str(Path(run.dir).parent)
    run.finish()
    return run_dir


def _table_value(v: Any) -> Any:
    return v if v is None or isinstance(v, (int, float, str, bool)) else str(v)


#: the list of a flag's cells under the table
FLAG_LISTS = {
    "under_trained": "Under-trained cells",
    "hit_cap": "Cells that hit the cap",
    "diverged_after_best": "Cells that diverged after their best step",
    "first_validation_best": "Cells best at their first validation",
}
EXACT_MODELS = {"nsf": "NSF", "efm": "efm"}


def _flag_statement() -> str:
    return (
        f"a done cell is *flagged* when it is *under-trained* (best validation step ≥ "
        f"{UNDER_TRAINED_FRACTION:.0%} of its step cap: it may still have been improving), *hit the cap* (early "
        f"stopping was on and never fired), *diverged after best* (final validation NLL non-finite or more than "
        f"{DIVERGED_NATS:g} nat above the best one: the tested checkpoint predates a blow-up) or *best at the 1st "
        f"validation* (its optimum may lie before it). A flagged cell supports no claim: `seeds` counts the "
        f"unflagged cells of all, `flags` counts each flag over the done cells, each mean ± std (sample std over "
        f"seeds) is over unflagged cells and each column marked {ALL_DONE} over every done cell; plots draw "
        f"flagged cells as open circles"
    )


def _estimator_statement(done: list[dict[str, Any]]) -> str | None:
    """One sentence on the two estimators, when EHF cells sit beside exact-likelihood ones."""
    kinds = {r.get("model_kind") for r in done}
    exact = [name for kind, name in EXACT_MODELS.items() if kind in kinds]
    if "ehf" not in kinds or not exact:
        return None
    ks = sorted({int(r["iw_samples"]) for r in done if r.get("model_kind") == "ehf" and r.get("iw_samples")})
    return (
        f"estimators differ: EHF's test NLL and KL are importance-weighted (IWAE, K = "
        f"{', '.join(map(str, ks)) or 'eval.iw_samples'}) upper bounds on its NLL and KL (in expectation), "
        f"while {' and '.join(n + chr(39) + 's' for n in exact)} are exact likelihoods"
    )


def _feasibility_statement(done: list[dict[str, Any]]) -> str | None:
    ratios = [float(r["feasibility"]) for r in done if r.get("feasibility") is not None]
    if not ratios:
        return None
    within = sum(x <= FEASIBLE_FACTOR for x in ratios)
    return (
        f"feasibility of constrained cells (constraint.mode dual or penalty): RMS/√ε is the largest test "
        f"bracket RMS over generators ÷ √constraint.tolerance (the tolerance bounds the mean squared bracket, so "
        f"≤ 1 is feasible), as mean ± std over a group's done cells, flagged or not, beside how many of them are "
        f"within {FEASIBLE_FACTOR}× (in this study {within} of {len(ratios)} done constrained cells)"
    )


def _summary(folder: StudyFolder, rows: list[dict[str, Any]]) -> list[str]:
    """The bullet list above the table: command, cells, data and budget, hardware, time, flags, estimators."""
    manifest = json.loads((folder.root / "study.json").read_text())
    done = [r for r in rows if r["state"] == "done"]
    wall = sum(float(r.get("wall_time_s") or 0) for r in done)
    lines = [
        f"- command: `{manifest.get('command', '')}`",
        f"- cells: {len(done)} of {len(rows)} done"
        + (f"; **{len(rows) - len(done)} missing** (not in any mean)" if len(done) < len(rows) else ""),
        f"- data and budget: {_split_statement(folder.study.base)}",
        f"- hardware of this report: {_hardware()}",
        f"- training + test time summed over cells: {wall / 60:.1f} min",
        f"- {_flag_statement()}",
    ]
    if any(r.get(PAIRED_STDERR) is not None for r in done):
        lines.append(
            "- paired KL row s.e.: the largest standard error of one unflagged cell's paired KL over its test "
            "rows (the noise of a single measurement, beside the spread over seeds)"
        )
    lines += [f"- {s}" for s in (_feasibility_statement(done), _estimator_statement(done)) if s]
    return lines


def _flag_lists(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for flag, title in FLAG_LISTS.items():
        cells = [r["cell"] for r in rows if r["state"] == "done" and r.get(flag)]
        if cells:
            lines += ["", f"{title} ({len(cells)}): " + ", ".join(f"`{c}`" for c in cells)]
    return lines


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

    done = [r for r in rows if r["state"] == "done"]
    md = [f"# Study `{folder.study.name}` (profile `{folder.study.profile}`)", ""]
    if folder.study.description:
        md += [folder.study.description, ""]
    md += [*_summary(folder, rows), ""]
    md += _markdown_table(folder, rows)
    md += _flag_lists(rows)
    failed = [r["cell"] for r in rows if r["state"] == "failed"]
    if failed:
        md += [
            "",
            f"Failed cells ({len(failed)}): "
            + ", ".join(f"`{c}`" for c in failed)
            + f" (logs in `{folder.root / 'logs'}`)",
        ]
    md += _paired(folder, rows)
    for metric, label, name, log_y in (
        ("test/kl", "test KL (nats)", "kl", True),
        ("test/nll_gap", "test − train NLL (nats)", "gap", False),
        ("test/invariance_error", "invariance error", "invariance", False),
    ):
        if any(r.get(metric) is not None for r in done):
            p = _plot(folder, rows, metric, label, out / f"{name}.png", log_y)
            if p is not None:
                files.append(p)
                md += ["", f"![{label}]({p.name})"]
    for name in folder.study.report.analyses:
        section, extra = ANALYSES[name](folder, rows, out)
        md += ["", section]
        files += extra
    section, extra = tuning_section(folder, out)  # a tuned study: what each method chose
    md += section
    files += extra
    mode = str(folder.study.base.get("logger.wandb.mode", "offline"))
    if mode != "disabled":
        run_dir = _wandb_summary(folder, rows, columns, mode, out)
        md += [
            "",
            f"W&B summary table (`results`, {mode}): `{run_dir}`"
            + (" (upload with `wandb sync`)" if mode == "offline" else ""),
        ]
    md_path = out / "results.md"
    md_path.write_text("\n".join(md) + "\n")
    files.insert(1, md_path)
    return {"md": md_path, "csv": csv_path, "files": files}
