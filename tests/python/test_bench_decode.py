"""Smoke tests of ``flashmtp bench decode`` on the shipped tiny llama: it runs each engine in its own process
and prints the speed table (one row per test), the bandwidth and memory table (one row per engine) and the
CSV. Durations are never asserted (DESIGN.md: benchmarks, not timed tests); the only oracles are the table's
shape and the bytes-per-token arithmetic. The llama.cpp run needs llama_cpp (pip install '.[bench]')."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from flashmtp.bench import decode
from flashmtp.cli import main
from flashmtp.testing.models import fetch_or_skip

TINY = Path(__file__).resolve().parents[2] / "models" / "tiny-llama.gguf"
SMALL_RUN = ["--pp", "8,16", "--tg", "4", "--tg-prompt", "4", "--repeats", "1",
             "--bandwidth-mb", "16"]


def table(out: str, threads: int) -> tuple[list[list[str]], list[list[str]]]:
    """The speed rows and the engine rows printed for one thread count."""
    lines = out.splitlines()
    start = lines.index(next(line for line in lines if line.startswith(f"threads {threads}:")))
    header = next(i for i in range(start, len(lines)) if lines[i].startswith("test "))  # after a busy note
    speed_end = next(i for i in range(header, len(lines)) if lines[i].startswith("engine"))
    engine_end = next(i for i in range(speed_end, len(lines)) if not lines[i].strip())
    return ([line.split() for line in lines[header + 1:speed_end]],
            [line.split() for line in lines[speed_end + 1:engine_end]])


def test_flashmtp_only_prints_tables_and_csv(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_csv = tmp_path / "decode.csv"
    args = ["bench", "decode", "-m", str(TINY), *SMALL_RUN, "--threads", "1,2", "--no-llama-cpp",
            "--csv", str(out_csv)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "llama.cpp columns skipped (--no-llama-cpp)" in out
    assert "MB of weights per generated token" in out
    for threads in (1, 2):
        speed, engines = table(out, threads)
        assert [r[0] for r in speed] == ["pp8", "pp16", "tg4"]
        assert all(len(r) == 2 and float(r[1]) > 0 for r in speed)  # no llama.cpp column, no ratio
        assert [r[0] for r in engines] == ["flashmtp"]
        assert all(float(v) > 0 for v in engines[0][1:])
    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["threads"], r["engine"]) for r in rows] == [("1", "flashmtp"), ("2", "flashmtp")]
    assert all(float(r["tg4_tokens_per_s"]) > 0 and float(r["peak_rss_mib"]) > 0 for r in rows)


def test_missing_llama_cpp_says_how_to_install(capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode, "llama_cpp_unavailable_reason", lambda: "ModuleNotFoundError: no llama_cpp")
    assert main(["bench", "decode", "-m", str(TINY), *SMALL_RUN, "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "llama.cpp columns absent" in out and "pip install '.[bench]'" in out
    speed, engines = table(out, 1)
    assert [r[0] for r in speed] == ["pp8", "pp16", "tg4"] and [r[0] for r in engines] == ["flashmtp"]


def test_generated_token_reads_the_mean_cache_length() -> None:
    # Oracle: the positions each of the tg tokens attends to (its own included), averaged by hand.
    workload = decode.Workload(pp=(8, 32), tg=5, tg_prompt=10)
    assert workload.tg_mean_positions == sum(10 + i + 1 for i in range(5)) / 5
    assert workload.n_ctx == 32 and workload.tests == ["pp8", "pp32", "tg5"]


def test_side_by_side_with_llama_cpp(capsys: pytest.CaptureFixture[str]) -> None:
    if (reason := decode.llama_cpp_unavailable_reason()) is not None:
        pytest.skip(f"llama_cpp is not importable ({reason}); pip install '.[bench]'")
    # Not the tiny llama: llama.cpp rejects its pre-tokenizer name "gpt2" (it knows "gpt-2").
    smollm2 = fetch_or_skip("smollm2-135m-q4_1")
    assert main(["bench", "decode", "-m", str(smollm2), *SMALL_RUN, "--threads", "1"]) == 0
    speed, engines = table(capsys.readouterr().out, 1)
    assert [r[0] for r in speed] == ["pp8", "pp16", "tg4"]
    assert all(len(r) == 4 and all(float(v) > 0 for v in r[1:]) for r in speed)  # two engines and the ratio
    assert [r[0] for r in engines] == ["flashmtp", "llama.cpp", "ratio"]
    # Same weights, KV cache fp32 against f16: flashmtp reads more bytes per token.
    assert float(engines[0][1]) >= float(engines[1][1])


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--pp", "8,x", "--pp takes comma-separated integers, got '8,x'"),
    ("--pp", "0", "need prefill sizes >= 1"),
    ("--tg", "0", "tg >= 1"),
    ("--threads", "0", "need threads >= 1"),
    ("--repeats", "0", "repeats >= 1"),
])
def test_bad_settings_name_the_problem(capsys: pytest.CaptureFixture[str], option: str, value: str,
                                       message: str) -> None:
    assert main(["bench", "decode", "-m", str(TINY), option, value]) == 2
    assert message in capsys.readouterr().err
