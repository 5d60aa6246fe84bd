"""vec_dot of every weight type and ISA against the gguf package (the value oracle) and numpy in float64.

Weights are random quants with sane scales, encoded by gguf's own quantizer where it has one; activations are
quantized to our Q8_0X rows, whose values are those of our Q8_0 blocks (bit-exact to gguf's, tested elsewhere)
as gguf dequantizes them. The kernels
sum exact integer products and differ from the float64 dot only by float rounding: the bound is
(blocks + 4) * 2^-24 * sum|w_i x_i|, doubled for the types with a min (see tests/cpp/test_vec_dot.cpp).
This is where MXFP4's value semantics (E2M1 table, E8M0 scale 2^(e-127)) are pinned to the ecosystem's.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import quants

core = pytest.importorskip("flashmtp._core")

Q8_0X = 64  # internal activation format (kernels/kernels.h): Q8_0's codes and scales, rearranged

WEIGHT_TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.MXFP4]
ISAS = [isa for isa in ("scalar", "avx2", "avx512") if core.isa_available(isa)]


def activation_rows(qtype: Q, n: int, n_x: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """[n_x, row bytes] in the weight type's vec_dot_type, and their float64 values."""
    vec_dot_type = core.dtype_info(int(qtype))["vec_dot_type"]
    floats = rng.uniform(-1, 1, size=(n_x, n)).astype(np.float32)
    raw = np.stack([core.quantize(vec_dot_type, row) for row in floats])
    if vec_dot_type == int(Q.F32):
        return raw, floats.astype(np.float64)
    assert vec_dot_type == Q8_0X
    q8_0 = np.stack([core.quantize(int(Q.Q8_0), row) for row in floats])
    values = quants.dequantize(q8_0, Q.Q8_0).reshape(n_x, n)
    ours = np.stack([core.dequantize(Q8_0X, row, n) for row in raw])
    assert ours.tobytes() == values.astype(np.float32).tobytes()
    return raw, values.astype(np.float64)


def weight_row(qtype: Q, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Raw bytes of one row and its float64 values, both from gguf; block scales span 2^-10 .. 2^8."""
    block = quants.GGML_QUANT_SIZES[qtype][0]
    scales = np.exp2(rng.uniform(-10, 8, size=(n // block, 1)))
    values = (rng.uniform(-1, 1, size=(n // block, block)) * scales).astype(np.float32).reshape(n)
    raw = quants.quantize(values, qtype)  # float types come back as float16/float32 arrays
    return raw.view(np.uint8).reshape(-1), quants.dequantize(raw, qtype).astype(np.float64).reshape(n)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", WEIGHT_TYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("n", [32, 96, 1056, 4096])
def test_vec_dot_matches_gguf(qtype: Q, n: int, isa: str) -> None:
    rng = np.random.default_rng(n * 131 + int(qtype))
    w_raw, w = weight_row(qtype, n, rng)
    x_raw, x = activation_rows(qtype, n, 4, rng)
    got = core.vec_dot(int(qtype), w_raw, x_raw, n, isa)
    exact = x @ w
    mass = np.abs(x * w).sum(axis=1)
    blocks = n // quants.GGML_QUANT_SIZES[qtype][0]
    factor = 2.0 if qtype in (Q.Q4_1, Q.Q5_1) else 1.0
    bound = factor * (blocks + 4) * 2.0**-24 * mass
    assert np.all(np.abs(got - exact) <= bound), (got, exact, bound)
