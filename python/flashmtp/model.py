"""Running a model: an engine (a GGUF file's validated, read-only weights) and sessions over it.

    model = flashmtp.Model("models/tiny-llama.gguf", threads=2)
    session = model.session(n_ctx=128)
    logits = session.decode(np.array([1, 2, 3], dtype=np.int32))   # float32 [3, n_vocab]
    session.rewind(1)                                                # keep the first token only
    next_logits = session.decode([4, 5], n_logits=1)                 # float32 [1, n_vocab]: token 5's

Supported architectures: llama, qwen2. A malformed or unsupported file raises :class:`flashmtp.GGUFError`;
bad token ids, a full context or a bad rewind position raise ``ValueError``.
"""

from __future__ import annotations

import os

from flashmtp import _core

__all__ = ["Model"]


class Model:
    """A loaded model. Its sessions share its weights and threads; use each session from one thread."""

    def __init__(self, path: str | os.PathLike[str], threads: int = 2) -> None:
        self.path = os.fspath(path)
        self.engine = _core.Engine(self.path, threads)

    @property
    def architecture(self) -> str:
        return self.engine.architecture

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

    def __repr__(self) -> str:
        e = self.engine
        return (f"Model({self.path!r}, architecture={e.architecture!r}, n_vocab={e.n_vocab}, "
                f"n_embd={e.n_embd}, n_layer={e.n_layer}, threads={e.n_threads})")
