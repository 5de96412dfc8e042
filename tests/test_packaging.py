"""A built wheel holds every package, module and experiment config (the paper presets and data
configs included), so an installed (non-editable) dermattn trains what a checkout trains."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PACKAGES = ("datamodules", "lightning_modules", "experiments")


@pytest.mark.slow  # builds a wheel: 5 to 10 s
def test_the_wheel_holds_every_module_and_experiment_config(tmp_path):
    source = tmp_path / "src"  # a copy: setuptools writes build/ and *.egg-info next to pyproject.toml
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("dermattn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(source).as_posix() for package in PACKAGES for p in (source / package).rglob("*.py")}
    configs = {p.relative_to(source).as_posix() for p in (source / "experiments").rglob("*.yaml")}
    assert {"experiments/paper/protopnet_paper.yaml", "experiments/data/isic2019.yaml", "experiments/base.yaml",
            "experiments/registry.yaml"} <= configs  # fmt: skip
    assert {f"{package}/__init__.py" for package in PACKAGES} <= expected
    assert sorted((expected | configs) - names) == []
