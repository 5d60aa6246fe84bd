"""Quantization recipes: which GGUF type each class of tensor gets, and the fallback for rows that do not
split into whole blocks.

A recipe names two types, one for the routed experts (most of a MoE model's bytes, read once per selected
expert) and one for every other weight matrix (attention, shared expert, compressor and indexer projections,
embeddings, output, the MTP eh_proj). Tensors that are small or numerically delicate are never quantized:
norms, hyper-connection fn/base/scale, attention sinks, compressor position biases (ape), the router weight
and its selection bias stay F32 (llama.cpp keeps ffn_gate_inp unquantized too); the hash-routing table is I32.

| recipe | routed experts | other matrices | general.file_type  |
|--------|----------------|----------------|--------------------|
| f32    | F32            | F32            | ALL_F32            |
| bf16   | BF16           | BF16           | MOSTLY_BF16        |
| q8_0   | Q8_0           | Q8_0           | MOSTLY_Q8_0        |
| q4_k   | Q4_K           | Q8_0           | MOSTLY_Q4_K_M      |
| q3_k   | Q3_K           | Q8_0           | MOSTLY_Q3_K_M      |
| mxfp4  | MXFP4          | Q8_0           | MOSTLY_MXFP4_MOE   |

MXFP4 is exact for DeepSeek's FP4 experts: their E2M1 values times power-of-two scales re-quantize to
themselves. Quantization runs through flashmtp's own kernels (``flashmtp._core.quantize``), whose reference
quantizers reproduce ggml's bit for bit, so a file made here equals one llama-quantize makes from the same
F32 data.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, LlamaFileType
from gguf import GGMLQuantizationType as T

from flashmtp.convert.checkpoint import ConvertError

__all__ = ["RECIPES", "Recipe", "TensorClass", "find_recipe", "tensor_type"]


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


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("f32", T.F32, T.F32, LlamaFileType.ALL_F32),
    Recipe("bf16", T.BF16, T.BF16, LlamaFileType.MOSTLY_BF16),
    Recipe("q8_0", T.Q8_0, T.Q8_0, LlamaFileType.MOSTLY_Q8_0),
    Recipe("q4_k", T.Q4_K, T.Q8_0, LlamaFileType.MOSTLY_Q4_K_M),
    Recipe("q3_k", T.Q3_K, T.Q8_0, LlamaFileType.MOSTLY_Q3_K_M),
    Recipe("mxfp4", T.MXFP4, T.Q8_0, LlamaFileType.MOSTLY_MXFP4_MOE),
)}

# A K-quant whose 256-element block does not divide a row falls back, as in llama-quantize, to a 32-element
# type of about its size; anything still not dividing the row becomes F16 (block 1). llama.cpp sends Q3_K to
# IQ4_NL, which flashmtp does not implement: Q4_0 is the nearest 32-element type it has.
_FALLBACK: dict[T, T] = {T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0}


def find_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ConvertError(f"unknown quantization recipe {name!r}; expected one of: "
                           f"{', '.join(RECIPES)}") from None


def tensor_type(r: Recipe, cls: TensorClass, row_length: int) -> tuple[T, T | None]:
    """The type a tensor of this class and row length gets, and the recipe type it replaced (None if none)."""
    if cls is TensorClass.FLOAT:
        return T.F32, None
    if cls is TensorClass.INDEX:
        return T.I32, None
    wanted = r.experts if cls is TensorClass.EXPERTS else r.matrices
    chosen = wanted
    if row_length % GGML_QUANT_SIZES[chosen][0]:
        chosen = _FALLBACK.get(chosen, T.F16)
        if row_length % GGML_QUANT_SIZES[chosen][0]:
            chosen = T.F16
    return chosen, (wanted if chosen is not wanted else None)
