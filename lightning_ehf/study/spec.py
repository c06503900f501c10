"""Study files: a grid of ordinary runs (cells) over named axes, with profiles that shrink it.

A study file (YAML)::

    study: data_efficiency              # name (default: the file's stem)
    config: [../experiment/x.yaml]      # optional config files every cell starts from (relative to this file)
    base:                               # overrides every cell gets (dotted keys)
      data.regime: finite
    axes:                               # the grid: the product of the axes, in this order
      method: [ehf_none, ehf_dual, nsf] # a list of names: the method presets (METHODS)
      target:                           # a mapping: value name -> overrides
        ring2d: {data.target: ring2d}
      n_train: {key: data.n_train, values: [128, 1024]}   # one config key, plain values
      seed: {key: seed, values: [0, 1, 2]}
    profiles:                           # profile=NAME on the command line; the first is the default
      quick:
        axes: {n_train: [128]}          # keep only these values (by name), or {values: [...]}: new values of a key axis
        base: {trainer.max_steps: 3000} # extra overrides, after base
    report:                             # `ehf study report`
      x: n_train                        # plots: x axis (log scale when numeric) ...
      panel: target                     # ... one panel per value of this axis ...
      compare: method                   # ... one line per value of this axis
      pairs: [[ehf_dual, ehf_none]]     # seed-by-seed comparisons of two values of `compare`
      analyses: [potentials]            # study-specific sections (study/analyses.py)
    slurm: {partition: null, time_min: 60, cpus_per_cell: 2, gpus_per_cell: 0}
    tune:                               # optional (here, or in a profile, which replaces it): a tuned study
      seeds: [100]                      # tuning seeds: the seed axis' values in stage 1, never evaluation seeds
      per: [target, n_train]            # a choice per value of these axes (default: every axis but method, seed)
      grids:                            # every method of the axis, the same number of configurations each
        ehf_dual: {optim.lr: [1.0e-3, 3.0e-3], model.hidden: [64, 128]}          # a product of key lists
        ehf_none: {optim.lr: [1.0e-3, 3.0e-3], model.hidden: [64, 128]}
        nsf: {optim.lr: [1.0e-3, 3.0e-3],                                         # a list of mappings: keys
              shape: [{model.nsf_transforms: 4}, {model.nsf_transforms: 8}]}     # that change together
        nsf_matched: {optim.lr: [1.0e-3, 3.0e-3], model.nsf_bins: [8, 16]}
      matched:                          # methods added to the method axis: an NSF-kind method whose width
        nsf_matched: {like: nsf, params_of: ehf_dual}   # gives the parameter count of params_of's choice

The file's schema is :class:`StudyFile` (pydantic, strict: no type coercion, unknown keys refused; a key set
to null takes its default); a problem raises ConfigError with one line naming the file and the key.

Each cell is a plain run folder made by ``ehf train`` with the cell's overrides. The cell's name joins
its value names with ``-`` (``ehf_dual-ring2d-n_train128-seed0``). A key that ``base`` (or the profile's
``base``) and an axis both set takes the axis value in every cell; a command-line ``key=value`` that an
axis sets is refused.

A study with ``tune`` runs in two stages (:mod:`lightning_ehf.study.tuning`): every configuration of every
method's grid on the tuning seeds, scored on validation NLL alone, then each method's chosen configuration on
the seed axis' seeds. A grid's keys win over the axes' (a tuned width replaces a target's ``model.hidden``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..config.load import override_value
from ..config.schema import Positive, PositiveFloat
from ..errors import ConfigError
from ..validation import config_error, describe_error, rule_message

__all__ = ["METHODS", "Cell", "ReportSpec", "SlurmSpec", "Study", "StudyFile", "Tuning", "checked", "load_study"]

#: The named methods every study compares, as config overrides. They differ only in what is named here;
#: data, budget and stopping rule come from the study.
METHODS: dict[str, dict[str, Any]] = {
    "ehf_none": {"model.kind": "ehf", "model.invariant": False, "constraint.mode": "none"},
    "ehf_penalty": {
        "model.kind": "ehf",
        "model.invariant": False,
        "constraint.mode": "penalty",
        "constraint.init": 10.0,
    },
    "ehf_dual": {"model.kind": "ehf", "model.invariant": False, "constraint.mode": "dual"},
    # the paper's method run to its tolerance: the multiplier step and the checkpoint rule that reached it on ring2d
    # (docs/results.md, "Does the dual ascent reach its tolerance?")
    "ehf_dual_feasible": {
        "model.kind": "ehf",
        "model.invariant": False,
        "constraint.mode": "dual",
        "constraint.lr": 10.0,
        "constraint.selection": "feasible",
    },
    "ehf_invariant": {"model.kind": "ehf", "model.invariant": True, "constraint.mode": "none"},
    # ablations: does the constraint help beyond what random group elements on the data already give?
    "ehf_none_aug": {"model.kind": "ehf", "model.invariant": False, "constraint.mode": "none", "data.augment": True},
    "ehf_dual_aug": {"model.kind": "ehf", "model.invariant": False, "constraint.mode": "dual", "data.augment": True},
    "nsf": {"model.kind": "nsf", "constraint.mode": "none", "data.augment": False},
    "nsf_aug": {"model.kind": "nsf", "constraint.mode": "none", "data.augment": True},
    # equivariant flow matching: equivariant by construction, so augmentation would add nothing
    "efm": {"model.kind": "efm", "constraint.mode": "none", "data.augment": False},
}

_NAME = re.compile(r"[A-Za-z0-9_.]+")
_KEY_VALUE_NAME = re.compile(r"[A-Za-z0-9_.+-]+")  # plain values of a key axis: also signs and exponents (lr1e-05)


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its name, the value name it takes on every axis, and its overrides."""

    name: str
    values: dict[str, str]
    overrides: tuple[str, ...]


@dataclass
class Axis:
    name: str
    values: dict[str, dict[str, Any]]  # value name -> overrides


@dataclass
class Tuning:
    """A checked ``tune`` section: ``grids`` (method -> configuration name -> overrides, the same number of
    configurations for every method), run on the tuning ``seeds``, chosen per value of the ``per`` axes;
    ``matched`` (method -> {like, params_of}): NSF-kind methods whose width matches ``params_of``'s choice."""

    seeds: list[int]
    per: list[str]
    grids: dict[str, dict[str, dict[str, Any]]]
    matched: dict[str, dict[str, str]] = field(default_factory=dict)


def _mapping(message: str) -> BeforeValidator:
    """A value that is no mapping gets ``message`` instead of pydantic's words."""

    def check(raw: Any) -> Any:
        if not isinstance(raw, dict):
            raise config_error("", message)
        return raw

    return BeforeValidator(check)


def _overrides(raw: Any, where: str = "") -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise config_error(where, f"must be a mapping of config keys to values (e.g. data.n_train: 128), got {raw!r}")
    return dict(raw)


#: config overrides: dotted key -> value
Overrides = Annotated[dict[str, Any], BeforeValidator(lambda raw: _overrides(raw))]


class Section(BaseModel):
    """A section of a study file: typed (no coercion), unknown keys refused, a key set to null takes its default."""

    model_config = ConfigDict(extra="forbid", strict=True)
    #: said when the section is no mapping, lacks a required key or has an unknown one
    shape: ClassVar[str] = ""
    #: said instead for an unknown key ``{key}``, where given
    unknown_key: ClassVar[str] = ""

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, raw: Any) -> Any:
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise config_error("", cls.shape)
        unknown = sorted(str(k) for k in raw if k not in cls.model_fields)
        if unknown:
            raise config_error("", cls.unknown_key.format(key=unknown[0]) if cls.unknown_key else cls.shape)
        raw = {k: v for k, v in raw.items() if v is not None or cls.model_fields[k].default is None}
        if any(f.is_required() and k not in raw for k, f in cls.model_fields.items()):
            raise config_error("", cls.shape)
        return raw


class SlurmSpec(Section):
    """``slurm:``: what every cell asks of SLURM (``ehf study run --launcher slurm``, through submitit)."""

    shape: ClassVar[str] = "allowed keys: partition, time_min, cpus_per_cell, gpus_per_cell, mem_gb, parallelism"
    partition: str | None = None
    time_min: Positive = 60  # a cell's time limit, minutes
    cpus_per_cell: Positive = 2
    gpus_per_cell: Annotated[int, Field(ge=0)] = 0
    mem_gb: PositiveFloat | None = None
    parallelism: Positive | None = None  # at most this many cells at once


class ReportSpec(Section):
    """``report:`` (``ehf study report``): plots over the ``x`` axis, one panel per value of ``panel``, one line
    per value of ``compare``; seed-by-seed ``pairs`` of values of ``compare``; study-specific ``analyses``."""

    shape: ClassVar[str] = "must be a mapping (x, panel, compare)"
    unknown_key: ClassVar[str] = "unknown key {key!r} (allowed: x, panel, compare, analyses, pairs)"
    x: str | None = None
    panel: str | None = None
    compare: str | None = None
    analyses: list[str] = []
    pairs: list[list[str]] = []

    @field_validator("analyses")
    @classmethod
    def _known_analyses(cls, analyses: list[str]) -> list[str]:
        from .analyses import ANALYSES

        for analysis in analyses:
            if analysis not in ANALYSES:
                raise config_error("", f"unknown analysis {analysis!r} (choose from {', '.join(ANALYSES)})")
        return analyses

    def check_axes(self, values: dict[str, list[str]]) -> None:
        """The keys naming axes name axes; a pair holds two values of ``compare`` (``values``: axis -> names)."""
        for pair in self.pairs:
            if self.compare not in values:
                raise config_error("report.pairs", "needs report.compare (the axis whose values are paired)")
            if not (len(pair) == 2 and all(p in values[self.compare] for p in pair)):
                raise config_error("report.pairs", f"{pair!r} is not a pair of values of the axis {self.compare!r}")
        for key, axis in {"x": self.x, "panel": self.panel, "compare": self.compare}.items():
            if axis is not None and axis not in values:
                raise config_error(f"report.{key}", f"{axis!r} is not an axis")


class MatchedSpec(Section):
    """A matched method: NSF-kind (``like``), its width giving the parameter count of ``params_of``'s choice."""

    shape: ClassVar[str] = "is {like: <an NSF method>, params_of: <a method of the method axis>}"
    like: str
    params_of: str


class TuneSpec(Section):
    """``tune:`` as written (module docstring); :meth:`resolve` checks it against the axes."""

    shape: ClassVar[str] = (
        "a tune section is a mapping with grids (and seeds, per, matched); allowed keys: seeds, per, grids, matched"
    )
    seeds: list[int] = [100]
    per: list[str] | None = None  # default: every axis but method and seed
    grids: Annotated[dict[str, Any], _mapping("must be a mapping: method -> grid")]
    matched: Annotated[
        dict[str, MatchedSpec], _mapping("must be a mapping: new method -> {like: nsf, params_of: ehf_dual}")
    ] = {}

    @field_validator("seeds", mode="before")
    @classmethod
    def _distinct_integers(cls, seeds: Any) -> Any:
        if not (
            isinstance(seeds, list) and seeds and all(type(x) is int for x in seeds) and len({*seeds}) == len(seeds)
        ):
            raise config_error("", f"must be a list of distinct integers, got {seeds!r}")
        return seeds

    def resolve(self, where: str, axes: list[Axis], unshrunk: dict[str, list[str]], axis_keys: set[str]) -> Tuning:
        """The section checked against the (profile's) axes, its grids expanded; adds its matched methods to the
        method axis. ``where``: its key; ``axis_keys``: the keys every value of a non-method axis sets."""
        by_name = {a.name: a for a in axes}
        method_axis, seed_axis = by_name.get("method"), by_name.get("seed")
        if method_axis is None:
            raise config_error(where, "needs a method axis (the grids are per method)")
        if seed_axis is None or not all(list(ov) == ["seed"] for ov in seed_axis.values.values()):
            raise config_error(
                where, "needs a seed axis {key: seed, values: [...]} (its seeds are the evaluation seeds)"
            )
        shared = sorted(set(self.seeds) & {ov["seed"] for ov in seed_axis.values.values()})
        if shared:
            raise config_error(
                f"{where}.seeds",
                f"{shared[0]} is also an evaluation seed (the seed axis); tuning seeds are kept "
                "apart from the seeds that are reported",
            )
        others = [a.name for a in axes if a.name not in ("method", "seed")]
        per = others if self.per is None else self.per
        if not all(p in others for p in per) or len(set(per)) != len(per):
            raise config_error(
                f"{where}.per",
                f"must be a list of distinct axes out of {others} (a choice per value of each), got {per!r}",
            )
        for name, spec in self.matched.items():
            at = f"{where}.matched.{name}"
            if not _NAME.fullmatch(name) or name in unshrunk["method"]:
                raise config_error(
                    at, "must be a new method name (letters, digits, '_' and '.'), not one of the method axis"
                )
            preset = method_axis.values.get(spec.like, METHODS.get(spec.like))
            if preset is None or preset.get("model.kind") != "nsf":
                raise config_error(f"{at}.like", f"{spec.like!r} is not an NSF method (a method with model.kind: nsf)")
            if spec.params_of not in method_axis.values or spec.params_of in self.matched:
                raise config_error(f"{at}.params_of", f"{spec.params_of!r} is not a method of the method axis")
        for name, spec in self.matched.items():
            method_axis.values[name] = dict(method_axis.values.get(spec.like, METHODS.get(spec.like, {})))
        for method in self.grids:
            if method not in unshrunk["method"] and method not in self.matched:
                raise config_error(f"{where}.grids.{method}", "is not a method of the study")
        # keys every value of a non-method axis sets (data.target, data.n_train, seed) are the grid's cells, not knobs
        fixed = axis_keys | {"seed", "experiment", "run.dir", "run.root"}
        grids: dict[str, dict[str, dict[str, Any]]] = {}
        for method, preset in method_axis.values.items():
            if method not in self.grids:
                raise config_error(
                    f"{where}.grids",
                    f"has no grid for the method {method!r} (every method is tuned, with the same "
                    "number of configurations)",
                )
            grid = _grid(self.grids[method], f"{where}.grids.{method}")
            banned = fixed | set(preset) | ({"model.hidden"} if method in self.matched else set())
            for key in sorted({k for ov in grid.values() for k in ov}):
                if key in banned:
                    why = (
                        "is set by the size matching"
                        if key == "model.hidden" and method in self.matched
                        else "is the method's own key"
                        if key in preset
                        else "is set by an axis for every cell"
                    )
                    raise config_error(f"{where}.grids.{method}", f"{key} {why}; a grid tunes other keys")
            grids[method] = grid
        sizes = {m: len(g) for m, g in grids.items()}
        if len(set(sizes.values())) > 1:
            raise config_error(
                f"{where}.grids",
                "every method gets the same number of configurations; "
                + ", ".join(f"{m} has {n}" for m, n in sizes.items()),
            )
        return Tuning(list(self.seeds), list(per), grids, {m: s.model_dump() for m, s in self.matched.items()})


class ProfileSpec(Section):
    """A profile: the values each named axis keeps, extra ``base`` overrides, and a ``tune`` section that
    replaces the file's (null: none)."""

    shape: ClassVar[str] = "a profile holds axes (value names to keep), base (overrides) and tune"
    axes: dict[str, Any] = {}
    base: Overrides = {}
    tune: TuneSpec | None = None

    def shrink(self, axes: dict[str, Axis], where: str) -> None:
        """Keep the values it names of each axis (names, or a key axis' plain values), or give a key axis new
        values (``{values: [...]}``). ``where``: the key of its ``axes``."""
        for axis_name, keep in self.axes.items():
            axis, at = axes.get(axis_name), f"{where}.{axis_name}"
            if axis is None:
                raise config_error(at, "no such axis")
            if isinstance(keep, dict):  # {values: [...]}: new values for a key axis
                old_key = next(iter(next(iter(axis.values.values()), {})), None)
                if (
                    set(keep) != {"values"}
                    or not axis.values
                    or any(list(ov) != [old_key] for ov in axis.values.values())
                ):
                    raise config_error(
                        at,
                        "a profile gives a key axis new values as {values: [v1, v2, ...]}; other axes keep "
                        "a list of their value names",
                    )
                axis.values = _axis(axis.name, {"key": old_key, "values": keep["values"]}, at).values
                continue
            names = []
            for k in keep if isinstance(keep, list) else [keep]:
                # plain values of a key axis may be given as values (128) or as names (n_train128)
                match = [
                    n for n, ov in axis.values.items() if n == str(k) or (len(ov) == 1 and list(ov.values())[0] == k)
                ]
                if not match:
                    raise config_error(at, f"{k!r} is not a value of the axis (values: {', '.join(axis.values)})")
                names.append(match[0])
            axis.values = {n: axis.values[n] for n in axis.values if n in names}


class StudyFile(Section):
    """A study file as written (the module docstring shows one)."""

    unknown_key: ClassVar[str] = (
        "unknown key {key!r} (allowed: axes, base, config, description, profiles, report, slurm, study, tune)"
    )
    study: str | None = None  # default: the file's stem
    description: str = ""
    config: Annotated[list[str], BeforeValidator(lambda f: [f] if isinstance(f, str) else f)] = []
    base: Overrides = {}
    axes: dict[str, Axis] = Field(default_factory=dict, validate_default=True)
    profiles: Annotated[dict[str, ProfileSpec], _mapping("must be a mapping of profile names to {axes, base}")] = {}
    report: ReportSpec = Field(default_factory=ReportSpec)
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)
    tune: TuneSpec | None = None

    @field_validator("axes", mode="plain")
    @classmethod
    def _parse_axes(cls, raw: Any) -> dict[str, Axis]:
        if not isinstance(raw, dict) or not raw:
            raise config_error("", "needs at least one axis (e.g. method: [ehf_dual, nsf])")
        return {str(n): _axis(str(n), a, str(n)) for n, a in raw.items()}

    @model_validator(mode="after")
    def _report_names_axes(self) -> StudyFile:
        values = {n: list(a.values) for n, a in self.axes.items()}
        # a pair may name a matched method of any tune section (the report skips pairs a profile lacks)
        tunes = [self.tune, *(p.tune for p in self.profiles.values())]
        values["method"] = [*values.get("method", []), *(m for t in tunes if t is not None for m in t.matched)]
        self.report.check_axes(values)
        return self


def _axis(name: str, raw: Any, where: str) -> Axis:
    if isinstance(raw, list):
        if name != "method":
            raise config_error(
                where,
                "a plain list of names is only for the method axis (the presets "
                f"{', '.join(METHODS)}); give {{key: ..., values: [...]}} or a mapping of names to overrides",
            )
        unknown = [v for v in raw if v not in METHODS]
        if unknown:
            raise config_error(
                where, f"unknown method {unknown[0]!r} (choose from {', '.join(METHODS)}, or give a mapping)"
            )
        if len(set(raw)) != len(raw):
            raise config_error(where, f"method {next(v for v in raw if raw.count(v) > 1)!r} is listed twice")
        return Axis(name, {v: dict(METHODS[v]) for v in raw})
    if isinstance(raw, dict) and "key" in raw:
        if set(raw) != {"key", "values"} or not isinstance(raw["values"], list) or not raw["values"]:
            raise config_error(where, "a key axis is {key: some.config.key, values: [v1, v2, ...]}")
        key = str(raw["key"])
        short = key.rsplit(".", 1)[-1]
        values = {}
        for v in raw["values"]:
            value_name = f"{short}{v}"
            if not _KEY_VALUE_NAME.fullmatch(value_name):
                raise config_error(
                    where,
                    f"value {v!r} cannot be part of a cell's folder name ({value_name!r}); give the axis "
                    "as a mapping of names to overrides",
                )
            if value_name in values:
                raise config_error(where, f"value {v!r} is listed twice")
            values[value_name] = {key: v}
        return Axis(name, values)
    if isinstance(raw, dict) and raw:
        values = {}
        for value_name, ov in raw.items():
            value_name = str(value_name)
            if not _NAME.fullmatch(value_name):
                raise config_error(f"{where}.{value_name}", "value names may use letters, digits, '_' and '.' only")
            if name == "method" and ov is None and value_name in METHODS:
                ov = METHODS[value_name]
            values[value_name] = _overrides(ov, f"{where}.{value_name}")
        return Axis(name, values)
    raise config_error(
        where,
        f"must be a list of method names, {{key: ..., values: [...]}} or a mapping of names to overrides, got {raw!r}",
    )


def _grid(raw: Any, where: str) -> dict[str, dict[str, Any]]:
    """A method's grid: configuration name -> overrides. Each entry is a factor of a product: ``key: [values]``,
    or ``label: [{key: value, ...}, ...]`` for keys that change together. A configuration's name joins its
    factors' ``<last part of key><value>`` with ``_`` (``lr0.001_hidden64``)."""
    if not isinstance(raw, dict) or not raw:
        raise config_error(
            where, "must be a mapping of config keys to lists of values (e.g. {optim.lr: [1.0e-3, 3.0e-3]})"
        )
    factors: list[list[tuple[str, dict[str, Any]]]] = []
    for key, values in raw.items():
        if not isinstance(values, list) or not values:
            raise config_error(f"{where}.{key}", "must be a non-empty list of values")
        if all(isinstance(v, dict) and v for v in values):
            factor = [("_".join(f"{str(k).rsplit('.', 1)[-1]}{x}" for k, x in v.items()), dict(v)) for v in values]
        elif any(isinstance(v, (dict, list)) for v in values):
            raise config_error(
                f"{where}.{key}", "a list of plain values, or a list of mappings of keys that change together"
            )
        else:
            factor = [(f"{str(key).rsplit('.', 1)[-1]}{v}", {str(key): v}) for v in values]
        factors.append(factor)
    configs: dict[str, dict[str, Any]] = {}
    for combo in itertools.product(*factors):
        name = "_".join(n for n, _ in combo)
        if not _KEY_VALUE_NAME.fullmatch(name):
            raise config_error(where, f"configuration {name!r} cannot be part of a cell's folder name")
        if name in configs:
            raise config_error(where, f"two configurations are both named {name!r}; give distinct values")
        configs[name] = {k: v for _, ov in combo for k, v in ov.items()}
    return configs


@dataclass
class Study:
    name: str
    profile: str
    source: Path
    config_files: list[str]
    base: dict[str, Any]
    axes: list[Axis]
    report: ReportSpec = field(default_factory=ReportSpec)
    slurm: SlurmSpec = field(default_factory=SlurmSpec)
    description: str = ""
    tune: Tuning | None = None

    def cells(self) -> list[Cell]:
        return [
            self.cell({a.name: name for a, name in zip(self.axes, combo)})
            for combo in itertools.product(*[list(a.values) for a in self.axes])
        ]

    def cell(self, values: dict[str, str], extra: dict[str, Any] | None = None) -> Cell:
        """The cell taking value ``values[axis]`` on every axis: base, then the axes' overrides, then ``extra``.
        Its name joins ``values`` (which may hold names that are no axis, e.g. a tuning configuration's)."""
        overrides = dict(self.base)
        for axis in self.axes:
            overrides.update(axis.values[values[axis.name]])
        overrides.update(extra or {})
        return Cell("-".join(values.values()), dict(values), tuple(_dotlist(overrides)))


def _dotlist(overrides: dict[str, Any]) -> list[str]:
    return [f"{k}={override_value(v)}" for k, v in overrides.items()]


SectionT = TypeVar("SectionT", bound=Section)


def checked(section: type[SectionT], raw: Any, source: str | Path, at: str = "") -> SectionT:
    """``raw`` validated as ``section`` (the key ``at`` of a study file); a problem raises ConfigError, one line:
    ``<source>: <key>: message``."""
    try:
        return section.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{source}: {describe_error(err, section, at=at)}") from None


def load_study(path: str | Path, profile: str | None = None, extra: Sequence[str] = ()) -> Study:
    """Read and check a study file; ``profile`` (default: the file's first) shrinks it; ``extra``
    overrides (``key=value``) go after the study's own for every cell. Raises ConfigError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a study file is a mapping (study, base, axes, profiles, ...)")
    spec = checked(StudyFile, raw, path)
    try:  # the rules that depend on the profile and the command line
        return _study(spec, path, profile, extra)
    except PydanticCustomError as err:
        raise ConfigError(f"{path}: {rule_message(err)}") from None


def _study(spec: StudyFile, path: Path, profile: str | None, extra: Sequence[str]) -> Study:
    name = spec.study or path.stem
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", name):
        raise config_error("study", f"must be a plain folder name, got {name!r}")
    config_files = [str((path.parent / f).resolve()) for f in spec.config]
    for f, resolved in zip(spec.config, config_files):
        if not Path(resolved).is_file():
            raise config_error("config", f"file {f} not found (paths are relative to the study file)")
    axes = list(spec.axes.values())
    unshrunk = {a.name: list(a.values) for a in axes}  # before a profile keeps some of the values
    axis_keys = {
        k for a in axes if a.name != "method" for k in set.intersection(*[set(ov) for ov in a.values.values()])
    }
    if profile is None:
        profile = next(iter(spec.profiles), "default")
    elif profile not in spec.profiles:
        raise ConfigError(
            f"profile: {profile!r} is not a profile of {path} (choose from {', '.join(spec.profiles) or 'none'})"
        )
    chosen = spec.profiles.get(profile) or ProfileSpec()
    chosen.shrink(spec.axes, f"profiles.{profile}.axes")
    base = {**spec.base, **chosen.base}
    tune_spec, tune_where = (
        (chosen.tune, f"profiles.{profile}.tune") if "tune" in chosen.model_fields_set else (spec.tune, "tune")
    )
    tune = tune_spec.resolve(tune_where, axes, unshrunk, axis_keys) if tune_spec is not None else None
    for item in extra:
        if "=" not in item:
            raise ConfigError(f"override: {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        axis = next((a.name for a in axes if any(key in ov for ov in a.values.values())), None)
        if axis is not None:
            # the axis would silently win over the command line: say so instead
            raise ConfigError(
                f"{key}: is set by the study's axis {axis!r}; change the axis (or a profile) in the study file"
            )
        if tune is not None and any(key in ov for grid in tune.grids.values() for ov in grid.values()):
            raise ConfigError(f"{key}: is tuned by the study's tune section; change its grids in the study file")
        base[key] = yaml.safe_load(value) if value.strip() else ""
    if "run.dir" in base or "run.root" in base:
        raise ConfigError("run.dir: is set by the study for each cell (DIR/cells/<cell>); do not set it")
    base.setdefault("experiment", name)
    study = Study(
        name, profile, path.resolve(), config_files, base, axes, spec.report, spec.slurm, spec.description, tune
    )
    names = [c.name for c in study.cells()]
    if len(set(names)) != len(names):
        raise config_error("axes", "two cells get the same name; give the axes' values distinct names")
    return study
