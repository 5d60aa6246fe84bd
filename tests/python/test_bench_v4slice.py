"""Smoke tests of ``flashmtp bench v4slice`` on the toy-dimension slice (same builder, same layer types as the
V4-Flash slice: one CSA ratio-4 layer with indexer, one HCA ratio-128 layer). Durations are never asserted
(DESIGN.md); the oracles are: the file's tensor table against the converter's (flashmtp.convert.deepseek4),
the random blocks' dequantized values (flashmtp._core.dequantize: finite, spread near 1/sqrt(row length)),
finite logits from the Engine, the bytes-per-token arithmetic recomputed from the file, and the table's
rows."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from flashmtp import _core
from flashmtp.bench import v4slice
from flashmtp.cli import main
from flashmtp.convert.deepseek4 import Deepseek4Params, main_tensor_specs
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader

pytest.importorskip("tokenizers")  # the slice's small tokenizer is trained with it


@pytest.fixture(scope="module", params=v4slice.EXPERT_TYPES)
def slice_file(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return v4slice.build_slice("tiny", request.param, tmp_path_factory.mktemp("v4slice"), progress=False)


def test_tensors_match_the_converter_table(slice_file: Path) -> None:
    p = Deepseek4Params.from_config(v4slice.TINY)
    reader = GGUFReader(slice_file)
    shapes = {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}
    assert shapes == {s.name: s.shape for s in main_tensor_specs(p)}
    assert reader.fields["deepseek4.attention.compress_ratios"].contents() == [4, 128]
    experts = {t.tensor_type for t in reader.tensors if "_exps" in t.name}
    assert experts == {T.Q4_K if "q4_k" in slice_file.name else T.MXFP4}
    assert {t.tensor_type for t in reader.tensors if t.name == "blk.0.attn_q_b.weight"} == {T.Q8_0}


def test_random_blocks_dequantize_to_sane_weights(slice_file: Path) -> None:
    reader = GGUFReader(slice_file)
    for t in reader.tensors:
        if t.tensor_type not in (T.Q8_0, T.Q4_K, T.MXFP4):
            continue
        row = int(t.shape[0])
        raw = np.ascontiguousarray(t.data).view(np.uint8).reshape(-1)
        values = _core.dequantize(int(t.tensor_type), raw, int(t.n_elements))
        assert np.isfinite(values).all(), t.name
        centred = values.reshape(-1, row)
        spread = float(np.sqrt(((centred - centred.mean(axis=1, keepdims=True)) ** 2).mean()))
        assert 0.3 / np.sqrt(row) < spread < 3 / np.sqrt(row), (t.name, spread * np.sqrt(row))


def test_engine_decodes_finite_logits(slice_file: Path) -> None:
    session = _core.Engine(str(slice_file), 2).session(320)
    tokens = np.random.default_rng(0).integers(0, v4slice.TINY["vocab_size"], 300).astype(np.int32)
    logits = session.decode(tokens, n_logits=4)  # 300 positions: both compressors have emitted entries
    assert logits.shape == (4, v4slice.TINY["vocab_size"]) and np.isfinite(logits).all()


def test_token_bytes_from_the_file(slice_file: Path) -> None:
    experts = "q4_k" if "q4_k" in slice_file.name else "mxfp4"
    p = Deepseek4Params.from_config(v4slice.TINY)
    reader = GGUFReader(slice_file)
    layers = head = 0.0
    for t in reader.tensors:
        if t.name.startswith("blk."):
            layers += int(t.n_bytes) * (6 / 16 if "_exps" in t.name else 1)
        else:
            head += int(t.n_bytes) / (p.vocab_size if t.name == "token_embd.weight" else 1)
    got = v4slice.token_bytes(p, experts)
    assert got.layer == pytest.approx(layers / 2) and got.head == pytest.approx(head)


def test_cli_prints_table_and_csv(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_csv = tmp_path / "v4slice.csv"
    args = ["bench", "v4slice", "--dims", "tiny", "--cache-dir", str(tmp_path), "--prompt", "260",
            "--max-batch", "3", "--repeats", "1", "--warmup", "1", "--bandwidth-mb", "16", "--quiet",
            "--no-llama-cpp", "--csv", str(out_csv)]
    assert main(args) == 0
    assert main(args) == 0  # second run: the cached file
    out = capsys.readouterr().out
    assert "built in" in out and "cached)" in out
    rows = list(csv.reader(out_csv.open()))
    assert rows[0] == ["figure", "engine", "value"]
    figures = {(r[0], r[1]) for r in rows[1:]}
    for figure in ("one layer (ms)", "head (ms)", "projected 43-layer decode (tok/s)",
                   "verify 2 tokens / 1 token", "verify 3 / 1, layers only"):
        assert (figure, "flashmtp") in figures
    assert not any(r[1] == "llama.cpp" for r in rows[1:])


def test_llama_cpp_column(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """llama-cpp-python 0.3.36's llama.cpp loads deepseek4 files: its figures join the table."""
    pytest.importorskip("llama_cpp")
    args = ["bench", "v4slice", "--dims", "tiny", "--cache-dir", str(tmp_path), "--prompt", "260",
            "--max-batch", "2", "--repeats", "1", "--warmup", "1", "--bandwidth-mb", "16", "--quiet"]
    assert main(args) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert any(r[-2:-1] == ["llama.cpp"] and r[:2] == ["verify", "2"] for r in rows), rows
