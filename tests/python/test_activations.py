"""SwiGLU and exp kernels (kernels/ref/act_ref.cpp and their SIMD versions).

Oracles: numpy in float64 for the value (error bound in ulp of the float32 result), and the scalar reference
for the bits: every ISA must give identical bits, so that a model's output does not depend on the ISA beyond
the dot products.
"""

import numpy as np
import pytest
from flashmtp import _core

ISAS = [isa for isa in ("scalar", "avx2", "avx512") if _core.isa_available(isa)]


def silu_mul64(gate, up, limit):
    g = np.minimum(gate.astype(np.float64), limit)
    u = np.clip(up.astype(np.float64), -limit, limit)
    with np.errstate(over="ignore", invalid="ignore"):  # -inf / inf: NaN, as silu(-inf) is in float
        return g / (1.0 + np.exp(-g)) * u


def inputs(n=100_000, seed=0):
    rng = np.random.default_rng(seed)
    gate = np.concatenate([
        rng.normal(0, 4, n).astype(np.float32),
        np.array([0.0, -0.0, 1e-30, -1e-30, 20, -20, 87, -87, 88.5, -88.5, 89, -89, 103, -103, 104, -104,
                  200, -200, 1e30, -1e30, np.inf, -np.inf], dtype=np.float32),
    ])
    up = rng.normal(0, 2, gate.size).astype(np.float32)
    return gate, up


@pytest.mark.parametrize("limit", [np.inf, 10.0])
def test_swiglu_within_3_ulp_of_float64(limit):
    gate, up = inputs()
    got = _core.swiglu(gate, up, limit)
    want = silu_mul64(gate, up, limit)
    finite = np.isfinite(want)
    assert np.array_equal(np.isfinite(got), finite)
    ulp = np.spacing(np.abs(want[finite]).astype(np.float32)).astype(np.float64)
    err = np.abs(got[finite].astype(np.float64) - want[finite]) / ulp
    # Three rounded operations after exp (1 +, /, *) plus exp's own ~1 ulp: measured at most 2.3 ulp over 10^5
    # normal samples. Below 1e-30 the quotient g / (1 + e^-g) meets e^-g's overflow (g < -88.7 gives -0, for a
    # true value of about g e^g): compared absolutely there.
    big = np.abs(want[finite]) >= 1e-30
    assert err[big].max() <= 3, f"max error {err[big].max():.2f} ulp"
    assert np.abs(got[finite][~big] - want[finite][~big]).max(initial=0) < 1e-36


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("limit", [np.inf, 10.0, 0.5])
def test_swiglu_bits_identical_across_isas(isa, limit):
    gate, up = inputs(seed=1)
    for n in (1, 7, 8, 15, 16, 17, 33, gate.size):  # every tail length of the 8- and 16-lane loops
        ref = _core.swiglu(gate[:n], up[:n], limit, isa="scalar")
        got = _core.swiglu(gate[:n], up[:n], limit, isa=isa)
        assert np.array_equal(ref.view(np.uint32), got.view(np.uint32)), f"{isa}, n={n}"


@pytest.mark.parametrize("isa", ISAS)
def test_swiglu_nan_propagates(isa):
    gate = np.array([np.nan, 1.0, np.nan] + [0.5] * 16, dtype=np.float32)
    up = np.array([1.0, np.nan, np.nan] + [0.5] * 16, dtype=np.float32)
    got = _core.swiglu(gate, up, 10.0, isa=isa)
    assert np.isnan(got[:3]).all() and np.isfinite(got[3:]).all()


def test_swiglu_bad_arguments():
    with pytest.raises(ValueError, match="same shape"):
        _core.swiglu(np.zeros(3, np.float32), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="limit must be positive"):
        _core.swiglu(np.zeros(3, np.float32), np.zeros(3, np.float32), 0.0)


def test_exp_row_within_2_ulp_of_float64():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.uniform(-87, 88.7, 200_000), rng.normal(0, 1, 10_000)]).astype(np.float32)
    got = _core.exp_row(x, 0.5).astype(np.float64)
    want = np.exp((x - np.float32(0.5)).astype(np.float64))  # the kernel subtracts in float32 too
    ulp = np.spacing(want.astype(np.float32)).astype(np.float64)
    assert (np.abs(got - want) / ulp).max() <= 2


@pytest.mark.parametrize("isa", ISAS)
def test_exp_row_bits_identical_across_isas(isa):
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(0, 30, 4099),
                        [0, -0.0, 88.7, 88.8, 89, 100, -87.5, -103, -104, -200, np.inf, -np.inf, np.nan]])
    x = x.astype(np.float32)
    for n in (1, 7, 8, 15, 16, 17, x.size):
        ref = _core.exp_row(x[:n], -1.25, isa="scalar")
        got = _core.exp_row(x[:n], -1.25, isa=isa)
        assert np.array_equal(ref.view(np.uint32), got.view(np.uint32)), f"{isa}, n={n}"
    edge = _core.exp_row(np.float32([89, -104, np.inf, -np.inf, np.nan]), isa=isa)
    assert edge[0] == np.inf and edge[1] == 0 and edge[2] == np.inf and edge[3] == 0 and np.isnan(edge[4])
