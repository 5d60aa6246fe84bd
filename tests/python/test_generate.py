"""flashmtp.Model.generate, the C++ generation loop (runtime/generate.h), and both `run` command lines.

Greedy generation is checked against an oracle loop written here from session.decode + argmax; seeded sampling
for reproducibility; streaming against the joined text; the context check for its message. The shipped tiny
llama has random weights, so its text is noise: only the real SmolLM2 run shows readable output.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flashmtp import _core
from flashmtp.model import Model
from flashmtp.testing.models import fetch_or_skip

ROOT = Path(__file__).resolve().parent.parent.parent
TINY = ROOT / "models" / "tiny-llama.gguf"
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def tiny() -> Model:
    return Model(TINY, threads=2)


def oracle(model: Model, prompt: str, max_tokens: int, sampler: _core.Sampler | None = None) -> list[int]:
    """Continuation of prompt: prefill, then pick/decode until max_tokens or an end-of-generation token. Picks
    the argmax, or with a sampler samples each token at its absolute position with everything before it as
    history."""
    tokens = model.tokenize(prompt)
    session = model.session(n_ctx=len(tokens) + max_tokens)
    logits = session.decode(np.array(tokens, dtype=np.int32), n_logits=1)[0]
    out: list[int] = []
    while len(out) < max_tokens:
        if sampler is None:
            token = int(np.argmax(logits))
        else:
            token = sampler.sample(logits, tokens + out, len(tokens) + len(out))
        out.append(token)
        if model.tokenizer.is_eog(token):
            break
        logits = session.decode(np.array([token], dtype=np.int32), n_logits=1)[0]
    return out


def test_greedy_matches_oracle(tiny: Model) -> None:
    text = tiny.generate(PROMPT, max_tokens=24, temperature=0)
    ids = oracle(tiny, PROMPT, 24)
    expected = tiny.detokenize([i for i in ids if not tiny.tokenizer.is_eog(i)])
    assert text == expected
    assert tiny.generate(PROMPT, max_tokens=24, temperature=0) == text
    stats = tiny.last_stats
    assert stats.n_prompt == len(tiny.tokenize(PROMPT)) and stats.n_generated == len(ids)
    assert stats.prefill_s > 0 and stats.generate_s > 0 and stats.generated_tokens_per_s > 0



def test_generation_time_leaves_the_prompt_out(tiny: Model) -> None:
    """generate_s counts the generation steps only, the prompt's decode is prefill_s: with one new token, the
    generation step samples from the prefill's logits and decodes nothing, so it is a small part of a long
    prompt's decode (it once held the whole prefill: tokens/s were understated)."""
    prompt = " ".join(["once upon a time"] * 14)  # ~210 tokens of the 256 the model was trained on
    tiny.generate(prompt, max_tokens=1, temperature=0)
    stats = tiny.last_stats
    assert stats.n_prompt > 150 and stats.n_generated == 1
    assert 0 < stats.generate_s < 0.5 * stats.prefill_s

def test_seeded_sampling(tiny: Model) -> None:
    a = tiny.generate(PROMPT, max_tokens=24, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1)
    b = tiny.generate(PROMPT, max_tokens=24, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1)
    c = tiny.generate(PROMPT, max_tokens=24, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=2)
    assert a == b
    assert a != c
    ids = oracle(tiny, PROMPT, 24, _core.Sampler(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=1))
    assert a == tiny.detokenize([i for i in ids if not tiny.tokenizer.is_eog(i)])


def test_stream_joins_to_text(tiny: Model) -> None:
    kwargs = dict(max_tokens=20, temperature=0.9, seed=7)
    pieces = list(tiny.generate(PROMPT, stream=True, **kwargs))
    assert all(isinstance(p, str) and p for p in pieces)
    assert "".join(pieces) == tiny.generate(PROMPT, **kwargs)


@pytest.mark.parametrize("max_tokens", [1, 5])
def test_max_tokens(tiny: Model, max_tokens: int) -> None:
    tiny.generate(PROMPT, max_tokens=max_tokens, temperature=0.9, seed=3)
    assert 1 <= tiny.last_stats.n_generated <= max_tokens
    if not tiny.last_stats.stopped_at_eos:
        assert tiny.last_stats.n_generated == max_tokens


def test_bad_requests(tiny: Model) -> None:
    n_prompt = len(tiny.tokenize(PROMPT))
    total = n_prompt + 20
    message = rf"prompt \({n_prompt} tokens\) \+ max_tokens \(20\) = {total} exceeds the context of 16 "
    with pytest.raises(ValueError, match=message):
        tiny.generate(PROMPT, max_tokens=20, n_ctx=16)
    with pytest.raises(ValueError, match="training context"):
        tiny.generate(PROMPT, max_tokens=tiny.n_ctx_train)
    with pytest.raises(ValueError, match="max_tokens"):
        tiny.generate(PROMPT, max_tokens=0)
    with pytest.raises(ValueError, match="top_p"):
        tiny.generate(PROMPT, top_p=0.0)


def test_tokenize_round_trip(tiny: Model) -> None:
    ids = tiny.tokenize(PROMPT, add_special=False)
    assert tiny.detokenize(ids) == PROMPT


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    # Random weights sample bytes that are not UTF-8: the compiled CLI writes them as they are, Python
    # as U+FFFD.
    result = subprocess.run(cmd, capture_output=True, timeout=60, cwd=ROOT)
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(errors="replace"),
                                       result.stderr.decode(errors="replace"))


def python_cli() -> list[str]:
    return [sys.executable, "-m", "flashmtp"]


@pytest.mark.parametrize("which", ["compiled", "python"])
def test_run_command(tiny: Model, cli_binary: str, which: str) -> None:
    cmd = [cli_binary] if which == "compiled" else python_cli()
    result = run([*cmd, "run", "-m", str(TINY), "-p", PROMPT, "-n", "12", "--temp", "0", "-t", "1"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == tiny.generate(PROMPT, max_tokens=12, temperature=0) + "\n"
    n_prompt = len(tiny.tokenize(PROMPT))
    assert "load:" in result.stderr
    assert f"prompt:    {n_prompt} tokens" in result.stderr
    assert f"generated: {tiny.last_stats.n_generated} tokens" in result.stderr and "tokens/s" in result.stderr

    for bad in (["run"], ["run", "-m", str(TINY)], ["run", "-m", str(TINY), "-p", "x", "-n", "abc"],
                ["run", "-m", str(TINY), "-p", "x", "--bogus", "1"]):
        result = run([*cmd, *bad])
        assert result.returncode == 2 and "usage" in result.stderr, (bad, result.stderr)
    result = run([*cmd, "run", "-m", str(TINY), "-p", PROMPT, "-n", "50", "-c", "8"])
    assert result.returncode == 1 and "exceeds the context" in result.stderr
    assert "Traceback" not in result.stderr


def test_smollm2_greedy_text() -> None:
    model = Model(fetch_or_skip("smollm2-135m-q4_1"), threads=2)
    text = model.generate("The capital of France is", max_tokens=16, temperature=0)
    assert text.strip() and all(c.isprintable() or c in "\n\t" for c in text), repr(text)
    assert "\ufffd" not in text
    assert model.detokenize(model.tokenize(text, add_special=False)) == text
    print(repr(text), model.last_stats)
