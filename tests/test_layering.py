"""The three floors: ``datamodules`` <- ``lightning_modules`` <- ``experiments``; no import runs up
(function-level imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ABOVE = {"datamodules": ("lightning_modules", "experiments"), "lightning_modules": ("experiments",)}


def imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("floor", sorted(ABOVE))
def test_no_import_runs_up(floor):
    upward = {str(path.relative_to(REPO)): sorted(imported_packages(path) & set(ABOVE[floor]))
              for path in sorted((REPO / floor).rglob("*.py"))}
    assert {path: names for path, names in upward.items() if names} == {}
