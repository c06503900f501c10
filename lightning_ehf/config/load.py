"""Read, merge, validate and save configs: schema defaults ← YAML files (left to right) ← ``key=value``
overrides, validated once by the typed schema (:mod:`lightning_ehf.config.schema`).

OmegaConf reads YAML files and dotlist overrides and resolves ``${...}`` interpolations; the merged plain
mapping is then validated by pydantic in strict mode (no ``3`` → ``'3'`` or ``'3'`` → ``3`` coercion).
Every problem raises :class:`~lightning_ehf.errors.ConfigError` with one line that names the key (full
dotted path) or the file, and for a wrong type or an unknown key where it was set.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from lightning_ehf.config.schema import FILE_DEFAULTS, Config
from lightning_ehf.errors import ConfigError
from lightning_ehf.validation import describe_error, join_key, one_line, rule_message

__all__ = [
    "explicit_keys",
    "flatten",
    "from_saved",
    "load_config",
    "override_value",
    "save_config",
    "to_container",
    "to_yaml",
    "validate",
    "validate_for_dim",
]

_DEFAULTS_KEY = "defaults"


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``: nested mappings walked, lists and empty mappings kept as values."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, join_key(prefix, key)))
        else:
            out[join_key(prefix, key)] = value
    return out


def override_value(value: Any) -> str:
    """``value`` written as the right-hand side of a ``key=value`` override (YAML flow style)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return str(value)


def _validated(raw: Mapping[str, Any], provenance: Mapping[str, str] | None = None) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(describe_error(err, Config, provenance or {})) from None


# --------------------------------------------------------------------------------------------------
# reading YAML files and overrides


def _yaml_problem(err: yaml.YAMLError) -> str:
    problem = getattr(err, "problem", None) or one_line(err)
    mark = getattr(err, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(problem)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"config file is not a file: {path}")
    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as err:
        raise ConfigError(one_line(f"cannot parse config file {path}: {_yaml_problem(err)}")) from None
    except (OSError, UnicodeDecodeError, OmegaConfBaseException, ValueError) as err:
        if "Invalid loaded object type" in str(err):
            raise ConfigError(f"config file {path} must hold a mapping of keys (key: value lines)") from None
        raise ConfigError(one_line(f"cannot read config file {path}: {err}")) from None
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
            sub = sub if sub.is_absolute() else path.parent / sub
            if not sub.exists():
                raise ConfigError(f"config file not found: {sub} (listed in 'defaults' of {path})")
            chain.extend(_file_chain(sub, (*stack, resolved)))
    chain.append((path, raw))
    return chain


def _parse_override(item: str) -> dict[str, Any]:
    if not isinstance(item, str) or "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, value = (part.strip() for part in item.split("=", 1))
    if not key:
        raise ConfigError(f"override {item!r} has no key (expected key=value)")
    try:
        parsed = OmegaConf.from_dotlist([item])
    except yaml.YAMLError as err:
        raise ConfigError(
            one_line(f"{key}: cannot parse value {value!r} of override {item!r}: {_yaml_problem(err)}")
        ) from None
    except (OmegaConfBaseException, ValueError) as err:
        raise ConfigError(one_line(f"bad override {item!r}: {str(err).splitlines()[0]}")) from None
    raw = OmegaConf.to_container(parsed, resolve=False)
    assert isinstance(raw, dict)
    return raw


def _layers(files: Sequence[str | Path], overrides: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """Every mapping to merge, in order, each with where it comes from (``-c FILE``, ``override 'k=v'``)."""
    if isinstance(files, (str, Path)):
        files = [files]
    if isinstance(overrides, str):
        overrides = [overrides]
    layers = [(str(path), raw) for file in files for path, raw in _file_chain(Path(file).expanduser())]
    return layers + [(f"override '{item}'", _parse_override(item)) for item in overrides]


def _merge_into(base: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge_into(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value


def explicit_keys(files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> dict[str, str]:
    """The dotted keys that ``files`` (with their ``defaults:``) and ``overrides`` set, each with where
    it was set last: ``-c FILE`` or ``override 'key=value'``. Raises ConfigError like :func:`load_config`."""
    out: dict[str, str] = {}
    for where, raw in _layers(files, overrides):
        out.update(dict.fromkeys(flatten(raw), where if where.startswith("override") else f"-c {where}"))
    return out


def load_config(
    files: Sequence[str | Path] = (), overrides: Sequence[str] = (), base: Mapping[str, Any] | None = None
) -> Config:
    """The validated config: schema defaults ← YAML ``files`` (left to right) ← ``key=value`` ``overrides``.

    A file may list other files (paths relative to itself) under a top-level ``defaults:`` key; they
    are merged first. If neither files nor overrides set ``experiment``, it becomes the stem of the
    last file (``"default"`` without files). ``data.path`` implies :data:`FILE_DEFAULTS` for the keys
    nobody set. ``base``: a saved config to start from instead of the schema defaults (every key of it
    counts as set). Raises ConfigError (one line, naming key or file).
    """
    merged: dict[str, Any] = (
        copy.deepcopy(dict(base)) if base is not None else Config().model_dump()
    )  # ${...} may name defaults
    provenance: dict[str, str] = dict.fromkeys(flatten(base or {}), "the saved config")
    for where, raw in _layers(files, overrides):
        _merge_into(merged, raw)
        provenance.update(dict.fromkeys(flatten(raw), where))
    if "experiment" not in provenance and files:
        merged["experiment"] = Path(list([files] if isinstance(files, (str, Path)) else files)[-1]).stem
    try:
        resolved = OmegaConf.to_container(OmegaConf.create(merged), resolve=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        raise ConfigError(one_line(f"{key + ': ' if key else ''}{str(err).splitlines()[0]}")) from None
    assert isinstance(resolved, dict)
    if isinstance(resolved.get("data"), Mapping) and resolved["data"].get("path") is not None:
        for key, value in FILE_DEFAULTS.items():  # what a data file implies, for the keys nobody set
            if key not in provenance:
                section, name = key.split(".")
                resolved.setdefault(section, {})[name] = value
    return _validated(resolved, provenance)


def from_saved(mapping: Mapping[str, Any]) -> Config:
    """A config saved by a run (a checkpoint's hyper-parameters, ``config.yaml``, a study's cell): keys the
    saved config lacks (written before they existed) take their schema defaults."""
    return _validated(mapping)


def validate(cfg: Config) -> Config:
    """Check a config again (e.g. after assigning to it); returns it. Raises ConfigError naming the key."""
    return _validated(to_container(cfg))


def validate_for_dim(cfg: Config, dim: int) -> None:
    """Checks that need the data dimension ``dim``. Raises ConfigError naming the key.

    With ``symmetry.particle_dim`` set, planes / coords / matrices index one particle's coordinates
    (the group acts on every particle alike), so they are checked against ``particle_dim``.
    """
    if not isinstance(dim, int) or dim <= 0:
        raise ConfigError(f"data dimension must be a positive integer, got {dim!r}")
    sym = cfg.symmetry
    if sym.particle_dim is not None and dim % sym.particle_dim != 0:
        raise ConfigError(f"symmetry.particle_dim: {sym.particle_dim} does not divide the data dimension d={dim}")
    bound = sym.particle_dim or dim
    where = (
        f"a particle has symmetry.particle_dim={sym.particle_dim} coordinates"
        if sym.particle_dim is not None
        else f"the data has d={dim}"
    )
    try:
        sym.check_arguments(bound, where)
    except PydanticCustomError as err:
        raise ConfigError(rule_message(err, "symmetry")) from None


# --------------------------------------------------------------------------------------------------
# output


def to_container(cfg: Config) -> dict[str, Any]:
    """Plain, resolved dicts/lists (safe for checkpoints loaded with ``weights_only=True``)."""
    return cfg.model_dump(mode="python")


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML text (loadable again with :func:`load_config`)."""
    return OmegaConf.to_yaml(OmegaConf.create(to_container(cfg)))


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config to ``path`` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(cfg))
    return path
