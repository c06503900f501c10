"""The package's layering (docs/design.md §3), read from the import statements of every module (lazy
imports inside functions included): imports only point down, no module reaches into another's private
names, and nothing loads repository files by path."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "lightning_ehf"
THIRD_PARTY_FRAMEWORKS = ("lightning", "pytorch_lightning", "omegaconf", "wandb", "pydantic", "torchmetrics")
#: The entry points: the only rooms that may assemble objects from a config through ``build``.
ASSEMBLERS = ("lightning_ehf.train", "lightning_ehf.evaluate", "lightning_ehf.cli", "lightning_ehf.study")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import in ``path``, relative imports resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names = [alias.name for alias in node.names]
            # ``from . import x`` imports the submodule x
            out += [(f"{target}.{n}", []) for n in names] if node.module is None else [(target, names)]
    return out


MODULES = {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _room(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def _importers_of(target_room: str) -> set[str]:
    return {
        _room(m)
        for m, imports in MODULES.items()
        for name, _ in imports
        if _room(name) == target_room and _room(m) != target_room
    }


def test_the_core_is_pure_torch():
    for module, imports in MODULES.items():
        if _room(module) != "lightning_ehf.core":
            continue
        for name, _ in imports:
            assert name.split(".")[0] not in THIRD_PARTY_FRAMEWORKS, f"{module} imports {name}"
            assert not name.startswith("lightning_ehf.") or _room(name) == "lightning_ehf.core", (
                f"{module} imports {name}"
            )


@pytest.mark.parametrize(
    "room, forbidden",
    [
        (
            "lightning_ehf.config",
            (
                "lightning_ehf.data",
                "lightning_ehf.lit",
                "lightning_ehf.build",
                "lightning_ehf.core",
                "lightning_ehf.train",
                "lightning_ehf.study",
                "lightning_ehf.cli",
            ),
        ),
        (
            "lightning_ehf.lit",
            (
                "lightning_ehf.data",
                "lightning_ehf.build",
                "lightning_ehf.train",
                "lightning_ehf.cli",
                "lightning_ehf.study",
            ),
        ),
        (
            "lightning_ehf.data",
            (
                "lightning_ehf.lit",
                "lightning_ehf.build",
                "lightning_ehf.config",
                "lightning_ehf.train",
                "lightning_ehf.cli",
                "lightning_ehf.study",
            ),
        ),
        (
            "lightning_ehf.build",
            ("lightning_ehf.train", "lightning_ehf.cli", "lightning_ehf.study", "lightning_ehf.evaluate"),
        ),
        ("lightning_ehf.train", ("lightning_ehf.cli", "lightning_ehf.study")),
        # the error messages of the config and study schemas: below both
        (
            "lightning_ehf.validation",
            ("lightning_ehf.config", "lightning_ehf.study", "lightning_ehf.build", "lightning_ehf.train"),
        ),
    ],
)
def test_imports_point_down(room, forbidden):
    for module, imports in MODULES.items():
        if _room(module) == room:
            bad = sorted({name for name, _ in imports if _room(name) in forbidden})
            assert not bad, f"{module} imports {bad}"


def test_only_the_entry_points_assemble_objects_from_a_config():
    assert _importers_of("lightning_ehf.build") <= set(ASSEMBLERS), _importers_of("lightning_ehf.build")


def test_no_module_takes_another_modules_private_names():
    for module, imports in MODULES.items():
        for name, names in imports:
            if name.startswith("lightning_ehf") and name != module:
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                assert not private, f"{module} takes {private} from {name}"


def test_nothing_loads_repository_files_by_path():
    for path in PACKAGE.rglob("*.py"):
        assert "spec_from_file_location" not in path.read_text(), path
