"""Runs the C++ test suite (ctest) so that the one pytest command covers everything.

Builds the plain CMake project (no Python) in build/ctest; incremental after the first run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "ctest"


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed (pip install cmake)")
def test_ctest_suite() -> None:
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = run(["cmake", "-S", str(ROOT), "-B", str(BUILD), *generator,
                     "-DFLASHMTP_BUILD_TESTS=ON", "-DFLASHMTP_BUILD_PYTHON=OFF"])
    assert configure.returncode == 0, configure.stdout + configure.stderr
    build = run(["cmake", "--build", str(BUILD), "-j", str(os.cpu_count() or 2)])
    assert build.returncode == 0, build.stdout[-5000:] + build.stderr[-5000:]
    ctest = run(["ctest", "--test-dir", str(BUILD), "--output-on-failure"])
    print(ctest.stdout)
    assert ctest.returncode == 0, ctest.stdout[-8000:] + ctest.stderr[-2000:]
