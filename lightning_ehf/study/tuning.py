"""A tuned study (``tune:`` in a study file or a profile): the same tuning budget for every method.

Stage 1, in ``DIR/tune/`` (an ordinary study folder: ``cells/``, ``logs/``, and ``choice.json`` once complete),
runs every configuration of every method's grid in every cell of the study's other axes, with the seed axis'
values replaced by the tuning seeds. Its cells are named like the study's, with the configuration before the
seed (``nsf-ring2d-n_train128-lr0.001_hidden64-seed100``). Stage 2, in ``DIR/cells/``, runs the study's own
cells (same names as an untuned study's), each with its method's chosen configuration on top of the axes'
overrides.

**Choice.** A *group* is a method and one value of each ``per`` axis. A configuration's score in a group is the
mean, over its tuning cells there (the tuning seeds, and the values of the axes not in ``per``), of each cell's
validation NLL at the checkpoint the run tests (:func:`tested_validation`): the lowest ``val/nll_iw{K}`` in its
``metrics.csv`` (K = ``eval.val_iw_samples``, else ``eval.iw_samples``), or, under ``constraint.selection=feasible``,
the NLL of the validation with the lowest ``val/selection``. No test metric is read. A cell that diverged (``ehf
train`` exit 3) scores +inf, is not run again, and its state reads *diverged*. A configuration whose tested
checkpoints all met the constraint ranks before one with an infeasible tested checkpoint (so the constrained arm
is tuned among equivariant flows where it has any), then the lowest score wins; a tie goes to the configuration
listed first. Scores compare configurations of one method only: EHF's validation NLL is an IWAE bound, NSF's is
exact.

**Size matching.** A ``matched`` method (``like`` an NSF method) gets, in each cell, the ``model.hidden`` among
:data:`MATCH_WIDTHS` whose NSF (at the cell's ``model.nsf_transforms``, ``model.nsf_bins``, ``model.depth``) has the
parameter count closest to that of ``params_of``'s chosen configuration in the same cell (the ``params`` of its
tuning cell). Its tuning cells exist once ``params_of`` has chosen, so stage 1 runs in two rounds.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EXIT_DIVERGED, UserError
from .runner import CellState, StudyFolder
from .spec import Axis, Cell, Study

__all__ = [
    "MATCH_WIDTHS",
    "TUNE_STAGE",
    "ConfigScore",
    "GroupChoice",
    "TuningFolder",
    "EvaluationFolder",
    "tuning_study",
    "tuning_folder",
    "evaluation_folder",
    "tested_validation",
    "validation_nll",
    "write_choice",
    "tuning_section",
]

TUNE_STAGE = "tune"  # DIR/tune: the first stage's folder
MATCH_WIDTHS = range(2, 1025)  # every width: a few parameters' resolution even for a small reference model
CONFIG = "config"  # the name of a tuning cell's configuration among its values


@dataclass
class ConfigScore:
    """One configuration of a group: its overrides and its score (None while a tuning cell is missing)."""

    name: str
    overrides: dict[str, Any]
    val_nll: float | None
    cells: int  # tuning cells scored
    diverged: int
    under_trained: int
    infeasible: int = 0  # tuning cells whose tested checkpoint missed the constraint (constraint.selection=feasible)


@dataclass
class GroupChoice:
    """A method at one value of each ``per`` axis: every configuration's score and the chosen one (None until
    every configuration is scored)."""

    method: str
    values: dict[str, str]
    configs: list[ConfigScore]
    chosen: str | None

    def config(self, name: str) -> ConfigScore:
        return next(c for c in self.configs if c.name == name)


def tuning_study(study: Study) -> Study:
    """The study as stage 1 runs it: the seed axis holds the tuning seeds."""
    assert study.tune is not None
    axes = [
        Axis("seed", {f"seed{s}": {"seed": s} for s in study.tune.seeds}) if a.name == "seed" else a for a in study.axes
    ]
    return dataclasses.replace(study, axes=axes)


def tested_validation(run: Path) -> tuple[float, bool]:
    """The validation NLL of the checkpoint a finished run tests, and whether that checkpoint met the constraint.

    The NLL is ``val/nll_iw{K}`` (K the validation's importance samples from the run's ``config.yaml``). A run
    with ``constraint.selection=feasible`` logs ``val/selection`` beside it and tests the validation whose score
    is lowest (:func:`~lightning_ehf.core.constraints.selection_score`); feasible unless that score is an
    infeasible one's. Any other run tests its lowest finite NLL and counts as feasible. +inf without one."""
    import yaml

    from ..core.constraints import is_infeasible_score

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    k = cfg["eval"].get("val_iw_samples") or cfg["eval"]["iw_samples"]
    column = f"val/nll_iw{k}"
    best: tuple[float, float] | None = None  # (ranking score, NLL)
    with open(run / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            nll, score = _number(row.get(column)), _number(row.get("val/selection"))
            if not math.isfinite(nll):
                continue
            rank = score if math.isfinite(score) else nll
            if best is None or rank < best[0]:
                best = (rank, nll)
    if best is None:
        return math.inf, True
    return best[1], not is_infeasible_score(best[0])


def validation_nll(run: Path) -> float:
    """The validation NLL of the checkpoint a finished run tests (:func:`tested_validation`)."""
    return tested_validation(run)[0]


def _number(text: str | None) -> float:
    try:
        return float(text or "nan")
    except ValueError:
        return math.nan


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class TuningFolder(StudyFolder):
    """Stage 1 (``DIR/tune``): its cells, their states (a cell that diverged is *diverged*, not failed: a
    result, not run again) and the choices they give."""

    def __init__(self, root: Path, tuned: Study) -> None:
        super().__init__(root, tuned, cells=[])
        self._choices: dict[tuple[str, ...], GroupChoice] | None = None

    def state(self, cell: Cell) -> CellState:
        st = super().state(cell)
        if st.state == "failed" and self._read_state(cell).get("rc") == EXIT_DIVERGED:
            return CellState(
                cell,
                "diverged",
                f"exit {EXIT_DIVERGED}: the configuration diverged (scored +inf); log {self.log_path(cell)}",
            )
        return st

    def group_key(self, values: dict[str, str]) -> tuple[str, ...]:
        assert self.study.tune is not None
        return (values["method"], *[values[a] for a in self.study.tune.per])

    def choices(self) -> dict[tuple[str, ...], GroupChoice]:
        """Every group's scores and choice, from the cells that are done or diverged (read on first use)."""
        if self._choices is not None:
            return self._choices
        from .statistics import under_trained

        tune = self.study.tune
        assert tune is not None
        # per tuning cell: (score, diverged, under-trained, infeasible)
        scored: dict[tuple[tuple[str, ...], str], list[tuple[float, bool, bool, bool]]] = {}
        missing: set[tuple[tuple[str, ...], str]] = set()
        for cell in self.cells:
            key = (self.group_key(cell.values), cell.values[CONFIG])
            st = self.state(cell)
            if st.state == "done":
                m = _read_json(self.cell_dir(cell) / "metrics.json")
                best, cap = m.get("best_step"), m.get("max_steps")
                under = under_trained(best, cap)
                nll, feasible = tested_validation(self.cell_dir(cell))
                scored.setdefault(key, []).append((nll, False, under, not feasible))
            elif st.state == "diverged":
                scored.setdefault(key, []).append((math.inf, True, False, False))
            else:
                missing.add(key)
        axes = {a.name: list(a.values) for a in self.study.axes}
        out: dict[tuple[str, ...], GroupChoice] = {}
        for method in axes["method"]:
            for combo in _product([axes[a] for a in tune.per]):
                values = dict(zip(tune.per, combo))
                key = (method, *combo)
                configs = []
                for name, overrides in tune.grids[method].items():
                    got = scored.get((key, name), [])
                    complete = bool(got) and (key, name) not in missing
                    configs.append(
                        ConfigScore(
                            name,
                            dict(overrides),
                            sum(s for s, *_ in got) / len(got) if complete else None,
                            len(got),
                            sum(d for _, d, _, _ in got),
                            sum(u for _, _, u, _ in got),
                            sum(i for *_, i in got),
                        )
                    )
                chosen = None
                if all(c.val_nll is not None for c in configs):
                    # finite before diverged, feasible before infeasible, then the lowest score (the first of equals)
                    best = min(configs, key=lambda c: (math.isinf(c.val_nll), c.infeasible > 0, c.val_nll))
                    if not math.isfinite(best.val_nll):
                        raise UserError(
                            f"tuning: every configuration of {method} at "
                            f"{', '.join(combo) or 'every cell'} diverged; widen its grid "
                            f"(tune.grids.{method}) and use a new --dir"
                        )
                    chosen = best.name
                out[key] = GroupChoice(method, values, configs, chosen)
        self._choices = out
        return out

    def complete(self) -> bool:
        return all(g.chosen is not None for g in self.choices().values())

    def chosen_overrides(
        self, values: dict[str, str], overrides: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """The overrides a cell with axis values ``values`` gets on top of the axes': ``overrides`` (default: its
        group's chosen configuration), and for a matched method the width that matches its reference; None
        while they are not known."""
        tune = self.study.tune
        assert tune is not None
        method = values["method"]
        if overrides is None:
            chosen = self.choices()[self.group_key(values)].chosen
            if chosen is None:
                return None
            overrides = tune.grids[method][chosen]
        extra = dict(overrides)
        if method in tune.matched:
            width = self._matched_width(values, extra)
            if width is None:
                return None
            extra["model.hidden"] = width
        return extra

    def _matched_width(self, values: dict[str, str], extra: dict[str, Any]) -> int | None:
        from ..config.load import load_config

        tune = self.study.tune
        assert tune is not None
        reference = tune.matched[values["method"]]["params_of"]
        ref_values = {**values, "method": reference}
        chosen = self.choices()[self.group_key(ref_values)].chosen
        if chosen is None:
            return None
        same = [a.name for a in self.study.axes if a.name != "seed"]
        params = next(
            (
                _read_json(self.cell_dir(c) / "metrics.json").get("params")
                for c in self.cells
                if c.values[CONFIG] == chosen
                and all(c.values[a] == ref_values[a] for a in same)
                and (self.cell_dir(c) / "metrics.json").is_file()
            ),
            None,
        )
        if params is None:
            return None
        seed = next(iter(next(a for a in self.study.axes if a.name == "seed").values))
        cell = self.study.cell({**{a: values[a] for a in same}, "seed": seed}, extra)
        cfg = load_config(self.study.config_files, cell.overrides)
        m = cfg.model
        return _matched_nsf_width(_model_dim(cfg), int(params), m.nsf_transforms, m.nsf_bins, m.depth)


@functools.cache
def _matched_nsf_width(dim: int, params: int, transforms: int, bins: int, depth: int) -> int:
    from ..baselines import nsf_width_for_params

    return nsf_width_for_params(dim, params, transforms, bins, depth, widths=MATCH_WIDTHS)


def _product(lists: list[list[str]]) -> list[tuple[str, ...]]:
    import itertools

    return list(itertools.product(*lists))


def _model_dim(cfg: Any) -> int:
    """The number of coordinates the model of ``cfg`` sees (after a centre-of-mass frame)."""
    from ..build import make_data_symmetry, make_frame, resolve_data_file
    from ..core.targets import make_target

    target = make_target(cfg.data.target) if cfg.data.target else None
    if target is not None:
        dim = target.dim
    else:
        from ..data.files import load_array

        cfg = resolve_data_file(cfg)
        dim = int(load_array(cfg.data.path).shape[1])
    symmetry = make_data_symmetry(cfg, dim, target)
    frame = make_frame(cfg, symmetry, target)
    return frame.dim if frame is not None else symmetry.dim


def tuning_folder(root: str | Path, study: Study) -> TuningFolder:
    """Stage 1 of the study in ``root`` as far as it is known: every configuration of every method's grid, and
    those of a matched method wherever its reference has chosen."""
    tune = study.tune
    assert tune is not None
    tuned = tuning_study(study)
    folder = TuningFolder(Path(root) / TUNE_STAGE, tuned)
    plain, matched = [], []
    for cell in tuned.cells():
        values = {k: v for k, v in cell.values.items() if k != "seed"}
        for name, overrides in tune.grids[values["method"]].items():
            named = {**values, CONFIG: name, "seed": cell.values["seed"]}
            (matched if values["method"] in tune.matched else plain).append((named, overrides))
    folder.cells = [tuned.cell(v, o) for v, o in plain]
    for named, overrides in matched:
        extra = folder.chosen_overrides(named, overrides)
        if extra is not None:
            folder.cells.append(tuned.cell(named, extra))
    folder._choices = None  # the matched cells' groups are scored anew
    return folder


class EvaluationFolder(StudyFolder):
    """Stage 2 (``DIR``): the study's cells with their chosen configurations once ``tuning`` is complete (until
    then its cells carry the axes' overrides alone and ``chosen`` is False)."""

    def __init__(self, root: str | Path, study: Study, tuning: TuningFolder) -> None:
        self.tuning = tuning
        self.chosen = tuning.complete()
        cells = None
        if self.chosen:
            cells = []
            for cell in study.cells():
                extra = tuning.chosen_overrides(cell.values)
                assert extra is not None
                cells.append(study.cell(cell.values, extra))
        super().__init__(root, study, cells)


def evaluation_folder(root: str | Path, study: Study) -> EvaluationFolder:
    return EvaluationFolder(root, study, tuning_folder(root, study))


def write_choice(folder: EvaluationFolder) -> Path:
    """``DIR/tune/choice.json``: per group, every configuration's score and the chosen one."""

    def finite(c: ConfigScore) -> dict[str, Any]:  # JSON has no infinity: a diverged score is null (see diverged)
        return {
            **dataclasses.asdict(c),
            "val_nll": c.val_nll if c.val_nll is not None and math.isfinite(c.val_nll) else None,
        }

    groups = [
        {"method": g.method, "values": g.values, "chosen": g.chosen, "configs": [finite(c) for c in g.configs]}
        for g in folder.tuning.choices().values()
    ]
    path = folder.tuning.root / "choice.json"
    path.write_text(
        json.dumps({"seeds": folder.study.tune.seeds if folder.study.tune else [], "groups": groups}, indent=2) + "\n"
    )
    return path


def _score(value: float | None) -> str:
    if value is None:
        return "—"
    return "∞ (diverged)" if math.isinf(value) else f"{value:.3f}"


def tuning_section(folder: StudyFolder, out: Path) -> tuple[list[str], list[Path]]:
    """The report's *Tuning* section (what each method chose, with the validation score of every configuration
    tried) and ``report/tuning.csv`` (one row per tuning cell); nothing for an untuned study."""
    if not isinstance(folder, EvaluationFolder) or folder.study.tune is None:
        return [], []
    tune, tuning = folder.study.tune, folder.tuning
    choices = tuning.choices()
    sizes = {len(g) for g in tune.grids.values()}
    k = folder.study.base.get("eval.val_iw_samples") or folder.study.base.get("eval.iw_samples")
    lines = [
        "",
        "## Tuning",
        "",
        f"Every method searched the same number of configurations ({', '.join(map(str, sorted(sizes)))}) on "
        f"tuning seed{'s' if len(tune.seeds) > 1 else ''} {', '.join(map(str, tune.seeds))} (not evaluation "
        "seeds), with the evaluation cells' data sizes, budget and stopping rule. A configuration's score is its "
        f"tuning cells' mean best validation NLL{f' (K = {k})' if k else ''}; no test metric is read. The lowest "
        f"score was chosen per {' × '.join(tune.per) or 'method'} and run on the evaluation seeds. Scores compare "
        "configurations of one method only (EHF's is an IWAE bound, NSF's exact). A constrained run with "
        "`constraint.selection=feasible` is scored at the checkpoint it tests, and a configuration whose tested "
        "checkpoints all met the constraint ranks first. † a tuning cell was under-trained (best step in the last "
        "10 % of the cap); ‡ a tuning cell's tested checkpoint missed the constraint (bracket RMS above 1.1 × √ε).",
        "",
    ]
    for name, spec in tune.matched.items():
        lines += [
            f"`{name}`: `{spec['like']}` whose width (`model.hidden`) gives, in each cell, the parameter count "
            f"of `{spec['params_of']}`'s chosen configuration.",
            "",
        ]
    lines += [
        "| " + " | ".join(["method", *tune.per, "chosen", "validation NLL of every configuration"]) + " |",
        "|" + "---|" * (len(tune.per) + 3),
    ]
    for g in choices.values():
        scores = ", ".join(
            f"{'**' if c.name == g.chosen else ''}`{c.name}` {_score(c.val_nll)}"
            f"{'†' if c.under_trained else ''}{'‡' if c.infeasible else ''}{'**' if c.name == g.chosen else ''}"
            for c in g.configs
        )
        lines.append(
            "| " + " | ".join([g.method, *g.values.values(), f"`{g.chosen}`" if g.chosen else "—", scores]) + " |"
        )
    lines += _size_matching(folder)

    rows = []
    for st in tuning.states():
        cell = st.cell
        m = _read_json(tuning.cell_dir(cell) / "metrics.json") if st.state == "done" else {}
        nll, feasible = tested_validation(tuning.cell_dir(cell)) if st.state == "done" else (None, None)
        group = choices[tuning.group_key(cell.values)]
        # the cell's own overrides: a matched method's width is not in its grid
        given = dict(item.split("=", 1) for item in cell.overrides)
        tuned = {
            k: given[k]
            for k in dict.fromkeys([*group.config(cell.values[CONFIG]).overrides, "model.hidden"])
            if k in given
        }
        rows.append(
            {
                "cell": cell.name,
                **cell.values,
                "state": st.state,
                "val_nll": nll if st.state == "done" else (math.inf if st.state == "diverged" else None),
                "feasible": feasible,
                "chosen": cell.values[CONFIG] == group.chosen,
                "best_step": m.get("best_step"),
                "max_steps": m.get("max_steps"),
                "params": m.get("params"),
                **tuned,
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tuning.csv"
    columns: list[str] = []
    for r in rows:
        columns += [c for c in r if c not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines += ["", f"Every tuning cell: `{path.name}`; per group: `{tuning.root / 'choice.json'}`."]
    return lines, [path]


def _size_matching(folder: EvaluationFolder) -> list[str]:
    """Parameter counts of each matched method's evaluation cells against their reference's (from metrics.json)."""
    tune = folder.study.tune
    assert tune is not None
    params = {}
    for cell in folder.cells:
        m = _read_json(folder.cell_dir(cell) / "metrics.json")
        if m.get("params") is not None:
            params[tuple(sorted(cell.values.items()))] = int(m["params"])
    lines = []
    for name, spec in tune.matched.items():
        ratios = []
        for key, n in params.items():
            values = dict(key)
            if values["method"] == name:
                ref = params.get(tuple(sorted({**values, "method": spec["params_of"]}.items())))
                if ref:
                    ratios.append(n / ref)
        if ratios:
            lines += [
                "",
                f"Size matching: `{name}` has {min(ratios):.2f}–{max(ratios):.2f}× the parameters of "
                f"`{spec['params_of']}` in the same cell ({len(ratios)} pairs of cells).",
            ]
    return lines
