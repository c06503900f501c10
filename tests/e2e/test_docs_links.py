"""Every relative link in the README and docs/ points at a file of the repository (documents move)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(document):
    missing = []
    for target in LINK.findall(document.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # web addresses and anchors in the same page
        path = target.split("#", 1)[0]
        if not (document.parent / path).exists():
            missing.append(target)
    assert not missing, f"{document.relative_to(ROOT)} links to missing files: {missing}"
