"""Bad input never crashes and never leaves files behind (docs/design.md §4, docs/errors.md).

Every row of the table below is one thing a user can get wrong: a config key, a data file, or a
command-line argument / checkpoint. For each, ``ehf <command>`` must exit with code 2, print exactly
one line on stderr that starts with ``ehf <command>: error:`` and names the key or the file, print no
traceback, and create, delete or modify no file (the temporary folder is snapshotted before and after,
sizes and modification times included). ``ehf train`` rows run twice: with ``run.root=runs`` (the
default layout) and with an explicit ``run.dir=run``.

The rows run in-process through ``cli.main`` (fast); ``test_real_process_*`` repeats a few of them as
real ``python -m lightning_ehf`` processes, to check the actual exit code and stderr.

docs/errors.md lists every row with the message it prints; its "test" column is the parametrize id.
"""

from __future__ import annotations

import os
import shutil
import traceback
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

from ehf_testing import TINY, clean_env, ehf
from lightning_ehf import cli

FILE_DATA = ["data.target=null", "data.regime=finite", "symmetry.group=so2"]  # + data.path=<file> (2-D)
RUN_VARIANTS = {"root": "run.root=runs", "dir": "run.dir=run"}


class Case(NamedTuple):
    id: str
    command: str  # train | eval | sample
    argv: list[str]  # after the command (for train: after TINY; the run.root / run.dir variant is appended)
    expect: list[str]  # substrings of the one stderr line (the key or file it names, and why)
    xfail: str | None = None  # reason, when the row currently fails (a bug to fix)
    what: str = ""  # what the user did (for docs/errors.md)


_OFFLINE = "lightning_ehf raises Lightning's own errors for trainer.* values"

CONFIG_CASES = [
    Case(
        "unknown-key",
        "train",
        ["model.hiden=3"],
        ["model.hiden", "did you mean 'model.hidden'"],
        what="misspelt key `model.hiden=3`",
    ),
    Case(
        "wrong-type",
        "train",
        ["data.batch_size=abc"],
        ["data.batch_size", "expected an integer", "'abc'"],
        what="`data.batch_size=abc`",
    ),
    Case(
        "float-for-int",
        "train",
        ["model.blocks=2.0"],
        ["model.blocks", "write 2"],
        what="`model.blocks=2.0` (a float for an integer key)",
    ),
    Case(
        "zero-batch-size",
        "train",
        ["data.batch_size=0"],
        ["data.batch_size", "must be > 0", "0"],
        what="`data.batch_size=0`",
    ),
    Case(
        "negative-blocks", "train", ["model.blocks=-1"], ["model.blocks", "must be > 0", "-1"], what="`model.blocks=-1`"
    ),
    Case(
        "negative-step-size",
        "train",
        ["model.step_size=-0.1"],
        ["model.step_size", "must be > 0"],
        what="`model.step_size=-0.1`",
    ),
    Case(
        "n-val-exceeds-file",
        "train",
        [*FILE_DATA, "data.path=x50.npy", "data.n_val=60", "data.n_test=10"],
        ["data.n_val", "x50.npy", "50 rows"],
        what="`data.n_val=60` on a data file of 50 rows",
    ),
    Case(
        "target-and-path",
        "train",
        ["data.target=ring2d", "data.path=x50.npy"],
        ["data.path", "both data.target=ring2d and data.path are set", "data.target=null"],
        what="`data.target=ring2d data.path=x50.npy` (a target set explicitly, in an override or a `-c` file, together with a data file)",
    ),
    Case(
        "file-too-small-for-split",
        "train",
        ["data.path=x2.npy", "data.n_val=null", "data.n_test=null"],
        ["data.file_val_fraction + data.file_test_fraction", "x2.npy", "2 rows"],
        what="`data.path=x2.npy` (2 rows) with the default split of a file (`n_val`, `n_test` null: 10 % each, at least one row)",
    ),
    Case(
        "file-infinite-regime",
        "train",
        ["data.path=x50.npy", "data.regime=infinite"],
        ["data.regime", "fixed sample"],
        what="`data.regime=infinite` with `data.path=x50.npy`",
    ),
    Case(
        "null-n-val-on-target",
        "train",
        ["data.n_val=null"],
        ["data.n_val", "needs data.path"],
        what="`data.n_val=null` on a target (ring2d)",
    ),
    Case(
        "unknown-target",
        "train",
        ["data.target=ring9"],
        ["data.target", "'ring9'", "did you mean 'ring2d'"],
        what="`data.target=ring9`",
    ),
    Case("unknown-group", "train", ["symmetry.group=so7"], ["symmetry.group", "'so7'"], what="`symmetry.group=so7`"),
    Case(
        "unknown-model-kind",
        "train",
        ["model.kind=glow"],
        ["model.kind", "'glow'", "ehf, nsf"],
        what="`model.kind=glow`",
    ),
    Case(
        "plane-out-of-range",
        "train",
        ["symmetry.group=rotations", "symmetry.planes=[[0,5]]"],
        ["symmetry.planes[0]", "coordinate 5", "d=2"],
        what="`symmetry.planes=[[0,5]]` on 2-D data (ring2d)",
    ),
    Case(
        "plane-repeated",
        "train",
        ["symmetry.group=rotations", "symmetry.planes=[[0,1],[1,0]]"],
        ["symmetry.planes[1]", "listed twice"],
        what="`symmetry.planes=[[0,1],[1,0]]`",
    ),
    Case(
        "plane-degenerate",
        "train",
        ["symmetry.group=rotations", "symmetry.planes=[[1,1]]"],
        ["symmetry.planes[0]", "two distinct coordinates"],
        what="`symmetry.planes=[[1,1]]`",
    ),
    Case(
        "so3-on-2d-data",
        "train",
        ["symmetry.group=so3"],
        ["symmetry.group", "so3", "d=2"],
        what="`symmetry.group=so3` on 2-D data",
    ),
    Case(
        "particle-dim-not-dividing",
        "train",
        ["data.target=particles2d", "symmetry.particle_dim=4"],
        ["symmetry.particle_dim", "4", "d=6"],
        what="`symmetry.particle_dim=4` on particles2d (d=6)",
    ),
    Case(
        "matrix-wrong-shape",
        "train",
        ["symmetry.group=matrices", "symmetry.matrices=[[[0,1,0],[-1,0,0],[0,0,0]]]"],
        ["symmetry.matrices[0]", "3×3", "2×2", "d=2"],
        what="a 3×3 generator in `symmetry.matrices` on 2-D data",
    ),
    Case(
        "matrix-not-square",
        "train",
        ["symmetry.group=matrices", "symmetry.matrices=[[[0,1],[-1]]]"],
        ["symmetry.matrices[0]", "square"],
        what="a ragged generator `[[0,1],[-1]]`",
    ),
    Case(
        "matrix-not-a-symmetry-of-the-base",
        "train",
        ["symmetry.group=matrices", "symmetry.matrices=[[[1,0],[0,1]]]"],
        ["'A0'", "not invariant", "not antisymmetric"],
        what="a scaling generator `[[1,0],[0,1]]` (the Gaussian base is not invariant under it)",
    ),
    Case(
        "config-file-missing",
        "train",
        ["-c", "nope.yaml"],
        ["config file not found", "nope.yaml"],
        what="`-c nope.yaml` (missing config file)",
    ),
    Case("negative-seed", "train", ["seed=-1"], ["seed"], what="`seed=-1`"),
    Case(
        "bad-precision",
        "train",
        ["trainer.precision=foo"],
        ["trainer.precision", "foo"],
        what="`trainer.precision=foo`",
    ),
    Case("bad-devices", "train", ["trainer.devices=abc"], ["trainer.devices", "abc"], what="`trainer.devices=abc`"),
    Case("bad-strategy", "train", ["trainer.strategy=foo"], ["trainer.strategy", "foo"], what="`trainer.strategy=foo`"),
    Case(
        "wandb-online-without-key",
        "train",
        ["logger.wandb.mode=online"],
        ["logger.wandb.mode", "API key"],
        what="`logger.wandb.mode=online` without a W&B key",
    ),
]

#: data-file problems, each tried with ``ehf train data.path=FILE`` and ``ehf eval --data FILE``
DATA_CASES = [
    ("missing", "nope.npy", ["data file not found:", "nope.npy"], "a data file that does not exist"),
    ("garbage-npy", "garbage.npy", ["garbage.npy: is not a valid .npy file"], "random bytes in a .npy (unreadable)"),
    (
        "truncated-npy",
        "trunc.npy",
        ["trunc.npy: cannot read it as .npy", "not fully written"],
        "a .npy cut short (half written)",
    ),
    ("not-a-file", "dir.npy", ["dir.npy: is not a file"], "a folder named like a data file"),
    ("unsupported-type", "data.txt", ["data.txt: unsupported file type", "'.txt'"], "a .txt file"),
    (
        "csv-with-text",
        "text.csv",
        ["text.csv: non-numeric value 'x' at line 3, column 2"],
        "a .csv with a word among the numbers",
    ),
    ("csv-ragged", "ragged.csv", ["ragged.csv: line 2 has 1 columns"], "a .csv with a short row"),
    ("object-npy", "objects.npy", ["objects.npy: holds Python objects"], "a pickled object array in .npy"),
    ("one-d", "x1d.npy", ["x1d.npy: expected a 2-D array", "(20,)"], "a 1-D array"),
    (
        "nan-rows",
        "nan.npy",
        ["nan.npy: 3 of 200 rows contain NaN or Inf", "rows 3, 17, 40"],
        "NaN in rows 3 and 17, Inf in row 40",
    ),
    ("empty", "empty.npy", ["empty.npy: is empty (0 rows"], "an empty (0×2) array"),
]
DATA_ROWS = [
    Case(f"{name}-{cmd}", cmd,
         [*FILE_DATA, f"data.path={file}"] if cmd == "train"
         else ["--ckpt", "run2d", "--data", file, "--out", "out/logp.npy", "--json", "out/summary.json"],
         expect, what=f"{what} (`{'data.path' if cmd == 'train' else 'eval --data'}`)")
    for name, file, expect, what in DATA_CASES for cmd in ("train", "eval")
]  # fmt: skip
DATA_ROWS += [
    Case(
        "dim-mismatch-train",
        "train",
        [*FILE_DATA[:2], "data.path=x3.npy", "symmetry.group=rotations", "symmetry.planes=[[0,3]]"],
        ["symmetry.planes[0]", "coordinate 3", "d=3"],
        what="3-D data file with `symmetry.planes=[[0,3]]`",
    ),
    Case(
        "dim-mismatch-eval",
        "eval",
        ["--ckpt", "run2d", "--data", "x3.npy", "--out", "out/logp.npy"],
        ["data file x3.npy has d=3", "the checkpoint's model has d=2"],
        what="`ehf eval --data` a 3-D file on a 2-D model",
    ),
]

CLI_CASES = [
    Case(
        "eval-missing-ckpt",
        "eval",
        ["--ckpt", "nothing.ckpt"],
        ["checkpoint nothing.ckpt not found"],
        what="`eval --ckpt` a file that does not exist",
    ),
    Case(
        "eval-run-folder-without-ckpt",
        "eval",
        ["--ckpt", "emptyrun"],
        ["no checkpoint in run folder emptyrun"],
        what="`eval --ckpt` a run folder without checkpoints",
    ),
    Case(
        "eval-corrupted-ckpt",
        "eval",
        ["--ckpt", "corrupt.ckpt"],
        ["checkpoint corrupt.ckpt cannot be read"],
        what="`eval --ckpt` a .ckpt of random bytes",
    ),
    Case(
        "eval-foreign-ckpt",
        "eval",
        ["--ckpt", "foreign.ckpt"],
        ["checkpoint foreign.ckpt", "not written by lightning_ehf"],
        what="`eval --ckpt` a torch file that is not ours",
    ),
    Case(
        "eval-mismatched-ckpt",
        "eval",
        ["--ckpt", "mismatch/checkpoints/last.ckpt"],
        ["checkpoint mismatch/checkpoints/last.ckpt", "does not match the model its config builds"],
        what="`eval --ckpt` a checkpoint whose weights do not fit the model its config builds",
    ),
    Case(
        "eval-n-zero",
        "eval",
        ["--ckpt", "run2d", "--n", "0", "--out", "out/logp.npy"],
        ["--n must be positive"],
        what="`eval --n 0`",
    ),
    Case(
        "eval-data-and-split",
        "eval",
        ["--ckpt", "run2d", "--data", "x3.npy", "--split", "val", "--out", "out/logp.npy"],
        ["--data and --split: give one of them"],
        what="`eval --data FILE --split val`",
    ),
    Case(
        "eval-iw-zero",
        "eval",
        ["--ckpt", "run2d", "--iw", "0", "--out", "out/logp.npy"],
        ["--iw must be positive"],
        what="`eval --iw 0`",
    ),
    Case(
        "sample-n-zero",
        "sample",
        ["--ckpt", "run2d", "--n", "0", "--out", "out/s.npy"],
        ["--n must be positive, got 0"],
        what="`sample --n 0`",
    ),
    Case(
        "sample-missing-ckpt",
        "sample",
        ["--ckpt", "nothing.ckpt", "--n", "5", "--out", "out/s.npy"],
        ["checkpoint nothing.ckpt not found"],
        what="`sample --ckpt` a file that does not exist",
    ),
    Case(
        "sample-corrupted-ckpt",
        "sample",
        ["--ckpt", "corrupt.ckpt", "--n", "5", "--out", "out/s.npy"],
        ["checkpoint corrupt.ckpt cannot be read"],
        what="`sample --ckpt` a .ckpt of random bytes",
    ),
    Case(
        "sample-foreign-ckpt",
        "sample",
        ["--ckpt", "foreign.ckpt", "--n", "5", "--out", "out/s.npy"],
        ["not written by lightning_ehf"],
        what="`sample --ckpt` a torch file that is not ours",
    ),
    Case(
        "resume-folder-without-ckpt",
        "train",
        ["--resume", "norun"],
        ["--resume", "norun", "nothing to resume"],
        what="`--resume` a folder without checkpoints",
    ),
    Case(
        "resume-missing",
        "train",
        ["--resume", "nowhere"],
        ["--resume: nowhere not found"],
        what="`--resume` a path that does not exist",
    ),
    Case(
        "resume-ckpt-outside-run",
        "train",
        ["--resume", "loose.ckpt"],
        ["loose.ckpt", "not inside a run folder"],
        what="`--resume` a .ckpt that is not in a run folder's checkpoints/",
    ),
    Case(
        "resume-corrupted-ckpt",
        "train",
        ["--resume", "corruptrun"],
        ["checkpoint corruptrun/checkpoints/last.ckpt cannot be read"],
        what="`--resume` a run whose last.ckpt is random bytes",
    ),
    Case(
        "resume-foreign-ckpt",
        "train",
        ["--resume", "foreignrun"],
        ["foreignrun/checkpoints/last.ckpt", "not written by lightning_ehf"],
        what="`--resume` a run whose last.ckpt is a torch file that is not ours",
    ),
    Case(
        "resume-forbidden-override",
        "train",
        ["--resume", "run2d", "model.hidden=8"],
        ["model.hidden", "cannot be changed when resuming", "trainer.max_steps"],
        what="`--resume RUN model.hidden=8`",
    ),
    Case(
        "resume-with-config-file",
        "train",
        ["-c", "x.yaml", "--resume", "run2d"],
        ["seed", "cannot be changed when resuming", "-c x.yaml sets 1"],
        what="`--resume` together with `-c FILE` that changes a value (`seed: 1`)",
    ),
    Case(
        "resume-mismatched-ckpt",
        "train",
        ["--resume", "mismatch"],
        ["mismatch", "does not match"],
        what="`--resume` a run whose last.ckpt weights do not fit the model its config builds",
    ),
]

ALL_CASES = CONFIG_CASES + DATA_ROWS + CLI_CASES


def _params() -> list:
    out = []
    for case in ALL_CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
        variants = RUN_VARIANTS if case.command == "train" and "--resume" not in case.argv else {"": ""}
        for name, extra in variants.items():
            out.append(pytest.param(case, extra, marks=marks, id=f"{case.id}-{name}" if name else case.id))
    return out


def full_argv(case: Case, extra: str) -> list[str]:
    if case.command == "train" and "--resume" not in case.argv:
        n = 2 if case.argv[:1] == ["-c"] else 0  # options go before the key=value list
        return ["train", *case.argv[:n], *TINY, *case.argv[n:], extra]
    return [case.command, *case.argv]


# -- the files every row may refer to ----------------------------------------------------------


@pytest.fixture(scope="module")
def trained_2d(tmp_path_factory) -> Path:
    """A tiny finished ring2d run (d=2)."""
    root = tmp_path_factory.mktemp("trained2d")
    proc = ehf(["train", *TINY, f"run.dir={root / 'run'}"], root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, trained_2d) -> Path:
    """A folder of every bad (and good) input the rows name; copied into each test's folder."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    np.save(d / "x50.npy", rng.normal(size=(50, 2)))
    np.save(d / "x2.npy", rng.normal(size=(2, 2)))
    np.save(d / "x3.npy", rng.normal(size=(200, 3)))
    np.save(d / "x1d.npy", rng.normal(size=20))
    (d / "garbage.npy").write_bytes(rng.bytes(400))
    good = d / "good.npy"
    np.save(good, rng.normal(size=(300, 2)))
    (d / "trunc.npy").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    good.unlink()
    (d / "dir.npy").mkdir()
    (d / "data.txt").write_text("1,2\n3,4\n")
    (d / "text.csv").write_text("a,b\n1,2\n3,x\n")
    (d / "ragged.csv").write_text("1,2\n3\n")
    np.save(d / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    x = rng.normal(size=(200, 2))
    x[[3, 17], 0] = np.nan
    x[40, 1] = np.inf
    np.save(d / "nan.npy", x)
    np.save(d / "empty.npy", np.zeros((0, 2)))
    (d / "x.yaml").write_text("seed: 1\n")
    (d / "corrupt.ckpt").write_bytes(rng.bytes(5000))
    torch.save({"a": 1}, d / "foreign.ckpt")
    shutil.copytree(trained_2d, d / "run2d")
    shutil.copy(trained_2d / "checkpoints" / "last.ckpt", d / "loose.ckpt")
    (d / "norun").mkdir()
    (d / "emptyrun" / "checkpoints").mkdir(parents=True)
    (d / "corruptrun" / "checkpoints").mkdir(parents=True)
    (d / "corruptrun" / "checkpoints" / "last.ckpt").write_bytes(rng.bytes(5000))
    (d / "foreignrun" / "checkpoints").mkdir(parents=True)
    torch.save({"a": 1}, d / "foreignrun" / "checkpoints" / "last.ckpt")
    # a checkpoint of ours whose weights no longer fit the model its config builds (e.g. written by
    # another version of the code): the config says hidden=8, the weights are hidden=16
    ckpt = torch.load(trained_2d / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["config"]["model"]["hidden"] = 8
    (d / "mismatch" / "checkpoints").mkdir(parents=True)
    torch.save(ckpt, d / "mismatch" / "checkpoints" / "last.ckpt")
    shutil.copy(d / "mismatch" / "checkpoints" / "last.ckpt", d / "mismatch.ckpt")
    return d


@pytest.fixture
def workdir(inputs, tmp_path, monkeypatch, ehf_clean_env) -> Path:
    """The test's folder, holding a copy of every input; cwd, $HOME there; no EHF/W&B env leaks."""
    work = tmp_path / "work"
    shutil.copytree(inputs, work)
    home = tmp_path / "home"  # without ~/.netrc: no W&B key (outside the snapshot: matplotlib caches there)
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    return work


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every path under ``folder`` with its kind, size and modification time."""
    out = {}
    for p in folder.rglob("*"):
        st = p.lstat()
        out[str(p.relative_to(folder))] = ("dir",) if p.is_dir() else ("file", st.st_size, st.st_mtime_ns)
    return out


def diff(before: dict, after: dict) -> dict:
    return {
        "new": sorted(set(after) - set(before)),
        "gone": sorted(set(before) - set(after)),
        "changed": sorted(k for k in set(before) & set(after) if before[k] != after[k]),
    }


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """``cli.main`` as the process would run it: an escaping exception is a traceback and exit 1."""
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse
        rc = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        rc = 1
    out, err = capsys.readouterr()
    return rc, out, err


def check_error(command: str, rc: int, out: str, err: str, expect: list[str]) -> str:
    """Exit 2 and one stderr line ``ehf <command>: error: …`` holding every ``expect``; returns the line."""
    assert "Traceback" not in err, err[-3000:]
    assert rc == 2, (rc, err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-3000:]
    line = lines[0]
    assert line.startswith(f"ehf {command}: error: "), line
    for s in expect:
        assert s in line, (s, line)
    assert "run folder" not in out and "resuming from" not in out, out
    return line


# -- the table ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case, extra", _params())
def test_bad_input(case: Case, extra: str, workdir: Path, capsys):
    before = snapshot(workdir)
    rc, out, err = run_main(full_argv(case, extra), capsys)
    check_error(case.command, rc, out, err, case.expect)
    changes = diff(before, snapshot(workdir))
    assert changes == {"new": [], "gone": [], "changed": []}, changes


def test_every_row_is_distinct():
    ids = [c.id for c in ALL_CASES]
    assert len(ids) == len(set(ids))


def test_usage_error_is_argparse_style(workdir, capsys):
    """A missing required argument: argparse's usage line, then one ``ehf sample: error:`` line; exit 2."""
    rc, out, err = run_main(["sample", "--ckpt", "run2d", "--n", "3"], capsys)
    assert rc == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("usage: ehf sample") and len(lines) == 2, err
    assert lines[1].startswith("ehf sample: error:") and "--out" in lines[1], err


def test_mismatched_checkpoint_message_says_what_differs(workdir, capsys):
    rc, out, err = run_main(["eval", "--ckpt", "mismatch.ckpt"], capsys)
    line = check_error("eval", rc, out, err, ["mismatch.ckpt"])
    assert not line.rstrip().endswith(":"), line
    assert "size mismatch" in line or "missing" in line or "unexpected" in line, line


# -- a few rows as real processes ----------------------------------------------------------------

REAL = {
    "matrix-not-a-symmetry-of-the-base-root": "run.root=runs",
    "nan-rows-train-dir": "run.dir=run",
    "dim-mismatch-eval": "",
    "sample-corrupted-ckpt": "",
    "resume-forbidden-override": "",
}


@pytest.mark.parametrize("param_id", list(REAL))
def test_real_process(param_id: str, workdir: Path):
    case = next(c for c in ALL_CASES if param_id == c.id or param_id.rsplit("-", 1)[0] == c.id)
    before = snapshot(workdir)
    proc = ehf(full_argv(case, REAL[param_id]), workdir, env=clean_env(HOME=os.environ["HOME"]))
    check_error(case.command, proc.returncode, proc.stdout, proc.stderr, case.expect)
    assert diff(before, snapshot(workdir)) == {"new": [], "gone": [], "changed": []}
