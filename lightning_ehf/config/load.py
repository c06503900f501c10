"""Load, check and save configs: schema defaults ← YAML files (left to right) ← ``key=value`` overrides.

Every problem raises :class:`~lightning_ehf.errors.ConfigError` with a one-line message that names
the key (full dotted path) or the file. Defaults live only in :mod:`lightning_ehf.config.schema`.

OmegaConf's struct mode silently converts ``3`` → ``'3'`` for string keys and ``'3'`` → ``3`` for
number keys, so every user value is type-checked against the schema *before* it is merged.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_ehf.config.schema import FILE_DEFAULTS, Config
from lightning_ehf.errors import ConfigError

__all__ = [
    "CHOICES",
    "ROTATION_GROUPS",
    "explicit_keys",
    "load_config",
    "validate",
    "validate_for_dim",
    "to_yaml",
    "save_config",
    "to_container",
]

#: Allowed values of the enum-like string keys (``None`` allowed only where listed in ``_NULLABLE``).
CHOICES: dict[str, tuple[str, ...]] = {
    "data.target": ("ring2d", "rings2d", "shell3d", "particles2d", "gmm8", "two_rings4d", "dw4"),
    "data.regime": ("finite", "infinite"),
    "symmetry.group": ("auto", "none", "so2", "so3", "rotations", "matrices"),
    "symmetry.translation": ("auto", "none", "com"),
    "model.kind": ("ehf", "nsf", "efm"),
    "model.kinetic": ("quadratic", "mlp"),
    "model.encoder": ("auto", "gaussian", "full", "flow", "equivariant"),
    "model.forces": ("analytic", "autograd"),
    "model.reversible": ("auto", "always", "never"),
    "optim.on_nonfinite": ("stop", "skip"),
    "optim.objective": ("elbo", "iwae"),
    "optim.estimator": ("reparam", "dreg"),
    "model.activation": ("softplus", "tanh", "silu"),
    "constraint.mode": ("none", "penalty", "dual"),
    "constraint.rule": ("additive", "geco"),
    "optim.scheduler": ("cosine", "none"),
    "logger.wandb.mode": ("offline", "online", "disabled"),
    "progress.mode": ("auto", "bar", "lines", "none"),
}
_NULLABLE = {"data.target"}

#: Groups made of plane rotations (``auto`` is decided by the target; ``build`` checks it there).
ROTATION_GROUPS = ("so2", "so3", "rotations")

_DEFAULTS_KEY = "defaults"
_MISSING = object()


# --------------------------------------------------------------------------------------------------
# small helpers


def _one_line(text: object) -> str:
    """Collapse whitespace (newlines included) so a message always fits on one line."""
    return " ".join(str(text).split())


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def _quoted_number(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``Optional[X]`` → ``(X, True)``; anything else → ``(tp, False)``."""
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], nullable
        return Any, nullable
    return tp, False


def _type_name(tp: Any) -> str:
    if tp is Any:
        return "any value"
    if _is_dataclass_type(tp):
        return "a section (mapping)"
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return "a list"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


# --------------------------------------------------------------------------------------------------
# type guard (runs on raw user values, before OmegaConf can convert them)


def _check_value(value: Any, tp: Any, path: str, where: str) -> None:
    """Raise ConfigError if ``value`` (plain YAML data) does not have schema type ``tp``."""
    if value is _MISSING or _is_interpolation(value) or value == "???":
        return  # interpolations / missing markers are resolved and checked by OmegaConf
    tp, nullable = _unwrap_optional(tp)
    if tp is Any:
        return
    if value is None:
        if nullable:
            return
        raise ConfigError(f"{path}: null is not allowed, expected {_type_name(tp)}{where}")

    def bad(hint: str = "") -> ConfigError:
        return ConfigError(f"{path}: expected {_type_name(tp)}, got {_describe(value)}{hint}{where}")

    if _is_dataclass_type(tp):
        if not isinstance(value, Mapping):
            raise bad()
        hints = typing.get_type_hints(tp)
        for key, sub in value.items():
            if key in hints:
                _check_value(sub, hints[key], _join(path, key), where)
            # unknown keys are reported by OmegaConf's merge (with its "Did you mean" suggestion)
        return
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad()
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        for i, item in enumerate(value):
            _check_value(item, item_tp, f"{path}[{i}]", where)
        return
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                raise bad(f"; write {int(value)}")
            if _quoted_number(value):
                raise bad("; numbers must not be quoted")
            raise bad()
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("; numbers must not be quoted" if _quoted_number(value) else "")
    elif tp is str:
        if not isinstance(value, str):
            raise bad("; quote it if you mean the string")


# --------------------------------------------------------------------------------------------------
# OmegaConf errors → one line


def _omegaconf_error(err: Exception, where: str) -> ConfigError:
    """Turn an OmegaConf exception into a one-line ConfigError naming the full key."""
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    key = getattr(err, "full_key", None)
    m = re.match(r"Key '([^']*)' not in '[^']*'\.?\s*(?:Did you mean:?\s*'([^']*)'\??)?", first)
    if m:
        full = key or m.group(1)
        msg = f"unknown config key '{full}'{where}"
        if m.group(2):
            parent = full.rsplit(".", 1)[0] if "." in full else ""
            msg += f"; did you mean '{_join(parent, m.group(2))}'?"
        return ConfigError(_one_line(msg))
    prefix = f"{key}: " if key else ""
    return ConfigError(_one_line(f"{prefix}{first}{where}"))


def _merge(cfg: DictConfig, raw: Mapping[str, Any], where: str) -> DictConfig:
    _check_value(raw, Config, "", where)
    try:  # in place: OmegaConf.merge would deep-copy the whole config for every file and override
        cfg.merge_with(OmegaConf.create(dict(raw)))
        return cfg
    except OmegaConfBaseException as err:
        raise _omegaconf_error(err, where) from None


# --------------------------------------------------------------------------------------------------
# reading YAML files and overrides


def _yaml_problem(err: yaml.YAMLError) -> str:
    problem = getattr(err, "problem", None) or _one_line(err)
    mark = getattr(err, "problem_mark", None)
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(problem)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"config file is not a file: {path}")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as err:
        raise ConfigError(_one_line(f"cannot parse config file {path}: {_yaml_problem(err)}")) from None
    except (OSError, UnicodeDecodeError, OmegaConfBaseException, ValueError) as err:
        if "Invalid loaded object type" in str(err):
            raise ConfigError(f"config file {path} must hold a mapping of keys (key: value lines)") from None
        raise ConfigError(_one_line(f"cannot read config file {path}: {err}")) from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping of keys (key: value lines), not a list")
    raw = OmegaConf.to_container(loaded, resolve=False)
    assert isinstance(raw, dict)
    for key in raw:
        if not isinstance(key, str):
            raise ConfigError(f"config file {path}: keys must be strings, got {key!r}")
    return raw


def _file_chain(path: Path, stack: tuple[Path, ...] = ()) -> list[tuple[Path, dict[str, Any]]]:
    """The file and its ``defaults:`` (relative to it), depth first, in merge order."""
    resolved = path.resolve()
    if resolved in stack:
        cycle = " -> ".join(str(p) for p in (*stack, resolved))
        raise ConfigError(f"config file {path}: 'defaults' form a cycle ({cycle})")
    raw = _read_yaml(path)
    chain: list[tuple[Path, dict[str, Any]]] = []
    defaults = raw.pop(_DEFAULTS_KEY, None)
    if defaults is not None:
        if isinstance(defaults, str):
            defaults = [defaults]
        if not isinstance(defaults, list) or not all(isinstance(d, str) and d for d in defaults):
            raise ConfigError(f"config file {path}: 'defaults' must be a list of YAML file paths")
        for entry in defaults:
            sub = Path(entry).expanduser()
            if not sub.is_absolute():
                sub = path.parent / sub
            if not sub.exists():
                raise ConfigError(f"config file not found: {sub} (listed in 'defaults' of {path})")
            chain.extend(_file_chain(sub, (*stack, resolved)))
    chain.append((path, raw))
    return chain


def _parse_override(item: str) -> dict[str, Any]:
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key = item.split("=", 1)[0].strip()
    if not key:
        raise ConfigError(f"override {item!r} has no key (expected key=value)")
    try:
        parsed = OmegaConf.from_dotlist([item])
    except yaml.YAMLError as err:
        value = item.split("=", 1)[1]
        raise ConfigError(
            _one_line(f"{key}: cannot parse value {value!r} of override {item!r}: {_yaml_problem(err)}")
        ) from None
    except (OmegaConfBaseException, ValueError) as err:
        raise ConfigError(_one_line(f"bad override {item!r}: {str(err).splitlines()[0]}")) from None
    raw = OmegaConf.to_container(parsed, resolve=False)
    assert isinstance(raw, dict)
    return raw


def load_config(files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> DictConfig:
    """Resolved config: schema defaults ← YAML ``files`` (left to right) ← ``key=value`` ``overrides``.

    A file may list other files (paths relative to itself) under a top-level ``defaults:`` key; they
    are merged first. If neither files nor overrides set ``experiment``, it becomes the stem of the
    last file (``"default"`` without files). Raises ConfigError (one line, naming key or file).
    """
    if isinstance(files, (str, Path)):
        files = [files]
    if isinstance(overrides, str):
        overrides = [overrides]
    cfg = OmegaConf.structured(Config)
    OmegaConf.set_struct(cfg, True)
    experiment_set = False
    explicit: set[str] = set()

    for file in files:
        for path, raw in _file_chain(Path(file).expanduser()):
            experiment_set |= "experiment" in raw
            explicit |= _leaf_keys(raw)
            cfg = _merge(cfg, raw, f" (in {path})")

    for item in overrides:
        raw = _parse_override(item)
        experiment_set |= "experiment" in raw
        explicit |= _leaf_keys(raw)
        cfg = _merge(cfg, raw, f" (in override '{item}')")

    if not experiment_set and files:
        cfg.experiment = Path(files[-1]).stem

    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise _omegaconf_error(err, "") from None
    if cfg.data.path is not None:  # a data file implies FILE_DEFAULTS for the keys nobody set (schema.py)
        for key, value in FILE_DEFAULTS.items():
            if key not in explicit:
                OmegaConf.update(cfg, key, value, merge=False)
        if "symmetry.particle_dim" not in explicit:  # an (N, n, D) file says how many coordinates a particle has
            from lightning_ehf.data.files import particle_shape

            shape = particle_shape(cfg.data.path)
            if shape is not None:
                cfg.symmetry.particle_dim = shape[1]
    OmegaConf.set_struct(cfg, True)
    return cfg


def _leaf_keys(raw: Mapping[str, Any], prefix: str = "") -> set[str]:
    """The dotted keys a parsed YAML mapping or override sets (nested mappings walked, lists are values)."""
    out: set[str] = set()
    for key, value in raw.items():
        if isinstance(value, Mapping):
            out |= _leaf_keys(value, _join(prefix, key))
        else:
            out.add(_join(prefix, key))
    return out


def explicit_keys(files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> dict[str, str]:
    """The dotted keys that ``files`` (with their ``defaults:``) and ``overrides`` set, each with where
    it was set last: ``-c FILE`` or ``override 'key=value'``. Raises ConfigError like :func:`load_config`."""
    out: dict[str, str] = {}

    def walk(raw: Mapping[str, Any], prefix: str, where: str) -> None:
        for key, value in raw.items():
            if isinstance(value, Mapping):
                walk(value, _join(prefix, key), where)
            else:
                out[_join(prefix, key)] = where

    for file in files:
        for _, raw in _file_chain(Path(file).expanduser()):
            walk(raw, "", f"-c {file}")
    for item in overrides:
        walk(_parse_override(item), "", f"override '{item}'")
    return out


# --------------------------------------------------------------------------------------------------
# semantic checks


def _fail(key: str, message: str) -> ConfigError:
    return ConfigError(_one_line(f"{key}: {message}"))


def _get(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part] if isinstance(node, Mapping) else getattr(node, part)
    return node


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_choice(cfg: Any, key: str) -> None:
    value = _get(cfg, key)
    if value is None and key in _NULLABLE:
        return
    choices = CHOICES[key]
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        allowed = ", ".join(choices) + (" or null" if key in _NULLABLE else "")
        raise _fail(key, f"unknown value {value!r} (choose from {allowed}){hint}")


_POSITIVE = (
    "data.n_train", "data.batch_size",
    "model.blocks", "model.leapfrog_steps", "model.step_size", "model.hidden", "model.depth",
    "model.sigma_q", "model.sigma_p", "model.nsf_transforms", "model.nsf_bins",
    "model.efm_layers", "model.efm_atol", "model.efm_rtol",
    "constraint.lr", "optim.lr", "optim.elbo_samples",
    "trainer.max_steps", "trainer.val_check_interval", "trainer.log_every_n_steps",
    "trainer.num_nodes", "trainer.ddp_timeout_s",
    "eval.iw_samples", "eval.iw_chunk", "eval.n_group_samples", "eval.n_eval", "eval.invariance_iw",
    "plots.every_n_val", "plots.grid", "progress.every_n_steps", "progress.every_s",
)  # fmt: skip
_NON_NEGATIVE = (
    "data.num_workers", "constraint.tolerance", "constraint.init",
    "optim.weight_decay", "optim.grad_clip", "optim.warmup_steps",
)  # fmt: skip


def _check_planes(planes: Any, bound: int | None, where: str = "", key: str = "symmetry.planes") -> None:
    if not isinstance(planes, list) or not planes:
        raise _fail(key, "must be a non-empty list of planes, e.g. [[0,1],[2,3]]")
    seen: set[frozenset[int]] = set()
    for i, plane in enumerate(planes):
        if not (isinstance(plane, list) and len(plane) == 2 and all(_is_index(a) for a in plane)):
            raise _fail(f"{key}[{i}]", f"a plane is two non-negative coordinate indices, got {plane!r}")
        if plane[0] == plane[1]:
            raise _fail(f"{key}[{i}]", f"a plane needs two distinct coordinates, got {plane!r}")
        if frozenset(plane) in seen:
            raise _fail(f"{key}[{i}]", f"plane {plane!r} is listed twice")
        seen.add(frozenset(plane))
        if bound is not None and max(plane) >= bound:
            raise _fail(
                f"{key}[{i}]",
                f"plane {plane!r} uses coordinate {max(plane)}, but {where} (valid indices 0..{bound - 1})",
            )


def _check_coords(
    group: str, coords: Any, bound: int | None, where: str = "", key: str = "symmetry.coords"
) -> None:
    need = 2 if group == "so2" else 3
    if coords is None:
        if bound is not None and bound < need:
            raise _fail("symmetry.group", f"{group} acts on {need} coordinates, but {where}")
        return
    if not isinstance(coords, list) or not all(_is_index(c) for c in coords):
        raise _fail(key, f"must be a list of non-negative coordinate indices, got {coords!r}")
    if len(coords) != need:
        raise _fail(key, f"symmetry.group={group} acts on {need} coordinates, got {len(coords)}: {coords!r}")
    if len(set(coords)) != len(coords):
        raise _fail(key, f"coordinates must be distinct, got {coords!r}")
    if bound is not None and max(coords) >= bound:
        raise _fail(
            key, f"coordinate {max(coords)} is out of range: {where} (valid indices 0..{bound - 1})"
        )


def _check_matrices(
    matrices: Any, bound: int | None, where: str = "", key: str = "symmetry.matrices"
) -> None:
    if not isinstance(matrices, list) or not matrices:
        raise _fail(key, "must be a non-empty list of square matrices (lists of rows)")
    for i, mat in enumerate(matrices):
        k = f"{key}[{i}]"
        if not isinstance(mat, list) or not mat or not all(isinstance(r, list) for r in mat):
            raise _fail(k, "must be a matrix given as a list of rows, e.g. [[0,-1],[1,0]]")
        n = len(mat)
        for r, row in enumerate(mat):
            if len(row) != n:
                raise _fail(k, f"must be square: it has {n} rows but row {r} has {len(row)} entries")
            for c, entry in enumerate(row):
                if not _is_number(entry):
                    raise _fail(f"{k}[{r}][{c}]", f"matrix entries must be finite numbers, got {entry!r}")
        if bound is not None and n != bound:
            raise _fail(k, f"is {n}×{n} but must be {bound}×{bound}: {where}")


# Values Lightning 2.6 accepts; anything else would fail inside Trainer(...) with a traceback.
TRAINER_CHOICES = {
    "trainer.accelerator": ("auto", "cpu", "gpu", "cuda", "mps", "tpu"),
    "trainer.strategy": ("auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "fsdp", "deepspeed", "single_device"),
    "trainer.precision": ("32-true", "32", "64-true", "64", "16-mixed", "bf16-mixed", "16-true", "bf16-true"),
}


def _check_trainer(cfg: DictConfig) -> None:
    for key, allowed in TRAINER_CHOICES.items():
        value = str(_get(cfg, key))
        if value not in allowed:
            raise _fail(key, f"unknown value {value!r} (choose from {', '.join(allowed)})")
    devices = _get(cfg, "trainer.devices")
    ok = (devices == "auto" or (isinstance(devices, int) and not isinstance(devices, bool) and (devices >= 1 or devices == -1))
          or (isinstance(devices, list) and devices and all(_is_index(d) for d in devices)))
    if not ok:
        raise _fail("trainer.devices", f"must be a positive count, -1 (all), 'auto' or a list of device indices, got {devices!r}")


def validate(cfg: DictConfig) -> None:
    """Semantic checks that need no data (enums, sizes, consistency). Raises ConfigError naming the key."""
    for key in CHOICES:
        _check_choice(cfg, key)

    experiment = _get(cfg, "experiment")
    if not isinstance(experiment, str) or not experiment.strip():
        raise _fail("experiment", "must be a non-empty name")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", experiment):
        raise _fail("experiment", f"must be a plain folder name (letters, digits, '.', '_', '-'), got {experiment!r}")
    seed = _get(cfg, "seed")
    if not 0 <= seed < 2**32:
        raise _fail("seed", f"must be in [0, 2**32), got {seed!r}")
    _check_trainer(cfg)

    for key in _POSITIVE:
        value = _get(cfg, key)
        if not _is_number(value) or value <= 0:
            raise _fail(key, f"must be > 0, got {value!r}")
    for key in _NON_NEGATIVE:
        value = _get(cfg, key)
        if not _is_number(value) or value < 0:
            raise _fail(key, f"must be >= 0, got {value!r}")
    for key in ("eval.val_iw_samples", "trainer.patience"):
        value = _get(cfg, key)
        if value is not None and (not _is_number(value) or value <= 0):
            raise _fail(key, f"must be > 0 or null (off), got {value!r}")
    if not _is_number(_get(cfg, "trainer.min_delta")) or _get(cfg, "trainer.min_delta") < 0:
        raise _fail("trainer.min_delta", f"must be >= 0 (nats), got {_get(cfg, 'trainer.min_delta')!r}")
    fraction = _get(cfg, "data.val_fraction")
    if fraction is not None:
        if not _is_number(fraction) or not 0 < fraction < 1:
            raise _fail("data.val_fraction", f"must be in (0, 1) or null, got {fraction!r}")
        if _get(cfg, "data.regime") != "finite" or _get(cfg, "data.target") is None:
            raise _fail("data.val_fraction", "applies to a finite training set of a target (data.regime=finite); "
                                             "an infinite stream or a file has its own validation rows (data.n_val)")
        if round(fraction * _get(cfg, "data.n_train")) < 1 or round(fraction * _get(cfg, "data.n_train")) >= _get(cfg, "data.n_train"):
            raise _fail("data.val_fraction", f"{fraction} of data.n_train={_get(cfg, 'data.n_train')} leaves no validation "
                                             "or no training rows")
    minutes = _get(cfg, "checkpoint.every_n_minutes")
    if minutes is not None and (not _is_number(minutes) or minutes <= 0):
        raise _fail("checkpoint.every_n_minutes", f"must be > 0 (minutes) or null (off), got {minutes!r}")
    ema = _get(cfg, "constraint.ema")
    if not _is_number(ema) or not 0 <= ema < 1:
        raise _fail("constraint.ema", f"must be in [0, 1), got {ema!r}")

    target, path = _get(cfg, "data.target"), _get(cfg, "data.path")
    if target is None and not path:
        raise _fail("data.target", "no data: set data.target (an analytic target) or data.path (a data file)")
    if target is not None and path:
        raise _fail(
            "data.path",
            f"both data.target={target} and data.path are set; remove data.target (or set data.target=null) to use the file",
        )
    if path is not None and not str(path).strip():
        raise _fail("data.path", "is empty")
    if path is not None and _get(cfg, "data.regime") != "finite":
        raise _fail("data.regime", "file data (data.path) is a fixed sample: data.regime must be finite (what "
                                   "data.path implies when data.regime is not set)")
    for key in ("data.n_val", "data.n_test"):
        value = _get(cfg, key)
        if value is None and path is None:
            raise _fail(key, f"null (a fraction of a data file's rows, data.file_{key[7:]}_fraction) needs data.path; "
                             f"a target needs a number of samples")
        if value is not None and (not _is_number(value) or value <= 0):
            raise _fail(key, f"must be > 0, got {value!r}")
    for key in ("data.file_val_fraction", "data.file_test_fraction"):
        value = _get(cfg, key)
        if not _is_number(value) or not 0 < value < 1:
            raise _fail(key, f"must be in (0, 1), got {value!r}")
    if _get(cfg, "data.file_val_fraction") + _get(cfg, "data.file_test_fraction") >= 1:
        raise _fail("data.file_test_fraction", "data.file_val_fraction + data.file_test_fraction must be < 1 "
                                               "(the rest of a data file's rows train)")
    # validation/test sets of a target are drawn apart from the training set; for file data the
    # split sizes are checked against the file's rows when it is read (data module)

    group = _get(cfg, "symmetry.group")
    sym = _get(cfg, "symmetry")
    if group == "auto" and target is None:
        raise _fail(
            "symmetry.group",
            "is auto, but file data declares no symmetry: "
            "set symmetry.group (none, so2, so3, rotations or matrices)",
        )
    if group == "rotations":
        if _get(sym, "planes") is None:
            raise _fail(
                "symmetry.planes", "symmetry.group=rotations needs symmetry.planes, e.g. [[0,1],[2,3]]"
            )
        _check_planes(_plain(_get(sym, "planes")), None)
    if group in ("so2", "so3"):
        _check_coords(group, _plain(_get(sym, "coords")), None)
    if group == "matrices":
        if _get(sym, "matrices") is None:
            raise _fail(
                "symmetry.matrices",
                "symmetry.group=matrices needs symmetry.matrices (a list of d×d generators)",
            )
        _check_matrices(_plain(_get(sym, "matrices")), None)
    particle_dim = _get(sym, "particle_dim")
    if particle_dim is not None and (not _is_number(particle_dim) or particle_dim <= 0):
        raise _fail("symmetry.particle_dim", f"must be > 0, got {particle_dim!r}")

    rotation_like = (*ROTATION_GROUPS, "auto")
    if _get(cfg, "model.invariant"):
        if group not in rotation_like:
            raise _fail(
                "model.invariant",
                "invariant-by-construction Hamiltonians need a rotation group "
                f"(so2, so3, rotations), not symmetry.group={group}",
            )
        # efm's vector field is equivariant by construction, so the key states what it is anyway
        if _get(cfg, "model.kind") not in ("ehf", "efm"):
            raise _fail("model.invariant", f"needs model.kind=ehf (or efm, which is always equivariant), not {_get(cfg, 'model.kind')}")
    if _get(cfg, "model.encoder") == "equivariant" and group not in rotation_like:
        raise _fail(
            "model.encoder",
            "the equivariant encoder needs a rotation group (so2, so3, rotations), "
            f"not symmetry.group={group}",
        )
    for key, on in (("symmetry.translation", _get(sym, "translation") == "com"),
                    ("symmetry.permutations", bool(_get(sym, "permutations")))):
        if on and particle_dim is None and target is None:
            raise _fail(key, "needs particles: set symmetry.particle_dim (coordinates per particle), or use an "
                             "N×n×D data file")
    if _get(cfg, "data.augment") and group == "none" and not _get(sym, "permutations"):
        raise _fail(
            "data.augment", "needs a symmetry to sample group elements from, but symmetry.group=none"
        )


def _action_dim(cfg: Any, dim: int) -> int:
    """Coordinates the group's planes / coords / matrices refer to: ``particle_dim`` if set, else ``dim``."""
    particle_dim = _get(cfg, "symmetry.particle_dim")
    return int(particle_dim) if particle_dim is not None else dim


def validate_for_dim(cfg: DictConfig, dim: int) -> None:
    """Checks that need the data dimension ``dim``. Raises ConfigError naming the key.

    With ``symmetry.particle_dim`` set, planes / coords / matrices index one particle's coordinates
    (the group acts on every particle alike), so they are checked against ``particle_dim``.
    """
    if not isinstance(dim, int) or dim <= 0:
        raise ConfigError(f"data dimension must be a positive integer, got {dim!r}")
    sym = _get(cfg, "symmetry")
    group = _get(sym, "group")
    particle_dim = _get(sym, "particle_dim")
    if particle_dim is not None and particle_dim <= 0:
        raise _fail("symmetry.particle_dim", f"must be > 0, got {particle_dim!r}")
    if particle_dim is not None and dim % particle_dim != 0:
        raise _fail("symmetry.particle_dim", f"{particle_dim} does not divide the data dimension d={dim}")
    bound = _action_dim(cfg, dim)
    where = (
        f"a particle has symmetry.particle_dim={particle_dim} coordinates"
        if particle_dim is not None
        else f"the data has d={dim}"
    )
    if group == "rotations" and _get(sym, "planes") is not None:
        _check_planes(_plain(_get(sym, "planes")), bound, where)
    elif group in ("so2", "so3"):
        _check_coords(group, _plain(_get(sym, "coords")), bound, where)
    elif group == "matrices" and _get(sym, "matrices") is not None:
        _check_matrices(_plain(_get(sym, "matrices")), bound, where)


# --------------------------------------------------------------------------------------------------
# output


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """Plain, resolved dicts/lists (safe for checkpoints loaded with ``weights_only=True``)."""
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return typing.cast(dict[str, Any], out)


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML text (loadable again with :func:`load_config`)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: DictConfig, path: str | Path) -> Path:
    """Write the resolved config to ``path`` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(cfg))
    return path

