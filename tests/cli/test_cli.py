"""The ``ehf`` command's usage contract (docs/design.md §4): bad config → exit 2 with one line naming the
key, no traceback and no run folder; ``print-config``; ``--help``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lightning_ehf import cli
from lightning_ehf.config.load import load_config

REPO = Path(__file__).resolve().parents[2]

BAD = [
    ("data.n_trian=3", "data.n_trian", "data.n_train"),  # unknown key, with its suggestion
    ("data.n_train=abc", "data.n_train", "abc"),  # wrong type
    ("data.target=ring9", "data.target", "ring9"),  # unknown target
    ("symmetry.group=so7", "symmetry.group", "so7"),  # unknown group
]
BAD_IDS = ["unknown-key", "wrong-type", "unknown-target", "unknown-group"]


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize("override, key, detail", BAD, ids=BAD_IDS)
def test_bad_train_config_exits_2_without_a_run_folder(override, key, detail, tmp_path, ehf_cli):
    root = tmp_path / "runs"
    proc = ehf_cli(["train", override, "logger.wandb.mode=disabled", f"run.root={root}"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = _one_line(proc.stderr)
    assert line.startswith("ehf train: error:") and key in line and detail in line, line
    assert not root.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing created in the working folder either
    assert "run folder" not in proc.stdout


@pytest.mark.parametrize("override, key, detail", BAD, ids=BAD_IDS)
def test_bad_train_config_with_run_dir_in_process(override, key, detail, tmp_path, ehf_clean_env, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(["train", override, "logger.wandb.mode=disabled", f"run.dir={run_dir}"]) == 2
    out, err = capsys.readouterr()
    line = _one_line(err)
    assert key in line and detail in line, line
    assert not run_dir.exists()
    assert "run folder" not in out


def test_bad_config_file_exits_2_naming_the_file(tmp_path, ehf_clean_env, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  hiden: 3\n")
    assert cli.main(["train", "-c", str(bad), f"run.root={tmp_path / 'runs'}"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "model.hiden" in line and "bad.yaml" in line, line
    assert not (tmp_path / "runs").exists()


def test_existing_run_dir_is_refused(tmp_path, ehf_clean_env, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "keep.txt").write_text("precious")
    assert cli.main(["train", "logger.wandb.mode=disabled", f"run.dir={run_dir}"]) == 2
    assert "run.dir" in _one_line(capsys.readouterr().err)
    assert sorted(p.name for p in run_dir.iterdir()) == ["keep.txt"]


def test_print_config(tmp_path, ehf_cli):
    proc = ehf_cli(["print-config", "data.target=shell3d"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "target: shell3d" in proc.stdout
    printed = yaml.safe_load(proc.stdout)
    assert printed["data"]["target"] == "shell3d" and printed["experiment"] == "default"
    # the printed config is complete and loads back to the same config
    (tmp_path / "printed.yaml").write_text(proc.stdout)
    assert load_config([tmp_path / "printed.yaml"]) == load_config(overrides=["data.target=shell3d"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["printed.yaml"]  # print-config makes no run folder


def test_print_config_with_experiment_file(capsys, ehf_clean_env):
    assert (
        cli.main(["print-config", "-c", str(REPO / "configs" / "experiment" / "rings2d.yaml"), "model.blocks=3"]) == 0
    )
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["experiment"] == "rings2d" and printed["data"]["target"] == "rings2d"
    assert printed["model"]["blocks"] == 3 and printed["trainer"]["max_steps"] == 4000


def test_print_config_bad_key_exits_2(capsys, ehf_clean_env):
    assert cli.main(["print-config", "model.n_layer=3"]) == 2
    assert "model.n_layer" in _one_line(capsys.readouterr().err)


def test_help_and_missing_command(tmp_path, ehf_cli):
    proc = ehf_cli(["--help"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "eval", "sample", "print-config"):
        assert command in proc.stdout
    proc = ehf_cli([], cwd=tmp_path, timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr and "Traceback" not in proc.stderr
    proc = ehf_cli(["train", "--help"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 0 and "key=value" in proc.stdout


def test_bench_refuses_an_unknown_section(capsys, ehf_clean_env):
    assert cli.main(["bench", "--only", "particles,nope"]) == 2
    err = capsys.readouterr().err
    assert "--only" in err and "nope" in err and "particles" in err
