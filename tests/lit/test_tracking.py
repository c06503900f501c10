"""W&B's environment variables and the config keys (lightning_ehf/tracking.py): a key set in a file or an
override wins, an unset key takes WANDB_MODE / WANDB_PROJECT / WANDB_ENTITY, WANDB_DIR moves the wandb folder,
WANDB_RUN_ID names a fresh run; plain runs are named after the experiment."""

from __future__ import annotations

import pytest

from lightning_ehf.config.load import explicit_keys, load_config
from lightning_ehf.errors import ConfigError
from lightning_ehf.tracking import apply_wandb_environment, fresh_run_id, keep_run_id_in_sweep, wandb_run_arguments

ENV = {"WANDB_MODE": "online", "WANDB_PROJECT": "envproj", "WANDB_ENTITY": "envteam"}


def resolved(overrides: list[str], environ: dict[str, str], files: list[str] = ()):
    cfg = load_config(files, overrides)
    apply_wandb_environment(cfg, explicit_keys(files, overrides), environ)
    return cfg.logger.wandb


def test_environment_applies_to_keys_no_config_sets():
    w = resolved([], ENV)
    assert (w.mode, w.project, w.entity) == ("online", "envproj", "envteam")
    w = resolved([], {})
    assert (w.mode, w.project, w.entity) == ("offline", "lightning_ehf", None)  # the schema's defaults


def test_an_explicit_key_wins_over_the_environment(tmp_path):
    w = resolved(["logger.wandb.mode=disabled", "logger.wandb.project=mine"], ENV)
    assert (w.mode, w.project, w.entity) == ("disabled", "mine", "envteam")
    f = tmp_path / "c.yaml"
    f.write_text("logger:\n  wandb:\n    mode: offline\n")
    w = resolved([], ENV, [str(f)])
    assert (w.mode, w.project) == ("offline", "envproj")


def test_wandb_mode_aliases_and_bad_values():
    assert resolved([], {"WANDB_MODE": "dryrun"}).mode == "offline"
    assert resolved([], {"WANDB_MODE": "run"}).mode == "online"
    with pytest.raises(ConfigError, match="WANDB_MODE='sometimes'"):
        resolved([], {"WANDB_MODE": "sometimes"})


def test_run_ids_names_and_dirs(tmp_path, ehf_clean_env):
    assert fresh_run_id({"WANDB_RUN_ID": "abc-123"}) == "abc-123"
    assert len(fresh_run_id({})) == 8 and fresh_run_id({}) != fresh_run_id({})
    with pytest.raises(ConfigError, match="WANDB_RUN_ID"):
        fresh_run_id({"WANDB_RUN_ID": "a/b"})
    cfg = load_config(overrides=["experiment=shell"])
    plain = wandb_run_arguments(cfg, {})
    assert plain.pop("settings").x_transaction_log_flush_interval == 1.0
    assert plain == {"name": "shell", "tags": None}  # a plain run: the experiment's name
    assert wandb_run_arguments(cfg, {"WANDB_NAME": "x"})["name"] is None  # W&B's WANDB_NAME then applies
    cell = load_config(
        overrides=[
            "logger.wandb.name=c1",
            "logger.wandb.group=st",
            "logger.wandb.job_type=nsf",
            "logger.wandb.tags=[nsf, seed0]",
            "logger.wandb.fields={method: nsf, seed: 0}",
        ]
    )
    assert {k: v for k, v in wandb_run_arguments(cell, {}).items() if k != "settings"} == {
        "name": "c1",
        "group": "st",
        "job_type": "nsf",
        "tags": ["nsf", "seed0"],
        "config": {"method": "nsf", "seed": 0},
    }

    from lightning_ehf import build

    ehf_clean_env.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    logger = build._wandb_logger(load_config(overrides=["experiment=shell"]), tmp_path / "run", "deadbeef")
    assert logger._wandb_init["dir"] == str(tmp_path / "elsewhere") and logger._wandb_init["name"] == "shell"
    assert logger._wandb_init["id"] == "deadbeef"

    env = {"WANDB_SWEEP_ID": "s", "WANDB_RUN_ID": "new"}  # wandb.init ignores id= in a sweep: the env names the run
    keep_run_id_in_sweep("first", env)
    assert env["WANDB_RUN_ID"] == "first"
    env = {"WANDB_RUN_ID": "new"}
    keep_run_id_in_sweep("first", env)
    assert env["WANDB_RUN_ID"] == "new"


def test_wandb_mode_from_the_environment_reaches_ehf_train(tmp_path, ehf_cli):
    """WANDB_MODE=online with no key: exit 2 before anything is written, as with logger.wandb.mode=online;
    the config key, when given, wins (disabled: the run needs no key)."""
    home = tmp_path / "home"
    home.mkdir()
    root = tmp_path / "runs"
    proc = ehf_cli(["train", f"run.root={root}"], cwd=tmp_path, env={"HOME": str(home), "WANDB_MODE": "online"})
    assert proc.returncode == 2 and "logger.wandb.mode: 'online' needs a W&B API key" in proc.stderr, proc.stderr
    assert not root.exists()
    env = {"WANDB_MODE": "online", "WANDB_PROJECT": "envproj"}
    proc = ehf_cli(["print-config", "logger.wandb.mode=disabled"], cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "mode: disabled" in proc.stdout and "project: envproj" in proc.stdout
    proc = ehf_cli(["print-config"], cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "mode: online" in proc.stdout
