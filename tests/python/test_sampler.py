"""_core.Sampler: the sampling chain of csrc/runtime/sampler.h.

Oracle: `reference_distribution` below, a numpy restatement of the chain (penalties in float32 as llama.cpp
applies them, then top_k -> top_p -> min_p -> temperature in float64). Tolerance 1e-6 on probabilities: both
sides compute in double, so they differ by a few ulps; 1e-6 is far above that and far below any real error
(a wrong cut or a wrong penalty moves probabilities by more than 1e-3 in these tests). The token ids kept
must match exactly. Sampling is checked with a chi-square goodness-of-fit test at a fixed seed, and as the
inverse CDF of the distribution at the sampler's own uniform number for the position.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flashmtp import _core
from hypothesis import given, settings
from hypothesis import strategies as st

F32 = np.float32
NO_TRUNCATION = {"top_k": 0, "top_p": 1.0, "min_p": 0.0}


def reference_distribution(logits: np.ndarray, history: np.ndarray, *, temperature: float, top_k: int,
                           top_p: float, min_p: float, repetition_penalty: float = 1.0,
                           presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
                           penalty_last_n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(ids, probs) after the chain. Settings are rounded to float32 first, as the sampler stores them."""
    penalised = logits.astype(F32).copy()
    rp, pp, fp = F32(repetition_penalty), F32(presence_penalty), F32(frequency_penalty)
    if penalty_last_n != 0 and (rp != 1 or pp != 0 or fp != 0):
        window = history if penalty_last_n < 0 else history[max(0, len(history) - penalty_last_n):]
        counts = np.bincount(window.astype(np.int64), minlength=len(penalised))
        seen = counts > 0
        x = penalised[seen]
        # llama.cpp: divide positive logits by the penalty, multiply the others; then subtract
        # count * frequency_penalty + presence_penalty.
        x = np.where(x <= 0, x * rp, x / rp)
        penalised[seen] = x - (counts[seen].astype(F32) * fp + pp)
    if F32(temperature) == 0:
        return np.array([int(np.argmax(penalised))]), np.array([1.0])
    ids = np.flatnonzero(penalised > -np.inf)
    by_id = penalised[ids].astype(np.float64)
    ids = ids[np.lexsort((ids, -penalised[ids]))]  # logit down, id up
    if 0 < top_k < len(ids):
        ids = ids[:top_k]
        by_id = penalised[ids].astype(np.float64)  # the sampler sums top_p's normaliser in sorted order here
    values = penalised[ids].astype(np.float64)
    top = values[0]
    if F32(top_p) < 1:
        # Sequential sums, in the sampler's order, so a cut sitting on top_p falls the same way.
        cumulative = np.cumsum(np.exp(values - top) / np.cumsum(np.exp(by_id - top))[-1])
        reached = np.flatnonzero(cumulative >= float(F32(top_p)))
        if len(reached):
            ids, values = ids[:reached[0] + 1], values[:reached[0] + 1]
    if F32(min_p) > 0:
        keep = values >= top + math.log(float(F32(min_p)))
        ids, values = ids[keep], values[keep]
    p = np.exp((values - top) / float(F32(temperature)))
    return ids, p / np.cumsum(p)[-1]


def random_logits(rng: np.random.Generator, n_vocab: int, scale: float = 3.0) -> np.ndarray:
    return (rng.standard_normal(n_vocab) * scale).astype(F32)


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_vocab=st.integers(1, 300),
       temperature=st.one_of(st.just(0.0), st.floats(0.05, 3.0)), top_k=st.integers(0, 60),
       top_p=st.one_of(st.just(1.0), st.floats(0.05, 1.0)),
       min_p=st.one_of(st.just(0.0), st.floats(0.0, 0.6)),
       repetition_penalty=st.one_of(st.just(1.0), st.floats(0.5, 2.0)),
       presence_penalty=st.floats(-1.0, 1.0), frequency_penalty=st.floats(-1.0, 1.0),
       penalty_last_n=st.integers(-1, 40), ties=st.booleans(), masked=st.booleans())
def test_distribution_matches_numpy_reference(seed: int, n_vocab: int, ties: bool, masked: bool,
                                              **params: float) -> None:
    rng = np.random.default_rng(seed)
    logits = random_logits(rng, n_vocab)
    if ties:  # coarse logits: many equal values, so the id tie-break matters at every cut
        logits = np.round(logits).astype(F32)
    if masked and n_vocab > 1:
        logits[rng.integers(0, n_vocab, size=n_vocab // 2)] = -np.inf
        logits[rng.integers(0, n_vocab)] = 0.0  # at least one finite logit
    history = rng.integers(0, n_vocab, size=int(rng.integers(0, 80))).astype(np.int32)
    sampler = _core.Sampler(seed=seed, **params)
    ids, probs = sampler.distribution(logits, history)
    ref_ids, ref_probs = reference_distribution(logits, history, **params)
    assert ids.dtype == np.int32 and probs.dtype == np.float32
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(probs, ref_probs, rtol=0, atol=1e-6)
    assert abs(float(probs.astype(np.float64).sum()) - 1.0) <= 1e-6
    # sample() draws the inverse CDF at uniform(position), up to float32 rounding of the boundaries.
    position = int(rng.integers(0, 2**40))
    token = sampler.sample(logits, history, position)
    u = sampler.uniform(position)
    cumulative = np.cumsum(ref_probs)
    index = min(int(np.searchsorted(cumulative, u, side="right")), len(ref_ids) - 1)
    near_boundary = np.min(np.abs(np.concatenate(([0.0], cumulative)) - u)) < 1e-6
    assert token == ref_ids[index] or near_boundary


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(("top_p", "min_p"), [(0.5, 0.0), (0.9, 0.0), (1.0, 0.01), (0.95, 0.05), (1.0, 0.0)])
def test_large_vocab_matches_numpy_reference(top_p: float, min_p: float, ties: bool) -> None:
    """Without top_k the sampler sorts only as much of the vocabulary as top_p and min_p keep, in chunks
    of 256, then 2048, then 16384: these settings keep 648 to all 20000 tokens, so every chunk boundary is
    crossed (with ties, equal logits straddle the boundaries)."""
    rng = np.random.default_rng(11)
    logits = random_logits(rng, 20000, scale=1.5)
    if ties:
        logits = np.round(logits, 1).astype(F32)
    history = rng.integers(0, 20000, size=64).astype(np.int32)
    params = {"temperature": 0.9, "top_k": 0, "top_p": top_p, "min_p": min_p, "repetition_penalty": 1.1}
    ids, probs = _core.Sampler(**params).distribution(logits, history)
    ref_ids, ref_probs = reference_distribution(logits, history, **params)
    assert len(ref_ids) > 256
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(probs, ref_probs, rtol=0, atol=1e-6)


def test_greedy_is_argmax() -> None:
    rng = np.random.default_rng(0)
    sampler = _core.Sampler(temperature=0.0)
    for position in range(50):
        logits = random_logits(rng, 1000)
        assert sampler.sample(logits, [], position) == int(np.argmax(logits))
    logits = np.zeros(10, dtype=F32)
    logits[[7, 3]] = 5.0
    assert sampler.sample(logits, [], 0) == 3  # ties: the lowest id
    ids, probs = sampler.distribution(logits, [])
    assert ids.tolist() == [3] and probs.tolist() == [1.0]


def test_top_k_1_is_greedy() -> None:
    rng = np.random.default_rng(1)
    for seed in range(5):
        sampler = _core.Sampler(temperature=1.5, top_k=1, top_p=1.0, min_p=0.0, seed=seed)
        for position in range(20):
            logits = random_logits(rng, 500)
            assert sampler.sample(logits, [], position) == int(np.argmax(logits))


def test_samples_follow_distribution_chi_square() -> None:
    """Pearson's chi-square over N = 20000 draws at positions 0..N-1 (seed 1234): the statistic
    sum (observed - expected)^2 / expected must stay below the 0.999 quantile of chi-square with k - 1 degrees
    of freedom (k = tokens in the distribution; 6 here, so 20.52). Truncated tokens must never appear."""
    logits = np.array([3.0, 2.5, 2.0, 1.5, 1.0, 0.2, -1.0, -3.0, -4.0, -9.0], dtype=F32)
    sampler = _core.Sampler(temperature=0.7, top_k=8, top_p=0.999, min_p=0.02, seed=1234)
    ids, probs = sampler.distribution(logits, [])
    assert len(ids) == 6  # top_k and min_p cut the tail: the threshold below is for 5 degrees of freedom
    n = 20000
    draws = np.array([sampler.sample(logits, [], position) for position in range(n)])
    assert set(draws.tolist()) <= set(ids.tolist())
    observed = np.array([(draws == i).sum() for i in ids], dtype=np.float64)
    expected = n * probs.astype(np.float64)
    assert expected.min() >= 5  # the chi-square approximation needs it
    statistic = float(((observed - expected) ** 2 / expected).sum())
    assert statistic < 20.52, f"chi-square {statistic:.2f} >= 20.52 (5 dof, p = 0.001)"


def test_same_seed_same_sequence_different_seeds_differ() -> None:
    rng = np.random.default_rng(2)
    logits = [random_logits(rng, 200, scale=1.0) for _ in range(100)]

    def run(seed: int) -> list[int]:
        sampler = _core.Sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=seed)
        return [sampler.sample(x, [], position) for position, x in enumerate(logits)]

    assert run(5) == run(5)
    assert run(5) != run(6)  # 100 draws from ~200 plausible tokens: equal only by a ~1e-200 chance


def test_random_numbers_are_tied_to_position() -> None:
    """The draw at position p depends on (seed, p) only: not on earlier calls, their order or their count."""
    rng = np.random.default_rng(3)
    logits = [random_logits(rng, 300, scale=1.0) for _ in range(64)]
    fresh = _core.Sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=9)
    used = _core.Sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=9)
    forward = [fresh.sample(x, [], p) for p, x in enumerate(logits)]
    for p in rng.permutation(64):  # other order, repeated draws (as a rewind re-samples a position)
        used.sample(logits[p], [], int(p))
        used.sample(logits[p], [], int(p) + 1000)
    backward = [used.sample(logits[p], [], p) for p in reversed(range(64))][::-1]
    assert forward == backward
    assert fresh.uniform(10) == used.uniform(10)
    assert fresh.uniform(10, 0) != fresh.uniform(10, 1)


def test_penalties_match_llama_cpp() -> None:
    """llama.cpp's penalties: a token seen c > 0 times in the last penalty_last_n tokens has a positive logit
    divided by repetition_penalty, a non-positive one multiplied; then c * frequency_penalty +
    presence_penalty is subtracted. Oracle: those formulas by hand, float32, then a float64 softmax."""
    logits = np.array([2.0, -2.0, 1.0, 0.5, 0.0], dtype=F32)
    history = np.array([2, 0, 1, 0, 4], dtype=np.int32)  # window of 4: token 0 twice, 1 and 4 once; 2 outside
    sampler = _core.Sampler(temperature=1.0, repetition_penalty=1.25, presence_penalty=0.5,
                            frequency_penalty=0.125, penalty_last_n=4, **NO_TRUNCATION)
    expected = np.array([2.0 / 1.25 - (2 * 0.125 + 0.5), -2.0 * 1.25 - (0.125 + 0.5), 1.0, 0.5,
                         0.0 * 1.25 - (0.125 + 0.5)])
    ids, probs = sampler.distribution(logits, history)
    p = np.exp(expected - expected.max())
    p /= p.sum()
    np.testing.assert_array_equal(ids, np.argsort(-expected, kind="stable"))
    np.testing.assert_allclose(probs, p[ids], rtol=0, atol=1e-6)


@pytest.mark.parametrize(("name", "value"), [
    ("temperature", -0.1), ("temperature", math.nan), ("top_k", -1), ("top_p", 0.0), ("top_p", 1.01),
    ("min_p", -0.01), ("min_p", 1.5), ("repetition_penalty", 0.0), ("repetition_penalty", -1.0),
    ("presence_penalty", math.inf), ("frequency_penalty", math.nan), ("penalty_last_n", -2),
])
def test_invalid_settings_raise_value_error(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        _core.Sampler(**{name: value})


def test_bad_input_raises_value_error() -> None:
    sampler = _core.Sampler()
    logits = np.zeros(10, dtype=F32)
    with pytest.raises(ValueError, match="float32"):
        sampler.sample(logits.astype(np.float64), [], 0)
    with pytest.raises(ValueError, match="1-D"):
        sampler.sample(logits.reshape(2, 5), [], 0)
    with pytest.raises(ValueError, match=r"history\[1\] = 10"):
        sampler.sample(logits, [3, 10], 0)
    with pytest.raises(ValueError, match="history"):
        sampler.sample(logits, [-1], 0)
    with pytest.raises(ValueError, match="integer"):
        sampler.sample(logits, [1.5], 0)
    logits[2] = np.nan
    with pytest.raises(ValueError, match="logit of token 2"):
        sampler.distribution(logits, [])
    with pytest.raises(ValueError, match="-inf"):
        sampler.distribution(np.full(4, -np.inf, dtype=F32), [])
