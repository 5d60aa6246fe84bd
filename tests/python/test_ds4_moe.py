"""DeepSeek-V4 MoE FFN layer (csrc/layers/moe.h) through _core.moe_route and _core.MoeLayer.

Oracles:
- routing: a float64 numpy restatement of the rule (score = sqrt(softplus(z)) or sigmoid(z); routed layers
  pick the top k of score + bias, descending, equal values to the lower expert id; hash layers read tid2eid;
  weights = score / (sum + 1e-20) * scale), ids compared exactly and weights within 1e-6 relative (float32
  scores rounded once); and transformers 5.24's DeepseekV4TopKRouter / DeepseekV4HashRouter on the same logits
  (their top-k is unsorted, so picks are compared as sets, weights per expert).
- the layer: transformers' DeepseekV4SparseMoeBlock (F32, eager, one torch thread) with seeded random
  parameters, randomised e_score_correction_bias and tid2eid. F32 weights: max |ours - module| <= 1e-5 of
  max |module|: both sum the same terms in float32 in different orders (at most 2 x 256 terms per output);
  rounding errors of random sign grow like sqrt(n) u, ~1e-6 of the largest term, and no term exceeds the
  output's scale by much here (weights N(0, 1/D)), so 1e-5 holds with room on any CPU (measured 1.6e-7 to
  6e-7), while a wrong expert, weight or clamp is an error of order 1. Q8_0 / Q4_K weights: the module runs
  on the dequantized weights, and
  - as it is: the difference is our matmul rounding its inputs (x for gate/up, the SwiGLU output for down)
    to 8 bits per block (Q8_0X for Q8_0 weights: blocks of 32; Q8_K for Q4_K: blocks of 256), an error of up
    to half a step, step = block max / 127. The SwiGLU output is heavy-tailed (most values near 0), so its
    block max is several times its rms: measured 1.1% (Q8_0) and 1.8% (Q4_K) rms of the output. Bound: 4e-2
    relative rms; a wrong expert, weight or clamp gives errors of order 1;
  - with the same rounding applied to the module's FFN product inputs (F.linear patched): the F32 bound,
    once the roundings that float32 differences can flip (an element of the SwiGLU output at a code
    boundary, a Q8_0X scale at an fp16 boundary) are accounted for, each by its exact effect.
- batch invariance: bitwise, as DESIGN.md requires: every token's output alone on one thread equals its output
  in every batch split (sizes 1..n, every position) on 1 and 2 threads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from flashmtp import _core

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers import DeepseekV4Config  # noqa: E402
from transformers.models.deepseek_v4 import modeling_deepseek_v4 as ds4  # noqa: E402

F32, Q8_0, Q4_K = 0, 8, 12
SIGMOID, SQRT_SOFTPLUS = 2, 4  # llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE values
ACTIVATION_TYPE = {Q8_0: 64, Q4_K: 15}  # what matmul quantizes inputs to: Q8_0X (internal), Q8_K
VOCAB = 50


@pytest.fixture(autouse=True)
def one_torch_thread() -> None:
    torch.set_num_threads(1)


def config(hidden: int = 64, ff: int = 32, n_expert: int = 16, k: int = 4) -> DeepseekV4Config:
    """Layer 0 is a hash layer, layer 1 a routed one."""
    return DeepseekV4Config(
        vocab_size=VOCAB,
        hidden_size=hidden,
        moe_intermediate_size=ff,
        n_routed_experts=n_expert,
        num_experts_per_tok=k,
        n_shared_experts=1,
        num_hidden_layers=2,
        mlp_layer_types=["hash_moe", "moe"],
    )


@dataclass
class Block:
    """transformers' DeepseekV4SparseMoeBlock with the config and layer index that built it. Settings (the
    clamp, k, the scale, hash or routed) are read from the config, never from the module's attributes, which
    are not transformers' interface; parameters and buffers are the module's checkpoint tensors."""

    module: ds4.DeepseekV4SparseMoeBlock
    config: DeepseekV4Config
    layer: int

    @property
    def is_hash(self) -> bool:
        return self.config.mlp_layer_types[self.layer] == "hash_moe"


def make_block(cfg: DeepseekV4Config, layer: int, seed: int) -> Block:
    """The transformers block with seeded random parameters: router rows N(0, 0.5^2) so that scores spread,
    expert rows N(0, 1 / D) so that outputs stay O(1), a selection bias N(0, 0.5^2) of the scores' scale (it
    changes picks: tests check), and tid2eid rows of k distinct experts."""
    block = Block(ds4.DeepseekV4SparseMoeBlock(cfg, layer).float().eval(), cfg, layer)
    g = torch.Generator().manual_seed(seed)
    n_expert, k = cfg.n_routed_experts, cfg.num_experts_per_tok
    with torch.no_grad():
        for name, p in block.module.named_parameters():
            std = 0.5 if name == "gate.weight" else p.shape[-1] ** -0.5
            p.copy_(torch.randn(p.shape, generator=g) * std)
        if block.is_hash:
            block.module.gate.tid2eid.copy_(
                torch.stack([torch.randperm(n_expert, generator=g)[:k] for _ in range(VOCAB)])
            )
        else:
            block.module.gate.e_score_correction_bias.copy_(torch.randn(n_expert, generator=g) * 0.5)
    return block


def raw(values: np.ndarray, weight_type: int) -> np.ndarray:
    """float32 [..., n_cols] -> uint8 [..., row bytes] of weight_type (rows quantized by our reference)."""
    values = np.ascontiguousarray(values, np.float32)
    if weight_type == F32:
        return values.view(np.uint8)
    flat = _core.quantize(weight_type, values.reshape(-1), isa="scalar")
    return flat.reshape(*values.shape[:-1], -1)


def dequantized(values: np.ndarray, weight_type: int) -> np.ndarray:
    """What the kernels read for these float32 values stored as weight_type."""
    if weight_type == F32:
        return np.ascontiguousarray(values, np.float32)
    n = values.size
    return _core.dequantize(weight_type, raw(values, weight_type), n, isa="scalar").reshape(values.shape)


def layer_weights(block: Block) -> dict[str, np.ndarray]:
    """The block's tensors under their GGUF names, in GGUF row order (float32)."""
    ff, m = block.config.moe_intermediate_size, block.module
    gate_up = m.experts.gate_up_proj.detach().numpy()  # [E, 2 I, D]: gate rows, then up rows
    return {
        "gate_inp": m.gate.weight.detach().numpy(),
        "gate_exps": gate_up[:, :ff],
        "up_exps": gate_up[:, ff:],
        "down_exps": m.experts.down_proj.detach().numpy(),
        "gate_shexp": m.shared_experts.gate_proj.weight.detach().numpy(),
        "up_shexp": m.shared_experts.up_proj.weight.detach().numpy(),
        "down_shexp": m.shared_experts.down_proj.weight.detach().numpy(),
    }


def load_dequantized(block: Block, weight_type: int) -> None:
    """Replace the block's FFN weights by what weight_type stores (the router stays float32)."""
    ff, m = block.config.moe_intermediate_size, block.module
    w = {name: torch.from_numpy(dequantized(a, weight_type)) for name, a in layer_weights(block).items()}
    with torch.no_grad():
        m.experts.gate_up_proj.copy_(torch.cat([w["gate_exps"], w["up_exps"]], dim=1))
        assert m.experts.gate_up_proj.shape[1] == 2 * ff
        m.experts.down_proj.copy_(w["down_exps"])
        m.shared_experts.gate_proj.weight.copy_(w["gate_shexp"])
        m.shared_experts.up_proj.weight.copy_(w["up_shexp"])
        m.shared_experts.down_proj.weight.copy_(w["down_shexp"])


def our_layer(block: Block, weight_type: int = F32, n_threads: int = 1) -> _core.MoeLayer:
    cfg, gate = block.config, block.module.gate
    w = layer_weights(block)
    return _core.MoeLayer(
        w["gate_inp"],
        weight_type,
        *(
            raw(w[name], weight_type)
            for name in ("gate_exps", "up_exps", "down_exps", "gate_shexp", "up_shexp", "down_shexp")
        ),
        n_expert_used=cfg.num_experts_per_tok,
        gating=SQRT_SOFTPLUS,
        weights_norm=True,
        weights_scale=cfg.routed_scaling_factor,
        selection_bias=None if block.is_hash else gate.e_score_correction_bias.numpy(),
        tid2eid=gate.tid2eid.numpy().astype(np.int32) if block.is_hash else None,
        swiglu_limit_exp=cfg.swiglu_limit,
        swiglu_limit_shexp=cfg.swiglu_limit,
        n_threads=n_threads,
    )


def inputs(
    cfg: DeepseekV4Config, n_tokens: int, seed: int, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n_tokens, cfg.hidden_size)) * scale).astype(np.float32)
    return x, rng.integers(0, VOCAB, n_tokens).astype(np.int32)


def relative_rms(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(np.mean((out - ref) ** 2) / np.mean(ref**2)))


def bias_changes_picks(block: Block, x: np.ndarray) -> bool:
    """Whether the routed block's selection bias changes some token's experts (else it goes untested)."""
    logits = x @ block.module.gate.weight.detach().numpy().T
    picks = [
        np.sort(_core.moe_route(logits, block.config.num_experts_per_tok, selection_bias=bias)[0], axis=1)
        for bias in (block.module.gate.e_score_correction_bias.numpy(), None)
    ]
    return not np.array_equal(*picks)


def module_output(block: Block, x: np.ndarray, token_ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = block.module(torch.from_numpy(x)[None], torch.from_numpy(token_ids.astype(np.int64))[None])
    return out[0].numpy()


# ---- routing -----------------------------------------------------------------------------------------------


def numpy_route(
    logits: np.ndarray,
    k: int,
    gating: int = SQRT_SOFTPLUS,
    norm: bool = True,
    scale: float = 1.0,
    bias: np.ndarray | None = None,
    tid2eid: np.ndarray | None = None,
    token_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    z = logits.astype(np.float64)
    score = (
        np.sqrt(np.where(z > 20, z, np.log1p(np.exp(z)))) if gating == SQRT_SOFTPLUS else 1 / (1 + np.exp(-z))
    )
    score = score.astype(np.float32)
    if tid2eid is not None:
        ids = tid2eid[token_ids]
    else:
        selection = score + bias if bias is not None else score  # float32 add, as the layer does
        ids = np.argsort(-selection, axis=1, kind="stable")[:, :k]  # stable: equal values keep id order
    w = np.take_along_axis(score, ids, axis=1).astype(np.float64)
    w = w / (w.sum(axis=1, keepdims=True) + 1e-20) * scale if norm else w * scale
    return ids.astype(np.int32), w


@pytest.mark.parametrize("gating", [SQRT_SOFTPLUS, SIGMOID])
@pytest.mark.parametrize("norm", [True, False])
def test_route_matches_numpy(gating: int, norm: bool) -> None:
    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((40, 16)) * 3).astype(np.float32)
    logits[0, :3] = [25.0, 30.0, -40.0]  # past softplus's threshold and deep in its tail
    bias = (rng.standard_normal(16) * 0.1).astype(np.float32)
    ids, w = _core.moe_route(
        logits, 4, gating=gating, weights_norm=norm, weights_scale=1.5, selection_bias=bias
    )
    ref_ids, ref_w = numpy_route(logits, 4, gating, norm, 1.5, bias)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(w, ref_w, rtol=1e-6)


@pytest.mark.parametrize("layer", [0, 1], ids=["hash", "routed"])
def test_route_matches_transformers_routers(layer: int) -> None:
    """DeepseekV4HashRouter / DeepseekV4TopKRouter: they compute the logits from x; we route those."""
    cfg = config()
    block = make_block(cfg, layer, seed=2)
    x, token_ids = inputs(cfg, 32, seed=3)
    assert block.is_hash or bias_changes_picks(block, x)
    with torch.no_grad():
        args = (torch.from_numpy(x)[None],) + (
            (torch.from_numpy(token_ids.astype(np.int64))[None],) if block.is_hash else ()
        )
        logits, ref_w, ref_ids = (t.numpy() for t in block.module.gate(*args))
    ids, w = _core.moe_route(
        logits,
        cfg.num_experts_per_tok,
        weights_scale=cfg.routed_scaling_factor,
        selection_bias=None if block.is_hash else block.module.gate.e_score_correction_bias.numpy(),
        tid2eid=block.module.gate.tid2eid.numpy().astype(np.int32) if block.is_hash else None,
        token_ids=token_ids if block.is_hash else None,
    )
    order, ref_order = np.argsort(ids, axis=1), np.argsort(ref_ids, axis=1)
    np.testing.assert_array_equal(
        np.take_along_axis(ids, order, 1), np.take_along_axis(ref_ids, ref_order, 1)
    )
    np.testing.assert_allclose(
        np.take_along_axis(w, order, 1), np.take_along_axis(ref_w, ref_order, 1), rtol=1e-6
    )


def test_route_all_experts_and_ties() -> None:
    """k = n_expert lists every expert by descending score; equal scores go to the lower expert id."""
    logits = np.array([[0.5, 2.0, -1.0, 2.0, 0.5, 3.0]], np.float32)
    ids, w = _core.moe_route(logits, 6)
    np.testing.assert_array_equal(ids, [[5, 1, 3, 0, 4, 2]])
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
    ids, _ = _core.moe_route(np.zeros((2, 8), np.float32), 3)
    np.testing.assert_array_equal(ids, [[0, 1, 2], [0, 1, 2]])


def test_route_bias_selects_but_does_not_weight() -> None:
    logits = np.array([[2.0, 1.0, 0.0, -1.0]], np.float32)
    bias = np.array([0.0, 0.0, 0.0, 5.0], np.float32)
    ids, w = _core.moe_route(logits, 2, selection_bias=bias)
    np.testing.assert_array_equal(ids, [[3, 0]])  # without the bias: [0, 1]
    ref_ids, ref_w = numpy_route(logits, 2, bias=bias)
    np.testing.assert_array_equal(ref_ids, ids)
    np.testing.assert_allclose(w, ref_w, rtol=1e-6)  # from the unbiased scores
    np.testing.assert_array_equal(_core.moe_route(logits, 2)[0], [[0, 1]])


def test_route_hash_ids() -> None:
    """Hash layers take tid2eid's row in table order, whatever the scores; repeated ids are allowed."""
    tid2eid = np.array([[3, 1], [0, 0], [2, 3]], np.int32)
    logits = np.random.default_rng(4).standard_normal((4, 4)).astype(np.float32)
    token_ids = np.array([2, 0, 1, 2], np.int32)
    ids, w = _core.moe_route(logits, 2, tid2eid=tid2eid, token_ids=token_ids)
    np.testing.assert_array_equal(ids, tid2eid[token_ids])
    ref_ids, ref_w = numpy_route(logits, 2, tid2eid=tid2eid, token_ids=token_ids)
    np.testing.assert_allclose(w, ref_w, rtol=1e-6)


def test_route_bad_inputs() -> None:
    logits = np.zeros((2, 4), np.float32)
    tid2eid = np.array([[0, 1], [2, 3]], np.int32)
    with pytest.raises(ValueError, match="token id 2 at batch position 1 is outside the hash table's 2 rows"):
        _core.moe_route(logits, 2, tid2eid=tid2eid, token_ids=np.array([0, 2], np.int32))
    with pytest.raises(ValueError, match="token id -1"):
        _core.moe_route(logits, 2, tid2eid=tid2eid, token_ids=np.array([-1, 0], np.int32))
    with pytest.raises(ValueError, match=r"tid2eid\[1\]\[0\] = 7 is not an expert id"):
        _core.moe_route(
            logits, 2, tid2eid=np.array([[0, 1], [7, 3]], np.int32), token_ids=np.array([1, 1], np.int32)
        )
    with pytest.raises(ValueError, match="needs the token ids"):
        _core.moe_route(logits, 2, tid2eid=tid2eid)
    with pytest.raises(ValueError, match="5 experts per token of 4"):
        _core.moe_route(logits, 5)
    with pytest.raises(ValueError, match="unknown expert gating function 3"):
        _core.moe_route(logits, 2, gating=3)


# ---- the layer ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [5, 25, 45])
@pytest.mark.parametrize("layer", [0, 1], ids=["hash", "routed"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_layer_matches_transformers_f32(layer: int, n_threads: int, seed: int) -> None:
    cfg = config()
    block = make_block(cfg, layer, seed=seed + layer)
    # x scaled so that some gate / up values pass the clamp (10): checked below, else the test proves less.
    x, token_ids = inputs(cfg, 24, seed=seed + 2, scale=4.0)
    w = layer_weights(block)
    gate, up = (np.einsum("td,eid->tei", x, w[name]) for name in ("gate_exps", "up_exps"))
    assert (gate > cfg.swiglu_limit).any() and (np.abs(up) > cfg.swiglu_limit).any()
    if not block.is_hash:
        assert bias_changes_picks(block, x)
    ref = module_output(block, x, token_ids)
    out = our_layer(block, F32, n_threads).forward(x, token_ids)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("n_tokens", [1, 5])
def test_layer_every_expert_picked(n_tokens: int) -> None:
    """k = n_expert: every expert runs on every token (a lone token's experts all share one job)."""
    cfg = config(n_expert=6, k=6)
    block = make_block(cfg, 1, seed=17)
    x, token_ids = inputs(cfg, n_tokens, seed=18)
    ref = module_output(block, x, token_ids)
    assert np.abs(our_layer(block).forward(x, token_ids) - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("n_tokens", [1, 5])
def test_layer_repeated_hash_ids(n_tokens: int) -> None:
    """A tid2eid row may name an expert twice: transformers then runs it twice for the token (both slots
    weighted), and so do we."""
    cfg = config(n_expert=8, k=3)
    block = make_block(cfg, 0, seed=19)
    pairs = torch.randint(0, 8, (VOCAB, 2), generator=torch.Generator().manual_seed(20))
    with torch.no_grad():
        block.module.gate.tid2eid.copy_(pairs[:, [0, 1, 0]])  # rows [a, b, a]
    x, token_ids = inputs(cfg, n_tokens, seed=21)
    ref = module_output(block, x, token_ids)
    assert np.abs(our_layer(block).forward(x, token_ids) - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("weight_type, hidden, ff", [(Q8_0, 64, 32), (Q4_K, 256, 256)], ids=["q8_0", "q4_k"])
@pytest.mark.parametrize("layer", [0, 1], ids=["hash", "routed"])
def test_layer_quantized_matches_transformers_on_dequantized_weights(
    weight_type: int, hidden: int, ff: int, layer: int
) -> None:
    cfg = config(hidden=hidden, ff=ff, n_expert=8, k=2)
    block = make_block(cfg, layer, seed=11)
    ours = our_layer(block, weight_type)
    load_dequantized(block, weight_type)
    x, token_ids = inputs(cfg, 16, seed=12)
    ref = module_output(block, x, token_ids)
    out = ours.forward(x, token_ids)
    assert relative_rms(out, ref) <= 4e-2


# Both sides' SwiGLU outputs (the down products' inputs) agree within F32_BOUND of their block's max |h|, so
# an element's code position v = 127 h / max|h| differs by at most 2 * 127 * F32_BOUND between them (h and
# the max each move): an element closer than that to a rounding boundary (|v| mod 1 = 0.5) may take the
# other code. Q8_0X also rounds its scale max|h| / 127 to fp16: one within F32_BOUND (relative) of an fp16
# rounding boundary may take the neighbouring fp16 value, which moves every element of its block.
F32_BOUND = 1e-5
FLIP_MARGIN = 2 * 127 * F32_BOUND
ACTIVATION_BLOCK = {Q8_0: 32, Q4_K: 256}


def possible_flips(rows: np.ndarray, rounded: np.ndarray, weight_type: int) -> list[tuple[int, np.ndarray]]:
    """(row, other values - these values [cols]) for every rounding of `rows` [n, cols] (rounded: what our
    activation format holds for them) that our float32 arithmetic could have taken the other way: an element
    within FLIP_MARGIN of its code boundary (one step toward the other side), or a Q8_0X scale within
    F32_BOUND of its fp16 boundary (the block's codes times the other fp16 scale)."""
    block = ACTIVATION_BLOCK[weight_type]
    n, cols = rows.shape
    h = rows.astype(np.float64).reshape(n, cols // block, block)
    amax = np.abs(h).max(-1, keepdims=True)
    v = np.abs(h) * 127 / np.where(amax > 0, amax, 1)
    step = np.abs(rounded.astype(np.float64)).reshape(h.shape).max(-1, keepdims=True) / 127
    other = np.where(v - np.floor(v) < 0.5, 1.0, -1.0) * np.sign(h) * step
    flips = []
    for r, b, j in zip(*np.nonzero(np.abs(v - np.floor(v) - 0.5) < FLIP_MARGIN), strict=True):
        change = np.zeros(cols)
        change[b * block + j] = other[r, b, j]
        flips.append((int(r), change))
    if weight_type == Q8_0:  # Q8_0X: fp16 scales
        scale = amax[..., 0].astype(np.float32) / np.float32(127)  # as the quantizer computes it
        held = scale.astype(np.float16)
        toward = np.where(held.astype(np.float32) < scale, np.float16(np.inf), np.float16(-np.inf))
        neighbour = np.nextafter(held, toward)
        boundary = (held.astype(np.float64) + neighbour.astype(np.float64)) / 2
        for r, b in zip(*np.nonzero(np.abs(scale - boundary) <= F32_BOUND * scale), strict=True):
            codes = np.round(rounded[r, b * block : (b + 1) * block].astype(np.float64) / float(held[r, b]))
            change = np.zeros(cols)
            change[b * block : (b + 1) * block] = codes * (float(neighbour[r, b]) - float(held[r, b]))
            flips.append((int(r), change))
    return flips


def best_flip_subset(residual: np.ndarray, flips: list[np.ndarray]) -> np.ndarray:
    """The sum of the subset of `flips` (each a change of the output row) closest to `residual` (max norm)."""
    assert len(flips) <= 16, f"{len(flips)} roundings near a boundary in one token"
    best = np.zeros_like(residual)
    for mask in range(1, 1 << len(flips)):
        total = sum(f for i, f in enumerate(flips) if mask >> i & 1)
        if np.abs(residual - total).max() < np.abs(residual - best).max():
            best = total
    return best


def crossing(weight_type: int, case: str) -> tuple[np.ndarray, np.ndarray]:
    """Two activation rows a hair apart on either side of a rounding boundary of our quantizer: an element
    at code position +-10.5 or -20.5 (case "code"), or, for Q8_0X, the block max at an fp16 scale boundary."""
    block = ACTIVATION_BLOCK[weight_type]
    row = np.random.default_rng(0).standard_normal(2 * block)
    amax = np.abs(row[:block]).max()
    here, there = row.copy(), row.copy()
    if case == "code":
        for j, position in ((3, 10.5), (7, -20.5), (block + 1, 10.5)):
            scale = amax if j < block else np.abs(row[block:]).max()
            here[j], there[j] = ((position + side * FLIP_MARGIN / 4) * scale / 127 for side in (-1, 1))
    else:
        low = np.float16(amax / 127)
        boundary = (float(low) + float(np.nextafter(low, np.float16(np.inf)))) / 2
        j = int(np.abs(row[:block]).argmax())
        here[j], there[j] = (
            np.sign(row[j]) * boundary * 127 * (1 + side * F32_BOUND / 4) for side in (-1, 1)
        )
    return here.astype(np.float32), there.astype(np.float32)


@pytest.mark.parametrize(
    "weight_type, case",
    [(Q8_0, "code"), (Q8_0, "scale"), (Q4_K, "code")],
    ids=["q8_0x-code", "q8_0x-scale", "q8_k-code"],
)
def test_possible_flips_explain_a_crossing(weight_type: int, case: str) -> None:
    """The flips the next test accounts for are what our quantizer does when a value crosses a rounding
    boundary: the values our format holds for two rows on either side of boundaries differ by a subset of
    the flips listed for one of them, to float32 rounding (half an ulp of the block max per value)."""
    activation_type = ACTIVATION_TYPE[weight_type]
    here, there = crossing(weight_type, case)
    held = [
        _core.dequantize(activation_type, _core.quantize(activation_type, r), r.size).astype(np.float64)
        for r in (here, there)
    ]
    changes = [
        change for _, change in possible_flips(here[None], held[0][None].astype(np.float32), weight_type)
    ]
    difference = held[1] - held[0]
    assert np.abs(difference).max() > 0  # a code (or a scale) did change
    explained = best_flip_subset(difference, changes)
    assert np.abs(difference - explained).max() <= 2**-23 * np.abs(here).max()


@pytest.mark.parametrize("seed", [11, 21, 31])
@pytest.mark.parametrize("weight_type, hidden, ff", [(Q8_0, 64, 32), (Q4_K, 256, 256)], ids=["q8_0", "q4_k"])
@pytest.mark.parametrize("layer", [0, 1], ids=["hash", "routed"])
def test_layer_quantized_matches_transformers_with_rounded_activations(
    weight_type: int, hidden: int, ff: int, layer: int, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The module on the dequantized weights, each FFN product's input rows rounded through the activation
    format our matmul uses (the router's float32 product excepted, as in ours): what remains is float32
    summation order, so the F32 bound holds, once rounding flips are accounted for.

    Both sides round the same x for the gate / up products (same codes), but the SwiGLU output that feeds
    down is computed by each side in its own order, so an element near a rounding boundary can take the
    neighbouring code in ours (a change of one step x the down column x the routing weight, ~1e-3: it
    happened on an Intel Xeon at seed 11). Every element within FLIP_MARGIN of a boundary is recorded with
    the output change its flip would make; per token, the subset of those flips that best explains
    ours - module is taken out, and the rest must be within the F32 bound."""
    cfg = config(hidden=hidden, ff=ff, n_expert=8, k=2)
    block = make_block(cfg, layer, seed=seed)
    ours = our_layer(block, weight_type)
    load_dequantized(block, weight_type)
    x, token_ids = inputs(cfg, 16, seed=seed + 1)
    m, activation_type = block.module, ACTIVATION_TYPE[weight_type]
    with torch.no_grad():
        gate_args = (torch.from_numpy(x)[None],) + (
            (torch.from_numpy(token_ids.astype(np.int64))[None],) if block.is_hash else ()
        )
        _, route_weights, route_ids = (t.numpy() for t in m.gate(*gate_args))
    token_of_row = {row.tobytes(): t for t, row in enumerate(x)}
    flips: list[list[np.ndarray]] = [[] for _ in x]  # per token: output changes of possible code flips
    rows_tokens: list[int] = []  # the tokens of the latest gate / up product's rows, in row order
    linear = torch.nn.functional.linear
    expert_down = m.experts.down_proj

    def rounded_linear(inp: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        nonlocal rows_tokens
        if w is m.gate.weight:
            return linear(inp, w, b)
        rows = inp.detach().numpy().reshape(-1, inp.shape[-1])
        rounded = np.stack(
            [_core.dequantize(activation_type, _core.quantize(activation_type, r), r.size) for r in rows]
        )
        if (
            w is m.shared_experts.down_proj.weight
            or w.untyped_storage().data_ptr() == expert_down.untyped_storage().data_ptr()
        ):
            shared = w is m.shared_experts.down_proj.weight
            expert = None if shared else (w.storage_offset() - expert_down.storage_offset()) // w.numel()
            down = w.detach().double().numpy()
            for r, change in possible_flips(rows, rounded, weight_type):
                t = rows_tokens[r]
                weight = 1.0 if shared else float(route_weights[t][route_ids[t] == expert].sum())
                flips[t].append(weight * (down @ change))
        else:  # a gate / up product: its rows are tokens of x, which the down product's rows follow
            rows_tokens = [token_of_row[row.tobytes()] for row in rows]
        return linear(torch.from_numpy(rounded.reshape(inp.shape).astype(np.float32)), w, b)

    monkeypatch.setattr(torch.nn.functional, "linear", rounded_linear)
    ref = module_output(block, x, token_ids)
    out = ours.forward(x, token_ids)
    residual = out.astype(np.float64) - ref
    explained = np.stack([best_flip_subset(residual[t], flips[t]) for t in range(len(x))])
    assert np.abs(residual - explained).max() <= F32_BOUND * np.abs(ref).max()


@pytest.mark.parametrize(
    "weight_type, hidden, ff", [(F32, 64, 32), (Q8_0, 64, 32), (Q4_K, 256, 256)], ids=["f32", "q8_0", "q4_k"]
)
@pytest.mark.parametrize("layer", [0, 1], ids=["hash", "routed"])
def test_layer_batch_invariant(weight_type: int, hidden: int, ff: int, layer: int) -> None:
    cfg = config(hidden=hidden, ff=ff, n_expert=8, k=3)
    block = make_block(cfg, layer, seed=13)
    layers = {n: our_layer(block, weight_type, n_threads=n) for n in (1, 2)}
    x, token_ids = inputs(cfg, 9, seed=14)
    alone = np.stack([layers[1].forward(x[t : t + 1], token_ids[t : t + 1])[0] for t in range(len(x))])
    for n_threads, lay in layers.items():
        for batch in range(1, len(x) + 1):
            for start in range(batch):  # every position of a token within a batch, through the split offset
                parts = [np.arange(len(x))[:start]] + [
                    np.arange(len(x))[i : i + batch] for i in range(start, len(x), batch)
                ]
                for rows in (p for p in parts if len(p)):
                    out = lay.forward(x[rows], token_ids[rows])
                    assert np.array_equal(out.view(np.uint32), alone[rows].view(np.uint32)), (
                        n_threads,
                        batch,
                        rows,
                    )


def test_layer_bad_inputs() -> None:
    cfg = config(n_expert=8, k=2)
    block = make_block(cfg, 0, seed=15)
    lay = our_layer(block)
    x, _ = inputs(cfg, 2, seed=16)
    with pytest.raises(ValueError, match=f"token id {VOCAB} at batch position 1 is outside"):
        lay.forward(x, np.array([0, VOCAB], np.int32))
    with pytest.raises(ValueError, match="needs the token ids"):
        lay.forward(x)
    with pytest.raises(ValueError, match="x has 32 columns, the layer's width is 64"):
        lay.forward(x[:, :32], np.array([0, 1], np.int32))
    w = layer_weights(block)
    with pytest.raises(ValueError, match="ffn_down_exps is 64 x 64, expected 64 x 32"):
        _core.MoeLayer(
            w["gate_inp"],
            F32,
            raw(w["gate_exps"], F32),
            raw(w["up_exps"], F32),
            raw(np.zeros((8, 64, 64), np.float32), F32),
            raw(w["gate_shexp"], F32),
            raw(w["up_shexp"], F32),
            raw(w["down_shexp"], F32),
            n_expert_used=2,
        )
