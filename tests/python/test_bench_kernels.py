"""Smoke test of ``flashmtp bench kernels`` on tiny matrices: it runs, prints its table and writes the CSV.
Durations are never asserted (DESIGN.md: benchmarks, not timed tests)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from flashmtp.cli import main


def test_bench_kernels_writes_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "kernels.csv"
    assert main(["bench", "kernels", "--threads", "2", "--types", "q8_0,q4_K", "--repeats", "1",
                 "--size-mb", "0.25", "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "read probe" in printed and "ISA" in printed and "% read" in printed
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["type"] for r in rows] == ["q8_0", "q4_K", "numpy f32 @"]
    for r in rows:
        assert float(r["read_probe_gbps"]) > 0
        assert r["note"] or float(r["gemv_gbps"]) > 0  # a type without kernels says so in its note


def test_bench_kernels_rejects_unknown_type(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "kernels", "--types", "q9_9", "--csv", "unused.csv"]) == 2
    assert "unknown weight type" in capsys.readouterr().out
