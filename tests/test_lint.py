"""The Python sources are ruff-clean (STYLE.md: typed, small modules, ruff-clean)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed (pip install '.[test]')")
def test_ruff_clean() -> None:
    result = subprocess.run(["ruff", "check", "python", "tests", "bench", "models"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
