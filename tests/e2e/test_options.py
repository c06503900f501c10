"""Every option combination runs: an all-pairs smoke test of the model/symmetry knobs through ``ehf``.

Factors (``FACTORS``): ``symmetry.group`` (none, so2, so3, rotations, matrices, and "particles" =
``so2`` with ``symmetry.particle_dim=2``), ``constraint.mode``, ``model.invariant``, ``model.kind``,
``model.kinetic``, ``model.encoder`` and ``model.standardise``. The full product (1,440 combinations) is too
slow for CI, so
the cases form a covering design computed here, deterministically (a greedy all-pairs cover):

* every pair of option values that some valid combination holds appears in at least one *valid*
  case, which must train (exit 0, finite ``test/nll``, plots, diagnostics) and whose run must work
  with ``ehf eval`` and ``ehf sample``;
* every group × constraint mode appears in a valid ``model.kind=ehf`` case (the constraint acts only
  on an EHF with generators);
* every pair that no valid combination holds, and every other minimal invalid combination, appears
  in an *invalid* case, which must exit 2 with one stderr line naming the offending key.

The validity oracle is ``offending_keys`` (what the README and ``docs/errors.md`` promise):

* ``model.invariant=true`` needs a rotation group (not none / matrices) and ``model.kind=ehf``;
* ``model.encoder=equivariant`` needs a rotation group (refused for none / matrices with every
  kind), and for an EHF rotations of disjoint 2-D planes (so3 and particle rotations are refused);
* ``model.kind=nsf`` has no Hamiltonians and no momentum encoder: ``model.kinetic`` and
  ``model.encoder`` do not apply and are ignored (README), ``constraint.mode`` has nothing to act on.
  ``test_nsf_ignores_ehf_only_options`` pins that down.

Runs go in-process through ``lightning_ehf.cli.main`` (measured on 2 cores: ~1 s per tiny training
and ~0.1 s per eval/sample in-process, against ~4.5 s / ~3.5 s as a ``python -m lightning_ehf``
process, mostly imports); a few cases run as real processes for the true exit codes.

``test_group_none_*`` are the acceptance tests for ``symmetry.group=none`` (no generators at all):
train, eval and sample on a target and on a data file, with every constraint mode.
"""

from __future__ import annotations

import itertools
import json
import math
import traceback
from pathlib import Path
from typing import NamedTuple

import lightning  # noqa: F401  (before any test: Lightning's log handler must not keep a test's closed capsys stream)
import numpy as np
import pytest
import torch

from ehf_testing import FRAMEWORK_TINY
from lightning_ehf import cli
from lightning_ehf.config.load import load_config

pytestmark = pytest.mark.slow

STEPS = 6  # FRAMEWORK_TINY: trainer.max_steps=6, validation every 3 steps, 64 test rows, IWAE K=4
N_TEST = 64
LAMBDA_INIT = 0.5  # constraint.init: the fixed λ of penalty mode (so penalty ≠ none is visible)

FACTORS: dict[str, tuple[str, ...]] = {
    "symmetry.group": ("none", "so2", "so3", "rotations", "matrices", "particles"),
    "constraint.mode": ("none", "penalty", "dual"),
    "model.invariant": ("false", "true"),
    "model.kind": ("ehf", "nsf"),
    "model.kinetic": ("quadratic", "mlp"),
    "model.encoder": ("auto", "gaussian", "full", "flow", "equivariant"),
    "model.standardise": ("false", "true"),
}
KEYS = tuple(FACTORS)

ROTATION_SO3 = "[[[0,-1,0],[1,0,0],[0,0,0]],[[0,0,-1],[0,0,0],[1,0,0]]]"  # two antisymmetric 3×3 generators


class Group(NamedTuple):
    args: tuple[str, ...]  # overrides; "{data}" is the folder of the module's data files
    generators: tuple[str, ...]  # metric names of the generators
    dim: int


#: data that fits each group (targets where one exists, a 4-D file for two rotation planes)
GROUPS: dict[str, Group] = {
    "none": Group(("data.target=ring2d", "symmetry.group=none"), (), 2),
    "so2": Group(("data.target=ring2d", "symmetry.group=so2"), ("L01",), 2),
    "so3": Group(("data.target=shell3d", "symmetry.group=so3"), ("L01", "L02", "L12"), 3),
    "rotations": Group(
        (
            "data.target=null",
            "data.path={data}/two_rings.npy",
            "data.regime=finite",
            "symmetry.group=rotations",
            "symmetry.planes=[[0,1],[2,3]]",
        ),
        ("L01", "L23"),
        4,
    ),
    "matrices": Group(
        ("data.target=shell3d", "symmetry.group=matrices", f"symmetry.matrices={ROTATION_SO3}"), ("A0", "A1"), 3
    ),
    "particles": Group(("data.target=particles2d", "symmetry.group=so2", "symmetry.particle_dim=2"), ("L01",), 6),
}
assert tuple(GROUPS) == FACTORS["symmetry.group"]


def offending_keys(c: dict[str, str]) -> frozenset[str]:
    """The keys a combination gets wrong (empty: it must train)."""
    group, invariant = c["symmetry.group"], c["model.invariant"] == "true"
    kind, encoder = c["model.kind"], c["model.encoder"]
    bad = set()
    if invariant and (group in ("none", "matrices") or kind == "nsf"):
        bad.add("model.invariant")
    if encoder == "equivariant" and (
        group in ("none", "matrices") or (kind == "ehf" and group in ("so3", "particles"))
    ):
        bad.add("model.encoder")
    return frozenset(bad)


# -- the covering design --------------------------------------------------------------------------


def _interactions(c: dict[str, str]) -> set[frozenset]:
    """The value pairs of a combination, plus (group, mode, ehf): the constraint acts only in an EHF."""
    out = {frozenset({(a, c[a]), (b, c[b])}) for a, b in itertools.combinations(KEYS, 2)}
    if c["model.kind"] == "ehf":
        out.add(
            frozenset(
                {
                    ("symmetry.group", c["symmetry.group"]),
                    ("constraint.mode", c["constraint.mode"]),
                    ("model.kind", "ehf"),
                }
            )
        )
    return out


def _all_combinations() -> list[dict[str, str]]:
    return [dict(zip(KEYS, values)) for values in itertools.product(*FACTORS.values())]


def covering_design() -> list[dict[str, str]]:
    """Valid combinations covering every interaction some valid combination holds (greedy, deterministic:
    the first combination in product order among those covering the most still-uncovered interactions)."""
    valid = [c for c in _all_combinations() if not offending_keys(c)]
    need = set().union(*map(_interactions, valid))
    rows = []
    while need:
        best = max(valid, key=lambda c: len(_interactions(c) & need))
        rows.append(best)
        need -= _interactions(best)
    return rows


def _combo(**changes: str) -> dict[str, str]:
    c = {
        "symmetry.group": "so2",
        "constraint.mode": "dual",
        "model.invariant": "false",
        "model.kind": "ehf",
        "model.kinetic": "mlp",
        "model.encoder": "auto",
        "model.standardise": "false",
    }
    c.update({k.replace("__", "."): v for k, v in changes.items()})
    return c


#: every minimal invalid combination, other factors varied by hand
INVALID = [
    _combo(symmetry__group="none", model__invariant="true", constraint__mode="none"),
    _combo(symmetry__group="matrices", model__invariant="true", model__kinetic="quadratic"),
    _combo(model__invariant="true", model__kind="nsf", constraint__mode="penalty"),
    _combo(symmetry__group="none", model__encoder="equivariant", model__kind="nsf"),
    _combo(symmetry__group="matrices", model__encoder="equivariant", constraint__mode="penalty"),
    _combo(symmetry__group="so3", model__encoder="equivariant", model__invariant="true"),
    _combo(
        symmetry__group="particles", model__encoder="equivariant", model__kinetic="quadratic", constraint__mode="none"
    ),
]


class Case(NamedTuple):
    id: str
    options: dict[str, str]
    extra: tuple[str, ...] = ()  # further overrides (after the group's own)
    offending: frozenset[str] = frozenset()  # keys the error line may name; empty: valid


def _case_id(c: dict[str, str]) -> str:
    inv = "inv" if c["model.invariant"] == "true" else "noinv"
    return "-".join(
        [c["symmetry.group"], c["constraint.mode"], inv, c["model.kind"], c["model.kinetic"], c["model.encoder"]]
    )


VALID_CASES = [Case(_case_id(c), c) for c in covering_design()]
INVALID_CASES = [Case(_case_id(c), c, offending=offending_keys(c)) for c in INVALID] + [
    # rotations of overlapping planes have no invariant features and no polar frame
    Case(
        "overlapping-planes-invariant",
        _combo(symmetry__group="rotations", model__invariant="true"),
        ("symmetry.planes=[[0,1],[1,2]]",),
        frozenset({"model.invariant"}),
    ),
    Case(
        "overlapping-planes-equivariant",
        _combo(symmetry__group="rotations", model__encoder="equivariant"),
        ("symmetry.planes=[[0,1],[1,2]]",),
        frozenset({"model.encoder"}),
    ),
    # auto takes the target's group; gmm8 declares none, which the config check cannot know yet
    Case(
        "auto-none-invariant",
        _combo(symmetry__group="none", model__invariant="true"),
        ("data.target=gmm8", "symmetry.group=auto"),
        frozenset({"model.invariant"}),
    ),
    Case(
        "auto-none-equivariant",
        _combo(symmetry__group="none", model__encoder="equivariant"),
        ("data.target=gmm8", "symmetry.group=auto"),
        frozenset({"model.encoder"}),
    ),
]


def test_covering_design():
    """The design itself: pairwise coverage, validity as the oracle says, a CI-sized case count."""
    valid = [c.options for c in VALID_CASES]
    invalid = [c.options for c in INVALID_CASES]
    assert all(not offending_keys(c) for c in valid)
    assert all(offending_keys(c) for c in INVALID), "an INVALID row is valid"
    assert len({c.id for c in VALID_CASES + INVALID_CASES}) == len(VALID_CASES) + len(INVALID_CASES)
    every_pair = set().union(*map(_interactions, _all_combinations()))
    valid_pairs = set().union(*(_interactions(c) for c in _all_combinations() if not offending_keys(c)))
    covered_valid = set().union(*map(_interactions, valid))
    assert valid_pairs <= covered_valid
    assert every_pair <= covered_valid | set().union(*map(_interactions, invalid))
    for group, mode in itertools.product(FACTORS["symmetry.group"], FACTORS["constraint.mode"]):
        assert any(
            c["symmetry.group"] == group and c["constraint.mode"] == mode and c["model.kind"] == "ehf" for c in valid
        ), (group, mode)
    for value in FACTORS["symmetry.group"]:  # every group has a valid EHF and a valid NSF case
        assert {c["model.kind"] for c in valid if c["symmetry.group"] == value} == {"ehf", "nsf"}
    assert len(VALID_CASES) <= 30, len(VALID_CASES)  # CI budget: ~1.5 s each in-process


# -- running ``ehf`` -------------------------------------------------------------------------------


def _two_rings(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    theta = rng.uniform(0, 2 * np.pi, (n, 2))
    radius = 2.0 + 0.2 * rng.standard_normal((n, 2))
    return np.concatenate(
        [
            radius[:, :1] * np.cos(theta[:, :1]),
            radius[:, :1] * np.sin(theta[:, :1]),
            radius[:, 1:] * np.cos(theta[:, 1:]),
            radius[:, 1:] * np.sin(theta[:, 1:]),
        ],
        axis=1,
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("options-data")
    np.save(folder / "two_rings.npy", _two_rings(400))
    ring = _two_rings(400, seed=1)[:, :2]  # a ring in 2-D, as a user file (float32, like most .npy)
    np.save(folder / "ring2d.npy", ring.astype(np.float32))
    return folder


def _main(argv: list[str], capsys) -> tuple[int, str, str]:
    """``cli.main`` as the process would run it: an escaping exception is a traceback and exit 1."""
    try:
        rc = cli.main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        rc = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        rc = 1
    out, err = capsys.readouterr()
    return rc, out, err


def _tail(rc: int, out: str, err: str) -> str:
    return f"rc={rc}\n--- stdout\n{out[-2000:]}\n--- stderr\n{err[-4000:]}"


def _train_argv(case: Case, data: Path, run_dir: Path) -> list[str]:
    o = case.options
    group = [a.format(data=data) for a in GROUPS[o["symmetry.group"]].args]
    return [
        "train",
        *FRAMEWORK_TINY,
        "logger.wandb.mode=disabled",
        *group,
        *case.extra,
        *(f"{k}={o[k]}" for k in KEYS if k != "symmetry.group"),
        f"constraint.init={LAMBDA_INIT}",
        f"run.dir={run_dir}",
    ]


def _finite(metrics: dict, key: str) -> float:
    assert key in metrics, f"{key} missing from metrics.json: {sorted(metrics)}"
    value = metrics[key]
    assert isinstance(value, (int, float)) and math.isfinite(value), f"{key} = {value!r}"
    return float(value)


def check_trained_run(run_dir: Path, options: dict[str, str], generators: tuple[str, ...], dim: int) -> dict:
    """A finished run of these options: files, plots, finite metrics, and the symmetry diagnostics
    that apply (none for a group without generators; no brackets, multipliers or flow equivariance
    for nsf). Returns metrics.json."""
    for name in ("config.yaml", "metrics.csv", "metrics.json", "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (run_dir / name).is_file(), f"{name} missing in {run_dir}"
    ehf_kind = options["model.kind"] == "ehf"
    plots = {p.name for p in (run_dir / "plots").glob("*.png")}
    assert plots == {"density.png", "samples.png"} | ({"potentials.png"} if ehf_kind else set()), plots

    cfg = load_config([run_dir / "config.yaml"])
    # invariant Hamiltonians have every bracket zero by construction: the run drops the constraint (and says so)
    invariant_ehf = ehf_kind and options["model.invariant"] == "true"
    assert cfg.model.kind == options["model.kind"]
    assert cfg.constraint.mode == ("none" if invariant_ehf else options["constraint.mode"])
    assert str(cfg.model.invariant).lower() == options["model.invariant"]
    assert cfg.model.kinetic == options["model.kinetic"] and cfg.model.encoder == options["model.encoder"]

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == STEPS
    _finite(metrics, "test/nll")
    _finite(metrics, "test/elbo")
    if not generators:  # nothing to be invariant under: no diagnostic, bracket or multiplier is made up
        assert not [k for k in metrics if "variance" in k or "bracket" in k or "lambda" in k], sorted(metrics)
        return metrics
    _finite(metrics, "test/invariance_error")
    _finite(metrics, "test/invariance_noise")
    if not ehf_kind:
        assert not [k for k in metrics if "equivariance" in k or "bracket" in k or "lambda/" in k], sorted(metrics)
        return metrics
    equivariance = _finite(metrics, "test/equivariance_error")
    brackets = [_finite(metrics, f"test/bracket_rms/{g}") for g in generators]
    lambdas = [_finite(metrics, f"test/lambda/{g}") for g in generators]
    assert not [k for k in metrics if k.startswith("test/bracket_rms/") and k.rsplit("/", 1)[1] not in generators]
    mode = "none" if options["model.invariant"] == "true" else options["constraint.mode"]  # invariant: dropped
    if mode == "none":
        assert lambdas == [0.0] * len(generators), lambdas
    elif mode == "penalty":
        assert lambdas == [LAMBDA_INIT] * len(generators), lambdas
    else:  # dual ascent moved every λ off its start (C_k ≠ ε_k), and kept it ≥ 0
        assert all(lam >= 0.0 and lam != LAMBDA_INIT for lam in lambdas), lambdas
    if options["model.invariant"] == "true":  # {g_k, H} ≡ 0 by construction: the flow commutes with G
        assert max(brackets) < 1e-4 and equivariance < 1e-4, (brackets, equivariance)
    return metrics


def check_eval_and_sample(run_dir: Path, dim: int, capsys, tmp_path: Path, known_target: bool) -> None:
    rc, out, err = _main(["eval", "--ckpt", run_dir, "--json", tmp_path / "eval.json"], capsys)
    assert rc == 0, _tail(rc, out, err)
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert summary["n"] == N_TEST and math.isfinite(summary["nll"]), summary
    assert ("kl" in summary) == known_target, summary
    rc, out, err = _main(["sample", "--ckpt", run_dir, "--n", 10, "--out", tmp_path / "x.npy"], capsys)
    assert rc == 0, _tail(rc, out, err)
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (10, dim) and np.isfinite(x).all(), x


def check_error_line(rc: int, out: str, err: str, keys: frozenset[str]) -> str:
    """Exit 2 and exactly one stderr line ``ehf train: error: <key>: …`` naming one of ``keys``."""
    assert "Traceback" not in err, err[-3000:]
    assert rc == 2, _tail(rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err[-3000:]
    line = lines[0]
    assert line.startswith("ehf train: error: "), line
    assert any(line.startswith(f"ehf train: error: {key}: ") for key in keys), (sorted(keys), line)
    assert "run folder" not in out, out
    return line


# -- the covering cases -----------------------------------------------------------------------------


@pytest.mark.parametrize("case", VALID_CASES, ids=[c.id for c in VALID_CASES])
def test_valid_combination_trains_evaluates_and_samples(case: Case, data_dir, tmp_path, ehf_clean_env, capsys):
    ehf_clean_env.chdir(tmp_path)
    group = GROUPS[case.options["symmetry.group"]]
    run_dir = tmp_path / "run"
    rc, out, err = _main(_train_argv(case, data_dir, run_dir), capsys)
    assert rc == 0, _tail(rc, out, err)
    assert "Traceback" not in err
    check_trained_run(run_dir, case.options, group.generators, group.dim)
    known_target = case.options["symmetry.group"] != "rotations"  # the rotations case trains on a file
    check_eval_and_sample(run_dir, group.dim, capsys, tmp_path, known_target)


@pytest.mark.parametrize("case", INVALID_CASES, ids=[c.id for c in INVALID_CASES])
def test_invalid_combination_exits_2_naming_the_key(case: Case, data_dir, tmp_path, ehf_clean_env, capsys):
    ehf_clean_env.chdir(tmp_path)
    run_dir = tmp_path / "run"
    rc, out, err = _main(_train_argv(case, data_dir, run_dir), capsys)
    check_error_line(rc, out, err, case.offending)
    assert not run_dir.exists()


REAL_PROCESS = ["none-none-inv-ehf-mlp-auto", "so3-dual-inv-ehf-mlp-equivariant"]  # config check / model build


@pytest.mark.parametrize("case_id", REAL_PROCESS)
def test_invalid_combination_real_process(case_id: str, data_dir, tmp_path, ehf_cli):
    case = next(c for c in INVALID_CASES if c.id == case_id)
    proc = ehf_cli(_train_argv(case, data_dir, tmp_path / "run"), cwd=tmp_path)
    check_error_line(proc.returncode, proc.stdout, proc.stderr, case.offending)
    assert not (tmp_path / "run").exists()


def test_nsf_ignores_ehf_only_options(data_dir, tmp_path, ehf_clean_env, capsys):
    """``model.kinetic`` / ``model.encoder`` / ``model.standardise`` / ``optim.estimator`` / ``constraint.mode`` do not apply to the nsf baseline
    (README): with the same seed they change nothing, not even the parameters."""
    ehf_clean_env.chdir(tmp_path)
    runs = {}
    for name, opts in {
        "a": _combo(symmetry__group="so3", model__kind="nsf", constraint__mode="dual"),
        "b": _combo(
            symmetry__group="so3",
            model__kind="nsf",
            constraint__mode="none",
            model__kinetic="quadratic",
            model__encoder="equivariant",
            model__standardise="true",
        ),
    }.items():
        extra = ("optim.estimator=dreg",) if name == "b" else ()
        rc, out, err = _main(_train_argv(Case(name, opts, extra), data_dir, tmp_path / name), capsys)
        assert rc == 0, _tail(rc, out, err)
        runs[name] = check_trained_run(tmp_path / name, opts, GROUPS["so3"].generators, 3)
    assert runs["a"]["test/nll"] == runs["b"]["test/nll"]
    a, b = (torch.load(tmp_path / n / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for n in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_auto_group_of_a_target_without_symmetry_trains(data_dir, tmp_path, ehf_clean_env, capsys):
    """``symmetry.group=auto`` on gmm8 resolves to no symmetry: the group-none path, default options."""
    ehf_clean_env.chdir(tmp_path)
    rc, out, err = _main(
        ["train", *FRAMEWORK_TINY, "logger.wandb.mode=disabled", "data.target=gmm8", f"run.dir={tmp_path / 'run'}"],
        capsys,
    )
    assert rc == 0, _tail(rc, out, err)
    check_trained_run(tmp_path / "run", _combo(symmetry__group="none"), (), 2)


# -- acceptance: symmetry.group=none -----------------------------------------------------------------

MODES = FACTORS["constraint.mode"]
SOURCES = {"target": ["data.target=ring2d"], "file": ["data.target=null", "data.path=ring2d.npy", "data.regime=finite"]}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("source", list(SOURCES))
def test_group_none_trains_evaluates_and_samples(source, mode, data_dir, tmp_path, ehf_cli, ehf_clean_env, capsys):
    """``ehf train symmetry.group=none`` then ``ehf eval --ckpt RUN`` and ``ehf sample --ckpt RUN --n 10
    --out x.npy``, on ring2d and on a .npy file, in every constraint mode. The default mode (dual)
    runs as real ``python -m lightning_ehf`` processes, the others in-process."""
    (tmp_path / "ring2d.npy").write_bytes((data_dir / "ring2d.npy").read_bytes())
    argv_train = [
        "train",
        "symmetry.group=none",
        f"constraint.mode={mode}",
        *SOURCES[source],
        *FRAMEWORK_TINY,
        "logger.wandb.mode=disabled",
        "run.dir=RUN",
    ]
    commands = [
        argv_train,
        ["eval", "--ckpt", "RUN", "--json", "eval.json"],
        ["sample", "--ckpt", "RUN", "--n", "10", "--out", "x.npy"],
    ]
    if source == "file":
        commands.append(["eval", "--ckpt", "RUN", "--data", "ring2d.npy", "--n", "20", "--out", "logp.npy"])
    ehf_clean_env.chdir(tmp_path)
    for argv in commands:
        if mode == "dual":
            proc = ehf_cli(argv, cwd=tmp_path)
            rc, out, err = proc.returncode, proc.stdout, proc.stderr
        else:
            rc, out, err = _main(argv, capsys)
        assert rc == 0, f"{argv[0]}: {_tail(rc, out, err)}"
        assert "Traceback" not in err

    run_dir = tmp_path / "RUN"
    options = _combo(symmetry__group="none", constraint__mode=mode)
    metrics = check_trained_run(run_dir, options, (), 2)
    assert ("test/kl" in metrics) == (source == "target")
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert summary["n"] == N_TEST and math.isfinite(summary["nll"]) and ("kl" in summary) == (source == "target")
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (10, 2) and np.isfinite(x).all()
    if source == "file":
        logp = np.load(tmp_path / "logp.npy")
        assert logp.shape == (20,) and np.isfinite(logp).all()
    # no generators: every mode trains the plain ELBO; the multipliers are empty
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["state_dict"]["multipliers.value"].numel() == 0
