"""How a run meets W&B: which mode, project, entity and folder apply, the run's id, and what it is called.

* ``logger.wandb.mode``, ``.project`` and ``.entity`` set in a config file or an override win; a key left to its
  default takes W&B's own environment variable when that is set (``WANDB_MODE``, ``WANDB_PROJECT``,
  ``WANDB_ENTITY``), as ``wandb.init`` arguments win over the environment in W&B itself. The config saved in the
  run folder holds the values used.
* ``WANDB_DIR`` (there is no config key for it) moves the ``wandb/`` folder out of the run folder.
* A fresh run's id is ``WANDB_RUN_ID`` when set (a sweep agent sets it), else eight random hex digits; a resumed
  run keeps the id of its checkpoint, so every segment logs to the same W&B run (``resume="allow"``).
* Display name: ``logger.wandb.name``, else ``WANDB_NAME``, else the experiment's name. Group, job type and tags:
  the config keys when set, else W&B's ``WANDB_RUN_GROUP``, ``WANDB_JOB_TYPE``, ``WANDB_TAGS``.

* An offline run's records reach its ``.wandb`` file every ``WANDB_FLUSH_S`` seconds (W&B's default, 15 s, lost the
  whole history of a segment killed within its first 15 s), so a checkpoint's history is on disk a second later.

Nothing here imports wandb or Lightning at import time.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "WANDB_ENVIRONMENT",
    "WANDB_FLUSH_S",
    "apply_wandb_environment",
    "fresh_run_id",
    "keep_run_id_in_sweep",
    "wandb_mode_from_env",
    "wandb_run_arguments",
    "wandb_save_dir",
]

#: config key -> the W&B environment variable that sets it when no config file or override does
WANDB_ENVIRONMENT = {
    "logger.wandb.mode": "WANDB_MODE",
    "logger.wandb.project": "WANDB_PROJECT",
    "logger.wandb.entity": "WANDB_ENTITY",
}
WANDB_FLUSH_S = 1.0  # wandb's x_transaction_log_flush_interval: how often records are written to the .wandb file
_MODE_ALIASES = {"dryrun": "offline", "run": "online"}  # W&B's older names of the modes
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def wandb_mode_from_env(environ: Mapping[str, str] = os.environ) -> str | None:
    """``WANDB_MODE`` as one of online|offline|disabled (``dryrun`` and ``run`` are W&B's old names), or None
    when unset. Any other value raises ConfigError naming the variable."""
    raw = environ.get("WANDB_MODE", "").strip()
    if not raw:
        return None
    mode = _MODE_ALIASES.get(raw, raw)
    if mode not in ("online", "offline", "disabled"):
        raise ConfigError(
            f"WANDB_MODE={raw!r}: not a W&B mode (online, offline or disabled); unset it or set logger.wandb.mode"
        )
    return mode


def apply_wandb_environment(cfg: Any, explicit: Iterable[str], environ: Mapping[str, str] = os.environ) -> None:
    """Set each key of :data:`WANDB_ENVIRONMENT` that ``explicit`` (the keys config files and overrides set)
    does not name from its environment variable, when that is set."""
    explicit = set(explicit)
    for key, var in WANDB_ENVIRONMENT.items():
        if key in explicit:
            continue
        value = wandb_mode_from_env(environ) if var == "WANDB_MODE" else (environ.get(var) or "").strip() or None
        if value is not None:
            setattr(cfg.logger.wandb, key.rsplit(".", 1)[1], value)  # validated on assignment


def fresh_run_id(environ: Mapping[str, str] = os.environ) -> str:
    """The id of a new run: ``WANDB_RUN_ID`` when set (W&B runs are named by it: a sweep agent's run, or a
    user's choice), else eight random hex digits. It is part of the run folder's name and of its checkpoints."""
    given = environ.get("WANDB_RUN_ID", "").strip()
    if given:
        if not _RUN_ID.fullmatch(given):
            raise ConfigError(f"WANDB_RUN_ID={given!r}: a run id is 1-64 letters, digits, '-' or '_'")
        return given
    return secrets.token_hex(4)


def keep_run_id_in_sweep(run_id: str, environ: dict[str, str] | None = None) -> None:
    """Under a sweep agent (``WANDB_SWEEP_ID``) ``wandb.init`` ignores its ``id`` argument and takes
    ``WANDB_RUN_ID``: point that at ``run_id`` so a resumed cell continues its first segment's W&B run."""
    env = os.environ if environ is None else environ
    if env.get("WANDB_SWEEP_ID") and env.get("WANDB_RUN_ID") != run_id:
        env["WANDB_RUN_ID"] = run_id


def wandb_save_dir(run_dir: str | Path, environ: Mapping[str, str] = os.environ) -> str:
    """Where ``wandb/`` goes: ``WANDB_DIR`` when set, else the run folder."""
    return environ.get("WANDB_DIR") or str(run_dir)


def wandb_run_arguments(cfg: Any, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """``wandb.init`` arguments naming the run: name, group, job_type, tags and the extra top-level config
    fields (``logger.wandb.fields``); a key left null is not passed, so W&B's environment variable applies. Also
    the settings that write the run's records to disk every ``WANDB_FLUSH_S`` seconds."""
    import wandb

    w = cfg.logger.wandb
    name = w.name or (None if environ.get("WANDB_NAME") else cfg.experiment)
    out: dict[str, Any] = {
        "name": name,
        "tags": list(w.tags) or None,
        "settings": wandb.Settings(x_transaction_log_flush_interval=WANDB_FLUSH_S),
    }
    if w.group:
        out["group"] = str(w.group)
    if w.job_type:
        out["job_type"] = str(w.job_type)
    if w.fields:
        out["config"] = {str(k): v for k, v in w.fields.items()}
    return out
