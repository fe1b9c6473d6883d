"""What an index page and an sdist show: extras that exist, install hints that work, no tests
without the files they need."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_logger_the_docs_name_has_an_extra_and_no_address_is_invented():
    project = pyproject()["project"]
    assert {"plot", "wandb", "mlflow", "jd", "cli", "test"} <= set(project["optional-dependencies"])
    assert any(r.startswith("mlflow") for r in project["optional-dependencies"]["mlflow"])
    assert "urls" not in project  # the project has no public address yet


def test_no_install_hint_names_a_package_that_is_not_on_an_index():
    # lightning_losses is installed from a checkout (pip install -e .); "pip install
    # lightning_losses[plot]" fails on every index
    sources = [
        *(ROOT / "lightning_losses").rglob("*.py"),
        *(ROOT / "examples").rglob("*.py"),
        *(ROOT / "docs").glob("*.md"),
        ROOT / "README.md",
        ROOT / "CONTRIBUTING.md",
    ]
    hint = re.compile(r"pip install[^\n`]*lightning[_-]losses", re.IGNORECASE)
    found = [
        f"{p.relative_to(ROOT)}: {m[0]}" for p in sources for m in hint.finditer(p.read_text())
    ]
    assert not found


def test_the_sdist_is_the_package_without_tests(tmp_path):
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("building needs setuptools>=77 (PEP 639 license fields)")
    # build from a copy: building writes an egg-info directory next to the package
    for name in ["pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "MANIFEST.in"]:
        shutil.copy(ROOT / name, tmp_path / name)
    for folder in ["lightning_losses", "tests"]:
        shutil.copytree(
            ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    code = "from setuptools import build_meta; print(build_meta.build_sdist('dist'))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    archive = tmp_path / "dist" / done.stdout.strip().splitlines()[-1]
    with tarfile.open(archive) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"README.md", "LICENSE", "pyproject.toml", "lightning_losses/__init__.py"} <= names
    assert "lightning_losses/py.typed" in names
    assert not [n for n in names if n.startswith("tests/")]
