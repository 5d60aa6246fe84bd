"""The generation loop in Python, for requests that ask for log-probabilities.

_core.Generation (csrc/runtime/generate.cpp) keeps the logits to itself, so a request with ``logprobs`` runs
this loop instead: the same calls in the same order (prefix reuse and rewind, one prefill decode, then
Sampler.sample at the session's position with the whole token history, a single-token decode per token, no
decode after the last), hence the same tokens for the same seed, plus each sampled token's log-probability
and the most likely alternatives. Log-probabilities are the model's (log-softmax of the raw logits), not of
the distribution after temperature / top-k / top-p, as OpenAI reports them. This loop does not draft with
an MTP head: a logprobs request decodes one token at a time.

    generation = LogprobGeneration(session, tokenizer, prompt, cached, max_tokens, sampler, top_n=3)
    while (piece := generation.step()) is not None:
        entry = generation.last   # TokenLogprob of the token just sampled
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from flashmtp import _core

__all__ = ["LogprobGeneration", "LoopStats", "TokenLogprob"]


@dataclass
class TokenLogprob:
    token: bytes
    logprob: float
    top: list[tuple[bytes, float]] = field(default_factory=list)  # most likely first


@dataclass
class LoopStats:
    """GenerateStats' fields, for the Python loop."""

    n_prompt: int = 0
    n_reused: int = 0
    n_generated: int = 0
    stopped_at_eos: bool = False
    prefill_s: float = 0.0
    generate_s: float = 0.0

    @property
    def prompt_tokens_per_s(self) -> float:
        return (self.n_prompt - self.n_reused) / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def generated_tokens_per_s(self) -> float:
        return self.n_generated / self.generate_s if self.generate_s > 0 else 0.0


class LogprobGeneration:
    """One generation over a kept session whose first positions hold ``cached``; the interface of
    _core.Generation (step, tokens, n_past, stats) plus :attr:`last`."""

    def __init__(self, session: _core.Session, tokenizer: _core.Tokenizer, prompt: Sequence[int],
                 cached: Sequence[int], max_tokens: int, sampler: _core.Sampler, top_n: int) -> None:
        if max_tokens < 1 or not prompt or len(prompt) + max_tokens > session.n_ctx:
            raise ValueError(f"generate: prompt ({len(prompt)} tokens) + max_tokens ({max_tokens}) must fit "
                             f"the context of {session.n_ctx} and both be >= 1")
        self.session = session
        self.tokenizer = tokenizer
        self.sampler = sampler
        self.max_tokens = max_tokens
        self.top_n = top_n
        self.tokens = list(prompt)
        common = next((i for i, (a, b) in enumerate(zip(cached, prompt, strict=False)) if a != b),
                      min(len(cached), len(prompt)))
        # At least the prompt's last token is decoded again: its logits pick the first new token.
        self.stats = LoopStats(n_prompt=len(prompt), n_reused=min(common, len(prompt) - 1))
        session.rewind(self.stats.n_reused)
        self.text = _core.TokenTextStream(tokenizer)
        self.logits: np.ndarray | None = None  # [n_vocab] of the last decoded token
        self.last: TokenLogprob | None = None
        self.done = False

    @property
    def n_past(self) -> int:
        return self.session.n_past

    def step(self) -> str | None:
        """The next token's text (possibly ''), or None once generation has ended."""
        if self.done:
            return None
        if self.logits is None:
            t0 = time.perf_counter()
            rest = np.asarray(self.tokens[self.stats.n_reused:], dtype=np.int32)
            self.logits = self.session.decode(rest, n_logits=1)[0]
            self.stats.prefill_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        logits = self.logits
        token = self.sampler.sample(logits, np.asarray(self.tokens, dtype=np.int32), self.session.n_past)
        self.tokens.append(token)
        self.stats.n_generated += 1
        piece = ""
        if self.tokenizer.is_eog(token):
            self.stats.stopped_at_eos = self.done = True
            self.last = None  # the end-of-generation token is no part of the reply
        else:
            self.last = self._logprob(logits, token)
            piece = self.text.push(token)
            self.done = self.stats.n_generated == self.max_tokens
            if not self.done:
                self.logits = self.session.decode(np.asarray([token], dtype=np.int32), n_logits=1)[0]
        if self.done:
            piece += self.text.flush()
        self.stats.generate_s += time.perf_counter() - t0
        return piece

    def _logprob(self, logits: np.ndarray, token: int) -> TokenLogprob:
        shifted = logits.astype(np.float64) - logits.max()
        log_probs = shifted - np.log(np.exp(shifted).sum())  # [n_vocab]
        top: list[tuple[bytes, float]] = []
        if self.top_n > 0:
            ids = np.argpartition(-log_probs, self.top_n - 1)[:self.top_n]
            ids = ids[np.argsort(-log_probs[ids], kind="stable")]
            top = [(self.tokenizer.token_bytes(int(i)), float(log_probs[i])) for i in ids]
        return TokenLogprob(self.tokenizer.token_bytes(token), float(log_probs[token]), top)
