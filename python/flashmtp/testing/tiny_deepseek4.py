"""Tiny random DeepSeek-V4 checkpoints for tests: a transformers ``DeepseekV4ForCausalLM`` with every
layer type (window, CSA with indexer, HCA), hash and routed MoE layers, randomised parameters (transformers
zero-fills sinks, ape, hc bases and tid2eid), a synthetic MTP block and a small byte-level BPE tokenizer,
written to disk in the three spellings the converter accepts:

- ``"save_pretrained"``: what transformers 5.x writes (release names under ``model.``, with its quirks) and
  its own config.json;
- ``"release"``: DeepSeek's release names and config.json keys (``compress_ratios``, ``num_hash_layers``,
  ``rope_scaling``), per-expert ``w1/w2/w3``;
- ``"modules"``: transformers' in-memory parameter names (``self_attn.q_a_proj``, fused ``gate_up_proj``).

The MTP block exists only in release names (``mtp.0.*``: transformers drops it), shaped as in
shared/spec/gguf.md. Needs torch, transformers, safetensors and tokenizers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TinyDeepseek4", "make_tiny_deepseek4"]

CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
ADDED_TOKENS = ("<｜tool▁calls▁begin｜>", "<think>", "▁user▁")  # ids 280, 281, 282


def tiny_config(**overrides: Any) -> Any:
    from transformers import DeepseekV4Config

    settings: dict[str, Any] = dict(
        vocab_size=300, hidden_size=256, moe_intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        head_dim=64, partial_rotary_factor=0.25, q_lora_rank=48, o_groups=2, o_lora_rank=32,
        n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
        layer_types=["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention",
                     "compressed_sparse_attention"],
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
        mlp_layer_types=["hash_moe", "hash_moe", "moe", "moe"],
        index_n_heads=8, index_head_dim=32, index_topk=4, sliding_window=8,
        max_position_embeddings=256, num_nextn_predict_layers=1,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                         "beta_fast": 32, "beta_slow": 1},
        bos_token_id=0, eos_token_id=1,
    )
    settings.update(overrides)
    return DeepseekV4Config(**settings)


@dataclass
class TinyDeepseek4:
    config: Any  # DeepseekV4Config
    state: dict[str, Any]  # transformers parameter name -> torch tensor (the model's state_dict)
    mtp: dict[str, Any]  # release name (mtp.0.*) -> torch tensor
    _saved: tuple[dict[str, Any], dict[str, Any]] | None = field(default=None, repr=False)

    def write(self, directory: Path, spelling: str, dtype: Any = None,
              tokenizer_dir: Path | None = None) -> Path:
        """Write config.json, the weights (model.safetensors + mtp.safetensors + index), tokenizer.json and
        tokenizer_config.json to ``directory`` in the given spelling; ``dtype`` casts float weights.
        The tokenizer files are copied from ``tokenizer_dir`` when given, else the fixture's is trained."""
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        if spelling == "modules":
            tensors, config = dict(self.state), self.config.to_dict()
        elif spelling in ("save_pretrained", "release"):
            tensors, config = self._saved_by_transformers(directory)
            if spelling == "release":
                tensors = {_release_name(name): t for name, t in tensors.items()}
                config = _release_config(self.config)
        else:
            raise ValueError(f"unknown spelling {spelling!r}")

        def cast(t: Any) -> Any:
            return t.to(dtype) if dtype is not None and t.is_floating_point() else t.contiguous()

        shards = {"model.safetensors": {k: cast(t) for k, t in tensors.items()},
                  "mtp.safetensors": {k: cast(t) for k, t in self.mtp.items()}}
        weight_map = {}
        for file, part in shards.items():
            save_file(part, str(directory / file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, file))
        index = {"metadata": {}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index))
        (directory / "config.json").write_text(json.dumps(config, indent=1))
        if tokenizer_dir is None:
            _write_tokenizer(directory, self.config.vocab_size)
        else:
            for name in ("tokenizer.json", "tokenizer_config.json"):
                (directory / name).write_bytes((tokenizer_dir / name).read_bytes())
        return directory

    def reference(self) -> tuple[Any, Any]:
        """The oracles in eval mode: transformers' DeepseekV4ForCausalLM holding ``state``, and the MTP head's
        PyTorch reference (flashmtp.testing.ds4_mtp_ref) holding ``mtp``, sharing the model's embedding and
        output matrix."""
        from transformers import DeepseekV4ForCausalLM

        from flashmtp.testing.ds4_mtp_ref import Deepseek4MtpReference

        model = DeepseekV4ForCausalLM(self.config)
        model.load_state_dict(self.state)
        model.eval()
        mtp = Deepseek4MtpReference(self.config, self.mtp, model.model.embed_tokens.weight.detach(),
                                    model.lm_head.weight.detach())
        return model, mtp.eval()

    def _saved_by_transformers(self, directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
        """The tensors and config.json that ``save_pretrained`` writes (computed once: it builds a model)."""
        if self._saved is not None:
            return self._saved
        import tempfile

        from safetensors import safe_open
        from transformers import DeepseekV4ForCausalLM

        model = DeepseekV4ForCausalLM(self.config)
        model.load_state_dict(self.state)
        with tempfile.TemporaryDirectory(dir=directory.parent) as tmp:
            model.save_pretrained(tmp)
            tensors = {}
            for path in sorted(Path(tmp).glob("*.safetensors")):
                with safe_open(str(path), framework="pt") as f:
                    tensors.update({k: f.get_tensor(k) for k in f.keys()})
            config = json.loads((Path(tmp) / "config.json").read_text())
        self._saved = (tensors, config)
        return self._saved


def _release_name(saved: str) -> str:
    """A transformers 5.24 save_pretrained name -> DeepSeek's release name. transformers maps module names
    back to release names but keeps the model. prefix and leaves a few unmapped (the converter takes both)."""
    name = saved.removeprefix("model.")
    fixes = {"embed_tokens.weight": "embed.weight", "hc_head.hc_fn": "hc_head_fn",
             "hc_head.hc_base": "hc_head_base", "hc_head.hc_scale": "hc_head_scale"}
    name = fixes.get(name, name)
    return name.replace(".attn.norm.weight", ".attn.kv_norm.weight")


def _release_config(config: Any) -> dict[str, Any]:
    ratios = {"sliding_attention": 0, **config.compress_rates}
    rope = config.rope_parameters["compress"]
    return {
        "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4",
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers, "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": 1, "head_dim": config.head_dim, "qk_rope_head_dim": config.qk_rope_head_dim,
        "q_lora_rank": config.q_lora_rank, "o_groups": config.o_groups, "o_lora_rank": config.o_lora_rank,
        "n_routed_experts": config.n_routed_experts, "n_shared_experts": config.n_shared_experts,
        "num_experts_per_tok": config.num_experts_per_tok,
        "moe_intermediate_size": config.moe_intermediate_size,
        "scoring_func": config.scoring_func, "norm_topk_prob": config.norm_topk_prob,
        "routed_scaling_factor": config.routed_scaling_factor, "swiglu_limit": config.swiglu_limit,
        "compress_ratios": [ratios[t] for t in config.layer_types] + [0] * config.num_nextn_predict_layers,
        "num_hash_layers": config.mlp_layer_types.count("hash_moe"), "sliding_window": config.sliding_window,
        "index_n_heads": config.index_n_heads, "index_head_dim": config.index_head_dim,
        "index_topk": config.index_topk, "hc_mult": config.hc_mult,
        "hc_sinkhorn_iters": config.hc_sinkhorn_iters,
        "hc_eps": config.hc_eps, "rms_norm_eps": config.rms_norm_eps, "rope_theta": config.rope_theta,
        "compress_rope_theta": config.compress_rope_theta,
        "rope_scaling": {"type": "yarn", "factor": rope["factor"],
                         "original_max_position_embeddings": rope["original_max_position_embeddings"],
                         "beta_fast": rope["beta_fast"], "beta_slow": rope["beta_slow"]},
        "max_position_embeddings": config.max_position_embeddings,
        "num_nextn_predict_layers": config.num_nextn_predict_layers,
        "bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id,
        "tie_word_embeddings": False,
    }


def _write_tokenizer(directory: Path, vocab_size: int) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 20, special_tokens=[BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    text = ["the quick brown fox jumps over the lazy dog", "def convert(hf_dir, out): return out",
            "mixture of experts with multi-token prediction"] * 20
    tokenizer.train_from_iterator(text, trainer)
    # Added tokens not marked special: one llama.cpp still makes CONTROL by its look, two user-defined ones.
    tokenizer.add_tokens([AddedToken(t, special=False) for t in ADDED_TOKENS])
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": BOS, "eos_token": EOS, "add_bos_token": True, "add_eos_token": False,
        "chat_template": CHAT_TEMPLATE}))


def _randomise(state: dict[str, Any], n_expert: int, generator: Any) -> None:
    import torch

    for name, t in state.items():
        if name.endswith("tid2eid"):
            t.copy_(torch.randint(0, n_expert, t.shape, generator=generator))
        elif t.is_floating_point():
            t.copy_(torch.randn(t.shape, generator=generator) * 0.1)


def _mtp_tensors(config: Any, generator: Any) -> dict[str, Any]:
    """The MTP block in release names: a window-only (ratio 0), routed-MoE V4 block plus e/h projections,
    their norms, the shared-head norm and its own hc-head."""
    import torch

    D, H, d, n = config.hidden_size, config.num_attention_heads, config.head_dim, config.hc_mult
    E, I, q = config.n_routed_experts, config.moe_intermediate_size, config.q_lora_rank  # noqa: E741
    g, R, mix = config.o_groups, config.o_lora_rank, (2 + n) * n
    shapes: dict[str, tuple[int, ...]] = {
        "e_proj.weight": (D, D), "h_proj.weight": (D, D), "enorm.weight": (D,), "hnorm.weight": (D,),
        "norm.weight": (D,), "hc_head_fn": (n, n * D), "hc_head_base": (n,), "hc_head_scale": (1,),
        "attn_norm.weight": (D,), "ffn_norm.weight": (D,), "attn.attn_sink": (H,), "attn.wq_a.weight": (q, D),
        "attn.q_norm.weight": (q,), "attn.wq_b.weight": (H * d, q), "attn.wkv.weight": (d, D),
        "attn.kv_norm.weight": (d,), "attn.wo_a.weight": (g * R, H * d // g), "attn.wo_b.weight": (D, g * R),
        "ffn.gate.weight": (E, D), "ffn.gate.bias": (E,), "ffn.shared_experts.w1.weight": (I, D),
        "ffn.shared_experts.w3.weight": (I, D), "ffn.shared_experts.w2.weight": (D, I),
    }
    for mixer in ("attn", "ffn"):
        shapes.update({f"hc_{mixer}_fn": (mix, n * D), f"hc_{mixer}_base": (mix,), f"hc_{mixer}_scale": (3,)})
    for e in range(E):
        shapes.update({f"ffn.experts.{e}.w1.weight": (I, D), f"ffn.experts.{e}.w3.weight": (I, D),
                       f"ffn.experts.{e}.w2.weight": (D, I)})
    return {f"mtp.0.{name}": torch.randn(shape, generator=generator) * 0.1 for name, shape in shapes.items()}


def make_tiny_deepseek4(seed: int = 0, **config_overrides: Any) -> TinyDeepseek4:
    import torch
    from transformers import DeepseekV4ForCausalLM

    config = tiny_config(**config_overrides)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        state = {k: v.clone() for k, v in DeepseekV4ForCausalLM(config).state_dict().items()}
        _randomise(state, config.n_routed_experts, generator)
        mtp = _mtp_tensors(config, generator) if config.num_nextn_predict_layers else {}
    return TinyDeepseek4(config, state, mtp)
