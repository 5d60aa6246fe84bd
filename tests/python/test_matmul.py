"""_core.matmul, _core.ThreadPool and _core.read_bandwidth.

Oracle: float64 numpy products of the weights as the `gguf` package dequantizes them and the activations as
the kernels see them (quantized to the weight type's activation format, then dequantized: gguf for Q8_0X,
which holds our Q8_0 blocks' codes and scales, a numpy restatement of the block layout for Q8_K). Tolerance
|error| <= 1e-4 * sum_j |w_j x_j|: kernels sum in float32 (rounding ~6e-8 per step, a few hundred blocks), so
this leaves a wide margin and still catches a wrong block, scale or sign. Batch invariance is checked bitwise,
as DESIGN.md requires.

Every (weight type, ISA) pair is a test case; pairs whose kernels this build lacks are skipped, with the
reason.
"""

from __future__ import annotations

import numpy as np
import pytest
from flashmtp import _core
from gguf import GGMLQuantizationType as T
from gguf import quants

WEIGHT_TYPES = [T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.MXFP4,
                T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
ISAS = ["scalar", "avx2", "avx512"]
Q8_K = 15
Q8_0X = 64  # internal activation format of the 32-element types (kernels/kernels.h)
CASES = [pytest.param(t, isa, id=f"{t.name.lower()}-{isa}") for t in WEIGHT_TYPES for isa in ISAS]


def require(t: T, isa: str) -> None:
    """Skip unless this CPU has the ISA and its table can multiply type t (and the scalar one quantize it)."""
    if not _core.isa_available(isa):
        pytest.skip(f"CPU or build lacks {isa}")
    if int(t) not in _core.matmul_types(isa):
        pytest.skip(f"no {isa} dot kernel for {t.name} in this build")
    try:
        _core.quantize(int(t), np.zeros(block_cols(t), np.float32), isa="scalar")
    except ValueError:
        pytest.skip(f"no quantizer for {t.name} to make test weights")


def block_cols(t: T) -> int:
    """Columns per test block: a multiple of every type's block size we pair it with."""
    return max(quants.GGML_QUANT_SIZES[t][0], 32)


def random_weights(t: T, n_rows: int, n_cols: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [n_rows, row bytes]: N(0, 1) values quantized by the scalar reference."""
    raw = _core.quantize(int(t), rng.standard_normal(n_rows * n_cols, dtype=np.float32), isa="scalar")
    return raw.reshape(n_rows, -1)


def dequantize_q8_K(raw: np.ndarray, n_cols: int) -> np.ndarray:
    """Q8_K blocks (float32 d, int8 qs[256], int16 bsums[16]; 292 bytes) -> float64 values d * q."""
    blocks = raw.reshape(-1, 292)
    d = blocks[:, :4].copy().view(np.float32).astype(np.float64)
    q = blocks[:, 4:260].copy().view(np.int8).astype(np.float64)
    return (d * q).reshape(-1, n_cols)


def activations_as_seen(t: T, x: np.ndarray) -> np.ndarray:
    """float64 [n_tokens, n_cols]: x after the round trip through t's activation format."""
    act = _core.dtype_info(int(t))["vec_dot_type"]
    if act == int(T.F32):
        return x.astype(np.float64)
    if act == Q8_0X:
        raw = np.stack([_core.quantize(int(T.Q8_0), row, isa="scalar") for row in x])
        return np.asarray(quants.dequantize(raw, T.Q8_0), dtype=np.float64).reshape(x.shape)
    assert act == Q8_K
    raw = np.stack([_core.quantize(act, row, isa="scalar") for row in x])
    return dequantize_q8_K(raw, x.shape[1])


@pytest.mark.parametrize(("t", "isa"), CASES)
def test_matches_float64_oracle(t: T, isa: str) -> None:
    require(t, isa)
    rng = np.random.default_rng(int(t))
    pool = _core.ThreadPool(2)
    for n_rows, n_blocks, n_tokens in [(1, 1, 1), (7, 1, 3), (37, 3, 9), (130, 2, 6)]:
        n_cols = n_blocks * block_cols(t)
        w_raw = random_weights(t, n_rows, n_cols, rng)
        x = rng.standard_normal((n_tokens, n_cols), dtype=np.float32)
        y = _core.matmul(int(t), w_raw, x, pool, isa=isa)
        assert y.dtype == np.float32 and y.shape == (n_tokens, n_rows)
        w = np.asarray(quants.dequantize(w_raw, t), dtype=np.float64).reshape(n_rows, n_cols)
        xa = activations_as_seen(t, x)
        want = xa @ w.T
        magnitude = np.abs(xa) @ np.abs(w).T
        relative = np.abs(y - want) / magnitude
        assert relative.max() <= 1e-4, f"{n_rows}x{n_cols}, {n_tokens} tokens: worst {relative.max():.2e}"


@pytest.mark.parametrize(("t", "isa"), CASES)
def test_batch_invariance_is_bitwise(t: T, isa: str) -> None:
    """A token's outputs do not depend on batch size (1..64), position in the batch or thread count."""
    require(t, isa)
    rng = np.random.default_rng(100 + int(t))
    n_cols, n_rows = 2 * block_cols(t), 23
    w_raw = random_weights(t, n_rows, n_cols, rng)
    x_all = rng.standard_normal((64, n_cols), dtype=np.float32)
    pools = [_core.ThreadPool(1), _core.ThreadPool(2)]
    y_all = _core.matmul(int(t), w_raw, x_all, pools[0], isa=isa)
    np.testing.assert_array_equal(_core.matmul(int(t), w_raw, x_all, pools[1], isa=isa), y_all)
    for n_tokens in range(1, 65):
        source = rng.integers(0, 64, n_tokens)  # slot -> token of x_all, repeats allowed
        y = _core.matmul(int(t), w_raw, x_all[source], pools[n_tokens % 2], isa=isa)
        assert y.tobytes() == y_all[source].tobytes(), f"batch of {n_tokens} differs"


@pytest.mark.parametrize(("t", "isa"), CASES)
def test_vec_dot_slots_match_matmul(t: T, isa: str) -> None:
    """One kernel call on raw activation rows (strided, as matmul lays them out) gives matmul's bits for every
    n_x and slot: the VecDotFn contract seen from outside."""
    require(t, isa)
    rng = np.random.default_rng(200 + int(t))
    n_cols = 3 * block_cols(t)
    w_raw = random_weights(t, 1, n_cols, rng)
    x = rng.standard_normal((4, n_cols), dtype=np.float32)
    want = _core.matmul(int(t), w_raw, x, isa=isa)[:, 0]
    act = _core.dtype_info(int(t))["vec_dot_type"]
    rows = np.stack([_core.quantize(act, row, isa="scalar") for row in x])
    padded = np.zeros((4, rows.shape[1] + 24), np.uint8)
    padded[:, :rows.shape[1]] = rows
    for n_x in range(1, 5):
        for first in range(0, 5 - n_x):
            for x_raw in (rows[first:first + n_x], padded[first:first + n_x, :rows.shape[1]]):
                got = _core.vec_dot(int(t), w_raw[0], x_raw, n_cols, isa=isa)
                assert got.tobytes() == want[first:first + n_x].tobytes(), f"n_x {n_x}, first slot {first}"


def any_supported_type() -> T:
    for t in WEIGHT_TYPES:
        if int(t) in _core.matmul_types():
            return t
    pytest.skip("no weight type has a dot kernel in this build")


def test_strided_rows_and_1d_input() -> None:
    """Rows may be a view into a wider array (GGUF tensors are not padded, but slices are); 1-D x is one
    token and gives a 1-D result; pools of any size agree bitwise."""
    t = any_supported_type()
    rng = np.random.default_rng(3)
    n_cols = 2 * block_cols(t)
    w_raw = random_weights(t, 41, n_cols, rng)
    padded = np.zeros((41, w_raw.shape[1] + 13), np.uint8)
    padded[:, 5:5 + w_raw.shape[1]] = w_raw
    x = rng.standard_normal((5, n_cols), dtype=np.float32)
    y = _core.matmul(int(t), w_raw, x)
    np.testing.assert_array_equal(_core.matmul(int(t), padded[:, 5:5 + w_raw.shape[1]], x), y)
    y1 = _core.matmul(int(t), w_raw, x[2])
    assert y1.shape == (41,)
    np.testing.assert_array_equal(y1, y[2])
    np.testing.assert_array_equal(_core.matmul(int(t), w_raw, np.asfortranarray(x)), y)  # copied to C order
    for n_threads in (1, 2, 3, 5):
        np.testing.assert_array_equal(_core.matmul(int(t), w_raw, x, _core.ThreadPool(n_threads)), y)
    assert _core.matmul(int(t), w_raw[:0], x).shape == (5, 0)
    assert _core.matmul(int(t), w_raw, x[:0]).shape == (0, 41)


def test_bad_arguments_raise_value_error() -> None:
    t = any_supported_type()
    n_cols = block_cols(t)
    w_raw = random_weights(t, 3, n_cols, np.random.default_rng(4))
    x = np.zeros((2, n_cols), np.float32)
    cases = [
        (lambda: _core.matmul(int(t), w_raw.view(np.int8), x), "2-D uint8"),
        (lambda: _core.matmul(int(t), w_raw.reshape(-1), x), "2-D uint8"),
        (lambda: _core.matmul(int(t), w_raw, x.astype(np.float64)), "float32"),
        (lambda: _core.matmul(int(t), w_raw, x.reshape(1, 2, n_cols)), "float32"),
        (lambda: _core.matmul(int(t), w_raw[:, :-1], x), "rows hold"),
        (lambda: _core.matmul(int(t), w_raw[::-1], x), "row stride"),
        (lambda: _core.matmul(1000, w_raw, x), "unknown weight type"),
        (lambda: _core.matmul(int(T.I32), w_raw, x), "dot kernel"),
        (lambda: _core.matmul(int(t), w_raw, x, isa="sse9"), "unknown ISA"),
        (lambda: _core.ThreadPool(0), "n_threads"),
        (lambda: _core.read_bandwidth(100), "n_bytes"),
        (lambda: _core.vec_dot(int(t), w_raw[0], np.zeros((5, 1), np.uint8), n_cols), "x must be uint8"),
        (lambda: _core.vec_dot(int(t), w_raw[0, :-1], np.zeros((1, 1), np.uint8), n_cols), "w_row must be"),
        (lambda: _core.vec_dot(int(t), w_raw[0], np.zeros((1, 1), np.uint8), 0), "multiple of"),
        # One weight row given with a byte stride other than 1 (reversed or every other byte): refused.
        (lambda: _core.matmul(int(t), np.ascontiguousarray(w_raw[:1])[:, ::-1], x), "row stride"),
        (lambda: _core.matmul(int(t), np.repeat(w_raw[:1], 2, axis=1)[:, ::2], x), "row stride"),
        (lambda: _core.matmul(int(t), w_raw[:, :0], x[:, :0]), "positive multiple"),
        # A byte count that would overflow size_t.
        (lambda: _core.vec_dot(int(T.F32), np.zeros(4, np.uint8), np.zeros((1, 4), np.uint8), 2**62 + 1),
         "too many"),
    ]
    if quants.GGML_QUANT_SIZES[t][0] > 1:
        cases.append((lambda: _core.matmul(int(t), w_raw, np.zeros((2, n_cols + 1), np.float32)),
                      "not a multiple of"))
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_read_bandwidth_and_pool() -> None:
    pool = _core.ThreadPool(2)
    assert pool.n_threads == 2
    assert _core.read_bandwidth(1 << 20, pool, 3) > 0
    assert _core.read_bandwidth(1 << 20) > 0
    buffer = np.arange(1 << 16, dtype=np.uint32)
    assert _core.read_seconds(buffer, pool) > 0 and _core.read_seconds(buffer[:7]) >= 0
    with pytest.raises(ValueError, match="C-contiguous"):
        _core.read_seconds(buffer[::2], pool)
