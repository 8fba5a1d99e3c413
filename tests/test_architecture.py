"""The shape of the code base: imports point one way, modules stay small, text describes the system as it is."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 420  # "about 400": one job per module


def test_import_contracts_hold():
    """pyproject.toml's import-linter contracts: model <- judging <- training <- evaluation <- serving/CLI, no cycles."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.fail("lint-imports not installed: pip install -e '.[test]'")
    result = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_source_module_does_more_than_one_job():
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "src").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_text_names_no_development_rounds():
    pattern = re.compile(r"\bstops? [0-9]+\b|\bissue #?[0-9]+\b", re.IGNORECASE)
    places = [ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / d for d in ("docs", "src", "tests", "benchmarks"))]
    files = [p for place in places if place.exists()
             for p in ([place] if place.is_file() else place.rglob("*")) if p.suffix in {".md", ".py", ".sh", ".toml"}]
    found = [f"{p.relative_to(ROOT)}:{n}" for p in files if p != Path(__file__)
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not found, found
