"""The portable build (FLASHMTP_NATIVE=OFF, what a wheel for many x86 machines uses) passes the C++ suite, and
only the per-ISA kernel files contain AVX2 / AVX-512 instructions, so the baseline code runs on any x86-64 CPU
and the dispatcher alone decides what runs. Oracle: objdump's disassembly of every object file."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "portable"

pytestmark = [
    pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed (pip install cmake)"),
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-only ISA split"),
]


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def portable_build() -> Path:
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = run(["cmake", "-S", str(ROOT), "-B", str(BUILD), *generator, "-DFLASHMTP_NATIVE=OFF",
                     "-DFLASHMTP_BUILD_TESTS=ON", "-DFLASHMTP_BUILD_PYTHON=OFF"])
    assert configure.returncode == 0, configure.stdout + configure.stderr
    build = run(["cmake", "--build", str(BUILD), "-j", str(os.cpu_count() or 2)])
    assert build.returncode == 0, build.stdout[-5000:] + build.stderr[-5000:]
    return BUILD


def test_portable_ctest(portable_build: Path) -> None:
    ctest = run(["ctest", "--test-dir", str(portable_build), "--output-on-failure"])
    assert ctest.returncode == 0, ctest.stdout[-8000:] + ctest.stderr[-2000:]


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not installed")
def test_simd_only_in_isa_files(portable_build: Path) -> None:
    objects = [p for lib in ("flashmtp_kernels", "flashmtp_core")
               for p in (portable_build / "CMakeFiles" / f"{lib}.dir").rglob("*.o")]
    assert len(objects) >= 10, objects
    for obj in objects:
        asm = run(["objdump", "-d", "--no-show-raw-insn", str(obj)]).stdout
        name = obj.name
        if "avx512" not in name:
            assert not re.search(r"%zmm|%k[1-7]\b", asm), f"{name}: AVX-512 code outside an AVX-512 file"
        if "avx512" not in name and "avx2" not in name:
            assert not re.search(r"%ymm", asm), f"{name}: AVX code outside an ISA file"
