"""PyTorch reference of DeepSeek-V4's MTP (next-n prediction) layer, the oracle of flashmtp's MTP head and
the module models/recipes/train_tiny_v4.py trains.

transformers drops the MTP weights (``mtp.0.*``), so this builds the layer from transformers' own V4 parts,
following shared/spec/deepseek4.md "MTP" (DeepSeek's release ``MTPBlock``, llama.cpp's ``graph_mtp``):

- inputs: the main model's final residual streams X [T, n_hc, D] (after its last block, BEFORE its output
  hc-head and norm) at positions 0..T-1, and the ids of the NEXT tokens [T] (token t+1 at position t);
- e = RMS_w(embed(next), enorm), the same for every stream; h_k = RMS_w(X_k, hnorm);
  streams_k = e_proj(e) + h_proj(h_k) (the GGUF's eh_proj is [e_proj | h_proj] along the input);
- one ``DeepseekV4DecoderLayer`` configured as a window layer (``sliding_attention``, main RoPE) with routed
  (``moe``, learned gate + bias) experts, at positions 0..T-1, causal window mask;
- its own hc-head (``mtp.0.hc_head_*``), shared_head_norm (``mtp.0.norm``) and the MAIN model's output
  matrix -> logits predicting token t+2; its block output streams feed recursive drafting.

Everything is float32 and eager; weights come and go in DeepSeek's release names (``mtp.0.*``, the names
the converter reads and tiny_deepseek4 writes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import DeepseekV4Config, DeepseekV4ForCausalLM
from transformers.masking_utils import create_sliding_window_causal_mask
from transformers.models.deepseek_v4.modeling_deepseek_v4 import (
    DeepseekV4DecoderLayer,
    DeepseekV4HyperHead,
    DeepseekV4RMSNorm,
    DeepseekV4RotaryEmbedding,
)

__all__ = ["Deepseek4MtpReference", "draft_reference", "forward_with_streams", "initial_mtp_state",
           "main_final_streams", "mtp_layer_config"]

PREFIX = "mtp.0."

# Release name (after "mtp.0.") -> parameter name inside Deepseek4MtpReference, for every tensor except the
# routed experts (fused in transformers: see _EXPERT_W).
_RELEASE_TO_MODULE = {
    "e_proj.weight": "e_proj.weight", "h_proj.weight": "h_proj.weight",
    "enorm.weight": "enorm.weight", "hnorm.weight": "hnorm.weight", "norm.weight": "norm.weight",
    "hc_head_fn": "hc_head.hc_fn", "hc_head_base": "hc_head.hc_base", "hc_head_scale": "hc_head.hc_scale",
    "attn_norm.weight": "block.input_layernorm.weight",
    "ffn_norm.weight": "block.post_attention_layernorm.weight",
    "hc_attn_fn": "block.attn_hc.fn", "hc_attn_base": "block.attn_hc.base",
    "hc_attn_scale": "block.attn_hc.scale",
    "hc_ffn_fn": "block.ffn_hc.fn", "hc_ffn_base": "block.ffn_hc.base", "hc_ffn_scale": "block.ffn_hc.scale",
    "attn.attn_sink": "block.self_attn.sinks",
    "attn.wq_a.weight": "block.self_attn.q_a_proj.weight",
    "attn.q_norm.weight": "block.self_attn.q_a_norm.weight",
    "attn.wq_b.weight": "block.self_attn.q_b_proj.weight",
    "attn.wkv.weight": "block.self_attn.kv_proj.weight",
    "attn.kv_norm.weight": "block.self_attn.kv_norm.weight",
    "attn.wo_a.weight": "block.self_attn.o_a_proj.weight",
    "attn.wo_b.weight": "block.self_attn.o_b_proj.weight",
    "ffn.gate.weight": "block.mlp.gate.weight",
    "ffn.gate.bias": "block.mlp.gate.e_score_correction_bias",
    "ffn.shared_experts.w1.weight": "block.mlp.shared_experts.gate_proj.weight",
    "ffn.shared_experts.w3.weight": "block.mlp.shared_experts.up_proj.weight",
    "ffn.shared_experts.w2.weight": "block.mlp.shared_experts.down_proj.weight",
}
_GATE_UP, _DOWN = "block.mlp.experts.gate_up_proj", "block.mlp.experts.down_proj"


def mtp_layer_config(config: DeepseekV4Config) -> DeepseekV4Config:
    """``config`` reduced to the MTP block: one layer, window attention (compress ratio 0), routed MoE."""
    settings = config.to_dict() | {"num_hidden_layers": 1, "layer_types": ["sliding_attention"],
                                   "mlp_layer_types": ["moe"]}
    return DeepseekV4Config(**settings, attn_implementation="eager")


class Deepseek4MtpReference(nn.Module):
    """The MTP layer. ``embed`` [V, D] and ``lm_head`` [V, D] are the main model's: pass its parameters
    (``model.model.embed_tokens.weight``, ``model.lm_head.weight``) to train them jointly, or plain tensors
    (kept as buffers). ``mtp_state`` holds the ``mtp.0.*`` release tensors; ``None`` leaves transformers'
    initialisation (see ``initial_mtp_state``)."""

    def __init__(self, config: DeepseekV4Config, mtp_state: dict[str, torch.Tensor] | None,
                 embed: torch.Tensor, lm_head: torch.Tensor) -> None:
        super().__init__()
        self.config = mtp_layer_config(config)
        D, eps = config.hidden_size, config.rms_norm_eps
        self.enorm = DeepseekV4RMSNorm(D, eps=eps)
        self.hnorm = DeepseekV4RMSNorm(D, eps=eps)
        self.e_proj = nn.Linear(D, D, bias=False)
        self.h_proj = nn.Linear(D, D, bias=False)
        self.block = DeepseekV4DecoderLayer(self.config, layer_idx=0)
        self.hc_head = DeepseekV4HyperHead(self.config)
        self.norm = DeepseekV4RMSNorm(D, eps=eps)
        self.rotary_emb = DeepseekV4RotaryEmbedding(self.config)
        for name, t in (("embed", embed), ("lm_head", lm_head)):
            if isinstance(t, nn.Parameter):
                setattr(self, name, t)
            else:
                self.register_buffer(name, t, persistent=False)
        self.load_release_state(mtp_state if mtp_state is not None else initial_mtp_state(config))

    def load_release_state(self, mtp_state: dict[str, torch.Tensor]) -> None:
        """Copy the ``mtp.0.*`` tensors in; every one must be present and no other."""
        E = self.config.n_routed_experts
        expected = {PREFIX + k for k in _RELEASE_TO_MODULE}
        expected |= {f"{PREFIX}ffn.experts.{e}.{w}.weight" for e in range(E) for w in ("w1", "w2", "w3")}
        missing, unknown = sorted(expected - set(mtp_state)), sorted(set(mtp_state) - expected)
        if missing or unknown:
            raise ValueError(f"MTP state: missing {missing[:5]}, unknown {unknown[:5]}")
        params = dict(self.named_parameters()) | dict(self.named_buffers())
        with torch.no_grad():
            for release, module in _RELEASE_TO_MODULE.items():
                params[module].copy_(mtp_state[PREFIX + release])
            for e in range(E):
                w = {k: mtp_state[f"{PREFIX}ffn.experts.{e}.{k}.weight"] for k in ("w1", "w2", "w3")}
                params[_GATE_UP][e].copy_(torch.cat([w["w1"], w["w3"]]))  # gate rows first: chunk(2) order
                params[_DOWN][e].copy_(w["w2"])

    def release_state(self) -> dict[str, torch.Tensor]:
        """The ``mtp.0.*`` release tensors (detached copies), as the converter reads them."""
        params = dict(self.named_parameters()) | dict(self.named_buffers())
        out = {PREFIX + release: params[module].detach().clone()
               for release, module in _RELEASE_TO_MODULE.items()}
        intermediate = self.config.moe_intermediate_size
        for e in range(self.config.n_routed_experts):
            gate_up = params[_GATE_UP][e].detach()
            out[f"{PREFIX}ffn.experts.{e}.w1.weight"] = gate_up[:intermediate].clone()
            out[f"{PREFIX}ffn.experts.{e}.w3.weight"] = gate_up[intermediate:].clone()
            out[f"{PREFIX}ffn.experts.{e}.w2.weight"] = params[_DOWN][e].detach().clone()
        return out

    def input_streams(self, streams: torch.Tensor, next_ids: torch.Tensor) -> torch.Tensor:
        """The block's input [..., T, n_hc, D] from main streams [..., T, n_hc, D] and next ids [..., T]."""
        e = self.e_proj(self.enorm(self.embed[next_ids]))  # [..., T, D]: the same for every stream
        return e.unsqueeze(-2) + self.h_proj(self.hnorm(streams))

    def head(self, out_streams: torch.Tensor) -> torch.Tensor:
        """Logits [..., T, V] of the token two ahead from the block's output streams [..., T, n_hc, D]."""
        return nn.functional.linear(self.norm(self.hc_head(out_streams)), self.lm_head)

    def forward_batch(self, streams: torch.Tensor,
                      next_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` over a batch: streams [B, T, n_hc, D], next_ids [B, T] -> (logits [B, T, V],
        out_streams [B, T, n_hc, D])."""
        B, T = next_ids.shape
        x = self.input_streams(streams, next_ids)
        positions = torch.arange(T).unsqueeze(0).expand(B, -1)
        mask = create_sliding_window_causal_mask(config=self.config, inputs_embeds=x[:, :, 0],
                                                 attention_mask=None, cache=None, position_ids=positions)
        # The block is a window layer: it reads the "main" RoPE only (the "compress" one is for CSA/HCA).
        rope = {"main": self.rotary_emb(x, position_ids=positions, layer_type="main")}
        out = self.block(x, position_embeddings=rope, position_ids=positions, attention_mask=mask,
                         input_ids=next_ids, cache=None)
        return self.head(out), out

    def forward(self, streams: torch.Tensor, next_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """streams [T, n_hc, D] at positions 0..T-1, next_ids [T] -> (logits [T, V],
        out_streams [T, n_hc, D])."""
        logits, out = self.forward_batch(streams.unsqueeze(0), next_ids.unsqueeze(0))
        return logits[0], out[0]


def initial_mtp_state(config: DeepseekV4Config) -> dict[str, torch.Tensor]:
    """Freshly initialised ``mtp.0.*`` tensors: the block and hc-head as transformers initialises a V4 layer
    (``_init_weights`` of a one-layer model), e_proj/h_proj normal(initializer_range), norms one."""
    c = mtp_layer_config(config)
    model = DeepseekV4ForCausalLM(c)
    module_state = {"block." + k.removeprefix("model.layers.0."): v for k, v in model.state_dict().items()
                    if k.startswith("model.layers.0.")}
    module_state |= {"hc_head." + k.removeprefix("model.hc_head."): v for k, v in model.state_dict().items()
                     if k.startswith("model.hc_head.")}
    D = config.hidden_size
    std = config.initializer_range
    module_state |= {"e_proj.weight": torch.randn(D, D) * std, "h_proj.weight": torch.randn(D, D) * std}
    module_state |= {name: torch.ones(D) for name in ("enorm.weight", "hnorm.weight", "norm.weight")}
    out = {PREFIX + release: module_state[module].clone() for release, module in _RELEASE_TO_MODULE.items()}
    intermediate = config.moe_intermediate_size
    for e in range(config.n_routed_experts):
        out[f"{PREFIX}ffn.experts.{e}.w1.weight"] = module_state[_GATE_UP][e][:intermediate].clone()
        out[f"{PREFIX}ffn.experts.{e}.w3.weight"] = module_state[_GATE_UP][e][intermediate:].clone()
        out[f"{PREFIX}ffn.experts.{e}.w2.weight"] = module_state[_DOWN][e].clone()
    return out


def forward_with_streams(model: DeepseekV4ForCausalLM, input_ids: torch.Tensor,
                         **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits [B, T, V] and its final residual streams [B, T, n_hc, D]: the input of its output
    hc-head, captured by a hook so the logits are exactly the model's own forward."""
    captured: list[torch.Tensor] = []
    hook = model.model.hc_head.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    try:
        logits = model(input_ids, **kwargs).logits
    finally:
        hook.remove()
    return logits, captured[0]


def main_final_streams(model: DeepseekV4ForCausalLM, input_ids: torch.Tensor) -> torch.Tensor:
    """The main model's final residual streams [T, n_hc, D] for input_ids [1, T] (after the last block,
    before the output hc-head and norm)."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be [1, T], got {tuple(input_ids.shape)}")
    return forward_with_streams(model, input_ids)[1][0]


def draft_reference(model: DeepseekV4ForCausalLM, mtp: Deepseek4MtpReference, input_ids: Any,
                    k: int) -> list[int]:
    """Greedy recursive drafting of ``k`` tokens after ``input_ids`` ([T] or [1, T] ids).

    The main model gives t_T = argmax of its last logits; the MTP layer over positions 0..T-1 with next ids
    t_1..t_T gives d1 (its argmax at T-1, a guess of t_{T+1}). Step j+1 appends one MTP position: its input
    is the MTP layer's own output streams at the previous position and the embedding of d_j. Every step
    recomputes the whole sequence (a reference, not a cache)."""
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(-1)
    logits, streams = forward_with_streams(model, ids.unsqueeze(0))
    streams = streams[0]  # [T, n_hc, D]
    next_ids = torch.cat([ids[1:], logits[0, -1].argmax().reshape(1)])  # [T]
    drafts: list[int] = []
    for _ in range(k):
        mtp_logits, out = mtp(streams, next_ids)
        drafts.append(int(mtp_logits[-1].argmax()))
        streams = torch.cat([streams, out[-1:]])
        next_ids = torch.cat([next_ids, torch.tensor(drafts[-1:])])
    return drafts
