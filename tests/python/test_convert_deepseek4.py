"""`flashmtp convert` on tiny random DeepSeek-V4 checkpoints (flashmtp.testing.tiny_deepseek4: every layer
type, hash and routed layers, an MTP block), read back with flashmtp's own GGUF reader.

Oracles:
- tensor values: transformers' own parameters (``DeepseekV4ForCausalLM.state_dict()``) and the synthetic MTP
  tensors, after the layout transforms documented in flashmtp/convert/deepseek4.py; F32 must be bit-exact,
  quantized tensors byte-equal to ``flashmtp._core.quantize`` of those values (the kernels' quantizers are
  bit-exact to ggml's, checked by test_quants.py);
- names, shapes and types: the table of shared/spec/gguf.md, transcribed below for V4-Flash's dimensions;
- metadata: the config's values under llama.cpp's key names (spec/gguf.md);
- spellings: DeepSeek's release names, transformers' module names and what transformers' save_pretrained
  writes must give byte-identical files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")

from flashmtp import _core  # noqa: E402
from flashmtp.cli import main as cli_main  # noqa: E402
from flashmtp.convert import RECIPES, ConvertError, convert, mtp_path  # noqa: E402
from flashmtp.convert.checkpoint import Checkpoint  # noqa: E402
from flashmtp.convert.deepseek4 import Deepseek4Params, main_tensor_specs, mtp_tensor_specs  # noqa: E402
from flashmtp.gguf import GGUFFile  # noqa: E402
from flashmtp.testing.tiny_deepseek4 import CHAT_TEMPLATE, TinyDeepseek4, make_tiny_deepseek4  # noqa: E402

T = gguf.GGMLQuantizationType
SPELLINGS = ("release", "save_pretrained", "modules")


@pytest.fixture(scope="module")
def tiny() -> TinyDeepseek4:
    return make_tiny_deepseek4(seed=0)


@pytest.fixture(scope="module")
def checkpoints(tiny: TinyDeepseek4, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    # Same directory name under different parents: general.name (the directory's name) matches too.
    return {spelling: tiny.write(root / spelling / "tiny-v4", spelling) for spelling in SPELLINGS}


@pytest.fixture(scope="module")
def f32_files(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = tmp_path_factory.mktemp("out") / "tiny-f32.gguf"
    written = convert(checkpoints["release"], out, "f32", progress=False)
    assert [w.path for w in written] == [out, mtp_path(out)]
    return out, mtp_path(out)


# -- the oracle: transformers' parameters, laid out as llama.cpp's deepseek4 files hold them --------------

_BLOCK_FROM_MODULE = {
    "attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_sinks.weight": "self_attn.sinks", "attn_q_a.weight": "self_attn.q_a_proj.weight",
    "attn_q_a_norm.weight": "self_attn.q_a_norm.weight", "attn_q_b.weight": "self_attn.q_b_proj.weight",
    "attn_kv.weight": "self_attn.kv_proj.weight", "attn_kv_a_norm.weight": "self_attn.kv_norm.weight",
    "attn_output_a.weight": "self_attn.o_a_proj.weight", "attn_output_b.weight": "self_attn.o_b_proj.weight",
    "attn_compressor_kv.weight": "self_attn.compressor.kv_proj.weight",
    "attn_compressor_gate.weight": "self_attn.compressor.gate_proj.weight",
    "attn_compressor_ape.weight": "self_attn.compressor.position_bias",
    "attn_compressor_norm.weight": "self_attn.compressor.kv_norm.weight",
    "indexer.proj.weight": "self_attn.compressor.indexer.scorer.weights_proj.weight",
    "indexer.attn_q_b.weight": "self_attn.compressor.indexer.q_b_proj.weight",
    "indexer_compressor_kv.weight": "self_attn.compressor.indexer.kv_proj.weight",
    "indexer_compressor_gate.weight": "self_attn.compressor.indexer.gate_proj.weight",
    "indexer_compressor_ape.weight": "self_attn.compressor.indexer.position_bias",
    "indexer_compressor_norm.weight": "self_attn.compressor.indexer.kv_norm.weight",
    "hc_attn_fn.weight": "attn_hc.fn", "hc_attn_base.weight": "attn_hc.base",
    "hc_attn_scale.weight": "attn_hc.scale", "hc_ffn_fn.weight": "ffn_hc.fn",
    "hc_ffn_base.weight": "ffn_hc.base", "hc_ffn_scale.weight": "ffn_hc.scale",
    "ffn_gate_inp.weight": "mlp.gate.weight", "exp_probs_b.bias": "mlp.gate.e_score_correction_bias",
    "ffn_gate_tid2eid.weight": "mlp.gate.tid2eid",
    "ffn_gate_shexp.weight": "mlp.shared_experts.gate_proj.weight",
    "ffn_up_shexp.weight": "mlp.shared_experts.up_proj.weight",
    "ffn_down_shexp.weight": "mlp.shared_experts.down_proj.weight",
}
_BLOCK_FROM_RELEASE = {  # the MTP block exists in release names only
    "attn_norm.weight": "attn_norm.weight", "ffn_norm.weight": "ffn_norm.weight",
    "attn_sinks.weight": "attn.attn_sink",
    "attn_q_a.weight": "attn.wq_a.weight", "attn_q_a_norm.weight": "attn.q_norm.weight",
    "attn_q_b.weight": "attn.wq_b.weight", "attn_kv.weight": "attn.wkv.weight",
    "attn_kv_a_norm.weight": "attn.kv_norm.weight", "attn_output_a.weight": "attn.wo_a.weight",
    "attn_output_b.weight": "attn.wo_b.weight", "hc_attn_fn.weight": "hc_attn_fn",
    "hc_attn_base.weight": "hc_attn_base", "hc_attn_scale.weight": "hc_attn_scale",
    "hc_ffn_fn.weight": "hc_ffn_fn", "hc_ffn_base.weight": "hc_ffn_base",
    "hc_ffn_scale.weight": "hc_ffn_scale",
    "ffn_gate_inp.weight": "ffn.gate.weight",
    "exp_probs_b.bias": "ffn.gate.bias", "ffn_gate_shexp.weight": "ffn.shared_experts.w1.weight",
    "ffn_up_shexp.weight": "ffn.shared_experts.w3.weight",
    "ffn_down_shexp.weight": "ffn.shared_experts.w2.weight",
}


def expected_main(tiny: TinyDeepseek4) -> dict[str, np.ndarray]:
    s = {k: v.numpy() for k, v in tiny.state.items()}
    c = tiny.config
    out = {"token_embd.weight": s["model.embed_tokens.weight"], "output_norm.weight": s["model.norm.weight"],
           "output.weight": s["lm_head.weight"], "output_hc_fn.weight": s["model.hc_head.hc_fn"],
           "output_hc_base.weight": s["model.hc_head.hc_base"],
           "output_hc_scale.weight": s["model.hc_head.hc_scale"]}
    n_mid = c.moe_intermediate_size
    for il in range(c.num_hidden_layers):
        prefix = f"model.layers.{il}."
        for gguf_name, module_name in _BLOCK_FROM_MODULE.items():
            if prefix + module_name in s:
                out[f"blk.{il}.{gguf_name}"] = s[prefix + module_name]
        gate_up = s[prefix + "mlp.experts.gate_up_proj"]  # [E, 2I, D]: gate rows, then up rows
        out[f"blk.{il}.ffn_gate_exps.weight"] = gate_up[:, :n_mid]
        out[f"blk.{il}.ffn_up_exps.weight"] = gate_up[:, n_mid:]
        out[f"blk.{il}.ffn_down_exps.weight"] = s[prefix + "mlp.experts.down_proj"]
    return out


def expected_mtp(tiny: TinyDeepseek4) -> dict[str, np.ndarray]:
    m = {k.removeprefix("mtp.0."): v.numpy() for k, v in tiny.mtp.items()}
    b = f"blk.{tiny.config.num_hidden_layers}."
    out = {b + g: m[r] for g, r in _BLOCK_FROM_RELEASE.items()}
    n_expert = tiny.config.n_routed_experts
    for gguf_name, w in (("ffn_gate_exps", "w1"), ("ffn_up_exps", "w3"), ("ffn_down_exps", "w2")):
        out[b + gguf_name + ".weight"] = np.stack([m[f"ffn.experts.{e}.{w}.weight"] for e in range(n_expert)])
    out[b + "nextn.eh_proj.weight"] = np.concatenate([m["e_proj.weight"], m["h_proj.weight"]], axis=1)
    out[b + "nextn.enorm.weight"] = m["enorm.weight"]
    out[b + "nextn.hnorm.weight"] = m["hnorm.weight"]
    out[b + "nextn.shared_head_norm.weight"] = m["norm.weight"]
    for part in ("fn", "base", "scale"):
        out[f"output_hc_{part}.weight"] = m[f"hc_head_{part}"]
    return out


def tensor_class(name: str) -> str:
    if name.endswith("tid2eid.weight"):
        return "index"
    if name.endswith("_exps.weight"):
        return "experts"
    kept = ("norm.weight", "hc_", "sinks", "_ape", "exp_probs_b", "ffn_gate_inp")
    if any(k in name for k in kept) or name.startswith("output_hc"):
        return "float"
    return "matrix"


# -- tests ---------------------------------------------------------------------------------------------------


def test_f32_round_trip_is_bit_exact(tiny: TinyDeepseek4, f32_files: tuple[Path, Path]) -> None:
    """Every tensor of both files equals transformers' parameter (or the MTP tensor) bit for bit, in shape and
    type, and nothing else is in the files."""
    for path, expected in zip(f32_files, (expected_main(tiny), expected_mtp(tiny)), strict=True):
        with GGUFFile(path) as f:
            assert sorted(t.name for t in f.tensors) == sorted(expected)
            for name, want in expected.items():
                info = f.tensor_info(name)
                assert info.shape == want.shape, name
                assert info.type_name == ("i32" if tensor_class(name) == "index" else "f32"), name
                got = f.tensor(name)
                if info.type_name == "i32":
                    np.testing.assert_array_equal(got, want.astype(np.int32), err_msg=name)
                else:
                    assert got.tobytes() == np.ascontiguousarray(want, np.float32).tobytes(), name


def test_sidecar_shares_embeddings_and_output_with_the_main_file(f32_files: tuple[Path, Path]) -> None:
    main, sidecar = f32_files
    with GGUFFile(main) as m, GGUFFile(sidecar) as s:
        n_main = m.metadata["deepseek4.block_count"]
        assert n_main == 4 and "deepseek4.nextn_predict_layers" not in m.metadata
        assert s.metadata["deepseek4.block_count"] == n_main + 1
        assert s.metadata["deepseek4.nextn_predict_layers"] == 1
        shared = ["token_embd.weight", "output_norm.weight", "output.weight"]
        assert s.metadata["flashmtp.mtp.main_model_tensors"] == shared
        names = {t.name for t in s.tensors}
        assert not names & set(shared)
        assert all(n.startswith(f"blk.{n_main}.") or n.startswith("output_hc_") for n in names)
        assert "blk.0.attn_norm.weight" not in names  # llama.cpp's test for an MTP-only file
        assert s.tensor_info(f"blk.{n_main}.nextn.eh_proj.weight").dims == (2 * 256, 256)
        assert list(s.metadata["deepseek4.swiglu_clamp_exp"]) == [10.0] * (n_main + 1)
        for key, value in m.metadata.items():  # everything else is the main file's
            if key.startswith(("tokenizer.", "general.")) or key in ("deepseek4.block_count",
                                                                    "deepseek4.swiglu_clamp_exp",
                                                                    "deepseek4.swiglu_clamp_shexp"):
                continue
            np.testing.assert_array_equal(s.metadata[key], value, err_msg=key)


def test_metadata_has_llama_cpp_keys_and_config_values(f32_files: tuple[Path, Path]) -> None:
    with GGUFFile(f32_files[0]) as f:
        meta = f.metadata
    want = {
        "general.architecture": "deepseek4", "general.name": "tiny-v4", "general.file_type": 0,
        "deepseek4.vocab_size": 300, "deepseek4.context_length": 256, "deepseek4.embedding_length": 256,
        "deepseek4.embedding_length_out": 1024, "deepseek4.block_count": 4,
        "deepseek4.attention.head_count": 4,
        "deepseek4.attention.head_count_kv": 1, "deepseek4.attention.key_length": 64,
        "deepseek4.attention.value_length": 64, "deepseek4.attention.q_lora_rank": 48,
        "deepseek4.attention.sliding_window": 8, "deepseek4.attention.output_group_count": 2,
        "deepseek4.attention.output_lora_rank": 32, "deepseek4.attention.compress_ratios": [0, 4, 8, 4, 0],
        "deepseek4.attention.compress_rope_freq_base": 160000.0, "deepseek4.attention.indexer.head_count": 8,
        "deepseek4.attention.indexer.key_length": 32, "deepseek4.attention.indexer.top_k": 4,
        "deepseek4.rope.dimension_count": 16, "deepseek4.rope.freq_base": 10000.0,
        "deepseek4.rope.scaling.type": "yarn", "deepseek4.rope.scaling.factor": 4.0,
        "deepseek4.rope.scaling.original_context_length": 64, "deepseek4.rope.scaling.yarn_beta_fast": 32.0,
        "deepseek4.rope.scaling.yarn_beta_slow": 1.0, "deepseek4.expert_count": 4,
        "deepseek4.expert_used_count": 2, "deepseek4.expert_feed_forward_length": 96,
        "deepseek4.expert_shared_count": 1, "deepseek4.expert_weights_scale": 1.5,
        "deepseek4.expert_weights_norm": True, "deepseek4.expert_gating_func": 4,
        "deepseek4.swiglu_clamp_exp": [10.0] * 4, "deepseek4.swiglu_clamp_shexp": [10.0] * 4,
        "deepseek4.hyper_connection.count": 4, "deepseek4.hyper_connection.sinkhorn_iterations": 20,
        "deepseek4.hash_layer_count": 2, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "deepseek-v3",
        "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.chat_template": CHAT_TEMPLATE,
    }
    for key, value in want.items():
        np.testing.assert_array_equal(meta[key], value, err_msg=key)
    assert meta["deepseek4.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6, rel=1e-6)
    assert meta["deepseek4.hyper_connection.epsilon"] == pytest.approx(1e-6, rel=1e-6)

    tokens, types = meta["tokenizer.ggml.tokens"], list(meta["tokenizer.ggml.token_type"])
    assert len(tokens) == 300 and tokens[:2] == ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"]
    assert types[:2] == [gguf.TokenType.CONTROL] * 2
    assert tokens[299] == "[PAD299]" and types[299] == gguf.TokenType.UNUSED
    # Added tokens not marked special: CONTROL if they look special (llama.cpp's rule), else USER_DEFINED
    # with the metaspace stored as a space.
    assert tokens[280:283] == ["<｜tool▁calls▁begin｜>", "<think>", " user "]
    kind = gguf.TokenType
    assert types[280:283] == [kind.CONTROL, kind.USER_DEFINED, kind.USER_DEFINED]
    assert types.count(gguf.TokenType.NORMAL) == 278  # the trained vocabulary: 280 minus the 2 specials
    assert len(meta["tokenizer.ggml.merges"]) > 0


@pytest.mark.parametrize("recipe", ["bf16", "q8_0", "q4_k", "q3_k", "mxfp4"])
def test_recipe_types_and_values(recipe: str, tiny: TinyDeepseek4, checkpoints: dict[str, Path],
                                 tmp_path: Path) -> None:
    """Each tensor class gets the recipe's type (rows that do not split into blocks fall back: 48-wide rows
    of attn_q_b to F16, 96-wide expert down rows from K-quants to Q5_0 / Q4_0), and every quantized tensor
    holds exactly flashmtp's quantization of the F32 values."""
    experts, matrices = {"bf16": (T.BF16, T.BF16), "q8_0": (T.Q8_0, T.Q8_0), "q4_k": (T.Q4_K, T.Q8_0),
                         "q3_k": (T.Q3_K, T.Q8_0), "mxfp4": (T.MXFP4, T.Q8_0)}[recipe]
    fallback = {T.Q8_0: T.F16, T.Q4_K: T.Q5_0, T.Q3_K: T.Q4_0}
    out = tmp_path / f"tiny-{recipe}.gguf"
    convert(checkpoints["release"], out, recipe, progress=False)
    for path, expected in ((out, expected_main(tiny)), (mtp_path(out), expected_mtp(tiny))):
        with GGUFFile(path) as f:
            assert f.metadata["general.file_type"] == {"bf16": 32, "q8_0": 7, "q4_k": 15, "q3_k": 12,
                                                       "mxfp4": 38}[recipe]
            for name, values in expected.items():
                info = f.tensor_info(name)
                cls = tensor_class(name)
                want = {"float": T.F32, "index": T.I32, "experts": experts, "matrix": matrices}[cls]
                block = gguf.GGML_QUANT_SIZES[want][0]
                if values.shape[-1] % block:
                    want = fallback[want]
                assert info.type == want, f"{name}: {info.type_name}, want {want.name}"
                if want in (T.F32, T.I32):
                    continue
                raw = _core.quantize(int(want), np.ascontiguousarray(values, np.float32).reshape(-1))
                assert f.tensor(name).tobytes() == raw.tobytes(), name
                dequantized = _core.dequantize(int(want), raw, values.size)
                np.testing.assert_array_equal(f.dequantize(name).reshape(-1), dequantized, err_msg=name)


def test_every_spelling_gives_the_same_files(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """DeepSeek's release names with DeepSeek's config.json, transformers' module names and transformers'
    save_pretrained output (both with transformers' config.json) convert to byte-identical files, whatever
    the number of quantization threads."""
    images = {}
    for spelling, directory in checkpoints.items():
        out = tmp_path / spelling / "x.gguf"
        out.parent.mkdir()
        # One quantization thread here, one per core elsewhere: the bytes must not depend on the split.
        convert(directory, out, "q4_k", progress=False, threads=1 if spelling == "modules" else 0)
        images[spelling] = (out.read_bytes(), mtp_path(out).read_bytes())
    assert images["save_pretrained"] == images["release"]
    assert images["modules"] == images["release"]


def test_release_spelling_is_what_transformers_loads(tiny: TinyDeepseek4,
                                                     checkpoints: dict[str, Path]) -> None:
    """The fixture's release names are DeepSeek's: transformers' own conversion mapping loads them into
    DeepseekV4ForCausalLM with nothing missing or unexpected and every parameter equal (mtp.* it ignores)."""
    import torch
    from transformers import DeepseekV4ForCausalLM

    # transformers maps a release config's compress_ratios through {0, 4, 128} only: pass the tiny config.
    model, info = DeepseekV4ForCausalLM.from_pretrained(checkpoints["release"], config=tiny.config,
                                                        output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    state = model.state_dict()
    assert [k for k in tiny.state if not torch.equal(state[k], tiny.state[k])] == []


def test_bf16_checkpoint_converts_exactly(tiny: TinyDeepseek4, tmp_path: Path) -> None:
    """A BF16 checkpoint (how DeepSeek ships its non-FP8 tensors) widens exactly to F32."""
    import torch

    directory = tiny.write(tmp_path / "bf16", "release", dtype=torch.bfloat16)
    convert(directory, tmp_path / "x.gguf", "f32", progress=False)
    with GGUFFile(tmp_path / "x.gguf") as f:
        want = tiny.state["model.layers.1.self_attn.q_a_proj.weight"].to(torch.bfloat16).float().numpy()
        np.testing.assert_array_equal(f.tensor("blk.1.attn_q_a.weight"), want)


def test_v4_flash_table_matches_the_spec() -> None:
    """With V4-Flash's config, the tensor table is shared/spec/gguf.md's (ggml dims, transcribed)."""
    config = {"vocab_size": 129280, "hidden_size": 4096, "num_hidden_layers": 43, "num_attention_heads": 64,
              "num_key_value_heads": 1, "head_dim": 512, "qk_rope_head_dim": 64, "q_lora_rank": 1024,
              "o_groups": 8, "o_lora_rank": 1024, "n_routed_experts": 256, "n_shared_experts": 1,
              "num_experts_per_tok": 6, "moe_intermediate_size": 2048, "scoring_func": "sqrtsoftplus",
              "routed_scaling_factor": 1.5, "swiglu_limit": 10.0, "num_hash_layers": 3,
              "compress_ratios": [0, 0] + [4 if i % 2 == 0 else 128 for i in range(2, 43)] + [0],
              "sliding_window": 128, "index_n_heads": 64, "index_head_dim": 128, "index_topk": 512,
              "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6, "compress_rope_theta": 160000.0,
              "max_position_embeddings": 1048576, "num_nextn_predict_layers": 1}
    p = Deepseek4Params.from_config(config)
    dims = {s.name: tuple(reversed(s.shape)) for s in main_tensor_specs(p) + mtp_tensor_specs(p)}
    spec = {
        "token_embd.weight": (4096, 129280), "output_norm.weight": (4096,), "output.weight": (4096, 129280),
        "output_hc_fn.weight": (16384, 4), "output_hc_base.weight": (4,), "output_hc_scale.weight": (1,),
    }
    block = {"attn_norm": (4096,), "attn_sinks": (64,), "attn_q_a": (4096, 1024), "attn_q_a_norm": (1024,),
             "attn_q_b": (1024, 32768), "attn_kv": (4096, 512), "attn_kv_a_norm": (512,),
             "attn_output_a": (4096, 8192), "attn_output_b": (8192, 4096), "hc_attn_fn": (16384, 24),
             "hc_attn_base": (24,), "hc_attn_scale": (3,), "hc_ffn_fn": (16384, 24), "hc_ffn_base": (24,),
             "hc_ffn_scale": (3,), "ffn_norm": (4096,), "ffn_gate_inp": (4096, 256),
             "ffn_gate_exps": (4096, 2048, 256), "ffn_up_exps": (4096, 2048, 256),
             "ffn_down_exps": (2048, 4096, 256), "ffn_gate_shexp": (4096, 2048), "ffn_up_shexp": (4096, 2048),
             "ffn_down_shexp": (2048, 4096)}
    csa = {"attn_compressor_kv": (4096, 1024), "attn_compressor_gate": (4096, 1024),
           "attn_compressor_ape": (1024, 4), "attn_compressor_norm": (512,), "indexer.proj": (4096, 64),
           "indexer.attn_q_b": (1024, 8192), "indexer_compressor_kv": (4096, 256),
           "indexer_compressor_gate": (4096, 256), "indexer_compressor_ape": (256, 4),
           "indexer_compressor_norm": (128,)}
    hca = {"attn_compressor_kv": (4096, 512), "attn_compressor_gate": (4096, 512),
           "attn_compressor_ape": (512, 128), "attn_compressor_norm": (512,)}
    for il in range(43):
        layer = dict(block)
        layer.update(csa if il >= 2 and il % 2 == 0 else hca if il >= 2 else {})
        spec.update({f"blk.{il}.{k}.weight": v for k, v in layer.items()})
        if il < 3:
            spec[f"blk.{il}.ffn_gate_tid2eid.weight"] = (6, 129280)
        else:
            spec[f"blk.{il}.exp_probs_b.bias"] = (256,)
    spec.update({f"blk.43.{k}.weight": v for k, v in block.items()})
    spec["blk.43.exp_probs_b.bias"] = (256,)
    spec.update({"blk.43.nextn.eh_proj.weight": (8192, 4096), "blk.43.nextn.enorm.weight": (4096,),
                 "blk.43.nextn.hnorm.weight": (4096,), "blk.43.nextn.shared_head_norm.weight": (4096,)})
    assert dims == spec


def test_cli_converts_and_reports(checkpoints: dict[str, Path], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.gguf"
    assert cli_main(["convert", str(checkpoints["modules"]), "-o", str(out), "--quant", "q8_0",
                     "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: 126 tensors" in printed and f"wrote {mtp_path(out)}: 31 tensors" in printed
    with GGUFFile(out) as f:
        assert f.metadata["general.file_type"] == 7

    assert cli_main(["convert", str(checkpoints["modules"]), "-o", str(out), "--quant", "q5_k"]) == 1
    assert "unknown quantization recipe 'q5_k'" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        cli_main(["convert", "--help"])
    help_text = capsys.readouterr().out
    assert all(name in help_text for name in RECIPES)  # the help names every recipe


# -- errors -------------------------------------------------------------------------------------------------


def _copy(directory: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(directory, tmp_path / "copy"))


def _edit_json(path: Path, edit: object) -> None:
    data = json.loads(path.read_text())
    edit(data)  # type: ignore[operator]
    path.write_text(json.dumps(data))


def test_error_missing_config(tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match="no config.json"):
        convert(tmp_path, tmp_path / "x.gguf", progress=False)


def test_error_missing_tokenizer(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    directory = _copy(checkpoints["release"], tmp_path)
    (directory / "tokenizer.json").unlink()
    with pytest.raises(ConvertError, match="no tokenizer.json"):
        convert(directory, tmp_path / "x.gguf", progress=False)


def test_error_unknown_recipe(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConvertError, match=r"unknown quantization recipe 'q4_k_m'; expected one of: f32, "):
        convert(checkpoints["release"], tmp_path / "x.gguf", "q4_k_m", progress=False)


def test_error_unknown_tensor_is_named(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    directory = _copy(checkpoints["release"], tmp_path)
    save_file({"layers.0.attn.wq_c.weight": torch.zeros(2, 2)}, str(directory / "extra.safetensors"))
    _edit_json(directory / "model.safetensors.index.json",
               lambda d: d["weight_map"].update({"layers.0.attn.wq_c.weight": "extra.safetensors"}))
    with pytest.raises(ConvertError, match=r"unknown checkpoint tensor\(s\).*: layers\.0\.attn\.wq_c\."):
        convert(directory, tmp_path / "x.gguf", progress=False)
    assert not list(tmp_path.glob("x.gguf*"))  # nothing written


def test_error_shape_mismatch_names_tensor_and_shapes(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    directory = _copy(checkpoints["release"], tmp_path)
    _edit_json(directory / "config.json", lambda d: d.update(q_lora_rank=64))
    with pytest.raises(ConvertError, match=r"blk\.0\.attn_q_a\.weight: config\.json implies shape "
                                           r"\[64, 256\], the checkpoint gives layers\.0\.attn\.wq_a\.weight "
                                           r"\[48, 256\]"):
        convert(directory, tmp_path / "x.gguf", progress=False)


def test_error_missing_tensor_is_named(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    directory = _copy(checkpoints["release"], tmp_path)
    _edit_json(directory / "model.safetensors.index.json",
               lambda d: d["weight_map"].pop("layers.2.attn.wo_b.weight"))
    with pytest.raises(ConvertError, match=r"lacks 1 tensor\(s\) of the main model: blk\.2\.attn_output_b\."):
        convert(directory, tmp_path / "x.gguf", progress=False)


def test_error_tensor_the_config_does_not_have(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """A layer typed window-only by config.json must not carry compressor weights."""
    directory = _copy(checkpoints["release"], tmp_path)
    _edit_json(directory / "config.json", lambda d: d.update(compress_ratios=[0, 4, 0, 4, 0]))
    with pytest.raises(ConvertError, match=r"layers\.2\.attn\.compressor\.\S+ would become "
                                           r"blk\.2\.attn_compressor_\w+\.weight, which a deepseek4 file"):
        convert(directory, tmp_path / "x.gguf", progress=False)


# -- DeepSeek's block-scaled formats -------------------------------------------------------------------------


def test_fp8_and_fp4_weights_decode_exactly(tmp_path: Path) -> None:
    """FP8 (E4M3, one E8M0 scale per 128 x 128 tile) and packed FP4 (E2M1 pairs, one scale per 32) decode to
    the values they were made from: values representable in the format times power-of-two scales."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    fp8_values = torch.randn(200, 300, generator=g).to(torch.float8_e4m3fn)  # [out, in], tiles 2 x 3
    fp8_exp = torch.randint(120, 135, (2, 3), generator=g)
    fp8_scale = torch.exp2(fp8_exp.float() - 127).repeat_interleave(128, 0).repeat_interleave(128, 1)
    fp8_want = fp8_values.float() * fp8_scale[:200, :300]

    e2m1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                         -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])  # E2M1 code -> value
    codes = torch.randint(0, 16, (8, 64), generator=g, dtype=torch.uint8)  # [out, in]
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).view(torch.int8)  # element 2j low nibble, 2j+1 high
    fp4_exp = torch.randint(110, 130, (8, 2), generator=g)
    fp4_want = e2m1[codes.long()] * torch.exp2(fp4_exp.float() - 127).repeat_interleave(32, 1)

    (tmp_path / "config.json").write_text("{}")
    save_file({"a.weight": fp8_values, "a.scale": fp8_exp.to(torch.uint8).view(torch.float8_e8m0fnu),
               "b.weight": packed, "b.scale": fp4_exp.to(torch.uint8).view(torch.float8_e8m0fnu)},
              str(tmp_path / "model.safetensors"))
    ckpt = Checkpoint(tmp_path)
    assert ckpt.names() == ["a.weight", "b.weight"]
    assert (ckpt.info("a.weight").encoding, ckpt.info("a.weight").shape) == ("fp8", (200, 300))
    assert (ckpt.info("b.weight").encoding, ckpt.info("b.weight").shape) == ("fp4", (8, 64))
    np.testing.assert_array_equal(ckpt.read("a.weight"), fp8_want.numpy())
    np.testing.assert_array_equal(ckpt.read("a.weight", rows=(100, 170)), fp8_want[100:170].numpy())
    np.testing.assert_array_equal(ckpt.read("b.weight"), fp4_want.numpy())
    np.testing.assert_array_equal(ckpt.read("b.weight", rows=(3, 5)), fp4_want[3:5].numpy())
    # The mxfp4 recipe keeps FP4 experts exact: E2M1 values times 2^k re-quantize to themselves.
    decoded = ckpt.read("b.weight").reshape(-1)
    mxfp4 = _core.quantize(int(T.MXFP4), decoded)
    np.testing.assert_array_equal(_core.dequantize(int(T.MXFP4), mxfp4, decoded.size), decoded)


def test_release_checkpoint_with_fp8_and_fp4_tensors(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """DeepSeek ships matrices as FP8 and routed experts as FP4, each with a ``.scale`` companion: they
    convert to the values they decode to, in the right place (an attention matrix, expert 1 of a stack)."""
    import torch
    from safetensors.torch import save_file

    directory = _copy(checkpoints["release"], tmp_path)
    g = torch.Generator().manual_seed(2)
    wq_a = torch.randn(48, 256, generator=g).to(torch.float8_e4m3fn)  # one 128 x 128 tile row, two columns
    wq_a_exp = torch.tensor([[125, 129]], dtype=torch.uint8)
    codes = torch.randint(0, 16, (96, 256), generator=g, dtype=torch.uint8)
    w1_exp = torch.randint(120, 130, (96, 8), generator=g).to(torch.uint8)
    tensors = {"layers.0.attn.wq_a.weight": wq_a,
               "layers.0.attn.wq_a.scale": wq_a_exp.view(torch.float8_e8m0fnu),
               "layers.2.ffn.experts.1.w1.weight": (codes[:, 0::2] | (codes[:, 1::2] << 4)).view(torch.int8),
               "layers.2.ffn.experts.1.w1.scale": w1_exp.view(torch.float8_e8m0fnu)}
    save_file(tensors, str(directory / "scaled.safetensors"))
    _edit_json(directory / "model.safetensors.index.json",
               lambda d: d["weight_map"].update(dict.fromkeys(tensors, "scaled.safetensors")))
    convert(directory, tmp_path / "x.gguf", "f32", progress=False)

    e2m1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                         -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])
    want_wq_a = wq_a.float() * torch.exp2(wq_a_exp.float() - 127).repeat_interleave(128, 1)
    want_w1 = e2m1[codes.long()] * torch.exp2(w1_exp.float() - 127).repeat_interleave(32, 1)
    with GGUFFile(tmp_path / "x.gguf") as f:
        np.testing.assert_array_equal(f.tensor("blk.0.attn_q_a.weight"), want_wq_a.numpy())
        np.testing.assert_array_equal(f.tensor("blk.2.ffn_gate_exps.weight")[1], want_w1.numpy())


# -- memory -------------------------------------------------------------------------------------------------

_MEASURE_PEAK = """
import resource, sys
from flashmtp.convert import convert
small, big, out = sys.argv[1:4]
convert(small, out + ".warm.gguf", "q8_0", progress=False)  # imports, thread pool, allocator arenas
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
convert(big, out, "q8_0", progress=False)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.slow  # writes and converts a 270 MB checkpoint
def test_peak_memory_stays_under_twice_the_largest_tensor(checkpoints: dict[str, Path],
                                                          tmp_path: Path) -> None:
    """Issue 4's bound: converting a checkpoint whose largest tensors (token_embd, output) are 128 MiB of F32
    raises the process's peak RSS by less than twice that. Measured: about 1.1-1.2x, of which ~16-28 MiB is
    anonymous (one row chunk and its encoding) and the rest the source tensor's mapped file pages."""
    import os
    import subprocess
    import sys

    import flashmtp

    big = make_tiny_deepseek4(seed=1, vocab_size=131072).write(tmp_path / "big", "modules")
    largest = 131072 * 256 * 4
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(Path(flashmtp.__file__).parents[1])}
    result = subprocess.run([sys.executable, "-c", _MEASURE_PEAK, str(checkpoints["release"]), str(big),
                             str(tmp_path / "big.gguf")], capture_output=True, text=True, env=env, check=True)
    growth = int(result.stdout.split()[-1])
    assert growth < 2 * largest, f"peak RSS grew {growth >> 20} MiB for a {largest >> 20} MiB tensor"
