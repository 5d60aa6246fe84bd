"""DeepSeek-V4 hyper-connections (csrc/layers/hyper.h) through _core.HcMixer, _core.HcHead, _core.hc_expand.

Oracle: transformers 5.24's own modules, instantiated from a tiny DeepseekV4Config (hc_mult 4,
hc_sinkhorn_iters 20) with seeded random parameters, F32, eager, one thread: DeepseekV4HyperConnection
(post, comb, the collapsed block input; pre from the module's first lines, as forward consumes it),
DeepseekV4HyperHead, DeepseekV4Model.forward's expansion of the embeddings, and DeepseekV4DecoderLayer.forward
itself with its attention and MoE replaced by fixed stand-in functions (so the mixing formula and comb's
orientation are the layer's own). F16 / BF16 fn is compared against the module holding the same rounded
values.

Tolerance: |ours - oracle| <= 1e-6 * max|oracle| per output (pre, post, comb, x, streams, h). Both sides
compute in fp32 but round differently (our RMS sums squares in double; torch's linear, sigmoid, exp and matmul
are vectorised). Measured worst cases: pre 1.9e-7, post 2.8e-7, comb 2.7e-7 (Sinkhorn's 20 rounds amplify
nothing: each divides by sums near 1), x 1.8e-7, head 1.3e-7, streams after a layer 4.8e-7. Relative to
max|oracle|, not per element: x and h are sums of signed terms, and near-zero elements carry the absolute
error of the larger terms. Batch invariance is checked bitwise, as DESIGN.md requires.

Random parameters are sized so nothing saturates: fn ~ N(0, 1 / (n D)) makes fn . RMS(X) ~ N(0, 1); scales in
[0.5, 2], bases ~ N(0, 0.5), so sigmoid and softmax arguments stay within a few units.
"""

from __future__ import annotations

import numpy as np
import pytest
from flashmtp import _core

torch = pytest.importorskip("torch")
mdv4 = pytest.importorskip("transformers.models.deepseek_v4.modeling_deepseek_v4")

F32, F16, Q8_0, BF16 = 0, 1, 8, 30
N_STREAMS, ITERS = 4, 20
RTOL = 1e-6


def config(hidden: int):
    """The tiny config with the norm's eps apart from hc_eps (1e-6), so that swapping them shows: 1e-4 moves
    the RMS of streams whose mean square is ~5 by ~1e-5 relative, 10x the tolerance."""
    from flashmtp.testing.tiny_deepseek4 import tiny_config

    return tiny_config(hidden_size=hidden, hc_mult=N_STREAMS, hc_sinkhorn_iters=ITERS, rms_norm_eps=1e-4)


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def randomise_mixer(module, gen: torch.Generator) -> None:
    n_cols = module.fn.shape[1]
    with torch.no_grad():
        module.fn.copy_(torch.randn(module.fn.shape, generator=gen) / n_cols ** 0.5)
        module.base.copy_(torch.randn(module.base.shape, generator=gen) * 0.5)
        module.scale.copy_(torch.rand(3, generator=gen) * 1.5 + 0.5)


def randomise_head(module, gen: torch.Generator) -> None:
    n_cols = module.hc_fn.shape[1]
    with torch.no_grad():
        module.hc_fn.copy_(torch.randn(module.hc_fn.shape, generator=gen) / n_cols ** 0.5)
        module.hc_base.copy_(torch.randn(module.hc_base.shape, generator=gen) * 0.5)
        module.hc_scale.copy_(torch.rand(1, generator=gen) * 1.5 + 0.5)


def random_streams(n_tokens: int, hidden: int, gen: torch.Generator) -> torch.Tensor:
    """[n_tokens, n, D] with a different magnitude per stream, as after a few layers."""
    scales = torch.tensor([0.5, 1.0, 2.0, 4.0])[:N_STREAMS].view(1, N_STREAMS, 1)
    return torch.randn(n_tokens, N_STREAMS, hidden, generator=gen) * scales


def fn_raw(fn: torch.Tensor, fn_type: int) -> tuple[np.ndarray, torch.Tensor]:
    """fn as raw bytes of fn_type, and the float32 values those bytes hold (what the oracle must use)."""
    values = fn.detach().numpy().astype(np.float32)
    raw = _core.quantize(fn_type, values.ravel()).reshape(values.shape[0], -1)
    held = _core.dequantize(fn_type, raw.ravel(), values.size).reshape(values.shape)
    return raw, torch.from_numpy(held)


# The modules' parameters (fn, base, scale; hc_fn, hc_base, hc_scale) are their checkpoint tensors; every
# other value comes from the config that built them, never from the modules' attributes.


def ours_mixer(module, cfg, fn_type: int = F32, n_threads: int = 1) -> _core.HcMixer:
    raw, held = fn_raw(module.fn, fn_type)
    with torch.no_grad():
        module.fn.copy_(held)
    return _core.HcMixer(fn_type, raw, module.base.detach().numpy(), module.scale.detach().numpy(), N_STREAMS,
                         cfg.hidden_size, cfg.hc_sinkhorn_iters, cfg.hc_eps, cfg.rms_norm_eps,
                         n_threads=n_threads)


def ours_head(module, cfg, fn_type: int = F32, n_threads: int = 1) -> _core.HcHead:
    raw, held = fn_raw(module.hc_fn, fn_type)
    with torch.no_grad():
        module.hc_fn.copy_(held)
    return _core.HcHead(fn_type, raw, module.hc_base.detach().numpy(), module.hc_scale.detach().numpy(),
                        N_STREAMS, cfg.hidden_size, cfg.hc_eps, cfg.rms_norm_eps, n_threads=n_threads)


def oracle_pre(module, cfg, streams: torch.Tensor) -> torch.Tensor:
    """pre [.., n] as DeepseekV4HyperConnection.forward computes it before consuming it (its first lines:
    unweighted RMS norm of the flattened streams, the first n rows of fn, sigmoid, + hc_eps), written out
    here because forward returns only post, comb and the collapsed input."""
    flat = streams.flatten(-2).float()
    flat = flat * torch.rsqrt(flat.square().mean(-1, keepdim=True) + cfg.rms_norm_eps)
    mix = torch.nn.functional.linear(flat, module.fn.float())[..., :N_STREAMS]
    return torch.sigmoid(mix * module.scale[0] + module.base[:N_STREAMS]) + cfg.hc_eps


def assert_close(ours: np.ndarray, oracle: torch.Tensor, what: str) -> float:
    expected = oracle.detach().numpy()
    assert ours.shape == expected.shape, what
    error = float(np.max(np.abs(ours - expected)) / np.max(np.abs(expected)))
    assert error <= RTOL, f"{what}: relative error {error:.3g} > {RTOL}"
    return error


@pytest.mark.parametrize("hidden", [64, 300])
@pytest.mark.parametrize("fn_type", [F32, F16, BF16])
def test_mixer_matches_transformers(hidden: int, fn_type: int) -> None:
    gen = torch.Generator().manual_seed(hidden + fn_type)
    cfg = config(hidden)
    module = mdv4.DeepseekV4HyperConnection(cfg)
    randomise_mixer(module, gen)
    ours = ours_mixer(module, cfg, fn_type)
    streams = random_streams(5, hidden, gen)
    with torch.no_grad():
        post, comb, collapsed = module(streams.unsqueeze(0))
        pre = oracle_pre(module, cfg, streams)
    weights, x = ours.pre(streams.numpy())
    n = N_STREAMS
    assert_close(weights[:, :n], pre, "pre")
    assert_close(weights[:, n:2 * n], post[0], "post")
    assert_close(weights[:, 2 * n:].reshape(-1, n, n), comb[0], "comb")
    assert_close(x, collapsed[0], "collapsed x")
    # Sinkhorn ends on a column normalisation: columns sum to s / (s + eps). Rows only approach 1 (20 rounds
    # leave ~4e-3 when an entry is small), in the oracle as here, so they are not asserted.
    comb_ours = weights[:, 2 * n:].reshape(-1, n, n)
    assert np.allclose(comb_ours.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("fn_type", [F32, F16, BF16])
def test_head_matches_transformers(fn_type: int) -> None:
    hidden = 128
    gen = torch.Generator().manual_seed(7 + fn_type)
    cfg = config(hidden)
    module = mdv4.DeepseekV4HyperHead(cfg)
    randomise_head(module, gen)
    ours = ours_head(module, cfg, fn_type)
    streams = random_streams(6, hidden, gen)
    with torch.no_grad():
        expected = module(streams.unsqueeze(0))[0]
    assert_close(ours(streams.numpy()), expected, "hc head")


def test_expand_matches_model_forward() -> None:
    """DeepseekV4Model.forward: inputs_embeds.unsqueeze(2).expand(-1, -1, hc_mult, -1)."""
    embd = torch.randn(3, 64, generator=torch.Generator().manual_seed(3))
    expected = embd.unsqueeze(0).unsqueeze(2).expand(-1, -1, N_STREAMS, -1)[0]
    assert np.array_equal(_core.hc_expand(embd.numpy(), N_STREAMS), expected.numpy())


class StandInAttention(torch.nn.Module):
    """A fixed function in place of attention: the mixing is under test, not the block."""

    def forward(self, h, **kwargs):
        return torch.tanh(h) * 1.5 + 0.25 * h, None


class StandInMoe(torch.nn.Module):
    def forward(self, h, input_ids=None):
        return torch.sin(h) - 0.5 * h


def stand_in_block(norm, fn, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = fn(norm(torch.from_numpy(x)))
    return (out[0] if isinstance(out, tuple) else out).numpy()


def test_decoder_layer_mixing_step() -> None:
    """Both mixers of a block around stand-in attention / MoE, against DeepseekV4DecoderLayer.forward itself
    (comb consumed transposed: X'_k = post_k y + sum_j comb[j, k] X_j). D 300: hc_post's 256-element chunks
    end in a partial one."""
    hidden = 300
    cfg = config(hidden)
    gen = torch.Generator().manual_seed(11)
    layer = mdv4.DeepseekV4DecoderLayer(cfg, layer_idx=2)
    layer.self_attn, layer.mlp = StandInAttention(), StandInMoe()
    randomise_mixer(layer.attn_hc, gen)
    randomise_mixer(layer.ffn_hc, gen)
    with torch.no_grad():
        layer.input_layernorm.weight.copy_(torch.rand(hidden, generator=gen) + 0.5)
        layer.post_attention_layernorm.weight.copy_(torch.rand(hidden, generator=gen) + 0.5)
    attn_hc, ffn_hc = ours_mixer(layer.attn_hc, cfg), ours_mixer(layer.ffn_hc, cfg)
    streams = random_streams(4, hidden, gen)
    with torch.no_grad():
        expected = layer(streams.unsqueeze(0), input_ids=torch.zeros(1, 4, dtype=torch.long))[0]

    s = streams.numpy()
    weights, x = attn_hc.pre(s)
    s = attn_hc.post(weights, stand_in_block(layer.input_layernorm, layer.self_attn, x), s)
    weights, x = ffn_hc.pre(s)
    s = ffn_hc.post(weights, stand_in_block(layer.post_attention_layernorm, layer.mlp, x), s)
    assert_close(s, expected, "streams after one decoder layer")


def test_post_orientation_is_comb_transposed() -> None:
    """A hand-made non-symmetric comb: X'_k = post_k y + sum_j comb[j, k] X_j (not comb[k, j])."""
    hidden, n = 32, N_STREAMS
    cfg = config(hidden)
    module = mdv4.DeepseekV4HyperConnection(cfg)
    randomise_mixer(module, torch.Generator().manual_seed(1))
    ours = ours_mixer(module, cfg)
    rng = np.random.default_rng(0)
    streams = rng.standard_normal((1, n, hidden), dtype=np.float32)
    y = rng.standard_normal((1, hidden), dtype=np.float32)
    comb = np.arange(n * n, dtype=np.float32).reshape(n, n)
    post = np.array([0.5, 1.0, 1.5, 2.0], np.float32)
    weights = np.concatenate([np.ones(n, np.float32), post, comb.ravel()])[None]
    expected = post[:, None] * y[0][None, :] + comb.T.astype(np.float64) @ streams[0]
    assert np.allclose(ours.post(weights, y, streams)[0], expected, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_batch_invariance_bitwise(n_threads: int) -> None:
    """A token's weights, block input, new streams and head output are bit-identical alone, at any position
    of a batch, and with 1 or 2 threads."""
    hidden, n_tokens = 256, 9
    gen = torch.Generator().manual_seed(5)
    cfg = config(hidden)
    module, head_module = mdv4.DeepseekV4HyperConnection(cfg), mdv4.DeepseekV4HyperHead(cfg)
    randomise_mixer(module, gen)
    randomise_head(head_module, gen)
    mixer = ours_mixer(module, cfg, n_threads=n_threads)
    head = ours_head(head_module, cfg, n_threads=n_threads)
    alone_mixer, alone_head = ours_mixer(module, cfg), ours_head(head_module, cfg)
    streams = random_streams(n_tokens, hidden, gen).numpy()
    block_out = np.random.default_rng(1).standard_normal((n_tokens, hidden), dtype=np.float32)

    weights, x = mixer.pre(streams)
    new_streams = mixer.post(weights, block_out, streams)
    h = head(streams)
    for t in range(n_tokens):
        one = streams[t:t + 1]
        w1, x1 = alone_mixer.pre(one)
        assert np.array_equal(w1, weights[t:t + 1]) and np.array_equal(x1, x[t:t + 1]), f"token {t}: pre"
        post_alone = alone_mixer.post(w1, block_out[t:t + 1], one)
        assert np.array_equal(post_alone, new_streams[t:t + 1]), f"token {t}: post"
        assert np.array_equal(alone_head(one), h[t:t + 1]), f"token {t}: head"
    # the same token in a different batch at a different position
    shuffled = streams[::-1].copy()
    weights_r, x_r = mixer.pre(shuffled)
    assert np.array_equal(weights_r[::-1], weights) and np.array_equal(x_r[::-1], x)


def test_bad_input_is_refused_with_clear_errors() -> None:
    hidden, n = 64, N_STREAMS
    rows, cols = (2 + n) * n, n * hidden
    fn = np.zeros((rows, cols), np.float32).view(np.uint8)
    base, scale = np.zeros(rows, np.float32), np.ones(3, np.float32)

    def mixer(**changes):
        args = dict(fn_type=F32, fn_raw=fn, base=base, scale=scale, n_streams=n, n_embd=hidden,
                    sinkhorn_iters=ITERS, hc_eps=1e-6, norm_eps=1e-6)
        args.update(changes)
        return _core.HcMixer(**args)

    with pytest.raises(ValueError, match=r"fn is \[24, 256\], expected \[24, 512\]"):
        mixer(n_embd=128)
    with pytest.raises(ValueError, match=r"fn is \[23, 256\], expected \[24, 256\]"):
        mixer(fn_raw=fn[:-1])
    with pytest.raises(ValueError, match="fn has type q8_0, expected f32, f16 or bf16"):
        mixer(fn_type=Q8_0, fn_raw=np.zeros((rows, cols // 32 * 34), np.uint8))
    with pytest.raises(ValueError, match="hc_mult 0 outside"):
        mixer(n_streams=0)
    with pytest.raises(ValueError, match="hc_sinkhorn_iters 0 is below 1"):
        mixer(sinkhorn_iters=0)
    with pytest.raises(ValueError, match="base has 23 values and scale 3, expected 24 and 3"):
        mixer(base=base[:-1])
    ok = mixer()
    with pytest.raises(ValueError, match=r"streams must be \[n_tokens, 4, 64\], got \[2, 3, 64\]"):
        ok.pre(np.zeros((2, 3, hidden), np.float32))
    streams = np.zeros((2, n, hidden), np.float32)
    weights, x = ok.pre(streams)
    with pytest.raises(ValueError, match=r"weights must be \[2, 24\]"):
        ok.post(weights[:1], x, streams)
    with pytest.raises(ValueError, match=r"block_out must be \[2, 64\]"):
        ok.post(weights, x[:, :32], streams)
    with pytest.raises(ValueError, match=r"hc head: fn is \[24, 256\], expected \[4, 256\]"):
        _core.HcHead(F32, fn, base[:n], scale[:1], n, hidden, 1e-6, 1e-6)
