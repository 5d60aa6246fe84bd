"""Running a model: an engine (a GGUF file's validated, read-only weights) and sessions over it.

    model = flashmtp.Model("models/tiny-llama.gguf", threads=2)
    session = model.session(n_ctx=128)
    logits = session.decode(np.array([1, 2, 3], dtype=np.int32))   # float32 [3, n_vocab]
    session.rewind(1)                                                # keep the first token only
    next_logits = session.decode([4, 5], n_logits=1)                 # float32 [1, n_vocab]: token 5's

    text = model.generate("Once upon a time", max_tokens=32, temperature=0)   # greedy
    for piece in model.generate("Once upon a time", stream=True): ...         # text as it is sampled
    model.last_stats                                                          # token counts and timings
    model.chat([{"role": "user", "content": "Hi"}])                          # the file's chat template

Supported architectures: llama, qwen2, deepseek4. A malformed or unsupported file raises
:class:`flashmtp.GGUFError`; bad token ids, a full context or a bad rewind position raise ``ValueError``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence

from flashmtp import _core
from flashmtp.chat import ChatTemplate, Message, check_messages, prompt_tokens

__all__ = ["Model"]


class Model:
    """A loaded model. Its sessions share its weights and threads; use each session from one thread."""

    def __init__(self, path: str | os.PathLike[str], threads: int = 2,
                 mtp: str | os.PathLike[str] | None = None) -> None:
        """Load the GGUF model at path with `threads` threads. mtp: an MTP sidecar GGUF (deepseek4) whose
        head drafts tokens for speculative decoding; a deepseek4 file carrying its own MTP block needs none.
        A sidecar that does not match the model raises :class:`flashmtp.GGUFError` naming the mismatch."""
        self.path = os.fspath(path)
        self.mtp_path = os.fspath(mtp) if mtp is not None else None
        self.engine = _core.Engine(self.path, threads, self.mtp_path or "")
        #: What drafting costs here, measured by every generation of this model (auto drafting reads it).
        self.draft_costs = _core.DraftCosts()
        #: Statistics of the latest generate() call (for stream=True: once its iterator is exhausted).
        self.last_stats: _core.GenerateStats | None = None

    @functools.cached_property
    def tokenizer(self) -> _core.Tokenizer:
        """The file's tokenizer, read on first use: a file without tokenizer.ggml.* metadata still runs
        token ids (GGUFError only when text is asked for)."""
        return _core.Tokenizer.from_gguf(self.path)

    @functools.cached_property
    def chat_template(self) -> ChatTemplate:
        """The file's tokenizer.chat_template (jinja), read on first use; ChatML with a warning if it has
        none, as llama.cpp does; DeepSeek-V4's format for conversations with tools when a deepseek4 file's
        template ignores them (see ChatTemplate.from_model)."""
        return ChatTemplate.from_model(self)

    @property
    def architecture(self) -> str:
        return self.engine.architecture

    @property
    def has_mtp(self) -> bool:
        """Whether an MTP draft head is loaded."""
        return self.engine.has_draft_head

    @property
    def n_vocab(self) -> int:
        return self.engine.n_vocab

    @property
    def n_ctx_train(self) -> int:
        return self.engine.n_ctx_train

    def session(self, n_ctx: int | None = None) -> _core.Session:
        """A new empty timeline of n_ctx positions (default: the training context).

        ``decode(tokens, n_logits=None)`` runs a 1-D array of token ids in one batch and returns the logits
        of its last n_logits tokens (default: all), float32 ``[n_logits, n_vocab]``; ``rewind(n)`` keeps the
        first n positions; ``n_past`` counts them. Session state (the fp32 KV cache) is allocated up front:
        ``state_size`` bytes.
        """
        return self.engine.session(0 if n_ctx is None else n_ctx)

    def tokenize(self, text: str | bytes, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of text; add_special prepends BOS when the model asks for it, parse_special matches
        control-token text such as ``<|im_start|>`` as those tokens."""
        return self.tokenizer.encode(text, add_special, parse_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of token ids (invalid UTF-8 replaced by U+FFFD)."""
        return self.tokenizer.decode(list(ids))

    def generate(self, prompt: str, max_tokens: int = 128, temperature: float = 0.8, top_k: int = 40,
                 top_p: float = 0.95, min_p: float = 0.05, seed: int = 0, stream: bool = False,
                 n_ctx: int | None = None, mtp: bool | None = None, draft: int | str = "auto",
                 draft_mode: str = "coupled") -> str | Iterator[str]:
        """Continue prompt by up to max_tokens sampled tokens (fewer if EOS is sampled) on a fresh session.

        temperature 0 is greedy. A seed gives the same text on every run. Returns the text, or with
        ``stream=True`` an iterator of its pieces (whole UTF-8 characters) as they are sampled. n_ctx
        (default: exactly prompt + max_tokens) must hold prompt + max_tokens, else ``ValueError`` naming the
        numbers; bad sampler settings raise ``ValueError`` too. Statistics end up in :attr:`last_stats`
        (``last_stats.speculative``: drafted, accepted, acceptance per draft position, rollbacks).

        MTP speculative decoding (mtp: default on when a draft head is loaded): the head drafts ``draft``
        tokens per round (1..8, or "auto": the length that maximises measured tokens/s, 0 when drafting does
        not pay) and the model verifies them in one batch. The text is the same as without MTP for every
        seed (greedy and the default ``draft_mode="coupled"``; also ``"greedy"``, the peers' argmax drafts);
        ``"residual"`` is classic speculative sampling: the same distribution, not the same text per seed.
        """
        generation = _core.Generation(self.engine, self.tokenizer, prompt, max_tokens, n_ctx or 0,
                                      temperature, top_k, top_p, min_p, seed,
                                      draft=self._draft(mtp, draft), draft_mode=draft_mode,
                                      draft_costs=self.draft_costs)
        pieces = self._run(generation)
        return pieces if stream else "".join(pieces)

    def chat(self, messages: Sequence[Message], max_tokens: int = 512, temperature: float = 0.8,
             top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, seed: int = 0, stream: bool = False,
             n_ctx: int | None = None, template: ChatTemplate | None = None, mtp: bool | None = None,
             draft: int | str = "auto", draft_mode: str = "coupled") -> str | Iterator[str]:
        """The assistant's reply to messages (``[{"role": "user", "content": "..."}, ...]``), on a fresh
        session.

        The conversation is rendered with the chat template (default: the file's, see :attr:`chat_template`;
        ``template`` overrides it) followed by the assistant's header, tokenized as llama.cpp does (control
        tokens parsed, no doubled BOS: see flashmtp.chat), and continued until an end-of-generation token such
        as ``<|im_end|>`` or max_tokens. Sampling, stream, n_ctx, MTP and :attr:`last_stats` as in generate().
        For a conversation that goes on, :class:`flashmtp.chat.Chat` keeps the KV cache between turns.
        """
        check_messages(messages)
        template = template or self.chat_template
        prompt = prompt_tokens(self.tokenizer, template.render(messages))
        session = self.session(n_ctx or min(len(prompt) + max_tokens, self.n_ctx_train))
        generation = _core.Generation(session, self.tokenizer, prompt, [], max_tokens, temperature, top_k,
                                      top_p, min_p, seed, draft=self._draft(mtp, draft),
                                      draft_mode=draft_mode, draft_costs=self.draft_costs)
        pieces = self._run(generation)
        return pieces if stream else "".join(pieces)

    def _draft(self, mtp: bool | None, draft: int | str) -> int:
        """The Generation's draft argument: 0 off, 1..8, -1 auto."""
        if mtp is None:
            mtp = self.has_mtp
        if not mtp:
            return 0
        if not self.has_mtp:
            raise ValueError("mtp=True needs an MTP draft head: load the model with Model(path, mtp=SIDECAR)")
        if draft == "auto":
            return -1
        if isinstance(draft, bool) or not isinstance(draft, int) or not 0 <= draft <= _core.Session.max_draft:
            raise ValueError(f"draft must be 'auto' or an int in [0, {_core.Session.max_draft}], "
                             f"got {draft!r}")
        return draft

    def _run(self, generation: _core.Generation) -> Iterator[str]:
        while (piece := generation.step()) is not None:
            if piece:
                yield piece
        self.last_stats = generation.stats

    def __repr__(self) -> str:
        e = self.engine
        mtp = f", mtp={self.mtp_path!r}" if self.mtp_path else ""
        return (f"Model({self.path!r}{mtp}, architecture={e.architecture!r}, n_vocab={e.n_vocab}, "
                f"n_embd={e.n_embd}, n_layer={e.n_layer}, threads={e.n_threads})")
