"""Tuned studies (``tune:``, :mod:`lightning_ehf.study.tuning`): the section's checks, the choice (lowest
validation NLL, test metrics never read, a diverged configuration scored +inf), the size-matched NSF, and one tiny
tuned study end to end (both stages, rerun, status, report)."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from test_study import ROOT, study, write_study

from lightning_ehf.errors import EXIT_DIVERGED, ConfigError, UserError
from lightning_ehf.study.spec import load_study

SHIPPED = ROOT / "configs" / "study" / "data_efficiency.yaml"

# two configurations per method; nsf_matched's width follows ehf_dual's choice
E2E_TUNE = {
    "seeds": [7],
    "grids": {
        "ehf_dual": {"setting": [{"optim.lr": 0.01, "model.hidden": 16}, {"optim.lr": 1e-9, "model.hidden": 8}]},
        "nsf": {"optim.lr": [0.01, 1e-9]},
        "nsf_matched": {"optim.lr": [0.01], "model.nsf_transforms": [1, 2]},
    },
    "matched": {"nsf_matched": {"like": "nsf", "params_of": "ehf_dual"}},
}
E2E_AXES = {"method": ["ehf_dual", "nsf"], "seed": {"key": "seed", "values": [0, 1]}}
E2E_METHODS = ["ehf_dual", "nsf", "nsf_matched"]


def tuned_study(path: Path, tune: dict, axes: dict | None = None, **top) -> Path:
    return write_study(path, "tuned", axes or E2E_AXES, {"data.target": "ring2d"}, tune=tune, **top)


# -- the tune section ------------------------------------------------------------------------------


def test_grids_expand_to_named_configurations_and_matched_methods_join_the_method_axis(tmp_path):
    tune = {
        "seeds": [5],
        "grids": {
            "ehf_dual": {"optim.lr": [0.001, 0.003], "model.hidden": [32, 64]},
            "nsf": {
                "optim.lr": [0.001, 0.003],
                "shape": [
                    {"model.nsf_transforms": 4, "model.nsf_bins": 8},
                    {"model.nsf_transforms": 8, "model.nsf_bins": 16},
                ],
            },
            "nsf_matched": {"optim.lr": [0.001, 0.003, 0.01, 0.03]},
        },
        "matched": {"nsf_matched": {"like": "nsf", "params_of": "ehf_dual"}},
    }
    axes = {"method": E2E_AXES["method"], "n": {"key": "data.n_train", "values": [64, 128]}, "seed": E2E_AXES["seed"]}
    s = load_study(tuned_study(tmp_path / "t.yaml", tune, axes))
    assert s.tune.seeds == [5] and s.tune.per == ["n"]  # default: every axis but method and seed
    assert list(s.tune.grids["ehf_dual"]) == [
        "lr0.001_hidden32",
        "lr0.001_hidden64",
        "lr0.003_hidden32",
        "lr0.003_hidden64",
    ]
    assert s.tune.grids["nsf"]["lr0.003_nsf_transforms8_nsf_bins16"] == {
        "optim.lr": 0.003,
        "model.nsf_transforms": 8,
        "model.nsf_bins": 16,
    }
    assert [a.values for a in s.axes if a.name == "method"][0]["nsf_matched"]["model.kind"] == "nsf"
    names = [c.name for c in s.cells()]
    assert len(names) == 3 * 2 * 2 and "nsf_matched-n_train128-seed1" in names


def test_shipped_tuned_profile_gives_every_method_eight_configurations():
    from lightning_ehf.study.tuning import tuning_folder

    s = load_study(SHIPPED, "tuned")
    methods = ["ehf_dual_feasible", "ehf_invariant", "nsf", "nsf_aug", "efm", "nsf_matched"]
    assert {m: len(g) for m, g in s.tune.grids.items()} == dict.fromkeys(methods, 8)
    assert s.tune.per == ["target", "n_train"] and s.tune.matched == {
        "nsf_matched": {"like": "nsf", "params_of": "ehf_dual_feasible"}
    }
    assert len(s.cells()) == 6 * 2 * 2 * 5  # methods × targets × sizes × evaluation seeds
    assert not set(s.tune.seeds) & {int(c.values["seed"][4:]) for c in s.cells()}
    # before anything ran, stage 1 holds every method but the matched one (its width waits for ehf_dual's choice)
    tuning = tuning_folder(Path("/nonexistent"), s)
    assert len(tuning.cells) == 5 * 2 * 2 * 8
    cell = next(
        c
        for c in tuning.cells
        if c.name == "nsf-particles2d-n_train1024-lr0.003_hidden64_nsf_transforms8_nsf_bins16-seed100"
    )
    # the grid's width replaces the target's model.hidden: 128
    assert "model.hidden=64" in cell.overrides and "model.hidden=128" not in cell.overrides
    assert "seed=100" in cell.overrides and "model.nsf_bins=16" in cell.overrides
    for cell in tuning.cells[::13]:  # a spread of the tuning cells validate as configs
        cfg = tuning.config(cell)
        assert cfg["seed"] == 100 and cfg["model"]["hidden"] in (64, 128)
    assert load_study(SHIPPED, "quick").tune is None  # the other profiles stay untuned


BAD_TUNES = {
    "unequal_counts": (
        {"grids": {"ehf_dual": {"optim.lr": [0.1, 0.01]}, "nsf": {"optim.lr": [0.1]}}},
        "every method gets the same number of configurations; ehf_dual has 2, nsf has 1",
    ),
    "missing_grid": ({"grids": {"ehf_dual": {"optim.lr": [0.1]}}}, "has no grid for the method 'nsf'"),
    "unknown_method": (
        {"grids": {"ehf_dual": {"optim.lr": [0.1]}, "nsf": {"optim.lr": [0.1]}, "flowy": {"optim.lr": [0.1]}}},
        "grids.flowy: is not a method of the study",
    ),
    "seed_shared": ({"seeds": [1], "grids": {}}, "1 is also an evaluation seed"),
    "method_key": (
        {"grids": {"ehf_dual": {"constraint.mode": ["dual"]}, "nsf": {"optim.lr": [0.1]}}},
        "constraint.mode is the method's own key",
    ),
    "axis_key": (
        {"grids": {"ehf_dual": {"seed": [3]}, "nsf": {"optim.lr": [0.1]}}},
        "seed is set by an axis for every cell",
    ),
    "matched_width": (
        {
            "grids": {"ehf_dual": {"optim.lr": [0.1]}, "nsf": {"optim.lr": [0.1]}, "m": {"model.hidden": [8]}},
            "matched": {"m": {"like": "nsf", "params_of": "ehf_dual"}},
        },
        "model.hidden is set by the size matching",
    ),
    "matched_not_nsf": (
        {"grids": {}, "matched": {"m": {"like": "ehf_dual", "params_of": "ehf_dual"}}},
        "matched.m.like: 'ehf_dual' is not an NSF method",
    ),
    "per_not_an_axis": ({"per": ["target"], "grids": {}}, "per: must be a list of distinct axes out of []"),
    "unknown_key": ({"grid": {}}, "a tune section is a mapping with grids"),
    "mixed_factor": (
        {"grids": {"ehf_dual": {"x": [{"optim.lr": 0.1}, 0.2]}, "nsf": {"optim.lr": [0.1]}}},
        "a list of plain values, or a list of mappings",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TUNES))
def test_bad_tune_sections_raise_config_error_naming_the_key(tmp_path, case):
    tune, message = BAD_TUNES[case]
    with pytest.raises(ConfigError) as info:
        load_study(tuned_study(tmp_path / "bad.yaml", tune))
    assert message in str(info.value) and "tune" in str(info.value) and "\n" not in str(info.value)


def test_a_tuned_key_on_the_command_line_and_a_study_without_a_seed_axis_are_refused(tmp_path):
    tune = {"grids": {"ehf_dual": {"optim.lr": [0.1]}, "nsf": {"optim.lr": [0.2]}}}
    f = tuned_study(tmp_path / "t.yaml", tune)
    with pytest.raises(ConfigError, match="optim.lr: is tuned by the study's tune section"):
        load_study(f, extra=["optim.lr=0.5"])
    with pytest.raises(ConfigError, match="needs a seed axis"):
        load_study(tuned_study(tmp_path / "n.yaml", tune, {"method": ["ehf_dual", "nsf"]}))
    # a mapping axis' key that some of its values set may be tuned, also in a profile that keeps only those
    axes = {
        "method": ["ehf_dual", "nsf"],
        "target": {"ring2d": {"data.target": "ring2d"}, "wide": {"data.target": "ring2d", "model.hidden": 32}},
        "seed": E2E_AXES["seed"],
    }
    f = tuned_study(
        tmp_path / "w.yaml",
        {"grids": {"ehf_dual": {"model.hidden": [8]}, "nsf": {"model.hidden": [8]}}},
        axes,
        profiles={"wide": {"axes": {"target": ["wide"]}}},
    )
    from lightning_ehf.study.tuning import tuning_folder

    cells = tuning_folder(tmp_path / "w", load_study(f, "wide")).cells
    assert cells and all("model.hidden=8" in c.overrides and "model.hidden=32" not in c.overrides for c in cells)
    # a profile's tune section replaces the file's; tune: null turns it off
    f = tuned_study(tmp_path / "p.yaml", tune, profiles={"tuned": {}, "plain": {"tune": None}})
    assert load_study(f, "tuned").tune is not None and load_study(f, "plain").tune is None


def test_cli_bad_tune_section_exits_2_with_one_line(tmp_path):
    f = tuned_study(tmp_path / "bad.yaml", BAD_TUNES["unequal_counts"][0])
    r = study("run", "-c", f, "--dir", tmp_path / "d", cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "every method gets the same number of configurations" in lines[0]
    assert not (tmp_path / "d").exists()


# -- the choice, on run folders written by hand ------------------------------------------------------


def _fake_run(
    run: Path, val: list[float], test_nll: float, val_k: int = 8, selection: list[float] | None = None
) -> None:
    """A finished run folder: a config, a metrics.csv with validation and test rows, and a metrics.json.
    ``selection``: the ``val/selection`` score of each validation (a ``constraint.selection=feasible`` run)."""
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"eval": {"val_iw_samples": val_k, "iw_samples": 4}}))
    with open(run / "metrics.csv", "w", newline="") as f:
        columns = ["step", f"val/nll_iw{val_k}", "val/nll_iw4", "val/selection", "test/nll_iw4", "test/kl"]
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for i, v in enumerate(val):
            # a column of another K must not count: it is lower than every value of the right one
            row = {"step": 10 * (i + 1), f"val/nll_iw{val_k}": v, "val/nll_iw4": v - 100}
            w.writerow({**row, "val/selection": selection[i]} if selection else row)
        w.writerow({"step": 10 * len(val), "test/nll_iw4": test_nll, "test/kl": test_nll})
    (run / "metrics.json").write_text(
        json.dumps({"test/nll": test_nll, "test/kl": test_nll, "best_step": 10, "max_steps": 100, "params": 100})
    )


def test_choice_is_the_lowest_mean_best_validation_nll_and_never_reads_test_metrics(tmp_path):
    from lightning_ehf.study.tuning import evaluation_folder, tuning_folder, validation_nll

    tune = {
        "seeds": [7, 8],
        "grids": {"ehf_dual": {"optim.lr": [0.1, 0.01, 0.001]}, "nsf": {"optim.lr": [0.1, 0.01, 0.001]}},
    }
    s = load_study(
        tuned_study(
            tmp_path / "t.yaml",
            tune,
            {
                "method": E2E_AXES["method"],
                "target": {"ring2d": {"data.target": "ring2d"}, "gmm8": {"data.target": "gmm8"}},
                "seed": E2E_AXES["seed"],
            },
        )
    )
    folder = tuning_folder(tmp_path / "d", s)
    assert len(folder.cells) == 2 * 2 * 3 * 2
    # per (method, target) and configuration: the best validation of each tuning seed; the test NLL ranks the
    # configurations the other way round
    best = {
        ("ehf_dual", "ring2d"): {"lr0.1": (1.0, 1.2), "lr0.01": (0.9, 1.0), "lr0.001": (2.0, 0.5)},
        ("ehf_dual", "gmm8"): {"lr0.1": (0.3, 0.3), "lr0.01": (0.4, 0.4), "lr0.001": (0.5, 0.5)},
        ("nsf", "ring2d"): {"lr0.1": (3.0, 3.0), "lr0.01": (3.0, 3.0), "lr0.001": (2.9, 3.2)},
        ("nsf", "gmm8"): {"lr0.1": (1.0, 1.0), "lr0.01": (1.0, 1.0), "lr0.001": (1.5, 1.5)},
    }
    for cell in folder.cells:
        v = cell.values
        seed = [7, 8].index(int(v["seed"][4:]))
        score = best[(v["method"], v["target"])][v["config"]][seed]
        _fake_run(folder.cell_dir(cell), [score + 0.5, score, score + 0.2], test_nll=-score)
    assert validation_nll(folder.cell_dir(folder.cells[0])) == pytest.approx(1.0)
    chosen = {k: g.chosen for k, g in tuning_folder(tmp_path / "d", s).choices().items()}
    # means: ring2d ehf_dual 1.1, 0.95, 1.25; nsf ring2d 3.0, 3.0, 3.05 (a tie goes to the first listed)
    assert chosen == {
        ("ehf_dual", "ring2d"): "lr0.01",
        ("ehf_dual", "gmm8"): "lr0.1",
        ("nsf", "ring2d"): "lr0.1",
        ("nsf", "gmm8"): "lr0.1",
    }
    group = tuning_folder(tmp_path / "d", s).choices()[("ehf_dual", "ring2d")]
    assert [c.val_nll for c in group.configs] == pytest.approx([1.1, 0.95, 1.25])
    assert [c.cells for c in group.configs] == [2, 2, 2]

    # test metrics removed from every file: the same choice
    for cell in folder.cells:
        run = folder.cell_dir(cell)
        (run / "metrics.json").write_text(json.dumps({"best_step": 10, "max_steps": 100, "params": 100}))
        with open(run / "metrics.csv", newline="") as f:
            rows = [{k: v for k, v in r.items() if not k.startswith("test/")} for r in csv.DictReader(f)]
        with open(run / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    assert {k: g.chosen for k, g in tuning_folder(tmp_path / "d", s).choices().items()} == chosen

    # stage 2: the study's cells, each with its group's choice on top of the axes'
    ev = evaluation_folder(tmp_path / "d", s)
    assert ev.chosen and [c.name for c in ev.cells] == [c.name for c in s.cells()]
    cell = next(c for c in ev.cells if c.name == "ehf_dual-ring2d-seed1")
    assert cell.overrides[-1] == "optim.lr=0.01" and "seed=1" in cell.overrides


def test_feasible_selection_is_scored_at_its_tested_checkpoint_and_feasible_configurations_rank_first(tmp_path):
    from lightning_ehf.core.constraints import INFEASIBLE_OFFSET, selection_score
    from lightning_ehf.study.tuning import tested_validation, tuning_folder

    def feasible(nll: float) -> float:
        return selection_score(nll, 1.0)

    def infeasible(nll: float) -> float:
        return selection_score(nll, 2.0)

    grid = {"optim.lr": [0.1, 0.01, 0.001]}
    tune = {"seeds": [7], "grids": {"ehf_dual": grid, "nsf": grid}}
    s = load_study(tuned_study(tmp_path / "t.yaml", tune))
    folder = tuning_folder(tmp_path / "d", s)
    runs = {
        # its lowest NLL (0.5) was infeasible; the run tests its feasible 0.9: scored 0.9, feasible
        "lr0.1": ([2.0, 0.5, 0.9], [infeasible(2.0), infeasible(0.5), feasible(0.9)]),
        # never feasible: the run tests its lowest NLL, 0.3, which would win on NLL alone
        "lr0.01": ([1.0, 0.3], [infeasible(1.0), infeasible(0.3)]),
        # feasible throughout, 1.2: worse than lr0.1
        "lr0.001": ([1.5, 1.2], [feasible(1.5), feasible(1.2)]),
    }
    for cell in folder.cells:
        val, selection = runs[cell.values["config"]] if cell.values["method"] == "ehf_dual" else ([1.0], None)
        _fake_run(folder.cell_dir(cell), val, test_nll=0.0, selection=selection)
    scores = {
        c.values["config"]: tested_validation(folder.cell_dir(c)) for c in folder.cells if c.values["method"] != "nsf"
    }
    assert scores == {"lr0.1": (0.9, True), "lr0.01": (0.3, False), "lr0.001": (1.2, True)}
    assert infeasible(0.3) >= INFEASIBLE_OFFSET
    group = tuning_folder(tmp_path / "d", s).choices()[("ehf_dual",)]
    assert group.chosen == "lr0.1"
    assert [(c.val_nll, c.infeasible) for c in group.configs] == [(0.9, 0), (0.3, 1), (1.2, 0)]
    # with no feasible configuration left, the lowest NLL wins among the infeasible ones
    for cell in folder.cells:
        if cell.values["config"] != "lr0.01" and cell.values["method"] == "ehf_dual":
            shutil.rmtree(folder.cell_dir(cell))
            val = runs[cell.values["config"]][0]
            _fake_run(folder.cell_dir(cell), val, test_nll=0.0, selection=[infeasible(v) for v in val])
    assert tuning_folder(tmp_path / "d", s).choices()[("ehf_dual",)].chosen == "lr0.01"


def test_a_diverged_configuration_scores_infinity_and_is_not_run_again(tmp_path):
    from lightning_ehf.study.tuning import tuning_folder

    tune = {"seeds": [7], "grids": {"ehf_dual": {"optim.lr": [10.0, 0.01]}, "nsf": {"optim.lr": [10.0, 0.01]}}}
    s = load_study(tuned_study(tmp_path / "t.yaml", tune))
    folder = tuning_folder(tmp_path / "d", s)
    for cell in folder.cells:
        if cell.values["config"] == "lr10.0":  # exit 3 after some validations: its last val rows do not count
            folder.cell_dir(cell).mkdir(parents=True)
            folder._write_state(cell, state="failed", rc=EXIT_DIVERGED)
        else:
            _fake_run(folder.cell_dir(cell), [5.0, 4.0], test_nll=0.0)
    assert tuning_folder(tmp_path / "d", s).complete()
    states = {c.values["config"]: tuning_folder(tmp_path / "d", s).state(c).state for c in folder.cells}
    assert states == {"lr10.0": "diverged", "lr0.01": "done"}
    choices = tuning_folder(tmp_path / "d", s).choices()
    assert {k: g.chosen for k, g in choices.items()} == {("ehf_dual",): "lr0.01", ("nsf",): "lr0.01"}
    assert math.isinf(choices[("nsf",)].configs[0].val_nll) and choices[("nsf",)].configs[0].diverged == 1
    # every configuration diverged: no choice, and the message says what to do
    for cell in folder.cells:
        shutil.rmtree(folder.cell_dir(cell))
        folder._write_state(cell, state="failed", rc=EXIT_DIVERGED)
    with pytest.raises(UserError, match="every configuration of ehf_dual .* diverged; widen its grid"):
        tuning_folder(tmp_path / "d", s).choices()


def test_size_matched_width_is_the_closest_parameter_count():
    from lightning_ehf.baselines import NSFModel, nsf_width_for_params
    from lightning_ehf.core import no_symmetry

    def count(hidden: int) -> int:
        return sum(p.numel() for p in NSFModel(no_symmetry(4), 2, 6, hidden, 2).parameters())

    for target in (900, 5_000, 40_000):
        width = nsf_width_for_params(4, target, transforms=2, bins=6, depth=2, widths=range(2, 1025))
        assert abs(count(width) - target) <= min(abs(count(width - 1) - target), abs(count(width + 1) - target))
        assert abs(count(width) / target - 1) < 0.05


# -- end to end -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tuned")
    spec = tuned_study(tmp / "tuned.yaml", E2E_TUNE, report={"x": "seed", "compare": "method"})
    d = tmp / "study"
    r = study("run", "-c", spec, "--dir", d, "--workers", 2, "--cores", 2, cwd=tmp, timeout=900)
    return SimpleNamespace(tmp=tmp, spec=spec, dir=d, run=r)


def _best_val(run: Path) -> float:
    """The lowest validation NLL of a run, read here from its metrics.csv (validation at K = 8)."""
    with open(run / "metrics.csv", newline="") as f:
        return min(float(r["val/nll_iw8"]) for r in csv.DictReader(f) if r.get("val/nll_iw8"))


@pytest.mark.slow
def test_tuned_study_runs_every_configuration_then_the_lowest_validation_nll(tuned):
    r = tuned.run
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all cells done" in r.stdout and (tuned.dir / "tune" / "choice.json").is_file()
    tune_cells = sorted(p.name for p in (tuned.dir / "tune" / "cells").iterdir())
    # the same number of configurations for every method, on the tuning seed only
    assert {m: sum(c.startswith(f"{m}-") for c in tune_cells) for m in E2E_METHODS} == dict.fromkeys(E2E_METHODS, 2)
    assert all(c.endswith("-seed7") for c in tune_cells)
    assert sorted(p.name for p in (tuned.dir / "cells").iterdir()) == sorted(
        f"{m}-seed{s}" for m in E2E_METHODS for s in (0, 1)
    )
    for method in E2E_METHODS:
        runs = {
            c.split("-", 1)[1][: -len("-seed7")]: tuned.dir / "tune" / "cells" / c
            for c in tune_cells
            if c.split("-", 1)[0] == method
        }
        best = min(runs, key=lambda name: _best_val(runs[name]))
        assert re.search(rf"chose {method}\s+{re.escape(best)}  \(validation NLL", r.stdout), r.stdout
        chosen_cfg = yaml.safe_load((runs[best] / "config.yaml").read_text())
        for seed in (0, 1):
            cfg = yaml.safe_load((tuned.dir / "cells" / f"{method}-seed{seed}" / "config.yaml").read_text())
            assert cfg["seed"] == seed
            for section, key in (("optim", "lr"), ("model", "hidden"), ("model", "nsf_transforms")):
                assert cfg[section][key] == chosen_cfg[section][key], (method, key)
    choice = json.loads((tuned.dir / "tune" / "choice.json").read_text())
    for group in choice["groups"]:
        scores = {c["name"]: c["val_nll"] for c in group["configs"]}
        assert group["chosen"] == min(scores, key=scores.get)
    # the matched NSF has the parameter count of ehf_dual's chosen configuration, within 10 %
    for seed in (0, 1):
        m = json.loads((tuned.dir / "cells" / f"nsf_matched-seed{seed}" / "metrics.json").read_text())
        ref = json.loads((tuned.dir / "cells" / f"ehf_dual-seed{seed}" / "metrics.json").read_text())
        assert abs(m["params"] / ref["params"] - 1) < 0.1


@pytest.mark.slow
def test_tuned_study_rerun_skips_both_stages(tuned):
    assert tuned.run.returncode == 0
    watched = [*tuned.dir.glob("**/metrics.json"), *tuned.dir.glob("**/*.ckpt"), *tuned.dir.glob("**/logs/*")]
    before = {p: p.stat().st_mtime_ns for p in watched}
    r = study("run", "-c", tuned.spec, "--dir", tuned.dir, cwd=tuned.tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "6 cells in" in r.stdout and "6 done (skipped)" in r.stdout and r.stdout.count("0 to run") == 2
    assert "running 0 cells" not in r.stdout and "done    " not in r.stdout and "nothing to run" in r.stdout
    assert {p: p.stat().st_mtime_ns for p in watched} == before


@pytest.mark.slow
def test_tuned_study_status_and_report_list_every_configuration(tuned):
    assert tuned.run.returncode == 0
    r = study("status", tuned.dir, cwd=tuned.tmp, timeout=60)
    assert r.returncode == 0 and r.stdout.count("6 done, 0 running") == 2, r.stdout
    r = study("report", tuned.dir, cwd=tuned.tmp, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    md = (tuned.dir / "report" / "results.md").read_text()
    section = md[md.index("## Tuning") :]
    choice = json.loads((tuned.dir / "tune" / "choice.json").read_text())
    for group in choice["groups"]:
        row = next(line for line in section.splitlines() if line.startswith(f"| {group['method']} |"))
        assert f"`{group['chosen']}`" in row.split("|")[2]
        for c in group["configs"]:
            assert f"`{c['name']}` {c['val_nll']:.3f}" in row
    assert "nsf_matched` has" in section
    with open(tuned.dir / "report" / "tuning.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and sum(r["chosen"] == "True" for r in rows) == 3
    for row in rows:
        assert float(row["val_nll"]) == pytest.approx(_best_val(tuned.dir / "tune" / "cells" / row["cell"]))
    # the study's own table holds only evaluation cells
    with open(tuned.dir / "report" / "results.csv", newline="") as f:
        assert sorted(r["cell"] for r in csv.DictReader(f)) == sorted(
            f"{m}-seed{s}" for m in E2E_METHODS for s in (0, 1)
        )
    r = study("report", tuned.dir / "tune", cwd=tuned.tmp, timeout=60)
    assert r.returncode == 2 and "reports both stages" in r.stderr, r.stdout + r.stderr
    # a tuning cell runs as `ehf study cell DIR/tune cell=NAME` (a W&B agent's command): done, so skipped
    t0 = time.time()
    r = study("cell", tuned.dir / "tune", f"cell={rows[0]['cell']}", cwd=tuned.tmp, timeout=120)
    assert r.returncode == 0 and "exit 0" in r.stdout and time.time() - t0 < 60, r.stdout + r.stderr
