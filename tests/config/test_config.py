"""Config loading, type guards, semantic validation and the shipped YAML files."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_ehf.config.load import (
    load_config,
    save_config,
    to_container,
    to_yaml,
    validate,
    validate_for_dim,
)
from lightning_ehf.config.schema import FILE_DEFAULTS, Config
from lightning_ehf.errors import ConfigError, UserError

REPO = Path(__file__).resolve().parents[2]
# study files describe a grid of runs, not one run: they are checked by the study tests
SHIPPED = sorted(p for p in (REPO / "configs").rglob("*.yaml") if "study" not in p.relative_to(REPO / "configs").parts)

FILE_OVERRIDES = [
    "data.target=null",
    "data.path=x.npy",
    "symmetry.group=rotations",
    "symmetry.planes=[[0,1],[2,3]]",
]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def error_of(fn, *args, exc: type[Exception] = ConfigError, **kwargs) -> str:
    """Run fn, expect ``exc``, check the message is one line, return it."""
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert "full_key" not in msg and "object_type" not in msg, msg
    assert isinstance(info.value, UserError)
    return msg


def load_error(*overrides: str, files: tuple = ()) -> str:
    return error_of(load_config, files, list(overrides))


def validate_error(*overrides: str) -> str:
    """A semantic error: the typed schema finds it when the config is loaded (``validate`` checks again)."""
    return error_of(lambda: validate(load_config(overrides=list(overrides))))


# ---------------------------------------------------------------------------------------------------
# happy paths


def test_defaults_load_and_validate() -> None:
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.experiment == "default"
    assert cfg.data.target == Config().data.target
    assert cfg.model.blocks == Config().model.blocks
    validate(cfg)


def test_yaml_then_override_precedence(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", "seed: 1\nmodel:\n  blocks: 2\n  hidden: 32\n")
    b = write(tmp_path / "b.yaml", "model:\n  blocks: 3\n")
    cfg = load_config([a, b], ["model.hidden=16"])
    assert cfg.seed == 1  # from a
    assert cfg.model.blocks == 3  # b beats a
    assert cfg.model.hidden == 16  # override beats files
    assert cfg.model.depth == Config().model.depth  # untouched default


def test_planes_parse_to_nested_lists_and_file_data_validates() -> None:
    cfg = load_config(overrides=FILE_OVERRIDES)
    assert cfg.data.target is None
    assert cfg.data.path == "x.npy"
    assert to_container(cfg)["symmetry"]["planes"] == [[0, 1], [2, 3]]
    validate(cfg)
    validate_for_dim(cfg, 4)


def test_int_to_float_key_is_fine(tmp_path: Path) -> None:
    cfg = load_config([write(tmp_path / "c.yaml", "model:\n  step_size: 1\n")], ["constraint.lr=2"])
    assert cfg.model.step_size == 1.0 and isinstance(cfg.model.step_size, float)
    assert cfg.constraint.lr == 2.0 and isinstance(cfg.constraint.lr, float)


def test_scientific_notation_override() -> None:
    assert load_config(overrides=["constraint.tolerance=1e-4"]).constraint.tolerance == pytest.approx(1e-4)


def test_defaults_chain(tmp_path: Path) -> None:
    write(tmp_path / "base" / "root.yaml", "seed: 7\nmodel:\n  blocks: 2\n")
    write(tmp_path / "base" / "mid.yaml", "defaults: [root.yaml]\nmodel:\n  blocks: 5\n  depth: 3\n")
    exp = write(tmp_path / "exp" / "my_exp.yaml", "defaults:\n  - ../base/mid.yaml\nmodel:\n  depth: 4\n")
    cfg = load_config([exp])
    assert cfg.seed == 7
    assert cfg.model.blocks == 5
    assert cfg.model.depth == 4
    assert cfg.experiment == "my_exp"


def test_defaults_cycle(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", "defaults: [b.yaml]\n")
    write(tmp_path / "b.yaml", "defaults: [a.yaml]\n")
    assert "cycle" in error_of(load_config, [a])


def test_defaults_missing_file(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", "defaults: [nope.yaml]\n")
    msg = error_of(load_config, [a])
    assert "nope.yaml" in msg and "a.yaml" in msg


def test_defaults_bad_type(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", "defaults: {x: 1}\n")
    msg = error_of(load_config, [a])
    assert "defaults" in msg and "a.yaml" in msg


def test_experiment_name(tmp_path: Path) -> None:
    a = write(tmp_path / "first.yaml", "seed: 1\n")
    b = write(tmp_path / "second.yaml", "seed: 2\n")
    assert load_config([a, b]).experiment == "second"
    assert load_config([a], ["experiment=mine"]).experiment == "mine"
    named = write(tmp_path / "named.yaml", "experiment: fixed\n")
    assert load_config([named, b]).experiment == "fixed"


def test_interpolation_resolved() -> None:
    cfg = load_config(overrides=["data.n_val=${data.n_test}"])
    assert cfg.data.n_val == cfg.data.n_test


def test_save_and_reload_roundtrip(tmp_path: Path) -> None:
    cfg = load_config(overrides=[*FILE_OVERRIDES, "experiment=rt", "logger.wandb.tags=[a,b]"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    again = load_config([path])
    assert to_container(again) == to_container(cfg)
    assert to_yaml(again) == to_yaml(cfg)
    plain = to_container(cfg)
    assert type(plain) is dict and type(plain["symmetry"]["planes"]) is list


# ---------------------------------------------------------------------------------------------------
# load errors: one line, naming the key or the file


def test_unknown_key_with_suggestion() -> None:
    msg = load_error("data.n_trian=3")
    assert "data.n_trian" in msg and "data.n_train" in msg


def test_unknown_section() -> None:
    msg = load_error("modle.blocks=3")
    assert "modle" in msg


def test_unknown_key_in_file(tmp_path: Path) -> None:
    f = write(tmp_path / "x.yaml", "model:\n  blokcs: 3\n")
    msg = error_of(load_config, [f])
    assert "model.blokcs" in msg and "x.yaml" in msg


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.n_train=abc", "data.n_train"),  # wrong type
        ("data.n_train='3'", "data.n_train"),  # string where a number is expected
        ("model.step_size='0.1'", "model.step_size"),  # string for a float
        ("data.n_train=2.5", "data.n_train"),  # float for an int
        ("data.n_train=2.0", "data.n_train"),
        ("model.kind=3", "model.kind"),  # number for a string (OmegaConf would make it '3')
        ("model.kind=true", "model.kind"),
        ("data.augment=1", "data.augment"),  # number for a bool
        ("model.blocks=true", "model.blocks"),  # bool for an int
        ("data.n_train=null", "data.n_train"),  # null for a non-optional key
        ("data=5", "data"),  # scalar for a section
        ("symmetry.planes=[0,1]", "symmetry.planes[0]"),  # flat list for nested
        ("symmetry.planes=[[0,x]]", "symmetry.planes[0][1]"),
        ("logger.wandb.tags=[1,2]", "logger.wandb.tags[0]"),  # numbers for list[str]
    ],
)
def test_type_errors(override: str, key: str) -> None:
    msg = load_error(override)
    assert msg.startswith(key + ":"), msg
    assert override in msg


def test_type_error_in_file_names_file(tmp_path: Path) -> None:
    f = write(tmp_path / "bad_types.yaml", "model:\n  kind: 3\n")
    msg = error_of(load_config, [f])
    assert "model.kind" in msg and "bad_types.yaml" in msg


def test_override_without_equals() -> None:
    assert "data.n_train" in load_error("data.n_train")


def test_override_without_key() -> None:
    assert "=3" in load_error("=3")


def test_override_unparseable_value() -> None:
    msg = load_error("symmetry.planes=[[0,1]")
    assert "symmetry.planes" in msg


def test_missing_yaml_file(tmp_path: Path) -> None:
    msg = error_of(load_config, [tmp_path / "nope.yaml"])
    assert "nope.yaml" in msg


@pytest.mark.parametrize("text", ["model: [1,\n", "a: 1\na: 2\n", "model:\n\tblocks: 1\n", "- 1\n- 2\n", "3\n"])
def test_unparseable_yaml_file(tmp_path: Path, text: str) -> None:
    f = write(tmp_path / "broken.yaml", text)
    assert "broken.yaml" in error_of(load_config, [f])


def test_empty_yaml_file_is_fine(tmp_path: Path) -> None:
    f = write(tmp_path / "empty.yaml", "")
    assert load_config([f]).experiment == "empty"


def test_bad_interpolation() -> None:
    assert "data.n_val" in load_error("data.n_val=${nope}")


# ---------------------------------------------------------------------------------------------------
# validate: semantic errors


@pytest.mark.parametrize(
    "key, value",
    [
        ("data.target", "ring3d"),
        ("data.regime", "finit"),
        ("symmetry.group", "so4"),
        ("model.kind", "maf"),
        ("model.kinetic", "cubic"),
        ("model.encoder", "flows"),
        ("model.activation", "relu"),
        ("constraint.mode", "hard"),
        ("constraint.rule", "mult"),
        ("optim.scheduler", "step"),
        ("logger.wandb.mode", "offlin"),
    ],
)
def test_enum_errors(key: str, value: str) -> None:
    msg = validate_error(f"{key}={value}")
    assert msg.startswith(key + ":") and value in msg


def test_enum_suggestion() -> None:
    assert "offline" in validate_error("logger.wandb.mode=offlin")


def test_target_and_path_both_set_explicitly() -> None:
    msg = validate_error("data.target=ring2d", "data.path=x.npy")
    assert msg.startswith("data.path:") and "data.target=ring2d" in msg


def test_target_from_a_yaml_file_and_path_are_refused(tmp_path: Path) -> None:
    exp = write(tmp_path / "exp.yaml", "data:\n  target: gmm8\n")
    msg = error_of(load_config, [exp], ["data.path=x.npy"])
    assert msg.startswith("data.path:") and "data.target=gmm8" in msg


# ---------------------------------------------------------------------------------------------------
# data.path implies FILE_DEFAULTS for the keys nobody set (schema.py)


def test_path_alone_means_file_data() -> None:
    cfg = load_config(overrides=["data.path=x.npy"])
    validate(cfg)
    assert (cfg.data.target, cfg.data.regime, cfg.symmetry.group) == (None, "finite", "none")
    assert (cfg.data.n_val, cfg.data.n_test) == (None, None)  # fractions of the file's rows ...
    assert (cfg.data.file_val_fraction, cfg.data.file_test_fraction) == (0.1, 0.1)  # ... 10 % each
    assert {k.split(".", 1)[1] for k in FILE_DEFAULTS if k.startswith("data.")} <= set(type(cfg.data).model_fields)


def test_without_path_the_schema_defaults_hold() -> None:
    cfg = load_config()
    assert (cfg.data.target, cfg.data.regime, cfg.symmetry.group) == ("ring2d", "infinite", "auto")
    assert (cfg.data.n_val, cfg.data.n_test) == (1000, 5000)


def test_explicit_keys_win_over_what_a_path_implies(tmp_path: Path) -> None:
    exp = write(tmp_path / "exp.yaml", "data:\n  n_test: 30\nsymmetry:\n  group: so2\n")
    cfg = load_config([exp], ["data.path=x.npy", "data.n_val=20"])
    validate(cfg)
    assert (cfg.data.n_val, cfg.data.n_test, cfg.symmetry.group) == (20, 30, "so2")
    assert cfg.data.target is None and cfg.data.regime == "finite"


def test_explicit_infinite_regime_with_a_file_is_refused() -> None:
    msg = validate_error("data.path=x.npy", "data.regime=infinite")
    assert msg.startswith("data.regime:") and "finite" in msg


def test_explicit_auto_group_with_a_file_is_refused() -> None:
    msg = validate_error("data.path=x.npy", "symmetry.group=auto")
    assert msg.startswith("symmetry.group:") and "set symmetry.group" in msg


@pytest.mark.parametrize("key", ["data.n_val", "data.n_test"])
def test_null_split_size_needs_a_file(key: str) -> None:
    msg = validate_error(f"{key}=null")
    assert msg.startswith(key + ":") and "data.path" in msg


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["data.file_val_fraction=0"], "data.file_val_fraction"),
        (["data.file_test_fraction=1.5"], "data.file_test_fraction"),
        (["data.file_val_fraction=0.5", "data.file_test_fraction=0.5"], "data.file_test_fraction"),
    ],
)
def test_bad_file_fractions(overrides: list, key: str) -> None:
    assert validate_error("data.path=x.npy", *overrides).startswith(key + ":")


def test_file_data_config_round_trips_through_print_config_and_config_yaml(tmp_path: Path, capsys) -> None:
    from lightning_ehf import cli

    assert cli.main(["print-config", "data.path=x.npy"]) == 0
    printed = capsys.readouterr().out
    assert "  target: null\n" in printed and "  n_val: null\n" in printed and "  group: none\n" in printed
    cfg = load_config(overrides=["data.path=x.npy"])
    again = load_config([write(tmp_path / "printed.yaml", printed)])  # e.g. a run's config.yaml: every key set
    assert to_container(again) == to_container(cfg)
    assert to_yaml(load_config([save_config(again, tmp_path / "config.yaml")])) == to_yaml(cfg)


def test_no_data() -> None:
    assert "data.target" in validate_error("data.target=null")


@pytest.mark.parametrize(
    "key, value",
    [
        ("data.n_train", 0),
        ("data.n_val", -1),
        ("data.n_test", 0),
        ("data.batch_size", 0),
        ("model.blocks", 0),
        ("model.leapfrog_steps", -2),
        ("model.hidden", 0),
        ("model.depth", 0),
        ("model.step_size", 0),
        ("model.sigma_q", -1.0),
        ("model.sigma_p", 0),
        ("eval.iw_samples", 0),
        ("eval.iw_chunk", 0),
        ("trainer.max_steps", 0),
        ("trainer.val_check_interval", 0),
        ("optim.lr", 0),
        ("constraint.lr", -0.1),
        ("constraint.tolerance", -1e-3),
        ("constraint.init", -1),
        ("constraint.ema", 1),
        ("constraint.ema", -0.1),
    ],
)
def test_bad_sizes(key: str, value: float) -> None:
    assert validate_error(f"{key}={value}").startswith(key + ":")


def test_zero_tolerance_and_init_are_fine() -> None:
    validate(load_config(overrides=["constraint.tolerance=0", "constraint.init=0", "constraint.ema=0"]))


def test_rotations_need_planes() -> None:
    assert "symmetry.planes" in validate_error("symmetry.group=rotations")


@pytest.mark.parametrize("planes", ["[[0,0]]", "[[0,1],[1,0]]", "[[0,1,2]]", "[[-1,1]]", "[]"])
def test_bad_planes(planes: str) -> None:
    assert "symmetry.planes" in validate_error("symmetry.group=rotations", f"symmetry.planes={planes}")


def test_matrices_needed() -> None:
    assert "symmetry.matrices" in validate_error("symmetry.group=matrices")


def test_matrices_not_square() -> None:
    msg = validate_error("symmetry.group=matrices", "symmetry.matrices=[[[0,1,2],[1,0,2]]]")
    assert "symmetry.matrices[0]" in msg


def test_auto_needs_target() -> None:
    msg = validate_error("data.target=null", "data.path=x.npy", "symmetry.group=auto")
    assert msg.startswith("symmetry.group:") and "set symmetry.group" in msg


@pytest.mark.parametrize("group", ["none", "matrices"])
def test_invariant_needs_rotation_group(group: str) -> None:
    extra = ["symmetry.matrices=[[[0,1],[-1,0]]]"] if group == "matrices" else []
    msg = validate_error("model.invariant=true", f"symmetry.group={group}", *extra)
    assert msg.startswith("model.invariant:")


def test_invariant_ok_with_rotations() -> None:
    validate(load_config(overrides=["model.invariant=true", "symmetry.group=so2"]))


PARTICLE_EHF = ("data.target=dw4", "symmetry.permutations=true", "model.invariant=true")


@pytest.mark.parametrize(
    "key, changes",
    [
        ("kinetic_pair_bins", ("data.target=dw4", "model.invariant=true")),  # particles not identical
        ("kinetic_pair_cutoff", ("data.target=dw4", "symmetry.permutations=true")),  # not invariant
        ("kinetic_pair_bins", (*PARTICLE_EHF, "model.kinetic=quadratic")),  # no features in ½|p|²/m
        ("kinetic_pair_cutoff", (*PARTICLE_EHF, "model.kind=efm")),
    ],
)
def test_kinetic_histogram_needs_an_invariant_particle_ehf(key: str, changes: tuple[str, ...]) -> None:
    value = 6 if key.endswith("bins") else 4.0
    msg = validate_error(*changes, f"model.{key}={value}")
    assert msg.startswith(f"model.{key}:") and "symmetry.permutations=true" in msg
    validate(load_config(overrides=[*PARTICLE_EHF, f"model.{key}={value}"]))


def test_augment_needs_symmetry() -> None:
    assert validate_error("data.augment=true", "symmetry.group=none").startswith("data.augment:")


def test_so2_coords() -> None:
    assert "symmetry.coords" in validate_error("symmetry.group=so2", "symmetry.coords=[0,1,2]")
    assert "symmetry.coords" in validate_error("symmetry.group=so3", "symmetry.coords=[0,1,1]")


# ---------------------------------------------------------------------------------------------------
# validate_for_dim


def test_plane_index_out_of_range() -> None:
    cfg = load_config(overrides=FILE_OVERRIDES)
    assert "symmetry.planes[1]" in error_of(validate_for_dim, cfg, 3)


def test_particle_dim_must_divide() -> None:
    cfg = load_config(overrides=["symmetry.group=so2", "symmetry.particle_dim=2"])
    validate_for_dim(cfg, 6)
    assert "symmetry.particle_dim" in error_of(validate_for_dim, cfg, 5)


def test_planes_index_a_particle_when_particle_dim_is_set() -> None:
    cfg = load_config(overrides=["symmetry.group=rotations", "symmetry.planes=[[0,1]]", "symmetry.particle_dim=2"])
    validate(cfg)
    validate_for_dim(cfg, 6)
    cfg = load_config(overrides=["symmetry.group=rotations", "symmetry.planes=[[0,2]]", "symmetry.particle_dim=2"])
    assert "symmetry.particle_dim=2" in error_of(validate_for_dim, cfg, 6)


def test_coords_in_range() -> None:
    cfg = load_config(overrides=["symmetry.group=so3", "symmetry.coords=[0,1,4]"])
    validate(cfg)
    validate_for_dim(cfg, 5)
    assert "symmetry.coords" in error_of(validate_for_dim, cfg, 4)
    cfg = load_config(overrides=["symmetry.group=so3"])
    assert "symmetry.group" in error_of(validate_for_dim, cfg, 2)


def test_matrices_match_dim() -> None:
    cfg = load_config(overrides=["symmetry.group=matrices", "symmetry.matrices=[[[0,1],[-1,0]]]"])
    validate(cfg)
    validate_for_dim(cfg, 2)
    assert "symmetry.matrices[0]" in error_of(validate_for_dim, cfg, 3)


def test_matrices_numeric() -> None:
    msg = error_of(load_config, (), ["symmetry.group=matrices", "symmetry.matrices=[[[0,a],[-1,0]]]"])
    assert "symmetry.matrices[0][0][1]" in msg


# ---------------------------------------------------------------------------------------------------
# every shipped YAML loads and validates


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO)) for p in SHIPPED])
def test_shipped_yaml(path: Path) -> None:
    cfg = load_config([path])
    validate(cfg)


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO)) for p in SHIPPED])
def test_shipped_experiment_builds(path: Path) -> None:
    """Each shipped experiment assembles: its data module, its model on the data's symmetry, and a finite
    IWAE estimate of log p for a few of the target's samples."""
    import torch

    from lightning_ehf.build import make_datamodule, make_module

    cfg = load_config([path])
    datamodule = make_datamodule(cfg)
    module = make_module(cfg, datamodule)
    x = datamodule.target.sample(3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        log_p = module.model.iwae(x, k=2, chunk=2)
    assert log_p.shape == (3,) and torch.isfinite(log_p).all()


# ---------------------------------------------------------------------------------------------------
# the schema is the one source of defaults and choices


def test_choices_are_the_core_registries() -> None:
    from lightning_ehf.config.schema import DataCfg, ModelCfg, choices
    from lightning_ehf.core.encoders import ENCODERS
    from lightning_ehf.core.hamiltonians import ACTIVATIONS, FORCE_PATHS
    from lightning_ehf.core.targets import TARGETS

    assert set(choices(DataCfg, "target")) == {*TARGETS, None}
    assert set(choices(ModelCfg, "encoder")) == {"auto", *ENCODERS}
    assert set(choices(ModelCfg, "forces")) == set(FORCE_PATHS)
    assert set(choices(ModelCfg, "activation")) == set(ACTIVATIONS)


def _readme_value(text: str) -> object:
    text = text.strip().strip("`")
    return {"null": None, "true": True, "false": False}.get(text, text)


def _config_reference_rows() -> list[tuple[str, str]]:
    """(dotted key, default as written) of every row of the config table in docs/config.md."""
    rows = []
    section = (REPO / "docs" / "config.md").read_text()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[0].startswith("`") or "." not in cells[0] and cells[0] != "`seed`":
            continue
        if "=" in cells[0]:  # a row about one value of a key (e.g. `model.kind=efm`), not a default
            continue
        keys = [k.strip().strip("`") for k in cells[0].split(" / ")]
        section = keys[0].rsplit(".", 1)[0] + "." if "." in keys[0] else ""
        full = [keys[0], *(k if "." in k else section + k for k in keys[1:])]
        defaults = [d.strip() for d in cells[1].split(" / ")]
        assert len(full) == len(defaults), line
        rows += list(zip(full, defaults))
    return rows


def test_the_config_reference_states_the_schema_defaults() -> None:
    from lightning_ehf.config.load import flatten

    defaults = flatten(Config().model_dump())
    rows = _config_reference_rows()
    assert len(rows) > 40
    for key, written in rows:
        assert key in defaults, f"docs/config.md names {key}, which the schema does not have"
        value, shown = defaults[key], _readme_value(written)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(shown, str):
            shown = float(shown)
        assert shown == value or str(shown) == str(value), f"{key}: docs/config.md says {written}, the schema {value!r}"
