"""One-line messages for pydantic validation errors, shared by the run config and the study file schemas.

A schema's own rules raise :func:`config_error` (``key: message``); :func:`describe_error` turns the first problem of
any validation into one line that names the dotted key, what was expected and, for a wrong type or an unknown key,
where it was set: the form every :class:`~lightning_ehf.errors.ConfigError` has (exit code 2).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any, get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

__all__ = ["config_error", "describe_error", "join_key", "keyed", "one_line", "rule_message"]


def config_error(key: str, message: str) -> PydanticCustomError:
    """A rule broken at ``key``: a dotted path below the model or field whose validator raises it ("" for that model
    or field itself). :func:`describe_error` puts where the validator ran in front (``key: message`` once
    formatted); :func:`rule_message` says an error raised outside a validation."""
    return PydanticCustomError("ehf_config", "{message}", {"key": key, "message": message})


def keyed(key: str, message: str) -> str:
    """``key: message`` on one line; ``message`` alone for no key (the top of a file)."""
    return one_line(f"{key}: {message}" if key else message)


def rule_message(err: PydanticCustomError, at: str = "") -> str:
    """A :func:`config_error` raised outside a validation, by code that checks the section at the key ``at``."""
    context = err.context or {}
    return keyed(join_key(at, context.get("key", "")), context.get("message", str(err)))


def one_line(text: object) -> str:
    """Collapse whitespace (newlines included) so a message always fits on one line."""
    return " ".join(str(text).split())


def join_key(path: str, key: object) -> str:
    """``a.b`` + ``c`` → ``a.b.c``; ``a`` + ``[0]`` → ``a[0]``; an empty side is left out."""
    key = str(key)
    if not path or not key:
        return path or key
    return f"{path}{key}" if key.startswith("[") else f"{path}.{key}"


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
        out = join_key(out, f"[{part}]" if isinstance(part, int) else part)
    return out


def _fields_of(section: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The keys of the schema section at ``loc`` (for "did you mean")."""
    for part in loc:
        annotation = section.model_fields[part].annotation if part in section.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        section = annotation
    return list(section.model_fields)


def describe_error(
    err: ValidationError, schema: type[BaseModel], provenance: Mapping[str, str] | None = None, at: str = ""
) -> str:
    """The first problem of validating ``schema`` (found at the key ``at`` of its file; "" for the whole file), as
    ``key: what is wrong`` on one line; ``provenance`` (dotted key -> where it was set) adds where a mistyped value
    or an unknown key came from."""
    provenance = provenance or {}
    first = err.errors(include_url=False)[0]
    kind, loc, value, ctx = first["type"], first["loc"], first.get("input"), first.get("ctx") or {}
    key = join_key(at, _dotted(loc))
    plain = key.split("[")[0]
    set_at = next((provenance[k] for k in (plain, *_parents(key)) if k in provenance), "") or next(
        (where for k, where in reversed(provenance.items()) if k.startswith(plain + ".")), ""
    )
    where = f" (in {set_at})" if set_at else ""
    if kind == "ehf_config":
        return keyed(join_key(key, ctx["key"]), ctx["message"])
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _fields_of(schema, loc[:-1]), n=1)
        hint = f"; did you mean '{join_key(join_key(at, _dotted(loc[:-1])), close[0])}'?" if close else ""
        return one_line(f"unknown config key '{key}'{where}{hint}")
    if kind == "literal_error":
        if not isinstance(value, str):
            return one_line(f"{key}: expected a string, got {_describe(value)}; quote it if you mean the string{where}")
        allowed = [a.strip("'") for a in ctx["expected"].replace(" or ", ", ").split(", ")]
        close = difflib.get_close_matches(value, allowed, n=1)
        nullable = " or null" if _nullable(loc, schema) else ""
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return one_line(f"{key}: unknown value {value!r} (choose from {', '.join(allowed)}{nullable}){hint}")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return one_line(f"{key}: must be {_range(loc, schema)}, got {value!r}")
    if kind in _EXPECTED:
        expected = _EXPECTED[kind]
        if value is None:
            return one_line(f"{key}: null is not allowed, expected {expected}{where}")
        hint = ""
        if kind == "int_type" and isinstance(value, float) and value.is_integer():
            hint = f"; write {int(value)}"
        elif kind in ("int_type", "float_type") and _quoted_number(value):
            hint = "; numbers must not be quoted"
        elif kind == "string_type":
            hint = "; quote it if you mean the string"
        return one_line(f"{key}: expected {expected}, got {_describe(value)}{hint}{where}")
    return one_line(f"{key}: {first['msg']}{where}")


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
