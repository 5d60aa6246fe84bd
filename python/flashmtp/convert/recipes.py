"""Quantization recipes: which GGUF type each class of tensor gets, and the fallback for rows that do not
split into whole blocks.

A recipe names two types, one for the routed experts (most of a MoE model's bytes, read once per selected
expert) and one for every other weight matrix (attention, shared expert, compressor and indexer projections,
embeddings, output, the MTP eh_proj). Tensors that are small or numerically delicate are never quantized:
norms, hyper-connection fn/base/scale, attention sinks, compressor position biases (ape), the router weight
and its selection bias stay F32 (llama.cpp keeps ffn_gate_inp unquantized too); the hash-routing table is I32.

Quantization runs through flashmtp's own kernels (``flashmtp._core.quantize``), whose reference quantizers
reproduce ggml's bit for bit, so a file made here equals one that llama-quantize makes from the same F32 data.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gguf import GGMLQuantizationType as T
from gguf import LlamaFileType

from flashmtp.convert.checkpoint import ConvertError

__all__ = ["RECIPES", "Recipe", "TensorClass", "block_size", "recipe"]


class TensorClass(enum.Enum):
    EXPERTS = "routed experts"
    MATRIX = "matrix"
    FLOAT = "kept F32"
    INDEX = "kept I32"


@dataclass(frozen=True)
class Recipe:
    name: str
    experts: T
    matrices: T
    file_type: LlamaFileType
    summary: str


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("f32", T.F32, T.F32, LlamaFileType.ALL_F32, "everything F32 (the exact reference)"),
    Recipe("bf16", T.BF16, T.BF16, LlamaFileType.MOSTLY_BF16, "matrices BF16 (exact for BF16 checkpoints)"),
    Recipe("q8_0", T.Q8_0, T.Q8_0, LlamaFileType.MOSTLY_Q8_0, "matrices Q8_0"),
    Recipe("q4_k", T.Q4_K, T.Q8_0, LlamaFileType.MOSTLY_Q4_K_M, "routed experts Q4_K, other matrices Q8_0"),
    Recipe("q3_k", T.Q3_K, T.Q8_0, LlamaFileType.MOSTLY_Q3_K_M, "routed experts Q3_K, other matrices Q8_0"),
    Recipe("mxfp4", T.MXFP4, T.Q8_0, LlamaFileType.MOSTLY_MXFP4_MOE,
           "routed experts MXFP4, other matrices Q8_0"),
)}

# A type whose block does not divide a row falls back like llama-quantize does, to a 32-element type of about
# the same size, then to F16 (block 1). llama.cpp sends Q3_K to IQ4_NL, which flashmtp does not implement:
# Q4_0 is the nearest 32-element type it has.
_FALLBACK: dict[T, T] = {T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


def recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ConvertError(f"unknown quantization recipe {name!r}; expected one of: "
                           f"{', '.join(RECIPES)}") from None


def block_size(qtype: T) -> int:
    from gguf import GGML_QUANT_SIZES

    return GGML_QUANT_SIZES[qtype][0]


def tensor_type(r: Recipe, cls: TensorClass, row_length: int) -> tuple[T, T | None]:
    """The type a tensor of this class and row length gets, and the recipe type it replaced (None if none)."""
    if cls is TensorClass.FLOAT:
        return T.F32, None
    if cls is TensorClass.INDEX:
        return T.I32, None
    wanted = r.experts if cls is TensorClass.EXPERTS else r.matrices
    chosen = wanted
    if row_length % block_size(chosen):
        chosen = _FALLBACK.get(chosen, T.F16)
        if row_length % block_size(chosen):
            chosen = T.F16
    return chosen, (wanted if chosen is not wanted else None)
