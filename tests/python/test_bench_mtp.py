"""``flashmtp bench mtp``'s llama.cpp rows (flashmtp.bench.mtp_llama_cpp: llama.cpp's draft-mtp loop driven
through llama-cpp-python's C API). All but the first need llama_cpp (pip install '.[bench]').

Oracles:
- without llama_cpp: the table says how to install it, and has flashmtp's rows only;
- the shipped model: llama-cpp-python 0.3.36 refuses it, and the bench prints why in llama.cpp's words (its
  loader's error line, as the module docstring says); should a later llama.cpp load the file, this test
  fails and the rows are there to be checked;
- the loop, on a random model with V4-Flash's proportions (compress ratios 4 and 128, head 256 with RoPE 64,
  indexer heads of 128: what llama.cpp's deepseek4 graph builds) whose output matrix favours two tokens, so
  that drafts are both accepted and rejected (0 < accepted < drafted: both paths run): drafting 1..3 gives
  exactly the tokens of llama.cpp's own MTP off (greedy verification makes them independent of the drafts;
  a main KV cache not rolled back exactly changes them or fails the next decode), and llama.cpp's MTP off
  gives flashmtp's greedy tokens on the same file (the same model: the favoured logits stand well apart, so
  the argmax does not depend on either engine's rounding); and its acceptance at each draft position is
  flashmtp's, draft for draft (their head logits are not identical: llama.cpp also gives position 0 a head
  row, with a zero state, flashmtp none; the drafts here are);
- that known difference, pinned on the same model: without llama.cpp's position-0 row its head logits are
  flashmtp's at every position (F32 KV cache, no flash attention); with it they differ, and they are the
  PyTorch reference's (flashmtp.testing.ds4_mtp_ref, DeepSeek's MTPBlock) given that same zero-state row, so
  the row is the whole difference.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flashmtp.bench import decode, mtp
from flashmtp.bench.decode import llama_cpp_unavailable_reason
from flashmtp.cli import main

MODELS = Path(__file__).resolve().parents[2] / "models"
SHIPPED, SHIPPED_HEAD = MODELS / "tiny-v4-q4_k.gguf", MODELS / "tiny-v4-q4_k-mtp.gguf"
REFUSAL = "DeepSeek-V4 loader only supports compression ratios 0, 4, and 128"


@pytest.fixture(scope="module")
def llama_cpp() -> None:
    if (reason := llama_cpp_unavailable_reason()) is not None:
        pytest.skip(f"llama_cpp is not importable ({reason}); pip install '.[bench]'")


def bench_shipped(tmp_path: Path) -> tuple[int, Path]:
    """One code prompt x 16 tokens on the shipped model; the exit code and the CSV."""
    out_csv = tmp_path / "mtp.csv"
    status = main(["bench", "mtp", "-m", str(SHIPPED), "--mtp", str(SHIPPED_HEAD), "--prompts", "1",
                   "--tokens", "16", "--threads", "1", "--domains", "code", "--csv", str(out_csv)])
    return status, out_csv


def flashmtp_rows_only(out_csv: Path) -> bool:
    expected = [("flashmtp", mtp.setting_name(s)) for s in mtp.SETTINGS]
    return [(r["engine"], r["setting"]) for r in csv.DictReader(out_csv.open())] == expected


def test_missing_llama_cpp_says_how_to_install(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode, "llama_cpp_unavailable_reason", lambda: "ModuleNotFoundError: no llama_cpp")
    status, out_csv = bench_shipped(tmp_path)
    assert status == 0 and "pip install '.[bench]'" in capsys.readouterr().out
    assert flashmtp_rows_only(out_csv)


def test_shipped_model_is_refused_with_llama_cpp_reason(llama_cpp: None) -> None:
    prompt = mtp.make_prompts("code", 1, 600)
    got = mtp.run_llama_cpp(str(SHIPPED), str(SHIPPED_HEAD), 1, {"code": prompt}, 16)
    assert isinstance(got, str) and REFUSAL in got


def test_bench_prints_the_reason_and_flashmtp_rows(llama_cpp: None, capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    status, out_csv = bench_shipped(tmp_path)
    out = capsys.readouterr().out
    assert status == 0 and f"llama.cpp: not measured with {SHIPPED_HEAD.name}: " in out and REFUSAL in out
    assert flashmtp_rows_only(out_csv)


@pytest.fixture(scope="module")
def v4_model() -> Any:
    """The random model described in the module docstring (a TinyDeepseek4)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    import torch
    from flashmtp.testing.tiny_deepseek4 import make_tiny_deepseek4

    tiny = make_tiny_deepseek4(
        seed=0, head_dim=256, moe_intermediate_size=256, q_lora_rank=128, o_lora_rank=64, n_routed_experts=8,
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 128},
        index_n_heads=4, index_head_dim=128, index_topk=16, sliding_window=128, max_position_embeddings=4096,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024,
                         "beta_fast": 32, "beta_slow": 1})
    with torch.no_grad():
        tiny.state["lm_head.weight"][10:12] *= 12
    return tiny


@pytest.fixture(scope="module")
def v4_proportioned(v4_model: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Main GGUF and flashmtp sidecar (F32) of v4_model."""
    from flashmtp.convert import convert, mtp_path

    root = tmp_path_factory.mktemp("v4prop")
    path = root / "v4prop.gguf"
    convert(v4_model.write(root / "ckpt", "release"), path, "f32", progress=False)
    return path, mtp_path(path)


def test_llama_cpp_draft_mtp_matches_flashmtp(llama_cpp: None,
                                             v4_proportioned: tuple[Path, Path]) -> None:
    import flashmtp
    from flashmtp.bench import run_in_process
    from flashmtp.bench.mtp_llama_cpp import measure

    path, head = v4_proportioned
    model = flashmtp.Model(str(path), threads=1, mtp=str(head))
    prompt = model.detokenize(np.random.default_rng(4).integers(2, 300, 24).tolist())
    settings = (0, 1, 2, 3)
    ids = {"text": [model.tokenize(prompt)]}
    ok, got = run_in_process(measure, str(path), str(head), 1, ids, 16, settings)
    assert ok, got
    runs = got["text"][0]
    plain = runs[0].tokens
    assert len(plain) == 16 and runs[0].drafted == 0
    assert model.detokenize(plain) == model.generate(prompt, max_tokens=16, temperature=0, mtp=False)
    for setting, r in zip(settings[1:], runs[1:], strict=True):
        assert r.tokens == plain, f"draft {setting}"
        assert 0 < r.accepted < r.drafted, f"draft {setting}: {r.accepted}/{r.drafted}"
        model.generate(prompt, max_tokens=16, temperature=0, mtp=True, draft=setting)
        ours = model.last_stats.speculative
        assert r.tried_at == list(ours.tried_at), f"draft {setting}"
        assert r.accepted_at == list(ours.accepted_at), f"draft {setting}"


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def test_head_logits_differ_from_llama_cpps_by_its_position_0_row(
        llama_cpp: None, v4_model: Any, v4_proportioned: tuple[Path, Path]) -> None:
    import torch
    from flashmtp import _core
    from flashmtp.bench import run_in_process
    from flashmtp.bench.mtp_llama_cpp import first_draft_logits
    from flashmtp.testing.ds4_mtp_ref import main_final_streams

    path, head = v4_proportioned
    prompt = np.random.default_rng(4).integers(2, 300, 24).tolist()
    ok, theirs = run_in_process(first_draft_logits, str(path), str(head), prompt, True)
    assert ok, theirs
    session = _core.Engine(str(path), 1, str(head)).session()
    ours = []  # [T, V]: position i drafts from the main state at i and token i + 1 (last: the seed)
    for i, token in enumerate(prompt):
        last = session.decode(np.array([token], np.int32), 1)[-1]
        ours.append(session.draft(prompt[i + 1] if i + 1 < len(prompt) else int(last.argmax())))
    assert int(last.argmax()) == theirs["seed"]
    ours = np.stack(ours)
    assert relative_error(theirs["without_row_0"], ours) < 1e-4
    assert relative_error(theirs["with_row_0"][-1], ours[-1]) > 1e-2

    torch.set_num_threads(1)
    model, mtp = v4_model.reference()
    ids = torch.tensor([*prompt, theirs["seed"]])
    with torch.no_grad():
        streams = main_final_streams(model, ids[:-1].unsqueeze(0))  # [T, n_hc, D]
        with_row_0 = mtp(torch.cat([torch.zeros_like(streams[:1]), streams]), ids)[0][1:].numpy()
    assert relative_error(theirs["with_row_0"], with_row_0) < 1e-4
