"""DeepSeek-V4 (`deepseek4`): hyperparameters, the GGUF tensor table, and the checkpoint-name mapping.

Owns: reading config.json in either flavour (DeepSeek's own: ``compress_ratios``, ``num_hash_layers``,
``rope_scaling``; transformers': ``layer_types``, ``compress_rates``, ``mlp_layer_types``, nested
``rope_parameters``), the list of tensors a main file and an MTP sidecar must hold with their shapes, which
checkpoint tensors feed each one, and the ``deepseek4.*`` metadata. Names and keys are llama.cpp's, so files
written here and by llama.cpp's converter are interchangeable (spec: shared/spec/gguf.md).

Three spellings of the same weights are accepted, each optionally under a ``model.`` prefix:
- DeepSeek's release names (``layers.N.attn.wq_a.weight``, ``layers.N.ffn.experts.E.w1.weight``,
  ``layers.N.hc_attn_fn``, ``embed.weight``, ``head.weight``, ``mtp.0.*``);
- transformers' module names (``layers.N.self_attn.q_a_proj.weight``, ``layers.N.mlp.experts.gate_up_proj``
  [E, 2I, D] with gate rows first, ``hc_head.hc_fn``, ``embed_tokens.weight``, ``lm_head.weight``);
- what transformers 5.x ``save_pretrained`` writes: it maps module names back to release names but keeps the
  ``model.`` prefix, ``embed_tokens`` and ``hc_head.hc_*`` and turns ``attn.kv_norm`` into ``attn.norm``.
transformers drops the MTP weights when it loads a checkpoint; they exist only in release names (``mtp.0.*``).

Layout transforms (everything else is copied as stored, [out, in] row-major = ggml {in, out}):
- routed experts: the per-expert [out, in] matrices are stacked into one [E, out, in] tensor (ggml
  {in, out, E}); a fused transformers gate_up_proj [E, 2I, D] splits into gate = rows [0, I), up = [I, 2I);
- tid2eid: int64 [vocab, top_k] -> I32 (ids checked against the expert count);
- MTP eh_proj = [e_proj | h_proj] joined along the input: [D, 2D], the embedding half first.
No RoPE permutation: V4 rotates interleaved pairs of the last rope dims, like ggml's normal (non-NeoX) RoPE.

MTP sidecar (``OUT-mtp.gguf``): llama.cpp's layout (block ``n_main`` holds the MTP block, plus
``blk.n_main.nextn.{eh_proj,enorm,hnorm,shared_head_norm}`` and the MTP hc-head as the root ``output_hc_*``),
block_count = n_main + 1 and nextn_predict_layers = 1, but WITHOUT the copies of token_embd, output_norm and
output that llama.cpp's sidecar carries: ``flashmtp.mtp.main_model_tensors`` (array of strings) lists the
tensors a runtime must take from the main model instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flashmtp.convert.checkpoint import ConvertError
from flashmtp.convert.recipes import TensorClass

__all__ = ["ARCH", "MAIN_MODEL_TENSORS_KEY", "Deepseek4Params", "Piece", "Sources", "TensorSpec",
           "main_tensor_specs", "metadata", "mtp_tensor_specs", "resolve_sources"]

ARCH = "deepseek4"
MAIN_MODEL_TENSORS_KEY = "flashmtp.mtp.main_model_tensors"
SHARED_FROM_MAIN = ("token_embd.weight", "output_norm.weight", "output.weight")

CSA_RATIO = 4  # DeepSeek's rule: a layer with compress ratio 4 is CSA (overlapping compressor + indexer)
_GATING_FUNC = {"softmax": 1, "sigmoid": 2, "sqrtsoftplus": 4}  # llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_*


@dataclass(frozen=True)
class Deepseek4Params:
    vocab_size: int
    n_embd: int
    n_layer: int  # main blocks, MTP excluded
    n_head: int
    n_head_kv: int
    head_dim: int
    rope_dim: int
    q_lora_rank: int
    o_groups: int
    o_lora_rank: int
    n_expert: int
    n_expert_used: int
    n_expert_shared: int
    expert_ff: int
    gating_func: int
    expert_weights_norm: bool
    expert_weights_scale: float
    swiglu_limit: float
    compress_ratios: tuple[int, ...]  # one per block, main then MTP
    n_hash_layer: int
    sliding_window: int
    indexer_n_head: int
    indexer_head_dim: int
    indexer_top_k: int
    hc_mult: int
    hc_sinkhorn_iters: int
    hc_eps: float
    rms_norm_eps: float
    rope_freq_base: float
    compress_rope_freq_base: float
    context_length: int
    n_nextn: int
    # YaRN of the compress RoPE: factor, original_context_length, beta_fast, beta_slow (empty: none)
    yarn: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Deepseek4Params:
        c = _Config(config)
        n_layer = c.int("num_hidden_layers")
        n_nextn = c.int("num_nextn_predict_layers", default=0)
        if n_nextn > 1:
            raise ConvertError(f"config.json: num_nextn_predict_layers = {n_nextn}; the deepseek4 GGUF "
                               "layout has one MTP block")
        head_dim = c.int("head_dim")
        if "qk_rope_head_dim" in config:
            rope_dim = c.int("qk_rope_head_dim")
        else:
            rope_dim = int(head_dim * float(config.get("partial_rotary_factor") or 64 / 512))
        scoring = c.str("scoring_func", default="sqrtsoftplus")
        if scoring not in _GATING_FUNC:
            raise ConvertError(f"config.json: scoring_func {scoring!r} is not one of "
                               f"{', '.join(_GATING_FUNC)}")
        n_head, o_groups = c.int("num_attention_heads"), c.int("o_groups")
        if o_groups == 0 or (n_head * head_dim) % o_groups:
            raise ConvertError(f"config.json: o_groups = {o_groups} does not divide the {n_head} x "
                               f"{head_dim} attention output")
        n_head_kv = c.int("num_key_value_heads", default=1)
        if n_head_kv != 1:
            raise ConvertError(f"config.json: num_key_value_heads = {n_head_kv}; DeepSeek-V4 attention "
                               "shares one key/value head")
        return cls(
            vocab_size=c.int("vocab_size"),
            n_embd=c.int("hidden_size"),
            n_layer=n_layer,
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            rope_dim=rope_dim,
            q_lora_rank=c.int("q_lora_rank"),
            o_groups=o_groups,
            o_lora_rank=c.int("o_lora_rank"),
            n_expert=c.int("n_routed_experts"),
            n_expert_used=c.int("num_experts_per_tok"),
            n_expert_shared=c.int("n_shared_experts", default=1),
            expert_ff=c.int("moe_intermediate_size"),
            gating_func=_GATING_FUNC[scoring],
            expert_weights_norm=bool(config.get("norm_topk_prob", True)),
            expert_weights_scale=c.float("routed_scaling_factor", default=1.0),
            swiglu_limit=c.float("swiglu_limit", default=0.0),
            compress_ratios=_compress_ratios(c, n_layer, n_nextn),
            n_hash_layer=_hash_layer_count(c, n_layer),
            sliding_window=c.int("sliding_window"),
            indexer_n_head=c.int("index_n_heads"),
            indexer_head_dim=c.int("index_head_dim"),
            indexer_top_k=c.int("index_topk"),
            hc_mult=c.int("hc_mult"),
            hc_sinkhorn_iters=c.int("hc_sinkhorn_iters"),
            hc_eps=c.float("hc_eps"),
            rms_norm_eps=c.float("rms_norm_eps", default=1e-6),
            rope_freq_base=_main_rope_theta(c),
            compress_rope_freq_base=c.float("compress_rope_theta"),
            context_length=c.int("max_position_embeddings"),
            n_nextn=n_nextn,
            yarn=_yarn(config),
        )


class _Config:
    """Typed reads of config.json with errors that name the key."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.raw = config

    def _get(self, key: str, default: Any) -> Any:
        if key in self.raw and self.raw[key] is not None:
            return self.raw[key]
        if default is None:
            raise ConvertError(f"config.json: missing {key!r}")
        return default

    def int(self, key: str, default: int | None = None) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConvertError(f"config.json: {key} must be a non-negative integer, got {value!r}")
        return value

    def float(self, key: str, default: float | None = None) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConvertError(f"config.json: {key} must be a number, got {value!r}")
        return float(value)

    def str(self, key: str, default: str | None = None) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise ConvertError(f"config.json: {key} must be a string, got {value!r}")
        return value


def _compress_ratios(c: _Config, n_layer: int, n_nextn: int) -> tuple[int, ...]:
    if "compress_ratios" in c.raw:  # DeepSeek's config: one per block, the MTP block(s) last
        ratios = [int(r) for r in c.raw["compress_ratios"]]
        if len(ratios) < n_layer + n_nextn:
            raise ConvertError(f"config.json: compress_ratios has {len(ratios)} entries, need "
                               f"{n_layer + n_nextn} (num_hidden_layers + num_nextn_predict_layers)")
        ratios = ratios[: n_layer + n_nextn]
    else:  # transformers' config: attention type per main layer; the MTP block is window-only
        layer_types = c.raw.get("layer_types")
        if not isinstance(layer_types, list) or len(layer_types) != n_layer:
            raise ConvertError(f"config.json: needs compress_ratios or layer_types with {n_layer} entries")
        rates = {"compressed_sparse_attention": CSA_RATIO, "heavily_compressed_attention": 128,
                 **(c.raw.get("compress_rates") or {})}
        rates["sliding_attention"] = 0
        unknown = sorted(set(layer_types) - set(rates))
        if unknown:
            raise ConvertError(f"config.json: unknown layer_types {unknown}")
        csa, hca = rates["compressed_sparse_attention"], rates["heavily_compressed_attention"]
        if csa != CSA_RATIO or hca in (0, CSA_RATIO):
            raise ConvertError(f"config.json: compress_rates {c.raw.get('compress_rates')} cannot be stored: "
                               f"GGUF files mark CSA layers by compress ratio {CSA_RATIO} (DeepSeek's rule), "
                               f"so CSA must use {CSA_RATIO} and HCA another positive ratio")
        ratios = [rates[t] for t in layer_types] + [0] * n_nextn
    for i, r in enumerate(ratios):
        if r < 0 or (i >= n_layer and r != 0):
            raise ConvertError(f"config.json: compress ratio {r} for block {i} (MTP blocks must be 0)")
    return tuple(ratios)


def _hash_layer_count(c: _Config, n_layer: int) -> int:
    if "num_hash_layers" in c.raw:
        return min(c.int("num_hash_layers"), n_layer)
    kinds = c.raw.get("mlp_layer_types")
    if kinds is None:
        return min(3, n_layer)  # transformers' default
    n_hash = 0
    while n_hash < len(kinds) and kinds[n_hash] == "hash_moe":
        n_hash += 1
    if "hash_moe" in kinds[n_hash:]:
        raise ConvertError(f"config.json: mlp_layer_types {kinds}: hash layers must come first (GGUF stores "
                           "only their count)")
    return n_hash


def _main_rope_theta(c: _Config) -> float:
    nested = c.raw.get("rope_parameters")
    if isinstance(nested, dict) and isinstance(nested.get("main"), dict) and "rope_theta" in nested["main"]:
        return float(nested["main"]["rope_theta"])
    return c.float("rope_theta", default=10000.0)


def _yarn(config: Mapping[str, Any]) -> dict[str, float]:
    """YaRN settings of the compress RoPE: DeepSeek's ``rope_scaling``, transformers' nested
    ``rope_parameters.compress`` or a flat ``rope_parameters``. Empty when there is no scaling."""
    rope = config.get("rope_scaling")
    nested = config.get("rope_parameters")
    if rope is None and isinstance(nested, dict):
        rope = nested.get("compress") if isinstance(nested.get("compress"), dict) else nested
    if not isinstance(rope, dict) or rope.get("rope_type", rope.get("type")) != "yarn":
        return {}
    try:
        return {"factor": float(rope["factor"]),
                "original_context_length": int(rope["original_max_position_embeddings"]),
                "beta_fast": float(rope.get("beta_fast", 32.0)),
                "beta_slow": float(rope.get("beta_slow", 1.0))}
    except KeyError as e:
        raise ConvertError(f"config.json: yarn rope scaling lacks {e.args[0]!r}") from None


# -- the tensor table --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """A tensor the GGUF file holds. ``shape`` is numpy order (outermost first; ggml's dims reversed).
    ``pieces`` is how many checkpoint reads build it: one, one per expert (stacked), or two (joined along the
    input, eh_proj)."""

    name: str
    shape: tuple[int, ...]
    cls: TensorClass
    pieces: int = 1
    join_inputs: bool = False


def _block_specs(p: Deepseek4Params, il: int) -> list[TensorSpec]:
    D, H, d, n = p.n_embd, p.n_head, p.head_dim, p.hc_mult
    E, I, F = p.n_expert, p.expert_ff, p.expert_ff * p.n_expert_shared  # noqa: E741 (the paper's I)
    mix = (2 + n) * n  # pre (n) + post (n) + comb (n * n)
    M, X, G, K = TensorClass.MATRIX, TensorClass.EXPERTS, TensorClass.FLOAT, TensorClass.INDEX
    ratio = p.compress_ratios[il]
    b = f"blk.{il}."
    specs = [
        TensorSpec(b + "attn_norm.weight", (D,), G),
        TensorSpec(b + "attn_sinks.weight", (H,), G),
        TensorSpec(b + "attn_q_a.weight", (p.q_lora_rank, D), M),
        TensorSpec(b + "attn_q_a_norm.weight", (p.q_lora_rank,), G),
        TensorSpec(b + "attn_q_b.weight", (H * d, p.q_lora_rank), M),
        TensorSpec(b + "attn_kv.weight", (d, D), M),
        TensorSpec(b + "attn_kv_a_norm.weight", (d,), G),
        # viewed {H*d/g, R, g} by the runtime: group i owns rows [i*R, (i+1)*R)
        TensorSpec(b + "attn_output_a.weight", (p.o_groups * p.o_lora_rank, H * d // p.o_groups), M),
        TensorSpec(b + "attn_output_b.weight", (D, p.o_groups * p.o_lora_rank), M),
    ]
    if ratio == CSA_RATIO:
        dI = p.indexer_head_dim
        specs += [
            TensorSpec(b + "attn_compressor_kv.weight", (2 * d, D), M),
            TensorSpec(b + "attn_compressor_gate.weight", (2 * d, D), M),
            TensorSpec(b + "attn_compressor_ape.weight", (ratio, 2 * d), G),
            TensorSpec(b + "attn_compressor_norm.weight", (d,), G),
            TensorSpec(b + "indexer.proj.weight", (p.indexer_n_head, D), M),
            TensorSpec(b + "indexer.attn_q_b.weight", (p.indexer_n_head * dI, p.q_lora_rank), M),
            TensorSpec(b + "indexer_compressor_kv.weight", (2 * dI, D), M),
            TensorSpec(b + "indexer_compressor_gate.weight", (2 * dI, D), M),
            TensorSpec(b + "indexer_compressor_ape.weight", (ratio, 2 * dI), G),
            TensorSpec(b + "indexer_compressor_norm.weight", (dI,), G),
        ]
    elif ratio > 0:
        specs += [
            TensorSpec(b + "attn_compressor_kv.weight", (d, D), M),
            TensorSpec(b + "attn_compressor_gate.weight", (d, D), M),
            TensorSpec(b + "attn_compressor_ape.weight", (ratio, d), G),
            TensorSpec(b + "attn_compressor_norm.weight", (d,), G),
        ]
    for mixer in ("attn", "ffn"):
        specs += [
            TensorSpec(b + f"hc_{mixer}_fn.weight", (mix, n * D), G),
            TensorSpec(b + f"hc_{mixer}_base.weight", (mix,), G),
            TensorSpec(b + f"hc_{mixer}_scale.weight", (3,), G),
        ]
    specs += [
        TensorSpec(b + "ffn_norm.weight", (D,), G),
        TensorSpec(b + "ffn_gate_inp.weight", (E, D), G),
        TensorSpec(b + "ffn_gate_exps.weight", (E, I, D), X, pieces=E),
        TensorSpec(b + "ffn_up_exps.weight", (E, I, D), X, pieces=E),
        TensorSpec(b + "ffn_down_exps.weight", (E, D, I), X, pieces=E),
        TensorSpec(b + "ffn_gate_shexp.weight", (F, D), M),
        TensorSpec(b + "ffn_up_shexp.weight", (F, D), M),
        TensorSpec(b + "ffn_down_shexp.weight", (D, F), M),
    ]
    if il < p.n_hash_layer:
        specs.append(TensorSpec(b + "ffn_gate_tid2eid.weight", (p.vocab_size, p.n_expert_used), K))
    else:
        specs.append(TensorSpec(b + "exp_probs_b.bias", (E,), G))
    return specs


def _hc_head_specs(p: Deepseek4Params) -> list[TensorSpec]:
    n, G = p.hc_mult, TensorClass.FLOAT
    return [TensorSpec("output_hc_fn.weight", (n, n * p.n_embd), G),
            TensorSpec("output_hc_base.weight", (n,), G),
            TensorSpec("output_hc_scale.weight", (1,), G)]


def main_tensor_specs(p: Deepseek4Params) -> list[TensorSpec]:
    """Every tensor of the main file, in file order."""
    specs = [TensorSpec("token_embd.weight", (p.vocab_size, p.n_embd), TensorClass.MATRIX)]
    for il in range(p.n_layer):
        specs += _block_specs(p, il)
    specs += _hc_head_specs(p)
    specs += [TensorSpec("output_norm.weight", (p.n_embd,), TensorClass.FLOAT),
              TensorSpec("output.weight", (p.vocab_size, p.n_embd), TensorClass.MATRIX)]
    return specs


def mtp_tensor_specs(p: Deepseek4Params) -> list[TensorSpec]:
    """Every tensor of the MTP sidecar, in file order (empty when the model has no MTP block)."""
    if p.n_nextn == 0:
        return []
    il, D = p.n_layer, p.n_embd
    b = f"blk.{il}.nextn."
    return _block_specs(p, il) + [
        TensorSpec(b + "eh_proj.weight", (D, 2 * D), TensorClass.MATRIX, pieces=2, join_inputs=True),
        TensorSpec(b + "enorm.weight", (D,), TensorClass.FLOAT),
        TensorSpec(b + "hnorm.weight", (D,), TensorClass.FLOAT),
        TensorSpec(b + "shared_head_norm.weight", (D,), TensorClass.FLOAT),
    ] + _hc_head_specs(p)


# -- checkpoint names -> GGUF names ------------------------------------------------------------------------

# Root tensors (after an optional "model." prefix).
_ROOT = {
    "embed.weight": "token_embd.weight", "embed_tokens.weight": "token_embd.weight",
    "head.weight": "output.weight", "lm_head.weight": "output.weight",
    "norm.weight": "output_norm.weight",
    "hc_head_fn": "output_hc_fn.weight", "hc_head.hc_fn": "output_hc_fn.weight",
    "hc_head_base": "output_hc_base.weight", "hc_head.hc_base": "output_hc_base.weight",
    "hc_head_scale": "output_hc_scale.weight", "hc_head.hc_scale": "output_hc_scale.weight",
}

# Block tensors: name after "layers.N." (or "mtp.0.") -> name after "blk.N.". Release spelling first, then
# transformers' module spelling, then the save_pretrained quirks.
_BLOCK = {
    "attn_norm.weight": "attn_norm.weight", "input_layernorm.weight": "attn_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "attn.attn_sink": "attn_sinks.weight", "self_attn.sinks": "attn_sinks.weight",
    "attn.wq_a.weight": "attn_q_a.weight", "self_attn.q_a_proj.weight": "attn_q_a.weight",
    "attn.q_norm.weight": "attn_q_a_norm.weight", "self_attn.q_a_norm.weight": "attn_q_a_norm.weight",
    "attn.wq_b.weight": "attn_q_b.weight", "self_attn.q_b_proj.weight": "attn_q_b.weight",
    "attn.wkv.weight": "attn_kv.weight", "self_attn.kv_proj.weight": "attn_kv.weight",
    "attn.kv_norm.weight": "attn_kv_a_norm.weight", "self_attn.kv_norm.weight": "attn_kv_a_norm.weight",
    "attn.norm.weight": "attn_kv_a_norm.weight",
    "attn.wo_a.weight": "attn_output_a.weight", "self_attn.o_a_proj.weight": "attn_output_a.weight",
    "attn.wo_b.weight": "attn_output_b.weight", "self_attn.o_b_proj.weight": "attn_output_b.weight",
    "attn.compressor.wkv.weight": "attn_compressor_kv.weight",
    "self_attn.compressor.kv_proj.weight": "attn_compressor_kv.weight",
    "attn.compressor.wgate.weight": "attn_compressor_gate.weight",
    "self_attn.compressor.gate_proj.weight": "attn_compressor_gate.weight",
    "attn.compressor.ape": "attn_compressor_ape.weight",
    "self_attn.compressor.position_bias": "attn_compressor_ape.weight",
    "attn.compressor.norm.weight": "attn_compressor_norm.weight",
    "self_attn.compressor.kv_norm.weight": "attn_compressor_norm.weight",
    "attn.indexer.wq_b.weight": "indexer.attn_q_b.weight",
    "self_attn.compressor.indexer.q_b_proj.weight": "indexer.attn_q_b.weight",
    "attn.indexer.weights_proj.weight": "indexer.proj.weight",
    "self_attn.compressor.indexer.scorer.weights_proj.weight": "indexer.proj.weight",
    "attn.indexer.compressor.wkv.weight": "indexer_compressor_kv.weight",
    "self_attn.compressor.indexer.kv_proj.weight": "indexer_compressor_kv.weight",
    "attn.indexer.compressor.wgate.weight": "indexer_compressor_gate.weight",
    "self_attn.compressor.indexer.gate_proj.weight": "indexer_compressor_gate.weight",
    "attn.indexer.compressor.ape": "indexer_compressor_ape.weight",
    "self_attn.compressor.indexer.position_bias": "indexer_compressor_ape.weight",
    "attn.indexer.compressor.norm.weight": "indexer_compressor_norm.weight",
    "self_attn.compressor.indexer.kv_norm.weight": "indexer_compressor_norm.weight",
    "hc_attn_fn": "hc_attn_fn.weight", "attn_hc.fn": "hc_attn_fn.weight",
    "hc_attn_base": "hc_attn_base.weight", "attn_hc.base": "hc_attn_base.weight",
    "hc_attn_scale": "hc_attn_scale.weight", "attn_hc.scale": "hc_attn_scale.weight",
    "hc_ffn_fn": "hc_ffn_fn.weight", "ffn_hc.fn": "hc_ffn_fn.weight",
    "hc_ffn_base": "hc_ffn_base.weight", "ffn_hc.base": "hc_ffn_base.weight",
    "hc_ffn_scale": "hc_ffn_scale.weight", "ffn_hc.scale": "hc_ffn_scale.weight",
    "ffn.gate.weight": "ffn_gate_inp.weight", "mlp.gate.weight": "ffn_gate_inp.weight",
    "ffn.gate.bias": "exp_probs_b.bias", "mlp.gate.e_score_correction_bias": "exp_probs_b.bias",
    "ffn.gate.tid2eid": "ffn_gate_tid2eid.weight", "mlp.gate.tid2eid": "ffn_gate_tid2eid.weight",
    "ffn.shared_experts.w1.weight": "ffn_gate_shexp.weight",
    "mlp.shared_experts.gate_proj.weight": "ffn_gate_shexp.weight",
    "ffn.shared_experts.w3.weight": "ffn_up_shexp.weight",
    "mlp.shared_experts.up_proj.weight": "ffn_up_shexp.weight",
    "ffn.shared_experts.w2.weight": "ffn_down_shexp.weight",
    "mlp.shared_experts.down_proj.weight": "ffn_down_shexp.weight",
}
_EXPERT_W = {"w1": "ffn_gate_exps.weight", "w3": "ffn_up_exps.weight", "w2": "ffn_down_exps.weight"}
_RE_EXPERT = re.compile(r"(?:ffn|mlp)\.experts\.(\d+)\.(w[123])\.weight")
# MTP-only tensors (after "mtp.0."): GGUF name, and the piece index inside eh_proj.
_MTP = {
    "e_proj.weight": ("nextn.eh_proj.weight", 0), "h_proj.weight": ("nextn.eh_proj.weight", 1),
    "enorm.weight": ("nextn.enorm.weight", 0), "hnorm.weight": ("nextn.hnorm.weight", 0),
    "norm.weight": ("nextn.shared_head_norm.weight", 0),
}
_RE_LAYER = re.compile(r"layers\.(\d+)\.(.+)")
_RE_MTP = re.compile(r"mtp\.(\d+)\.(.+)")


@dataclass(frozen=True)
class Piece:
    """One checkpoint read that builds (part of) a GGUF tensor: the whole of ``tensor``, or one expert's
    matrix of a fused [E, rows, cols] tensor, optionally only rows [rows[0], rows[1])."""

    tensor: str
    expert: int | None = None
    rows: tuple[int, int] | None = None


def _map_name(name: str, p: Deepseek4Params) -> list[tuple[str, int, Piece]]:
    """The GGUF tensors a checkpoint tensor feeds: (GGUF name, piece index, piece). Empty if unknown."""
    short = name.removeprefix("model.")
    if short in _ROOT:
        return [(_ROOT[short], 0, Piece(name))]
    if m := _RE_LAYER.fullmatch(short):
        il, rest = int(m.group(1)), m.group(2)
        if il >= p.n_layer:
            return []
    elif m := _RE_MTP.fullmatch(short):
        k, rest = int(m.group(1)), m.group(2)
        if k >= p.n_nextn:
            return []
        il = p.n_layer + k
        if rest in _MTP:
            gguf_name, index = _MTP[rest]
            return [(f"blk.{il}.{gguf_name}", index, Piece(name))]
        if rest.startswith("hc_head_"):  # the MTP block's own hc-head: the sidecar's root output_hc_*
            return [(_ROOT[rest], 0, Piece(name))] if rest in _ROOT else []
    else:
        return []
    b = f"blk.{il}."
    if rest in _BLOCK:
        return [(b + _BLOCK[rest], 0, Piece(name))]
    if m := _RE_EXPERT.fullmatch(rest):
        return [(b + _EXPERT_W[m.group(2)], int(m.group(1)), Piece(name))]
    I = p.expert_ff  # noqa: E741
    if rest == "mlp.experts.gate_up_proj":  # [E, 2I, D], gate rows first (transformers' chunk(2) order)
        return [(b + "ffn_gate_exps.weight", e, Piece(name, e, (0, I))) for e in range(p.n_expert)] + \
               [(b + "ffn_up_exps.weight", e, Piece(name, e, (I, 2 * I))) for e in range(p.n_expert)]
    if rest == "mlp.experts.down_proj":  # [E, D, I]
        return [(b + "ffn_down_exps.weight", e, Piece(name, e)) for e in range(p.n_expert)]
    return []


Sources = dict[str, dict[int, Piece]]  # GGUF name -> piece index -> piece


def resolve_sources(names: list[str], p: Deepseek4Params) -> tuple[Sources, Sources]:
    """Which checkpoint reads build each GGUF tensor, for the main file and for the MTP sidecar (``mtp.*``
    tensors). Raises on a checkpoint tensor that maps to nothing or a piece given twice; missing tensors are
    the caller's to report."""
    main: Sources = {}
    mtp: Sources = {}
    unknown = []
    for name in names:
        targets = _map_name(name, p)
        if not targets:
            unknown.append(name)
        file = mtp if _RE_MTP.fullmatch(name.removeprefix("model.")) else main
        for gguf_name, index, piece in targets:
            have = file.setdefault(gguf_name, {})
            if index in have:
                raise ConvertError(f"checkpoint tensors {have[index].tensor} and {name} both give "
                                   f"{gguf_name} (piece {index})")
            have[index] = piece
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        raise ConvertError(f"unknown checkpoint tensor(s) for deepseek4 with {p.n_layer} layers and "
                           f"{p.n_nextn} MTP layer(s): {shown}")
    return main, mtp


# -- metadata ----------------------------------------------------------------------------------------------


def metadata(p: Deepseek4Params, block_count: int) -> dict[str, Any]:
    """The ``deepseek4.*`` keys of a file with ``block_count`` blocks (n_layer, or n_layer + 1 for the MTP
    sidecar), typed as llama.cpp writes them: ints are uint32, floats float32, lists arrays."""
    k = ARCH + "."
    meta: dict[str, Any] = {
        k + "vocab_size": p.vocab_size,
        k + "context_length": p.context_length,
        k + "embedding_length": p.n_embd,
        k + "embedding_length_out": p.hc_mult * p.n_embd,
        k + "block_count": block_count,
        k + "attention.head_count": p.n_head,
        k + "attention.head_count_kv": p.n_head_kv,
        k + "attention.key_length": p.head_dim,
        k + "attention.value_length": p.head_dim,
        k + "attention.layer_norm_rms_epsilon": float(p.rms_norm_eps),
        k + "attention.q_lora_rank": p.q_lora_rank,
        k + "attention.sliding_window": p.sliding_window,
        k + "attention.output_group_count": p.o_groups,
        k + "attention.output_lora_rank": p.o_lora_rank,
        k + "attention.compress_ratios": list(p.compress_ratios),
        k + "attention.compress_rope_freq_base": p.compress_rope_freq_base,
        k + "attention.indexer.head_count": p.indexer_n_head,
        k + "attention.indexer.key_length": p.indexer_head_dim,
        k + "attention.indexer.top_k": p.indexer_top_k,
        k + "rope.dimension_count": p.rope_dim,
        k + "rope.freq_base": p.rope_freq_base,
        k + "expert_count": p.n_expert,
        k + "expert_used_count": p.n_expert_used,
        k + "expert_feed_forward_length": p.expert_ff,
        k + "expert_shared_count": p.n_expert_shared,
        k + "expert_weights_scale": p.expert_weights_scale,
        k + "expert_weights_norm": p.expert_weights_norm,
        k + "expert_gating_func": p.gating_func,
        k + "swiglu_clamp_exp": [p.swiglu_limit] * block_count,
        k + "swiglu_clamp_shexp": [p.swiglu_limit] * block_count,
        k + "hyper_connection.count": p.hc_mult,
        k + "hyper_connection.sinkhorn_iterations": p.hc_sinkhorn_iters,
        k + "hyper_connection.epsilon": p.hc_eps,
        k + "hash_layer_count": p.n_hash_layer,
    }
    if p.yarn:
        meta[k + "rope.scaling.type"] = "yarn"
        meta[k + "rope.scaling.factor"] = p.yarn["factor"]
        meta[k + "rope.scaling.original_context_length"] = int(p.yarn["original_context_length"])
        meta[k + "rope.scaling.yarn_beta_fast"] = p.yarn["beta_fast"]
        meta[k + "rope.scaling.yarn_beta_slow"] = p.yarn["beta_slow"]
    if block_count > p.n_layer:
        meta[k + "nextn_predict_layers"] = block_count - p.n_layer
        meta[MAIN_MODEL_TENSORS_KEY] = list(SHARED_FROM_MAIN)
    return meta
