"""``ehf study``: study files (spec), the local / SLURM (submitit's local executor) / W&B launchers, skipping,
resuming and refusing cells, ``status`` and ``report``, and the framework keys studies rely on
(``data.val_fraction``, ``eval.val_iw_samples``, ``trainer.patience``/``min_delta``, metrics.json's
``best_step``, ``max_steps``, ``stopped_early``, ``params``, ``test/train_nll``, ``test/nll_gap``).

Every study here is a tiny one written into ``tmp_path``; the CLI runs as a subprocess."""

from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from ehf_testing import clean_env, csv_rows
from lightning_ehf.errors import ConfigError
from lightning_ehf.study.spec import METHODS, load_study

ROOT = Path(__file__).resolve().parents[2]

# a cell trains in well under a second; the rest is process start-up
TINY_BASE = {
    "data.regime": "finite", "data.val_fraction": 0.2, "data.n_train": 64, "data.n_test": 64, "data.batch_size": 32,
    "trainer.max_steps": 30, "trainer.val_check_interval": 10,
    "eval.iw_samples": 4, "eval.val_iw_samples": 8, "eval.n_eval": 16, "eval.n_group_samples": 1,
    "eval.invariance_iw": 4,
    "model.blocks": 2, "model.hidden": 16, "plots.enabled": False, "logger.wandb.mode": "disabled",
}  # fmt: skip

# the end-to-end study: ehf_dual cannot improve (lr 1e-9, min_delta 0.5) and stops at the second validation
# (step 20 of 30); nsf_aug validates only at step 30, so its best step is the cap: under-trained
E2E_AXES = {
    "method": {
        "ehf_dual": {
            "model.kind": "ehf",
            "constraint.mode": "dual",
            "optim.lr": 1e-9,
            "trainer.patience": 1,
            "trainer.min_delta": 0.5,
        },
        "nsf_aug": {
            "model.kind": "nsf",
            "constraint.mode": "none",
            "data.augment": True,
            "trainer.val_check_interval": 30,
        },
    },
    "seed": {"key": "seed", "values": [0]},
}
E2E_CELLS = ["ehf_dual-seed0", "nsf_aug-seed0"]


def write_study(path: Path, name: str, axes: dict, base: dict | None = None, **top) -> Path:
    path.write_text(
        yaml.safe_dump({"study": name, "base": {**TINY_BASE, **(base or {})}, "axes": axes, **top}, sort_keys=False)
    )
    return path


def study_argv(*args) -> list[str]:
    return [sys.executable, "-m", "lightning_ehf", "study", *map(str, args)]


def study(*args, cwd: Path, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        study_argv(*args),
        cwd=cwd,
        env=clean_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_study(*args, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        study_argv(*args), cwd=cwd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def status(d: Path) -> tuple[int, dict[str, tuple[str, str]], str]:
    """(exit code, {cell: (state, detail)}, output) of ``ehf study status D``."""
    r = study("status", d, cwd=d.parent, timeout=60)
    rows = {}
    for line in r.stdout.splitlines():
        parts = [p.strip() for p in line.split("│")]
        if len(parts) == 5 and parts[1] and parts[2] in ("done", "running", "failed", "interrupted", "pending"):
            rows[parts[1]] = (parts[2], parts[3])
    return r.returncode, rows, r.stdout


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def commands_in_log(log: Path) -> list[str]:
    return [line[2:] for line in log.read_text().splitlines() if line.startswith("$ ")]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    t0 = time.time()
    while not predicate():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the study ended (exit {proc.returncode}) before {what}:\n{out}\n{err}")
        if time.time() - t0 > timeout:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


# -- study files ---------------------------------------------------------------------------------

SHIPPED = ROOT / "configs" / "study" / "data_efficiency.yaml"


def test_shipped_study_profiles_shrink_the_grid_and_name_cells():
    full = load_study(SHIPPED)  # the first profile (full) is the default
    assert full.profile == "full" and full.name == "data_efficiency"
    assert len(full.cells()) == 10 * 8 * 6 * 3  # methods × targets × n_train × seeds
    quick = load_study(SHIPPED, "quick")
    cells = {c.name: c for c in quick.cells()}
    assert len(cells) == 6 * 2 * 2 * 3
    cell = cells["ehf_dual-ring2d-n_train128-seed0"]
    assert cell.values == {"method": "ehf_dual", "target": "ring2d", "n_train": "n_train128", "seed": "seed0"}
    for item in (
        "data.n_train=128",
        "seed=0",
        "data.target=ring2d",
        "constraint.mode=dual",
        "model.kind=ehf",
        "data.val_fraction=0.2",
        "trainer.max_steps=4000",
        "experiment=data_efficiency",
    ):
        assert item in cell.overrides
    assert "trainer.max_steps=5000" not in cell.overrides  # the profile's base replaces the study's
    assert "ehf_penalty-ring2d-n_train128-seed0" not in cells and "ehf_dual-shell3d-n_train128-seed0" not in cells
    # the mapping axis' own overrides come on top of the method preset
    assert "model.hidden=128" in cells["nsf-particles2d-n_train1024-seed2"].overrides


def test_extra_overrides_reach_every_cell():
    s = load_study(SHIPPED, "quick", ["trainer.max_steps=7", "eval.val_iw_samples=null", "optim.lr=0.001"])
    cells = s.cells()
    assert len(cells) == 6 * 2 * 2 * 3 and all(
        "trainer.max_steps=7" in c.overrides
        and "trainer.max_steps=4000" not in c.overrides
        and "eval.val_iw_samples=null" in c.overrides
        and "optim.lr=0.001" in c.overrides
        for c in cells
    )


def test_profile_keeps_key_axis_values_by_value_or_by_name(tmp_path):
    axes = {
        "method": ["ehf_dual", "nsf"],
        "n": {"key": "data.n_train", "values": [64, 128, 256]},
        "seed": {"key": "seed", "values": [0, 1]},
    }
    f = write_study(
        tmp_path / "p.yaml", "p", axes, profiles={"small": {"axes": {"n": [128], "seed": ["seed1"]}}, "big": {}}
    )
    small = [c.name for c in load_study(f).cells()]
    assert small == ["ehf_dual-n_train128-seed1", "nsf-n_train128-seed1"]
    assert len(load_study(f, "big").cells()) == 2 * 3 * 2
    with pytest.raises(ConfigError, match="'huge' is not a profile"):
        load_study(f, "huge")


def test_profile_gives_a_key_axis_new_values(tmp_path):
    axes = {"method": ["ehf_dual", "nsf"], "n": {"key": "data.n_train", "values": [64, 128]}}
    f = write_study(
        tmp_path / "p.yaml",
        "p",
        axes,
        profiles={
            "big": {},
            "sizes": {"axes": {"method": ["nsf"], "n": {"values": [100, 1000]}}},
            "bad": {"axes": {"method": {"values": ["nsf"]}}},
        },
    )
    cells = load_study(f, "sizes").cells()
    assert [c.name for c in cells] == ["nsf-n_train100", "nsf-n_train1000"]
    assert "data.n_train=1000" in cells[1].overrides
    with pytest.raises(ConfigError, match="profiles.bad.axes.method: a profile gives a key axis new values"):
        load_study(f, "bad")


BAD_STUDIES = {
    "unknown_top_key": ({"bases": {}}, None, "unknown key 'bases'"),
    "unknown_method": ({}, {"method": ["ehf_dual", "flowy"]}, "unknown method 'flowy'"),
    "method_twice": ({}, {"method": ["nsf", "nsf"]}, "'nsf' is listed twice"),
    "profile_value_not_on_axis": (
        {"profiles": {"p": {"axes": {"seed": [5]}}}},
        None,
        "profiles.p.axes.seed: 5 is not a value of the axis",
    ),
    "profile_unknown_axis": (
        {"profiles": {"p": {"axes": {"target": ["ring2d"]}}}},
        None,
        "profiles.p.axes.target: no such axis",
    ),
    # value names may hold '-' (negative numbers), so two axes can join to the same name
    "duplicate_cell_names": (
        {},
        {"a": {"key": "x.a", "values": ["1-b2", 1]}, "b": {"key": "x.b", "values": [2, "2-b2"]}},
        "two cells get the same name",
    ),
    "value_not_a_folder_name": (
        {},
        {"data": {"key": "data.path", "values": ["/data/x.npy"]}},
        "cannot be part of a cell's folder name",
    ),
    "run_dir_in_base": ({"base": {**TINY_BASE, "run.dir": "/tmp/x"}}, None, "run.dir: is set by the study"),
    "report_not_an_axis": ({"report": {"x": "n_train"}}, None, "report.x: 'n_train' is not an axis"),
    "unknown_analysis": ({"report": {"analyses": ["nope"]}}, None, "unknown analysis 'nope'"),
    # typed sections: a wrong type or range names the key
    "slurm_quoted_number": (
        {"slurm": {"time_min": "60"}},
        None,
        "bad.yaml: slurm.time_min: expected an integer, got string '60'; numbers must not be quoted",
    ),
    "slurm_out_of_range": (
        {"slurm": {"gpus_per_cell": -1}},
        None,
        "bad.yaml: slurm.gpus_per_cell: must be >= 0, got -1",
    ),
    "report_not_a_name": ({"report": {"x": 3}}, None, "bad.yaml: report.x: expected a string, got integer 3"),
    # every profile is checked, not only the one loaded
    "other_profile": (
        {"profiles": {"p": {}, "q": {"axis": {"seed": [0]}}}},
        None,
        "bad.yaml: profiles.q: a profile holds axes (value names to keep), base (overrides) and tune",
    ),
}


@pytest.mark.parametrize("case", list(BAD_STUDIES))
def test_bad_study_files_raise_config_error_naming_the_problem(tmp_path, case):
    top, axes, message = BAD_STUDIES[case]
    f = tmp_path / "bad.yaml"
    raw = {
        "study": "bad",
        "base": dict(TINY_BASE),
        "axes": axes or {"method": ["ehf_dual"], "seed": {"key": "seed", "values": [0, 1]}},
    }
    raw.update(top)
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_study(f)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_run_dir_as_an_extra_override_is_refused(tmp_path):
    f = write_study(tmp_path / "s.yaml", "s", {"method": ["nsf"]})
    with pytest.raises(ConfigError, match="run.dir"):
        load_study(f, extra=["run.dir=/tmp/elsewhere"])
    with pytest.raises(ConfigError, match="key=value"):
        load_study(f, extra=["model.hidden"])


def test_study_name_survives_report_analyses(tmp_path, monkeypatch):
    from lightning_ehf.study import analyses

    monkeypatch.setitem(analyses.ANALYSES, "dummy", lambda folder, rows, out: ("", []))
    f = write_study(tmp_path / "file_stem.yaml", "named", {"method": ["nsf"]}, report={"analyses": ["dummy"]})
    s = load_study(f)
    assert s.name == "named" and "experiment=named" in s.cells()[0].overrides


def test_method_presets_are_valid_configs():
    from lightning_ehf.config.load import load_config, validate

    for preset in METHODS.values():
        validate(load_config([], ["data.target=ring2d", *[f"{k}={v}" for k, v in preset.items()]]))


@pytest.mark.parametrize("case", ["file", "config"])
def test_cli_bad_study_exits_2_with_one_line(tmp_path, case):
    axes = {"method": ["ehf_dual", "flowy"]} if case == "file" else {"method": ["ehf_dual"]}
    base = {"model.hidden": -3} if case == "config" else None
    f = write_study(tmp_path / "bad.yaml", "bad", axes, base)
    d = tmp_path / "study"
    r = study("run", "-c", f, "--dir", d, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ehf study run: error:"), r.stderr
    assert ("unknown method 'flowy'" in lines[0]) if case == "file" else ("cell ehf_dual: model.hidden" in lines[0])
    assert not d.exists()


@pytest.mark.parametrize(
    ("top", "flags", "message"),
    [
        ({"slurm": {"time_min": "60"}}, [], "bad.yaml: slurm.time_min: expected an integer, got string '60'"),
        ({}, ["--time-min", "0"], "command line: slurm.time_min: must be > 0, got 0"),
    ],
)
def test_cli_bad_slurm_setting_exits_2_naming_the_key(tmp_path, top, flags, message):
    f = write_study(tmp_path / "bad.yaml", "bad", {"method": ["ehf_dual"]}, **top)
    r = study("run", "-c", f, "--dir", tmp_path / "study", "--dry-run", *flags, cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


# -- end to end: run, status, skip, report, refuse an edited study ----------------------------------


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    spec = write_study(tmp / "e2e.yaml", "e2e", E2E_AXES, report={"x": "seed", "compare": "method"})
    d = tmp / "study"
    r = study("run", "-c", spec, "--dir", d, "--workers", 2, "--cores", 2, cwd=tmp)
    return SimpleNamespace(tmp=tmp, spec=spec, dir=d, run=r)


@pytest.mark.slow
def test_study_runs_cells_as_ordinary_run_folders(e2e):
    r = e2e.run
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 of 2 cells finished" in r.stdout and "all cells done" in r.stdout
    manifest = json.loads((e2e.dir / "study.json").read_text())
    assert [c["name"] for c in manifest["cells"]] == E2E_CELLS
    for name in E2E_CELLS:
        run = e2e.dir / "cells" / name
        assert (run / "config.yaml").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert Path(cfg["run"]["dir"]) == run and cfg["experiment"] == "e2e" and cfg["seed"] == 0
        m = metrics(run)
        assert m["max_steps"] == 30 and 0 < m["best_step"] <= m["steps"] <= m["max_steps"]
        assert isinstance(m["params"], int) and m["params"] > 0
        # test at K = eval.iw_samples, validation at K = eval.val_iw_samples
        assert "test/nll_iw4" in m and "val/nll_iw8" in m and "val/nll_iw4" not in m and "test/nll_iw8" not in m
        assert m["test/nll"] == m["test/nll_iw4"]
        assert all(math.isfinite(m[k]) for k in ("test/nll", "test/train_nll", "test/nll_gap"))
        assert m["test/nll_gap"] == pytest.approx(m["test/nll"] - m["test/train_nll"], abs=1e-9)
        assert any("val/nll_iw8" in row for row in csv_rows(run))
        assert "run folder:" in (e2e.dir / "logs" / f"{name}.log").read_text()
    assert cfg["model"]["kind"] == "nsf" and cfg["data"]["augment"] is True
    # patience 1 with a run that cannot improve by min_delta: stops at the second validation
    dual = metrics(e2e.dir / "cells" / "ehf_dual-seed0")
    assert dual["steps"] == 20 and dual["stopped_early"] is True and dual["best_step"] in (10, 20)
    nsf = metrics(e2e.dir / "cells" / "nsf_aug-seed0")
    assert nsf["steps"] == 30 and nsf["stopped_early"] is False and nsf["best_step"] == 30
    assert dual["params"] != nsf["params"]

    rc, rows, out = status(e2e.dir)
    assert rc == 0 and {k: v[0] for k, v in rows.items()} == dict.fromkeys(E2E_CELLS, "done"), out
    assert "2 done, 0 running, 0 failed, 0 interrupted, 0 pending" in out


@pytest.mark.slow
def test_rerun_skips_every_finished_cell(e2e):
    assert e2e.run.returncode == 0
    watched = [
        *(e2e.dir / "logs").iterdir(),
        *(e2e.dir / "cells").glob("*/metrics.json"),
        *(e2e.dir / "cells").glob("*/checkpoints/*.ckpt"),
    ]
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in watched}
    t0 = time.time()
    r = study("run", "-c", e2e.spec, "--dir", e2e.dir, "--workers", 2, cwd=e2e.tmp)
    seconds = time.time() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 done (skipped)" in r.stdout and "0 to run" in r.stdout and "nothing to run" in r.stdout
    assert "running 0 cells" not in r.stdout and "done    " not in r.stdout
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in watched} == before
    assert sorted(p.name for p in (e2e.dir / "logs").iterdir()) == sorted(f"{c}.log" for c in E2E_CELLS)
    assert seconds < 10


@pytest.mark.slow
def test_report_marks_under_trained_cells_and_leaves_them_out_of_means(e2e):
    assert e2e.run.returncode == 0
    r = study("report", e2e.dir, cwd=e2e.tmp, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    out = e2e.dir / "report"
    with open(out / "results.csv", newline="") as f:
        rows = {row["cell"]: row for row in csv.DictReader(f)}
    assert set(rows) == set(E2E_CELLS)
    assert {row["state"] for row in rows.values()} == {"done"}
    assert rows["nsf_aug-seed0"]["under_trained"] == "True" and rows["ehf_dual-seed0"]["under_trained"] == "False"
    assert rows["ehf_dual-seed0"]["method"] == "ehf_dual" and rows["ehf_dual-seed0"]["seed"] == "seed0"
    dual = metrics(e2e.dir / "cells" / "ehf_dual-seed0")
    assert float(rows["ehf_dual-seed0"]["test/nll"]) == pytest.approx(dual["test/nll"])

    md = (out / "results.md").read_text()
    assert "ehf_dual" in md and "nsf_aug" in md and "cells: 2 of 2 done" in md
    assert "Under-trained cells (1): `nsf_aug-seed0`" in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    body = {r[0]: dict(zip(head, r)) for r in ([c.strip() for c in line.strip("|").split("|")] for line in table[1:])}
    # a best step at the first validation (step 10) is flagged: counted in seeds, in no unflagged mean
    first = dual["best_step"] <= 10
    assert rows["ehf_dual-seed0"]["first_validation_best"] == str(first)
    # the dual cell stopped early (patience 1); the NSF cell ran to its cap without early stopping, which is no flag
    # (its only validation, at the cap, makes it under-trained and best at the 1st validation)
    assert (rows["ehf_dual-seed0"]["hit_cap"], rows["nsf_aug-seed0"]["hit_cap"]) == ("False", "False")
    history = [
        float(row["val/nll_iw8"]) for row in csv_rows(e2e.dir / "cells" / "ehf_dual-seed0") if row.get("val/nll_iw8")
    ]
    assert dual["best_val_nll"] == pytest.approx(min(history), rel=1e-6)
    flagged = rows["ehf_dual-seed0"]["flagged"] == "True"
    assert body["ehf_dual"]["seeds"] == ("0/1" if flagged else "1/1")
    assert body["ehf_dual"]["test NLL"] == ("—" if flagged else f"{dual['test/nll']:.3f}")
    # ring2d has a known density, so the paired KL estimate is there, beside the unpaired one, with its row error
    assert body["ehf_dual"]["paired KL (all done)"] == f"{dual['test/kl_paired']:.3f}"
    assert body["ehf_dual"]["test KL (all done)"] == f"{dual['test/kl']:.3f}"
    assert head.index("test KL") < head.index("test KL (all done)") < head.index("paired KL")
    assert 0 < dual["test/kl_paired_stderr"] < 1
    # feasibility of the constrained cell: the largest bracket RMS over √tolerance
    tol = yaml.safe_load((e2e.dir / "cells" / "ehf_dual-seed0" / "config.yaml").read_text())["constraint"]["tolerance"]
    rms = max(v for k, v in dual.items() if k.startswith("test/bracket_rms/"))
    assert float(rows["ehf_dual-seed0"]["feasibility"]) == pytest.approx(rms / math.sqrt(tol))
    assert body["ehf_dual"]["RMS/√ε"] == f"{rms / math.sqrt(tol):.2f}" and body["nsf_aug"]["RMS/√ε"] == "—"
    assert (
        body["nsf_aug"]["seeds"] == "0/1"
        and body["nsf_aug"]["flags"] == "1 under-trained, 1 best at the 1st validation"
    )
    assert body["nsf_aug"]["test NLL"] == "—" and body["nsf_aug"]["test KL"] == "—"  # not in any mean
    assert body["nsf_aug"]["test KL (all done)"] != "—"
    assert "estimators differ: EHF's test NLL and KL are importance-weighted (IWAE, K = 4)" in md
    assert body["nsf_aug"]["params"] == str(metrics(e2e.dir / "cells" / "nsf_aug-seed0")["params"])
    for png in ("kl.png", "gap.png", "invariance.png"):
        assert (out / png).stat().st_size > 1000 and f"({png})" in md
    assert str(out / "results.csv") in r.stdout


@pytest.mark.slow
def test_edited_study_under_a_finished_cell_exits_2(e2e, tmp_path):
    assert e2e.run.returncode == 0
    manifest = (e2e.dir / "study.json").stat().st_mtime_ns
    edited = write_study(tmp_path / "e2e.yaml", "e2e", E2E_AXES, {"model.hidden": 24})
    for extra in ([], ["--dry-run"]):
        r = study("run", "-c", edited, "--dir", e2e.dir, *extra, cwd=tmp_path)
        assert r.returncode == 2, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "cell ehf_dual-seed0" in lines[0] and "model.hidden=24" in lines[0], r.stderr
    # the same through a command-line override
    r = study("run", "-c", e2e.spec, "--dir", e2e.dir, "trainer.max_steps=40", "--dry-run", cwd=tmp_path)
    assert r.returncode == 2 and "trainer.max_steps" in r.stderr
    assert (e2e.dir / "study.json").stat().st_mtime_ns == manifest
    # keys that do not change results may change
    harmless = write_study(
        tmp_path / "harmless.yaml", "e2e", E2E_AXES, {"logger.wandb.mode": "offline", "progress.every_n_steps": 7}
    )
    r = study("run", "-c", harmless, "--dir", e2e.dir, "--dry-run", cwd=tmp_path)
    assert r.returncode == 0 and "2 done (skipped)" in r.stdout, r.stdout + r.stderr


# -- interruption ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_study_resumes_only_the_missing_cells(tmp_path):
    spec = write_study(
        tmp_path / "kill.yaml",
        "kill",
        {"seed": {"key": "seed", "values": [0, 1]}},
        {"trainer.max_steps": 600, "trainer.val_check_interval": 50},
    )
    d = tmp_path / "study"
    a, b = d / "cells" / "seed0", d / "cells" / "seed1"
    run_args = ("run", "-c", spec, "--dir", d, "--workers", 1, "--cores", 1)

    # 1. SIGTERM while the first cell runs: it checkpoints and stops, the study exits 75
    p = start_study(*run_args, cwd=tmp_path)
    try:
        wait_for(lambda: (a / "checkpoints" / "last.ckpt").is_file(), 180, "the first cell's checkpoint", p)
        rc, rows, out = status(d)
        assert rows["seed0"][0] == "running" and rows["seed0"][1].startswith("pid "), out
        assert rows["seed1"][0] == "pending", out
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 75, out + err
    assert "stopped seed0" in out and not (a / "metrics.json").exists()
    assert not (d / "logs" / "seed1.log").exists()  # the pending cell never started
    rc, rows, out = status(d)
    assert rc == 0, out
    assert rows == {"seed0": ("interrupted", "resumes from checkpoints/last.ckpt"), "seed1": ("pending", "")}, out

    # 2. rerun: the interrupted cell resumes; SIGKILL the study while the second cell runs: the cell
    #    gets SIGTERM (PR_SET_PDEATHSIG), keeps its checkpoint and exits
    p = start_study(*run_args, cwd=tmp_path)
    try:
        wait_for(lambda: (b / "checkpoints" / "last.ckpt").is_file(), 240, "the second cell's checkpoint", p)
        pid = json.loads((d / "logs" / "seed1.json").read_text())["pid"]
        p.kill()
        p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    wait_for(lambda: process_gone(pid), 120, "the orphaned cell to stop")
    assert metrics(a)["steps"] == 600 and not (b / "metrics.json").exists()
    assert "preempted" in (d / "logs" / "seed1.log").read_text()
    rc, rows, out = status(d)
    assert rows["seed0"][0] == "done" and rows["seed1"][0] == "interrupted", out

    # 3. rerun: only the interrupted cell runs, from its checkpoint
    r = study(*run_args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 done (skipped)" in r.stdout and "1 resume from a checkpoint" in r.stdout
    assert "done    seed1" in r.stdout and "done    seed0" not in r.stdout
    for log in (d / "logs" / "seed0.log", d / "logs" / "seed1.log"):
        first, second = commands_in_log(log)  # a fresh start, then one resume; nothing else
        assert "--resume" not in first and f"--resume {log.parent.parent / 'cells' / log.stem}" in second
    for run in (a, b):
        m = metrics(run)
        assert m["steps"] == m["max_steps"] == 600 and m["stopped_early"] is False
    rc, rows, out = status(d)
    assert rc == 0 and {k: v[0] for k, v in rows.items()} == {"seed0": "done", "seed1": "done"}, out


@pytest.mark.slow
def test_failed_cell_does_not_stop_the_study(tmp_path):
    # a missing data file passes config validation; ehf train then exits 2
    axes = {
        "data": {
            "bad": {
                "data.target": None,
                "data.path": str(tmp_path / "missing.npy"),
                "symmetry.group": "so2",
                "data.val_fraction": None,
            },
            "good": {},
        }
    }
    spec = write_study(tmp_path / "fail.yaml", "fail", axes, {"trainer.max_steps": 10})
    d = tmp_path / "study"
    r = study("run", "-c", spec, "--dir", d, "--workers", 1, "--cores", 1, cwd=tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    log = d / "logs" / "bad.log"
    assert f"FAILED  bad  (exit 2); log: {log}" in r.stdout
    assert "done    good" in r.stdout and (d / "cells" / "good" / "metrics.json").is_file()
    assert "missing.npy" in log.read_text()
    rc, rows, out = status(d)
    assert rc == 1, out
    assert rows["good"] == ("done", ""), out
    assert rows["bad"][0] == "failed" and rows["bad"][1].startswith("exit 2; log "), out
    assert "1 done, 0 running, 1 failed, 0 interrupted, 0 pending" in out


# -- launchers --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_slurm_launcher_through_submitits_local_executor(tmp_path):
    spec = write_study(tmp_path / "sl.yaml", "sl", {"method": ["ehf_dual", "nsf"]}, {"trainer.max_steps": 10})
    d = tmp_path / "study"
    r = study(
        "run",
        "-c",
        spec,
        "--dir",
        d,
        "--launcher",
        "slurm",
        "--cluster",
        "local",
        "--cpus-per-cell",
        1,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "submitted 2 cells as job array" in r.stdout and "2 of 2 cells finished" in r.stdout
    for name in ("ehf_dual", "nsf"):
        assert metrics(d / "cells" / name)["steps"] == 10
        assert "run folder:" in (d / "logs" / f"{name}.log").read_text()
        assert not (d / "logs" / f"{name}.json").exists()
    assert (d / "submitit").is_dir()
    rc, rows, out = status(d)
    assert rc == 0 and {k: v[0] for k, v in rows.items()} == {"ehf_dual": "done", "nsf": "done"}, out


def test_slurm_launcher_without_sbatch_exits_2(tmp_path):
    spec = write_study(tmp_path / "sl.yaml", "sl", {"method": ["nsf"]})
    d = tmp_path / "study"
    (tmp_path / "bin").mkdir()
    r = study(
        "run",
        "-c",
        spec,
        "--dir",
        d,
        "--launcher",
        "slurm",
        cwd=tmp_path,
        timeout=120,
        env=clean_env(PATH=str(tmp_path / "bin")),
    )
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "sbatch not found" in lines[0], r.stderr
    assert not d.exists()  # nothing written


@pytest.mark.slow
def test_wandb_sweep_parses_and_its_agent_command_runs_a_cell(tmp_path):
    from lightning_ehf.study.folders import open_folder
    from lightning_ehf.study.runner import cell_command

    spec = write_study(tmp_path / "sw.yaml", "sw", {"method": ["ehf_dual", "nsf_aug"]}, {"trainer.max_steps": 10})
    d = tmp_path / "study"
    r = study("run", "-c", spec, "--dir", d, "--launcher", "wandb", cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"wandb sweep {d / 'sweep.yaml'}" in r.stdout and not (d / "cells").exists()
    sweep = yaml.safe_load((d / "sweep.yaml").read_text())
    assert sweep["method"] == "grid" and sweep["name"] == "sw-default"
    assert sweep["parameters"] == {"cell": {"values": ["ehf_dual", "nsf_aug"]}}
    assert sweep["metric"] == {"name": "test/nll", "goal": "minimize"}

    folder = open_folder(d)
    cell = next(c for c in folder.cells if c.name == "nsf_aug")
    expected = cell_command(folder, cell)  # what the agent's `ehf study cell` runs: a fresh `ehf train`
    assert expected[1:4] == ["-m", "lightning_ehf", "train"] and "--resume" not in expected
    # what a W&B agent runs for one grid point
    macros = {"${env}": ["/usr/bin/env"], "${interpreter}": [sys.executable], "${args_no_hyphens}": ["cell=nsf_aug"]}
    command = [w for word in sweep["command"] for w in macros.get(word, [word])]
    assert all("${" not in w for w in command)
    agent = subprocess.run(command, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=240)
    assert agent.returncode == 0, agent.stdout + agent.stderr
    assert "cell nsf_aug: exit 0" in agent.stdout
    assert commands_in_log(d / "logs" / "nsf_aug.log") == [" ".join(expected)]  # `ehf train` accepted it
    assert metrics(d / "cells" / "nsf_aug")["steps"] == 10
    rc, rows, out = status(d)
    assert rc == 0 and {k: v[0] for k, v in rows.items()} == {"ehf_dual": "pending", "nsf_aug": "done"}, out
    # a second agent on a finished cell skips it; an unknown cell is bad input
    again = subprocess.run(command, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and len(commands_in_log(d / "logs" / "nsf_aug.log")) == 1
    bad = study("cell", d, "cell=nope", cwd=tmp_path, timeout=60)
    assert bad.returncode == 2 and "'nope' is not a cell" in bad.stderr


# -- framework keys -----------------------------------------------------------------------------------


def test_val_fraction_splits_the_drawn_training_samples():
    import torch

    from lightning_ehf.build import make_datamodule
    from lightning_ehf.config.load import load_config

    common = ["data.regime=finite", "data.n_train=50", "data.n_test=16"]
    dm = make_datamodule(load_config([], [*common, "data.val_fraction=0.2"]))
    dm.setup("fit")
    plain = make_datamodule(load_config([], common))
    plain.setup("fit")
    assert dm.val_data.shape == (10, 2) and dm.train_data.shape == (40, 2)
    assert plain.train_data.shape == (50, 2)
    # the same 50 training samples, the first 10 validate: disjoint, and together all of them
    assert torch.equal(torch.cat([dm.val_data, dm.train_data]), plain.train_data)
    assert not (dm.val_data[:, None, :] == dm.train_data[None, :, :]).all(-1).any()
    assert torch.equal(dm.test_data, plain.test_data)
    assert not torch.equal(plain.val_data[:10], dm.val_data)  # not the fresh validation draw


def test_command_line_override_of_an_axis_key_is_refused():
    """An override on the command line that an axis also sets would lose to the axis: refused, naming both."""
    from lightning_ehf.errors import ConfigError
    from lightning_ehf.study.spec import load_study

    with pytest.raises(ConfigError, match=r"data\.n_train: is set by the study's axis 'n_train'"):
        load_study(ROOT / "configs" / "study" / "data_efficiency.yaml", "quick", ["data.n_train=50"])
    with pytest.raises(ConfigError, match=r"model\.kind: is set by the study's axis 'method'"):
        load_study(ROOT / "configs" / "study" / "data_efficiency.yaml", "quick", ["model.kind=nsf"])
    study = load_study(ROOT / "configs" / "study" / "data_efficiency.yaml", "quick", ["trainer.max_steps=50"])
    assert all("trainer.max_steps=50" in c.overrides for c in study.cells())


def test_seed_by_seed_comparison_counts_wins_and_mean_differences(tmp_path):
    """report.pairs: per group, the seeds where both cells count, how often the first method is lower, and
    the mean difference; an under-trained or missing cell drops its seed from the comparison."""
    from lightning_ehf.study.report import _paired
    from lightning_ehf.study.runner import StudyFolder

    axes = {
        "method": ["ehf_dual", "ehf_none"],
        "n_train": {"key": "data.n_train", "values": [64, 128]},
        "seed": {"key": "seed", "values": [0, 1, 2]},
    }
    path = write_study(
        tmp_path / "s.yaml", "pairs", axes, report={"compare": "method", "pairs": [["ehf_dual", "ehf_none"]]}
    )
    folder = StudyFolder(tmp_path / "out", load_study(path))
    kl = {
        ("ehf_dual", "seed0"): 0.1,
        ("ehf_none", "seed0"): 0.3,
        ("ehf_dual", "seed1"): 0.5,
        ("ehf_none", "seed1"): 0.2,
        ("ehf_dual", "seed2"): 0.0,
        ("ehf_none", "seed2"): 9.0,
    }
    rows = []
    for cell in folder.cells:
        m, n, s = cell.values["method"], cell.values["n_train"], cell.values["seed"]
        row = {
            "cell": cell.name,
            **cell.values,
            "state": "done",
            "under_trained": False,
            "test/kl": kl[(m, s)],
            "test/nll_gap": 1.0 if m == "ehf_dual" else 2.0,
        }
        if n == "n_train128" and s == "seed2" and m == "ehf_none":
            row["under_trained"] = True  # drops seed 2 from the n_train128 comparison
        if n == "n_train64" and s == "seed2" and m == "ehf_dual":
            row["state"] = "pending"  # ... and from the n_train64 one
        rows.append(row)
    lines = [ln for ln in _paired(folder, rows) if ln.startswith("| n_train") and "comparison" not in ln]
    assert [ln.split("|")[1].strip() for ln in lines] == ["n_train64", "n_train128"]  # the axis' order
    head = next([c.strip() for c in ln.strip("|").split("|")] for ln in _paired(folder, rows) if "| comparison |" in ln)
    for line in lines:
        cells = dict(zip(head, (c.strip() for c in line.strip("|").split("|"))))
        assert [
            cells[c] for c in ("comparison", "seeds", "lower test KL", "mean Δ KL", "smaller gap", "mean Δ gap")
        ] == ["ehf_dual vs ehf_none", "2", "1/2", "+0.050", "2/2", "-1.000"]
    # a pair a profile has left out of the grid is skipped, not an error
    path = write_study(
        tmp_path / "t.yaml",
        "pairs2",
        {"method": ["ehf_dual", "ehf_none", "nsf"]},
        report={"compare": "method", "pairs": [["ehf_dual", "nsf"]]},
        profiles={"small": {"axes": {"method": ["ehf_dual", "ehf_none"]}}},
    )
    assert _paired(StudyFolder(tmp_path / "o2", load_study(path, "small")), []) == []
    with pytest.raises(ConfigError, match="report.pairs"):
        load_study(
            write_study(
                tmp_path / "u.yaml",
                "bad",
                {"method": ["ehf_dual"]},
                report={"compare": "method", "pairs": [["ehf_dual", "nsf_aug"]]},
            )
        )


@pytest.mark.slow
def test_report_writes_one_wandb_summary_table_when_wandb_is_on(e2e, monkeypatch):
    """With the study's W&B mode on (here offline), the report also writes one W&B run holding the results table."""
    from lightning_ehf.study.folders import open_folder
    from lightning_ehf.study.report import write_report

    for key, value in clean_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    folder = open_folder(e2e.dir)
    folder.study.base["logger.wandb.mode"] = "offline"
    out = write_report(folder)
    runs = list((e2e.dir / "report" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb")), runs
    assert f"W&B summary table (`results`, offline): `{runs[0]}`" in out["md"].read_text()


def test_cell_rows_flag_under_trained_and_first_validation_best(tmp_path):
    """under_trained: best step in the last 10 % of the cap, 0.9 × cap included; first_validation_best: best at the
    first validation."""
    from lightning_ehf.study.report import cell_rows
    from lightning_ehf.study.runner import StudyFolder

    path = write_study(tmp_path / "s.yaml", "flags", {"seed": {"key": "seed", "values": [0, 1, 2, 3]}})
    folder = StudyFolder(tmp_path / "out", load_study(path))
    for cell, best in zip(folder.cells, (10, 11, 899, 900)):
        run = folder.cell_dir(cell)
        run.mkdir(parents=True)
        (run / "config.yaml").write_text("trainer:\n  val_check_interval: 10\n")
        (run / "metrics.json").write_text(json.dumps({"best_step": best, "max_steps": 1000, "steps": 1000}))
    rows = cell_rows(folder)
    assert [r["first_validation_best"] for r in rows] == [True, False, False, False]
    assert [r["under_trained"] for r in rows] == [False, False, False, True]


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "study").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_study_and_profile_gives_valid_cell_configs(path, tmp_path):
    """Each shipped study file loads under every profile, and its cells' configs validate (about a dozen
    cells spread over each profile's grid)."""
    from lightning_ehf.study.runner import StudyFolder

    raw = yaml.safe_load(path.read_text())
    for profile in raw.get("profiles") or [None]:
        study = load_study(path, profile)
        folder = StudyFolder(tmp_path / str(profile), study)
        cells = folder.cells[:: max(1, len(folder.cells) // 12)]  # about a dozen per profile, first and spread
        assert cells
        for cell in cells:
            cfg = folder.config(cell)
            assert cfg["run"]["dir"] == str(folder.cell_dir(cell))
