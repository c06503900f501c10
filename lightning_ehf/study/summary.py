"""The README's summary: every comparison of an EHF arm with its strongest peer in the studies' raw files.

For each group of cells that differ only in method and seed (one target at one training-set size), each
EHF arm (``ehf_dual``: the constraint; ``ehf_invariant``: invariance by construction; ``ehf_none`` only
against ``ehf_dual``) is paired by seed with the peer whose mean test KL is lowest there (``nsf``,
``nsf_aug`` or ``efm``). The verdict is read off the 95 % t-interval of the mean paired difference
``d_s = KL_EHF,s − KL_peer,s``: a win when the interval lies below 0, a loss when above, a tie (no difference
resolved) otherwise. All done cells count; cells a report flags are counted in the row, and a verdict that
rests on one is marked with ``*``.

``scripts/summary_table.py`` prints the table; a test keeps the README's copy equal to it.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .statistics import FLAGS, diverged_after_best, hit_cap, t_interval, under_trained

__all__ = [
    "SUMMARY_STUDIES",
    "Comparison",
    "compare_study",
    "markdown",
    "paired_interval",
    "row_flags",
    "step_cost_ratios",
]

#: the study folders under docs/studies/ whose comparisons the README summarises, in its order
SUMMARY_STUDIES = (
    "data_efficiency",
    "data_efficiency_particles2d_std",
    "data_efficiency_two_rings4d",
    "data_efficiency_dw4",
    "data_efficiency_dw4_sizes",
    "infinite_data",
    "potentials",
    "representation",
)
PEERS = ("nsf", "nsf_aug", "efm")
#: the EHF arms compared with the strongest peer of their group
ARMS = ("ehf_invariant", "ehf_dual")
#: the constraint's arm and the same flow without it
CONSTRAINT_ARM = ("ehf_dual", "ehf_none")


def _number(row: dict[str, Any], key: str) -> float | None:
    v = row.get(key)
    if v in (None, ""):
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _true(row: dict[str, Any], key: str) -> bool:
    return str(row.get(key, "")).strip().lower() == "true"


def row_flags(row: dict[str, Any], early_stopping: bool = True) -> list[str]:
    """The flags of a results.csv row (:mod:`.statistics`), in the reports' words: the row's own flag columns
    where its report wrote them, else recomputed from its columns. Rows written before ``best_val_nll``
    existed judge a blow-up by the last validation KL against the tested checkpoint's KL (different rows: a
    proxy); ``early_stopping`` says whether the study stopped early at all (else reaching the cap is the plan)."""
    best, cap = _number(row, "best_step"), _number(row, "max_steps")
    flags = {
        "under_trained": under_trained(None if best is None else int(best), None if cap is None else int(cap)),
        "first_validation_best": _true(row, "first_validation_best"),
    }
    if "hit_cap" in row:
        flags["hit_cap"] = _true(row, "hit_cap")
    else:
        metrics = {"stopped_early": _true(row, "stopped_early"), "steps": _number(row, "steps"), "max_steps": cap}
        flags["hit_cap"] = hit_cap(metrics, early_stopping)
    if "diverged_after_best" in row:
        flags["diverged_after_best"] = _true(row, "diverged_after_best")
    else:
        flags["diverged_after_best"] = diverged_after_best(_number(row, "val/kl"), _number(row, "test/kl"))
    return [FLAGS[name] for name in FLAGS if flags[name]]


def paired_interval(differences: list[float]) -> tuple[float, float, float]:
    """Mean of paired differences and its 95 % t-interval (``±inf`` with one pair)."""
    mean = sum(differences) / len(differences)
    interval = t_interval(differences)
    return (mean, *interval) if interval is not None else (mean, -math.inf, math.inf)


@dataclass(frozen=True)
class Comparison:
    """One row of the summary: ``arm`` against ``other`` on one group of cells, paired by seed."""

    source: str
    group: str
    arm: str
    other: str
    arm_kl: float
    other_kl: float
    mean: float
    low: float
    high: float
    seeds: int
    flagged: int

    @property
    def verdict(self) -> str:
        word = "win" if self.high < 0 else "loss" if self.low > 0 else "tie"
        return word + ("*" if self.flagged and word != "tie" else "")


def _groups(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, dict[str, dict[str, Any]]]]:
    keys = [a for a in _axis_names(rows) if a not in ("method", "seed")]
    out: dict[tuple, dict[str, dict[str, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r.get("state") == "done":
            out[tuple(r[k] for k in keys)][r["method"]][r.get("seed", "")] = r
    return out


def _axis_names(rows: list[dict[str, Any]]) -> list[str]:
    """The study's axes: the columns between ``cell`` and ``state`` of results.csv."""
    names = list(rows[0])
    return names[names.index("cell") + 1 : names.index("state")]


def _mean_kl(cells: dict[str, dict[str, Any]]) -> float:
    values = [v for v in (_number(r, "test/kl") for r in cells.values()) if v is not None]
    return sum(values) / len(values) if values else math.inf


def _compare(source: str, group: str, methods: dict, arm: str, other: str, early_stopping: bool) -> Comparison | None:
    seeds = sorted(set(methods[arm]) & set(methods[other]))
    pairs = [(methods[arm][s], methods[other][s]) for s in seeds]
    pairs = [(a, b) for a, b in pairs if _number(a, "test/kl") is not None and _number(b, "test/kl") is not None]
    if len(pairs) < 2:
        return None
    diffs = [_number(a, "test/kl") - _number(b, "test/kl") for a, b in pairs]  # type: ignore[operator]
    mean, low, high = paired_interval(diffs)
    flagged = sum(bool(row_flags(r, early_stopping)) for pair in pairs for r in pair)
    return Comparison(
        source,
        group,
        arm,
        other,
        sum(_number(a, "test/kl") for a, _ in pairs) / len(pairs),  # type: ignore[misc]
        sum(_number(b, "test/kl") for _, b in pairs) / len(pairs),
        mean,
        low,
        high,
        len(pairs),
        flagged,
    )  # type: ignore[misc]


def compare_study(path: Path, source: str | None = None) -> list[Comparison]:
    """The comparisons a study's ``results.csv`` holds (none when it has no peer or no EHF arm)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "method" not in rows[0]:
        return []
    source = source or str(path)
    early_stopping = any(_true(r, "stopped_early") for r in rows)  # no cell stopped early: a fixed budget
    out = []
    for key, methods in _groups(rows).items():
        group = " ".join(key)
        peers = [p for p in PEERS if p in methods]
        if peers:
            best_peer = min(peers, key=lambda p: _mean_kl(methods[p]))
            for arm in ARMS:
                if arm in methods:
                    out.append(_compare(source, group, methods, arm, best_peer, early_stopping))
        if all(m in methods for m in CONSTRAINT_ARM):
            out.append(_compare(source, group, methods, *CONSTRAINT_ARM, early_stopping))
    return [c for c in out if c is not None]


def step_cost_ratios(path: Path) -> list[float]:
    """Wall time per training step of each EHF cell over that of each peer cell with the same target, size and
    seed (validation included, as the cells ran)."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("state") == "done"]
    if not rows or "method" not in rows[0]:
        return []
    ratios = []
    for methods in _groups(rows).values():
        for seed in {s for cells in methods.values() for s in cells}:
            per_step = {
                m: float(cells[seed]["wall_time_s"]) / float(cells[seed]["steps"])
                for m, cells in methods.items()
                if seed in cells
            }
            ratios += [
                per_step[a] / per_step[p]
                for a in per_step
                if a.startswith("ehf")
                for p in PEERS
                if p in per_step and p != "efm"
            ]
    return ratios


def _signed(x: float) -> str:
    return "∞" if math.isinf(x) else f"{x:+.3f}"


def markdown(comparisons: Iterable[Comparison]) -> list[str]:
    """The summary table, one row per comparison."""
    lines = [
        "| study | cells | EHF arm | against | EHF KL | their KL | Δ KL [95 % CI] | seeds | flagged cells | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        ci = f"{c.mean:+.3f} [{_signed(c.low)}, {_signed(c.high)}]"
        lines.append(
            f"| {Path(c.source).parent.name} | {c.group or '—'} | {c.arm} | {c.other} | {c.arm_kl:.3f} | "
            f"{c.other_kl:.3f} | {ci} | {c.seeds} | {c.flagged} | {c.verdict} |"
        )
    return lines
