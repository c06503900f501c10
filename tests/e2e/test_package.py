"""The package's version is the one its packaging metadata declares."""

from __future__ import annotations

import tomllib
from pathlib import Path

import lightning_ehf

ROOT = Path(__file__).resolve().parents[2]


def test_version_matches_pyproject():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert lightning_ehf.__version__ == declared
