"""Read, merge, validate and save configs: schema defaults ← YAML files (left to right) ← ``key=value``
overrides, validated once by the typed schema (:mod:`lightning_ehf.config.schema`).

OmegaConf reads YAML files and dotlist overrides and resolves ``${...}`` interpolations; the merged plain
mapping is then validated by pydantic in strict mode (no ``3`` → ``'3'`` or ``'3'`` → ``3`` coercion).
Every problem raises :class:`~lightning_ehf.errors.ConfigError` with one line that names the key (full
dotted path) or the file, and for a wrong type or an unknown key where it was set.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from lightning_ehf.config.schema import FILE_DEFAULTS, Config
from lightning_ehf.errors import ConfigError

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


def _one_line(text: object) -> str:
    """Collapse whitespace (newlines included) so a message always fits on one line."""
    return " ".join(str(text).split())


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``: nested mappings walked, lists and empty mappings kept as values."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, _join(prefix, key)))
        else:
            out[_join(prefix, key)] = value
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


# --------------------------------------------------------------------------------------------------
# pydantic errors → one line


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
    return "null" if value is None else f"{type(value).__name__} {value!r}"


def _quoted_number(value: Any) -> bool:
    try:
        return isinstance(value, str) and float(value) is not None
    except ValueError:
        return False


_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "model_type": "a section (mapping)",
    "dict_type": "a section (mapping)",
    "list_type": "a list",
}


def _dotted(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out = f"{out}[{part}]" if isinstance(part, int) else _join(out, part)
    return out


def _fields_of(section: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The keys of the schema section at ``loc`` (for "did you mean")."""
    for part in loc:
        annotation = section.model_fields[part].annotation if part in section.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        section = annotation
    return list(section.model_fields)


def _message(err: ValidationError, provenance: Mapping[str, str], schema: type[BaseModel] = Config) -> str:
    """The first problem of a validation, as ``key: what is wrong`` (plus where a mistyped value was set)."""
    first = err.errors(include_url=False)[0]
    kind, loc, value, ctx = first["type"], first["loc"], first.get("input"), first.get("ctx") or {}
    key = _dotted(loc)
    plain = key.split("[")[0]
    set_at = next((provenance[k] for k in (plain, *_parents(key)) if k in provenance), "") or next(
        (where for k, where in reversed(provenance.items()) if k.startswith(plain + ".")), ""
    )
    where = f" (in {set_at})" if set_at else ""
    if kind == "ehf_config":
        return _one_line(f"{ctx['key']}: {ctx['message']}")
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _fields_of(schema, loc[:-1]), n=1)
        hint = f"; did you mean '{_join(_dotted(loc[:-1]), close[0])}'?" if close else ""
        return _one_line(f"unknown config key '{key}'{where}{hint}")
    if kind == "literal_error":
        if not isinstance(value, str):
            return _one_line(
                f"{key}: expected a string, got {_describe(value)}; quote it if you mean the string{where}"
            )
        allowed = [a.strip("'") for a in ctx["expected"].replace(" or ", ", ").split(", ")]
        close = difflib.get_close_matches(value, allowed, n=1)
        nullable = " or null" if _nullable(loc, schema) else ""
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return _one_line(f"{key}: unknown value {value!r} (choose from {', '.join(allowed)}{nullable}){hint}")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return _one_line(f"{key}: must be {_range(loc, schema)}, got {value!r}")
    if kind in _EXPECTED:
        expected = _EXPECTED[kind]
        if value is None:
            return _one_line(f"{key}: null is not allowed, expected {expected}{where}")
        hint = ""
        if kind == "int_type" and isinstance(value, float) and value.is_integer():
            hint = f"; write {int(value)}"
        elif kind in ("int_type", "float_type") and _quoted_number(value):
            hint = "; numbers must not be quoted"
        elif kind == "string_type":
            hint = "; quote it if you mean the string"
        return _one_line(f"{key}: expected {expected}, got {_describe(value)}{hint}{where}")
    return _one_line(f"{key}: {first['msg']}{where}")


def _parents(key: str) -> list[str]:
    parts = key.split("[")[0].split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def _field(loc: Sequence[Any], schema: type[BaseModel]) -> Any:
    section: Any = schema
    for part in loc[:-1]:
        section = section.model_fields[part].annotation
    return section.model_fields[loc[-1]]


def _nullable(loc: Sequence[Any], schema: type[BaseModel]) -> bool:
    return type(None) in get_args(_field(loc, schema).annotation)


def _range(loc: Sequence[Any], schema: type[BaseModel]) -> str:
    """A key's allowed range from its schema bounds: ``> 0``, ``>= 0``, ``in [0, 1)``."""
    field = _field(loc, schema)
    annotated = (m for arg in get_args(field.annotation) for m in getattr(arg, "__metadata__", ()))
    metadata = [m for info in (*field.metadata, *annotated) for m in getattr(info, "metadata", [info])]
    bounds = {n: getattr(m, n) for m in metadata for n in ("gt", "ge", "lt", "le") if getattr(m, n, None) is not None}
    low = f"[{bounds['ge']}" if "ge" in bounds else f"({bounds['gt']}" if "gt" in bounds else None
    high = f"{bounds['le']}]" if "le" in bounds else f"{bounds['lt']})" if "lt" in bounds else None
    if low and high:
        return f"in {low}, {high}"
    return next(
        f"{sign} {bounds[n]}" for n, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")) if n in bounds
    )


def _validated(raw: Mapping[str, Any], provenance: Mapping[str, str] | None = None) -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_message(err, provenance or {})) from None


# --------------------------------------------------------------------------------------------------
# reading YAML files and overrides


def _yaml_problem(err: yaml.YAMLError) -> str:
    problem = getattr(err, "problem", None) or _one_line(err)
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
            _one_line(f"{key}: cannot parse value {value!r} of override {item!r}: {_yaml_problem(err)}")
        ) from None
    except (OmegaConfBaseException, ValueError) as err:
        raise ConfigError(_one_line(f"bad override {item!r}: {str(err).splitlines()[0]}")) from None
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
        raise ConfigError(_one_line(f"{key + ': ' if key else ''}{str(err).splitlines()[0]}")) from None
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
        raise ConfigError(_one_line(str(err))) from None


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
