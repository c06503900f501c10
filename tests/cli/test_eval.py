"""``ehf eval`` and ``ehf sample`` on a trained run (docs/design.md §4), called in-process through
``lightning_ehf.cli.main`` (they train nothing and set no environment variables)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from lightning_ehf import cli

N_ROWS = 37


def _ring(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    theta = rng.uniform(0, 2 * np.pi, n)
    radius = 2.0 + 0.2 * rng.standard_normal(n)
    return np.stack([radius * np.cos(theta), radius * np.sin(theta)], axis=1)


@pytest.fixture(scope="module")
def data_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("eval-data")
    x = _ring(N_ROWS)
    files = {"npy": folder / "ring.npy", "npz": folder / "ring.npz", "csv": folder / "ring.csv"}
    np.save(files["npy"], x)
    np.savez(files["npz"], x=x)
    np.savetxt(files["csv"], x, delimiter=",", header="q0,q1", comments="", fmt="%.17g")
    files["3d"] = folder / "cube.npy"
    np.save(files["3d"], np.random.default_rng(1).standard_normal((N_ROWS, 3)))
    return files


def _main(capsys, *args) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _eval(capsys, ckpt, *args) -> dict:
    rc, out, err = _main(capsys, "eval", "--ckpt", ckpt, *args)
    assert rc == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["npy", "npz", "csv"])
def test_eval_data_file_writes_per_row_loglik(kind, ehf_tiny_run, data_files, tmp_path, capsys):
    out, summary_path = tmp_path / "logp.npy", tmp_path / "summary.json"
    printed = _eval(
        capsys,
        ehf_tiny_run / "checkpoints" / "last.ckpt",
        "--data",
        data_files[kind],
        "--out",
        out,
        "--json",
        summary_path,
    )
    logp = np.load(out)
    assert logp.shape == (N_ROWS,) and logp.dtype == np.float64
    assert np.isfinite(logp).all()
    summary = json.loads(summary_path.read_text())
    assert summary == printed
    assert summary["n"] == N_ROWS and summary["iw_samples"] == 4  # the run's eval.iw_samples
    assert summary["nll"] == pytest.approx(-logp.mean(), rel=1e-12)
    assert summary["nll_stderr"] == pytest.approx(logp.std(ddof=1) / math.sqrt(N_ROWS), rel=1e-9)
    assert "kl" not in summary  # user data: no known entropy

    # the three formats hold the same rows: with the same --seed the same log-likelihoods
    reference = tmp_path / "reference.npy"
    _eval(capsys, ehf_tiny_run / "checkpoints" / "last.ckpt", "--data", data_files["npy"], "--out", reference)
    np.testing.assert_allclose(logp, np.load(reference), rtol=1e-10, atol=1e-10)


def test_eval_options(ehf_tiny_run, data_files, tmp_path, capsys):
    ckpt = ehf_tiny_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "first10.npy"
    summary = _eval(capsys, ckpt, "--data", data_files["npy"], "--n", 10, "--out", out)
    assert summary["n"] == 10 and np.load(out).shape == (10,)

    summary = _eval(capsys, ckpt, "--data", data_files["csv"], "--iw", 8)
    assert summary["iw_samples"] == 8 and summary["n"] == N_ROWS and math.isfinite(summary["nll"])

    # a run folder stands for its best checkpoint
    a = _eval(capsys, ehf_tiny_run, "--data", data_files["npy"], "--seed", 3)
    b = _eval(capsys, ehf_tiny_run / "checkpoints" / "best.ckpt", "--data", data_files["npy"], "--seed", 3)
    assert a["nll"] == b["nll"]


def test_eval_without_data_uses_the_test_set(ehf_tiny_run, tmp_path, capsys):
    out = tmp_path / "test.npy"
    summary = _eval(capsys, ehf_tiny_run / "checkpoints" / "best.ckpt", "--out", out, "--json", tmp_path / "s.json")
    assert summary["n"] == 64  # data.n_test of the run
    assert "test" in summary["source"]
    logp = np.load(out)
    assert logp.shape == (64,) and logp.dtype == np.float64 and np.isfinite(logp).all()
    # ring2d is a known target: kl = nll − entropy (entropy stored in the checkpoint)
    import torch

    entropy = torch.load(ehf_tiny_run / "checkpoints" / "best.ckpt", weights_only=True)["hyper_parameters"]["entropy"]
    assert summary["kl"] == pytest.approx(summary["nll"] - entropy, rel=1e-9)
    # the same test set and weights as training's final test: same NLL up to IWAE noise (K=4, 64 rows)
    metrics = json.loads((ehf_tiny_run / "metrics.json").read_text())
    assert summary["nll"] == pytest.approx(metrics["test/nll"], abs=0.5)
    # the paired estimate: log p(q) − log p̂(q) row by row with the target's density, from the same rows
    from lightning_ehf.core.targets import make_target
    from lightning_ehf.evaluate import load_run

    rows = load_run(ehf_tiny_run).test_data().double()
    diff = make_target("ring2d").log_prob(rows).numpy() - logp
    assert summary["kl_paired"] == pytest.approx(float(diff.mean()), rel=1e-9, abs=1e-9)
    # its standard error is that of the row differences (a 6-step model need not make it smaller than the NLL's)
    assert summary["kl_paired_stderr"] == pytest.approx(diff.std(ddof=1) / math.sqrt(len(diff)), rel=1e-9)
    assert np.isfinite(metrics["test/kl_paired"])


def test_sample_writes_n_by_d(ehf_tiny_run, tmp_path, capsys):
    out = tmp_path / "nested" / "samples.npy"
    rc, stdout, err = _main(capsys, "sample", "--ckpt", ehf_tiny_run, "--n", 123, "--out", out)
    assert rc == 0, err
    x = np.load(out)
    assert x.shape == (123, 2) and x.dtype == np.float64 and np.isfinite(x).all()
    assert "123" in stdout
    # --seed makes sampling reproducible, a different seed gives different samples
    again, other = tmp_path / "again.npy", tmp_path / "other.npy"
    assert _main(capsys, "sample", "--ckpt", ehf_tiny_run, "--n", 123, "--out", again)[0] == 0
    assert _main(capsys, "sample", "--ckpt", ehf_tiny_run, "--n", 123, "--out", other, "--seed", 1)[0] == 0
    np.testing.assert_array_equal(x, np.load(again))
    assert not np.allclose(x, np.load(other))


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_eval_on_data_of_the_wrong_dimension_exits_2(ehf_tiny_run, data_files, tmp_path, capsys):
    out = tmp_path / "never.npy"
    rc, _, err = _main(
        capsys, "eval", "--ckpt", ehf_tiny_run / "checkpoints" / "last.ckpt", "--data", data_files["3d"], "--out", out
    )
    assert rc == 2
    line = _one_line_error(err)
    assert "d=3" in line and "d=2" in line and "cube.npy" in line, line
    assert not out.exists()


@pytest.mark.parametrize("args, needle", [
    (["eval", "--ckpt", "{tmp}/missing.ckpt"], "missing.ckpt"),
    (["eval", "--ckpt", "{run}", "--data", "{tmp}/missing.npy"], "missing.npy"),
    (["eval", "--ckpt", "{run}", "--n", "0"], "--n"),
    (["sample", "--ckpt", "{run}", "--n", "0", "--out", "{tmp}/s.npy"], "--n"),
    (["sample", "--ckpt", "{tmp}", "--n", "3", "--out", "{tmp}/s.npy"], "no checkpoint"),
])  # fmt: skip
def test_eval_and_sample_usage_errors_exit_2(args, needle, ehf_tiny_run, tmp_path, capsys):
    rc, _, err = _main(capsys, *[a.format(tmp=tmp_path, run=ehf_tiny_run) for a in args])
    assert rc == 2
    assert needle in _one_line_error(err)
