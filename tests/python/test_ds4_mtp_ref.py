"""The PyTorch MTP reference (flashmtp.testing.ds4_mtp_ref), the oracle of the MTP head, on the tiny random
DeepSeek-V4 (flashmtp.testing.tiny_deepseek4: sliding window 8, random mtp.0.* tensors).

Oracles: shared/spec/deepseek4.md "MTP" re-implemented here by hand in float64 for the input step
(enorm/hnorm, e_proj + h_proj) and the output (hc-head, shared_head_norm, main output matrix); transformers'
own DeepseekV4ForCausalLM for the main model's final streams; transformers' DeepseekV4DecoderLayer (the
same class, configured as a window layer with routed MoE) for the block.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from flashmtp.testing.ds4_mtp_ref import (  # noqa: E402
    Deepseek4MtpReference,
    draft_reference,
    main_final_streams,
)
from flashmtp.testing.tiny_deepseek4 import TinyDeepseek4, make_tiny_deepseek4  # noqa: E402
from transformers import DeepseekV4ForCausalLM  # noqa: E402
from transformers.models.deepseek_v4.modeling_deepseek_v4 import (  # noqa: E402
    DeepseekV4DecoderLayer,
    DeepseekV4TopKRouter,
)

T = 20  # > 2 sliding windows of 8


@pytest.fixture(scope="module")
def tiny() -> TinyDeepseek4:
    torch.set_num_threads(1)
    return make_tiny_deepseek4(seed=0)


@pytest.fixture(scope="module")
def model(tiny: TinyDeepseek4) -> DeepseekV4ForCausalLM:
    m = DeepseekV4ForCausalLM(tiny.config)
    m.load_state_dict(tiny.state)
    return m.eval()


@pytest.fixture(scope="module")
def mtp(tiny: TinyDeepseek4) -> Deepseek4MtpReference:
    return Deepseek4MtpReference(tiny.config, tiny.mtp, tiny.state["model.embed_tokens.weight"],
                                 tiny.state["lm_head.weight"]).eval()


@pytest.fixture(scope="module")
def ids(tiny: TinyDeepseek4) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).integers(0, tiny.config.vocab_size, T + 1))


def rms_w(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def test_final_streams_reproduce_the_models_logits(model: DeepseekV4ForCausalLM, ids: torch.Tensor) -> None:
    with torch.no_grad():
        streams = main_final_streams(model, ids[None, :T])
        logits = model(ids[None, :T]).logits[0]
        ours = model.lm_head(model.model.norm(model.model.hc_head(streams[None])))[0]
    assert streams.shape == (T, model.config.hc_mult, model.config.hidden_size)
    assert torch.equal(ours, logits)


def test_block_is_transformers_window_layer_with_routed_moe(mtp: Deepseek4MtpReference,
                                                            tiny: TinyDeepseek4) -> None:
    """transformers' own layer class, built from a config that makes it a window layer (no compressor
    tensors) with a learned router: what the block is, read from its config and checkpoint tensors."""
    assert type(mtp.block) is DeepseekV4DecoderLayer
    assert mtp.config.layer_types == ["sliding_attention"] and mtp.config.mlp_layer_types == ["moe"]
    assert not [name for name, _ in mtp.block.named_parameters() if "compressor" in name]
    assert isinstance(mtp.block.mlp.gate, DeepseekV4TopKRouter)
    saved = mtp.release_state()
    assert saved.keys() == tiny.mtp.keys()
    assert all(torch.equal(saved[k], tiny.mtp[k]) for k in saved)


def test_input_step_and_head_match_the_spec_in_float64(
        mtp: Deepseek4MtpReference, model: DeepseekV4ForCausalLM, tiny: TinyDeepseek4,
        ids: torch.Tensor) -> None:
    cfg, w = tiny.config, {k.removeprefix("mtp.0."): v.double().numpy() for k, v in tiny.mtp.items()}
    eps, n = cfg.rms_norm_eps, cfg.hc_mult
    embed = tiny.state["model.embed_tokens.weight"].double().numpy()
    lm_head = tiny.state["lm_head.weight"].double().numpy()
    with torch.no_grad():
        streams = main_final_streams(model, ids[None, :T])
        x = mtp.input_streams(streams, ids[1:])
        logits, out = mtp(streams, ids[1:])
    X = streams.double().numpy()

    e = rms_w(embed[ids[1:].numpy()], w["enorm.weight"], eps)  # [T, D]
    h = rms_w(X, w["hnorm.weight"], eps)  # [T, n, D]
    eh = np.concatenate([w["e_proj.weight"], w["h_proj.weight"]], axis=1)  # [D, 2D]: the GGUF's eh_proj
    expected = np.stack([np.concatenate([e, h[:, k]], axis=1) @ eh.T for k in range(n)], axis=1)
    np.testing.assert_allclose(x.double().numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())

    Y = out.double().numpy()
    flat = Y.reshape(T, -1)
    flat = flat / np.sqrt((flat * flat).mean(-1, keepdims=True) + eps)
    pre = 1 / (1 + np.exp(-(flat @ w["hc_head_fn"].T * w["hc_head_scale"] + w["hc_head_base"]))) + cfg.hc_eps
    hidden = (pre[:, :, None] * Y).sum(1)
    expected_logits = rms_w(hidden, w["norm.weight"], eps) @ lm_head.T
    np.testing.assert_allclose(logits.double().numpy(), expected_logits, rtol=0,
                               atol=1e-5 * np.abs(expected_logits).max())


@pytest.mark.parametrize("bumped_at", [3, 9])
def test_block_attention_is_causal_and_windowed(mtp: Deepseek4MtpReference, model: DeepseekV4ForCausalLM,
                                                ids: torch.Tensor, bumped_at: int) -> None:
    """Perturbing position p's streams by 0.5 changes the block's output at positions p..p+window-1 (window
    8) and nowhere else.

    "Nowhere else" is up to float32 rounding, not bitwise: transformers runs each routed expert on the batch
    of tokens routed to it, and torch's matmul rounds a row differently with another number of rows (torch
    2.13 on AMD Zen 4: a 1-row product differs from the same row among 2 to 20). When the bump changes
    position p's experts, the other positions' experts see other batches, and their outputs move by a few
    ulps: bounded by the suite's float32 bound, 1e-5 of the output's max. Inside the window the bump moves
    every position by at least 2e-2 of the max (measured on tiny seeds 0-2 at p = 3 and 9: attention
    weights of ~1/8 on a change of 0.5): 1e-3 keeps the two apart by 20x and 100x."""
    with torch.no_grad():
        streams = main_final_streams(model, ids[None, :T])
        _, out = mtp(streams, ids[1:])
        bumped = streams.clone()
        bumped[bumped_at] += 0.5
        _, out2 = mtp(bumped, ids[1:])
    change = ((out2 - out).abs().flatten(1).amax(1) / out.abs().max()).numpy()
    window = range(bumped_at, bumped_at + model.config.sliding_window)
    assert all(change[t] >= 1e-3 for t in window), change
    assert all(change[t] <= 1e-5 for t in range(T) if t not in window), change


def test_draft_reference_is_recursive_greedy(mtp: Deepseek4MtpReference, model: DeepseekV4ForCausalLM,
                                             ids: torch.Tensor) -> None:
    prompt = ids[:T]
    with torch.no_grad():
        drafts = draft_reference(model, mtp, prompt, 3)
        assert drafts[:1] == draft_reference(model, mtp, prompt.tolist(), 1)
        streams = main_final_streams(model, prompt[None])
        t_next = int(model(prompt[None]).logits[0, -1].argmax())
        next_ids = torch.cat([prompt[1:], torch.tensor([t_next])])
        logits, out = mtp(streams, next_ids)
        assert drafts[0] == int(logits[-1].argmax())
        # Step 2 by hand: one more MTP position fed with its own output streams and the first draft.
        logits2, _ = mtp(torch.cat([streams, out[-1:]]), torch.cat([next_ids, torch.tensor(drafts[:1])]))
        assert drafts[1] == int(logits2[-1].argmax())
    assert len(drafts) == 3 and all(0 <= d < model.config.vocab_size for d in drafts)
