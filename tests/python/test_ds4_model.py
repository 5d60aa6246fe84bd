"""The deepseek4 model behind Engine/Session, end to end: a tiny random DeepSeek-V4 checkpoint
(flashmtp.testing.tiny_deepseek4: window, CSA ratio 4 with indexer and HCA ratio 8 layers, two hash-routed
and two learned-routed MoE layers, sliding window 8) converted by `flashmtp convert`, then decoded.

Oracle: transformers' DeepseekV4ForCausalLM on the same checkpoint (eager, F32, one thread), logits of every
position of one 72-token prefill: the sequence crosses 9 sliding windows, 18 CSA and 9 HCA compression
windows, and CSA's top-4 indexer selects among up to 18 entries.
- F32 recipe: every position within 1e-4 relative error (max |ours - theirs| / max |theirs| of the position)
  in one prefill, in chunks and token by token (measured: < 1e-6).
- Q8_0 and Q4_K recipes: KL(theirs || ours) and top-1 agreement against the F32 oracle (bounds below).
- Batch invariance and rewind: bitwise against our own one-batch prefill.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")

import flashmtp  # noqa: E402
from flashmtp import _core  # noqa: E402
from flashmtp.convert import convert, mtp_path  # noqa: E402
from flashmtp.testing.tiny_deepseek4 import TinyDeepseek4, make_tiny_deepseek4  # noqa: E402

N_TOKENS = 72
CHUNKS = [5, 1, 11, 3, 20, 8, 24]  # sums to N_TOKENS; splits land inside and on compression windows


@pytest.fixture(scope="module")
def tiny() -> TinyDeepseek4:
    return make_tiny_deepseek4(seed=0)


@pytest.fixture(scope="module")
def tokens(tiny: TinyDeepseek4) -> np.ndarray:
    return np.random.default_rng(0).integers(0, tiny.config.vocab_size, N_TOKENS).astype(np.int32)


@pytest.fixture(scope="module")
def gguf_files(tiny: TinyDeepseek4, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ds4")
    checkpoint = tiny.write(root / "ckpt" / "tiny-v4", "release")
    files = {}
    for recipe in ("f32", "q8_0", "q4_k", "q3_k", "mxfp4"):
        files[recipe] = root / f"tiny-v4-{recipe}.gguf"
        convert(checkpoint, files[recipe], recipe, progress=False)
    return files


@pytest.fixture(scope="module")
def reference(tiny: TinyDeepseek4, tokens: np.ndarray) -> np.ndarray:
    """transformers' logits [N_TOKENS, n_vocab] of one prefill, float64."""
    import torch
    from transformers import DeepseekV4ForCausalLM

    torch.set_num_threads(1)
    model = DeepseekV4ForCausalLM(tiny.config)
    model.load_state_dict(tiny.state)
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor(tokens[None].astype(np.int64))).logits[0]
    return logits.double().numpy()


@pytest.fixture(scope="module")
def prefill(gguf_files: dict[str, Path], tokens: np.ndarray) -> np.ndarray:
    """Our F32 logits of every position of one batch, one thread."""
    return _core.Engine(str(gguf_files["f32"]), 1).session().decode(tokens)


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """[positions]: max |ours - theirs| / max |theirs| of each position."""
    return np.abs(ours - theirs).max(axis=1) / np.abs(theirs).max(axis=1)


def decode_in_chunks(session: _core.Session, tokens: np.ndarray, chunks: list[int]) -> np.ndarray:
    out, at = [], 0
    for n in chunks:
        out.append(session.decode(tokens[at : at + n]))
        at += n
    assert at == len(tokens)
    return np.concatenate(out)


def test_prefill_matches_transformers(prefill: np.ndarray, reference: np.ndarray) -> None:
    assert prefill.shape == reference.shape
    assert relative_error(prefill, reference).max() < 1e-4


@pytest.mark.parametrize("n_threads", [1, 2])
def test_chunks_and_token_by_token_match_transformers_and_are_bitwise_invariant(
        gguf_files: dict[str, Path], tokens: np.ndarray, prefill: np.ndarray, reference: np.ndarray,
        n_threads: int) -> None:
    engine = _core.Engine(str(gguf_files["f32"]), n_threads)
    for chunks in (CHUNKS, [1] * N_TOKENS, [N_TOKENS]):
        logits = decode_in_chunks(engine.session(), tokens, chunks)
        assert relative_error(logits, reference).max() < 1e-4
        # Batch invariance (DESIGN.md): the same token's logits whatever the split and the thread count.
        np.testing.assert_array_equal(logits, prefill)


def test_last_logits_only(gguf_files: dict[str, Path], tokens: np.ndarray, prefill: np.ndarray) -> None:
    session = _core.Engine(str(gguf_files["f32"]), 2).session()
    np.testing.assert_array_equal(session.decode(tokens[:40], n_logits=3), prefill[37:40])
    assert session.decode(tokens[40:], n_logits=0).shape == (0, prefill.shape[1])
    assert session.n_past == N_TOKENS


def test_rewind_then_redecode_is_bitwise(gguf_files: dict[str, Path], tokens: np.ndarray,
                                         prefill: np.ndarray) -> None:
    engine = _core.Engine(str(gguf_files["f32"]), 2)
    session = engine.session()
    session.decode(tokens)
    for p in (N_TOKENS - 1, 37, 32, 0):  # inside a window, on a CSA and HCA boundary, the start
        session.rewind(p)
        assert session.n_past == p
        np.testing.assert_array_equal(decode_in_chunks(session, tokens[p:], [1, N_TOKENS - p - 1]
                                                       if p < N_TOKENS - 1 else [1]), prefill[p:])
    # A different continuation after a rewind equals a session that only ever saw it.
    other = tokens[::-1].copy()
    session.rewind(30)
    fresh = engine.session()
    fresh.decode(tokens[:30], n_logits=0)
    np.testing.assert_array_equal(session.decode(other[:20]), fresh.decode(other[:20]))


def test_rewind_reruns_long_histories_in_batches(gguf_files: dict[str, Path]) -> None:
    """Past 512 kept tokens the session re-runs its history in several batches (runtime/engine.cpp)."""
    long = np.random.default_rng(1).integers(0, 300, 1100).astype(np.int32)
    session = _core.Engine(str(gguf_files["f32"]), 2).session(n_ctx=len(long))
    expected = session.decode(long, n_logits=4)
    session.rewind(len(long) - 4)
    np.testing.assert_array_equal(session.decode(long[-4:]), expected)



def test_long_batches_run_in_passes(gguf_files: dict[str, Path]) -> None:
    """A decode of more than 512 tokens runs in passes (runtime/engine.cpp); its logits, asked for across a
    pass boundary, are those of the same tokens decoded in other batches, bitwise (batch invariance)."""
    long = np.random.default_rng(2).integers(0, 300, 1100).astype(np.int32)
    engine = _core.Engine(str(gguf_files["f32"]), 2)
    whole = engine.session(n_ctx=len(long)).decode(long, n_logits=600)
    pieces = engine.session(n_ctx=len(long))
    cuts = ((0, 300), (300, 777), (777, 1100))  # the logits are those of tokens 500..1099
    got = [pieces.decode(long[a:b], n_logits=max(0, b - max(a, 500))) for a, b in cuts]
    assert pieces.n_past == len(long)
    np.testing.assert_array_equal(np.concatenate([g for g in got if len(g)]), whole)

# Measured on this checkpoint and seeds 1, 2 (KL mean / max, top-1): Q8_0 6.4e-6..1.5e-5 / 9e-5..6.9e-4,
# 0.93..1.0; Q4_K 1.8e-5..3.5e-5 / 1.3e-4..6.2e-4, 0.93..0.97; Q3_K 5.7e-5..8.4e-5 / 2.5e-4..2.7e-4,
# 0.85..0.90 (its down experts, rows of 96, fall back to Q4_0); MXFP4 5.2e-5..6.9e-5 / 2.0e-4..3.1e-4,
# 0.89..0.92. The tiny model's random logits are nearly flat (many near-ties), so top-1 is the looser signal;
# the bounds leave ~3x headroom on KL.
@pytest.mark.parametrize(("recipe", "kl_mean", "kl_max", "top1"),
                         [("q8_0", 1e-4, 2e-3, 0.9), ("q4_k", 1e-4, 2e-3, 0.9), ("q3_k", 2.5e-4, 1e-3, 0.75),
                          ("mxfp4", 2e-4, 1e-3, 0.8)])
def test_quantized_recipes_against_transformers(gguf_files: dict[str, Path], tokens: np.ndarray,
                                                reference: np.ndarray, recipe: str, kl_mean: float,
                                                kl_max: float, top1: float) -> None:
    ours = _core.Engine(str(gguf_files[recipe]), 2).session().decode(tokens).astype(np.float64)

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    p, q = log_softmax(reference), log_softmax(ours)
    kl = (np.exp(p) * (p - q)).sum(axis=1)
    assert kl.mean() < kl_mean and kl.max() < kl_max
    assert (ours.argmax(axis=1) == reference.argmax(axis=1)).mean() >= top1


def test_model_api_and_properties(gguf_files: dict[str, Path], tiny: TinyDeepseek4) -> None:
    model = flashmtp.Model(gguf_files["f32"], threads=1)
    assert model.architecture == "deepseek4"
    assert model.n_vocab == tiny.config.vocab_size
    assert model.n_ctx_train == tiny.config.max_position_embeddings
    ids = model.tokenize("the quick brown fox")
    assert model.detokenize(ids[1:]) == "the quick brown fox"
    session = model.session()
    empty = session.state_size
    assert empty > 0  # the rings
    session.decode(np.array(ids, np.int32))
    session.decode(np.zeros(40, np.int32), n_logits=0)
    assert session.state_size > empty  # plus the compressed entries
    engine = _core.Engine(str(gguf_files["f32"]), 1)
    assert (engine.n_layer, engine.n_head, engine.n_head_kv, engine.n_ff) == (
        tiny.config.num_hidden_layers, tiny.config.num_attention_heads, 1, tiny.config.moe_intermediate_size)


def test_session_input_errors(gguf_files: dict[str, Path], tiny: TinyDeepseek4) -> None:
    session = _core.Engine(str(gguf_files["f32"]), 1).session(n_ctx=16)
    with pytest.raises(ValueError, match="token id 300 at index 1 is outside the vocabulary"):
        session.decode(np.array([1, tiny.config.vocab_size], np.int32))
    session.decode(np.arange(10, dtype=np.int32), n_logits=0)
    with pytest.raises(ValueError, match="exceed the context of 16"):
        session.decode(np.arange(7, dtype=np.int32))
    with pytest.raises(ValueError, match=r"rewind: position 11 is outside \[0, 10\]"):
        session.rewind(11)
    assert session.n_past == 10


# ---- load-time validation: copies of the F32 file with one header entry patched ----------------------------


def patched(source: Path, tmp_path: Path, tensor: str, *, rename: str = "", ne0: int = 0) -> Path:
    """`source` with tensor `tensor`'s header entry changed: its name (same length) or its first dimension
    (smaller, so the data offsets stay valid and the GGUF reader accepts the file)."""
    data = bytearray(source.read_bytes())
    name = tensor.encode()
    at = data.find(len(name).to_bytes(8, "little") + name) + 8
    assert at > 8, tensor
    entry = at + len(name)  # u32 n_dims | u64 dims[n_dims] | u32 type | u64 offset
    if rename:
        data[at : at + len(name)] = rename.encode()
    if ne0:
        data[entry + 4 : entry + 12] = ne0.to_bytes(8, "little")
    out = tmp_path / "patched.gguf"
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"tensor": "blk.2.attn_compressor_kv.weight", "rename": "blk.2.attn_compressor_kX.weight"},
         "missing tensor 'blk.2.attn_compressor_kv.weight'"),
        ({"tensor": "blk.1.indexer.proj.weight", "ne0": 128},
         re.escape("tensor 'blk.1.indexer.proj.weight': expected shape [256, 8], found [128, 8]")),
        ({"tensor": "blk.0.ffn_gate_tid2eid.weight", "ne0": 1},
         re.escape("tensor 'blk.0.ffn_gate_tid2eid.weight': expected shape [2, 300], found [1, 300]")),
        ({"tensor": "output_hc_base.weight", "rename": "output_hc_bXse.weight"},
         "missing tensor 'output_hc_base.weight'"),
    ],
)
def test_load_validates_tensors(gguf_files: dict[str, Path], tmp_path: Path, patch: dict,
                                message: str) -> None:
    path = patched(gguf_files["f32"], tmp_path, **patch)
    with pytest.raises(flashmtp.GGUFError, match=message) as info:
        _core.Engine(str(path), 1)
    assert str(path) in str(info.value)


def test_load_refuses_unexpected_tensor(gguf_files: dict[str, Path], tmp_path: Path) -> None:
    """compress_ratios patched to call blk.2 (HCA) a window layer: its compressor tensors are then unknown."""
    data = bytearray(gguf_files["f32"].read_bytes())
    key = b"deepseek4.attention.compress_ratios"
    ratios = data.find(key) + len(key) + 4 + 4 + 8  # u32 type (array) | u32 element type | u64 count
    assert np.frombuffer(data, np.int32, 5, ratios).tolist() == [0, 4, 8, 4, 0]
    data[ratios + 8 : ratios + 12] = (0).to_bytes(4, "little")
    path = tmp_path / "window.gguf"
    path.write_bytes(bytes(data))
    message = "unexpected tensor 'blk.2.attn_compressor_kv.weight' for architecture deepseek4"
    with pytest.raises(flashmtp.GGUFError, match=message):
        _core.Engine(str(path), 1)


def with_mtp_block(main: Path, sidecar: Path, out: Path) -> Path:
    """`main` with the sidecar's MTP block appended, as a main file that carries its nextn layer:
    block_count n_main + 1, nextn_predict_layers = 1, per-block arrays of n_main + 1 entries, blk.<n_main>.*
    and the head's hc-head as blk.<n_main>.nextn.hc_head_* (the root output_hc_* are the main model's)."""
    import gguf

    rm, rs = gguf.GGUFReader(main), gguf.GGUFReader(sidecar)
    n_main = int(rm.fields["deepseek4.block_count"].contents())
    writer = gguf.GGUFWriter(out, arch="deepseek4")
    for name, field in rm.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        per_block = field.types[0] == gguf.GGUFValueType.ARRAY and len(field.contents()) == n_main
        if per_block and name in rs.fields:
            field = rs.fields[name]  # the sidecar's arrays count the MTP block too
        value = n_main + 1 if name == "deepseek4.block_count" else field.contents()
        sub_type = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, field.types[0], sub_type)
    writer.add_uint32("deepseek4.nextn_predict_layers", 1)
    block = f"blk.{n_main}."
    for t in list(rm.tensors) + [t for t in rs.tensors if t.name.startswith(block)]:
        writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    for t in rs.tensors:
        if t.name.startswith("output_hc_"):
            name = block + "nextn.hc_head_" + t.name.removeprefix("output_hc_")
            writer.add_tensor(name, np.array(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def test_main_file_carrying_the_mtp_block_loads(gguf_files: dict[str, Path], tmp_path: Path,
                                                tokens: np.ndarray, prefill: np.ndarray) -> None:
    sidecar = mtp_path(gguf_files["f32"])
    path = with_mtp_block(gguf_files["f32"], sidecar, tmp_path / "with-mtp.gguf")
    engine = _core.Engine(str(path), 1)
    assert engine.n_layer == 4  # the MTP block is not a main layer
    np.testing.assert_array_equal(engine.session().decode(tokens), prefill)
    # its head is the sidecar's: the same drafts without a sidecar
    assert engine.has_draft_head
    drafts = []
    for e in (engine, _core.Engine(str(gguf_files["f32"]), 1, str(sidecar))):
        session = e.session()
        session.decode(tokens[:20], 0)
        drafts.append(session.draft(int(tokens[20])))
    np.testing.assert_array_equal(drafts[0], drafts[1])
    with pytest.raises(flashmtp.GGUFError, match="an MTP-only file"):
        _core.Engine(str(sidecar), 1)
