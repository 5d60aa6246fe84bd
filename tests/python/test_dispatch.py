"""Kernel dispatch: the best ISA by default, FLASHMTP_ISA lowers it, bad values give a clear error.
Run in subprocesses because the choice is made once per process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import flashmtp
import pytest
from flashmtp import _core

ENV = {**os.environ, "PYTHONPATH": str(Path(flashmtp.__file__).parents[1])}
PROBE = """
from flashmtp import _core
try:
    print(_core.isa())
except ValueError as e:
    print("error:", e)
"""


def chosen(isa: str | None) -> str:
    env = dict(ENV)
    env.pop("FLASHMTP_ISA", None)
    if isa is not None:
        env["FLASHMTP_ISA"] = isa
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_default_is_the_best_available() -> None:
    best = next(isa for isa in ("avx512", "avx2", "scalar") if _core.isa_available(isa))
    assert chosen(None) == best


@pytest.mark.parametrize("isa", ["scalar", "avx2", "avx512"])
def test_forced_isa(isa: str) -> None:
    if not _core.isa_available(isa):
        assert "this CPU lacks it" in chosen(isa)
    else:
        assert chosen(isa) == isa


def test_unknown_isa_is_a_clear_error() -> None:
    assert chosen("sse9") == "error: FLASHMTP_ISA=sse9 is not one of scalar, avx2, avx512"
