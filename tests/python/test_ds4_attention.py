"""DeepSeek-V4 attention layer (csrc/layers/ds4_attention.*) against its oracle, transformers 5.24's
``DeepseekV4Attention`` (window, HCA and CSA layer types) built from a tiny ``DeepseekV4Config`` with seeded
random parameters (sinks and ape included), float32, eager attention, driven as ``DeepseekV4Model`` drives it:
its rotary embedding, its sliding-window mask and a ``DynamicCache`` carrying the V4 cache layers across
calls. Tolerance 1e-5 of the output's largest magnitude: float32 throughout, the only differences are
summation orders and the kernels' exp (~2 ulp).

Batch invariance (DESIGN.md) is checked bitwise: a token's output is the same bits whether the sequence
reaches it in one prefill, in chunks or token by token, and at any thread count. That holds for every layer
type, compressed ones included, because an entry is pooled from the same projections by the same code
whichever call completes its window.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flashmtp import _core  # noqa: E402

KIND = {"sliding_attention": "window", "heavily_compressed_attention": "hca",
        "compressed_sparse_attention": "csa"}
LAYER_TYPES = list(KIND)
N_TOKENS = 70  # crosses 8 HCA windows, 17 CSA windows and many sliding windows
CHUNKS = [7, 13, 1, 3, 8, 16, 5, 17]  # sums to N_TOKENS; boundaries inside and across compressor windows
TOLERANCE = 1e-5
F32 = 0
Q8_0 = 8


def make_config(layer_type: str, **overrides):
    from transformers import DeepseekV4Config

    settings = dict(
        vocab_size=32, hidden_size=64, num_hidden_layers=1, num_attention_heads=4, head_dim=32,
        partial_rotary_factor=0.5, q_lora_rank=32, o_groups=2, o_lora_rank=16, layer_types=[layer_type],
        mlp_layer_types=["moe"],
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
        index_n_heads=8, index_head_dim=16, index_topk=3, sliding_window=8, max_position_embeddings=256,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                         "beta_fast": 32, "beta_slow": 1},
        attn_implementation="eager",
    )
    settings.update(overrides)
    return DeepseekV4Config(**settings)


def make_attention(layer_type: str, seed: int = 0, **overrides):
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4Attention

    config = make_config(layer_type, **overrides)
    attention = DeepseekV4Attention(config, 0).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in attention.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=generator))
            elif name.endswith("position_bias") or name == "sinks":
                p.copy_(torch.randn(p.shape, generator=generator))
            else:  # linear weights scaled so activations stay O(1)
                p.copy_(torch.randn(p.shape, generator=generator) / p.shape[-1] ** 0.5)
    return config, attention


def oracle(config, attention, x: torch.Tensor, chunks: list[int]) -> np.ndarray:
    """transformers' output for x [n, hidden] fed in `chunks`, as DeepseekV4Model runs a layer: its rotary
    embedding, its sliding-window mask and a DynamicCache (whose V4 layers carry window keys, compressor
    buffers, overlap state and entries between calls)."""
    from transformers.cache_utils import DynamicCache
    from transformers.masking_utils import create_sliding_window_causal_mask
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4RotaryEmbedding

    rotary = DeepseekV4RotaryEmbedding(config)
    cache = DynamicCache(config=config)
    outputs, start = [], 0
    with torch.no_grad():
        for n in chunks:
            xs = x[None, start:start + n]
            positions = torch.arange(start, start + n)[None]
            mask = create_sliding_window_causal_mask(config=config, inputs_embeds=xs, attention_mask=None,
                                                     cache=cache, position_ids=positions)
            rope = {kind: rotary(xs, position_ids=positions, layer_type=kind)
                    for kind in ("main", "compress")}
            out, _ = attention(xs, rope, positions, mask, cache=cache)
            outputs.append(out[0])
            start += n
    return torch.cat(outputs).numpy()


def native(config, attention, quant: int = F32, n_threads: int = 1, keep_f32: tuple[str, ...] = ()):
    """A _core.Ds4Attention with the module's parameters; matrices stored as `quant` (Q8_0 rows quantized by
    _core.quantize) except those named in keep_f32. Returns it and the float32 parameters the module must
    hold to be its exact oracle."""
    layer_type = config.layer_types[0]
    kind = KIND[layer_type]
    params = {name: p.detach().float().numpy() for name, p in attention.named_parameters()}
    matrix_names = {
        "q_a": "q_a_proj.weight", "q_b": "q_b_proj.weight", "kv": "kv_proj.weight", "o_a": "o_a_proj.weight",
        "o_b": "o_b_proj.weight", "compressor.kv": "compressor.kv_proj.weight",
        "compressor.gate": "compressor.gate_proj.weight", "indexer.kv": "compressor.indexer.kv_proj.weight",
        "indexer.gate": "compressor.indexer.gate_proj.weight",
        "indexer.q_b": "compressor.indexer.q_b_proj.weight",
        "indexer.proj": "compressor.indexer.scorer.weights_proj.weight",
    }
    vector_names = {
        "q_a_norm": "q_a_norm.weight", "kv_norm": "kv_norm.weight", "sinks": "sinks",
        "compressor.ape": "compressor.position_bias", "compressor.norm": "compressor.kv_norm.weight",
        "indexer.ape": "compressor.indexer.position_bias",
        "indexer.norm": "compressor.indexer.kv_norm.weight",
    }
    matrices, dequantized = {}, {}
    for ours, theirs in matrix_names.items():
        if theirs not in params:
            continue
        w = np.ascontiguousarray(params[theirs])
        if quant == F32 or ours in keep_f32:
            matrices[ours] = (F32, w.view(np.uint8))
            continue
        raw = np.stack([_core.quantize(quant, row) for row in w])
        matrices[ours] = (quant, raw)
        dequantized[theirs] = np.stack([_core.dequantize(quant, r, w.shape[1]) for r in raw])
    vectors = {ours: params[theirs] for ours, theirs in vector_names.items() if theirs in params}
    rope = config.rope_parameters["main" if kind == "window" else "compress"]
    n_rot = config.qk_rope_head_dim
    if kind == "window":
        freqs = _core.ds4_rope_freqs(n_rot, rope["rope_theta"])
    else:
        freqs = _core.ds4_rope_freqs_yarn(n_rot, rope["rope_theta"], rope["factor"],
                                          rope["original_max_position_embeddings"], rope["beta_fast"],
                                          rope["beta_slow"])
    shape = {
        "kind": kind, "n_embd": config.hidden_size, "n_head": config.num_attention_heads,
        "head_dim": config.head_dim, "n_rot": n_rot, "q_lora_rank": config.q_lora_rank,
        "o_groups": config.o_groups, "o_lora_rank": config.o_lora_rank, "window": config.sliding_window,
        "eps": config.rms_norm_eps,
    }
    if kind != "window":
        shape["compress_ratio"] = config.compress_rates[layer_type]
    if kind == "csa":
        shape.update(index_n_head=config.index_n_heads, index_head_dim=config.index_head_dim,
                     index_top_k=config.index_topk)
    layer = _core.Ds4Attention(shape, matrices, vectors, np.asarray(freqs, np.float32), n_threads)
    return layer, dequantized


def run_native(layer, x: np.ndarray, chunks: list[int]) -> np.ndarray:
    layer.reset()
    outputs, start = [], 0
    for n in chunks:
        outputs.append(layer.forward(x[start:start + n]))
        start += n
    return np.concatenate(outputs)


def inputs(seed: int = 1) -> torch.Tensor:
    return torch.randn(N_TOKENS, 64, generator=torch.Generator().manual_seed(seed))


def assert_close(ours: np.ndarray, theirs: np.ndarray, tolerance: float = TOLERANCE) -> None:
    error = np.abs(ours - theirs).max() / np.abs(theirs).max()
    assert error <= tolerance, f"max |ours - oracle| / max |oracle| = {error:.2e} > {tolerance:.0e}"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def v4_flash_rope_config():
    """V4-Flash's rotary settings: 64 of 512 channels rotate, compress theta 160000, YaRN x16 over 65536."""
    from transformers import DeepseekV4Config

    return DeepseekV4Config(
        hidden_size=64, num_hidden_layers=1, num_attention_heads=4, head_dim=512, partial_rotary_factor=0.125,
        layer_types=["compressed_sparse_attention"], mlp_layer_types=["moe"], compress_rope_theta=160000.0,
        rope_parameters={"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 65536,
                         "beta_fast": 32, "beta_slow": 1},
    )


@pytest.mark.parametrize("make", [lambda: make_config("compressed_sparse_attention"), v4_flash_rope_config],
                         ids=["tiny", "v4-flash"])
def test_rope_freqs_match_transformers(make):
    """Both frequency sets, the YaRN one included, as transformers computes them (within 1 ulp of float32),
    for the tiny test config and V4-Flash's settings: the public rope initialisers DeepseekV4RotaryEmbedding
    calls per rope type (its own default one for "main", modeling_rope_utils' YaRN for "compress"), which
    also give the cos/sin scaling (mscale): 1.0 for both, so there is nothing to mirror."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4RotaryEmbedding

    config = make()
    main, compress = config.rope_parameters["main"], config.rope_parameters["compress"]
    assert (main["rope_type"], compress["rope_type"]) == ("default", "yarn")
    default_rope = DeepseekV4RotaryEmbedding.compute_default_rope_parameters
    main_freqs, main_scaling = default_rope(config, layer_type="main")
    compress_freqs, compress_scaling = ROPE_INIT_FUNCTIONS["yarn"](config, None, layer_type="compress")
    n_rot = config.qk_rope_head_dim
    ours_main = np.asarray(_core.ds4_rope_freqs(n_rot, main["rope_theta"]), np.float32)
    ours_compress = np.asarray(_core.ds4_rope_freqs_yarn(
        n_rot, compress["rope_theta"], compress["factor"], compress["original_max_position_embeddings"],
        compress["beta_fast"], compress["beta_slow"]), np.float32)
    np.testing.assert_array_max_ulp(ours_main, main_freqs.numpy(), maxulp=1)
    np.testing.assert_array_max_ulp(ours_compress, compress_freqs.numpy(), maxulp=1)
    assert main_scaling == compress_scaling == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_matches_transformers_prefill_chunked_decode(layer_type, seed):
    """One prefill of 70 tokens, chunked prefill and token-by-token decode, each against transformers run the
    same way, within 1e-5; and our three runs bit-identical to each other (batch invariance)."""
    config, attention = make_attention(layer_type, seed=seed)
    layer, _ = native(config, attention)
    x = inputs(seed + 1)
    runs = {"prefill": [N_TOKENS], "chunked": CHUNKS, "decode": [1] * N_TOKENS}
    ours = {}
    for name, chunks in runs.items():
        ours[name] = run_native(layer, x.numpy(), chunks)
        assert_close(ours[name], oracle(config, attention, x, chunks))
    np.testing.assert_array_equal(ours["chunked"], ours["prefill"])
    np.testing.assert_array_equal(ours["decode"], ours["prefill"])
    if layer_type != "sliding_attention":
        assert layer.n_entries == N_TOKENS // config.compress_rates[layer_type]


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_heads_past_one_kernel_block(layer_type):
    """12 heads: a task scores a key against up to 8 heads in one kernel call, so here a token's heads split
    into a full block and a partial one. Against transformers, and decode bit-identical to chunks."""
    config, attention = make_attention(layer_type, num_attention_heads=12, o_groups=3)
    layer, _ = native(config, attention, n_threads=2)
    x = inputs()
    chunked = run_native(layer, x.numpy(), CHUNKS)
    assert_close(chunked, oracle(config, attention, x, CHUNKS))
    np.testing.assert_array_equal(run_native(layer, x.numpy(), [1] * N_TOKENS), chunked)


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_thread_count_invariance(layer_type):
    """Bit-identical output with 1 and 3 threads (each (token, head) is reduced by one task)."""
    config, attention = make_attention(layer_type)
    x = inputs().numpy()
    one, _ = native(config, attention, n_threads=1)
    three, _ = native(config, attention, n_threads=3)
    np.testing.assert_array_equal(run_native(one, x, CHUNKS), run_native(three, x, CHUNKS))


@pytest.mark.parametrize("layer_type", LAYER_TYPES)
def test_q8_0_weights(layer_type):
    """Q8_0 weight matrices against transformers holding the dequantized weights. Our matmul also quantizes
    the activations to 8 bits (Q8_0 x Q8_0 dots), so the bound is looser: 2e-2. The indexer's matrices stay
    float32: its top-k is discontinuous, and 8-bit rounding of its scores would flip near-ties between
    entries, which is a different selection, not an error to bound."""
    config, attention = make_attention(layer_type)
    indexer = ("indexer.kv", "indexer.gate", "indexer.q_b", "indexer.proj")
    layer, dequantized = native(config, attention, quant=Q8_0, keep_f32=indexer)
    with torch.no_grad():
        for name, p in attention.named_parameters():
            if name in dequantized:
                p.copy_(torch.from_numpy(dequantized[name]))
    x = inputs()
    assert_close(run_native(layer, x.numpy(), CHUNKS), oracle(config, attention, x, CHUNKS), 2e-2)



def test_csa_indexer_past_one_score_chunk():
    """1100 tokens: 275 CSA entries, past the indexer's 256 entries per task (ds4_attention.cpp), so a decode
    step's scores split over several tasks and threads. Against transformers with the same chunks, and bitwise
    equal to one prefill."""
    config, attention = make_attention("compressed_sparse_attention", max_position_embeddings=2048)
    layer, _ = native(config, attention, n_threads=2)
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((1100, config.hidden_size), np.float32))
    chunks = [1090] + [1] * 10
    stepped = run_native(layer, x.numpy(), chunks)
    assert layer.n_entries == 275
    assert_close(stepped, oracle(config, attention, x, chunks))
    fresh, _ = native(config, attention, n_threads=2)
    np.testing.assert_array_equal(run_native(fresh, x.numpy(), [1100]), stepped)

def test_csa_selection_matters():
    """With index_topk 3 the indexer must drop entries: the output differs from the same layer attending to
    every visible entry (top-k >= all), so the selection path is exercised, not bypassed."""
    config, attention = make_attention("compressed_sparse_attention")
    x = inputs()
    reference = oracle(config, attention, x, [N_TOKENS])
    attention.compressor.indexer.index_topk = N_TOKENS
    assert np.abs(reference - oracle(config, attention, x, [N_TOKENS])).max() > 1e-3


def test_bad_shape_is_refused():
    config, attention = make_attention("sliding_attention")
    layer, _ = native(config, attention)
    with pytest.raises(ValueError, match="x must be float32"):
        layer.forward(np.zeros((2, 63), np.float32))


def test_bad_weight_is_refused():
    """A matrix of the wrong size fails at construction with its name and both shapes."""
    config, attention = make_attention("heavily_compressed_attention")
    with torch.no_grad():
        attention.o_a_proj.weight = torch.nn.Parameter(attention.o_a_proj.weight[:-1].clone())
    with pytest.raises(ValueError, match=r"o_a is \[31, 64\], expected \[32, 64\]"):
        native(config, attention)
