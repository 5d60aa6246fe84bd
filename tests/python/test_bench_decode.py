"""Smoke test of ``flashmtp bench decode`` on the shipped tiny llama: it runs and prints one row per thread
count. Durations are never asserted (DESIGN.md: benchmarks, not timed tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
from flashmtp.cli import main

TINY = Path(__file__).resolve().parents[2] / "models" / "tiny-llama.gguf"


def test_bench_decode_prints_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "decode", "-m", str(TINY), "--threads", "1,2", "--pp", "8", "--tg", "4",
                 "--repeats", "1", "--bandwidth-mb", "16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "weights per generated token" in lines[0]
    assert "pp8 t/s" in lines[1] and "tg4 t/s" in lines[1] and "tg/roofline" in lines[1]
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["1", "2"]
    assert all(float(v) > 0 for r in rows for v in r[1:])
