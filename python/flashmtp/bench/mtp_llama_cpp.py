"""llama.cpp's MTP speculative decoding (its draft-mtp), greedy, driven through llama-cpp-python's C API: the
peer rows of ``flashmtp bench mtp``.

How llama.cpp runs an MTP draft (common/speculative.cpp, draft-mtp; llama-cpp-python 0.3.36 exposes the C
calls but has no such loop, so this module is that loop):

- The head is a second model loaded with ``load_mtp`` from the MTP file (llama.cpp's converter writes the
  block plus copies of token_embd, output_norm and output, which its MTP-only loader requires: a flashmtp
  sidecar, which omits them, is copied with them into a temporary file for llama.cpp), and a second context
  of type ``LLAMA_CONTEXT_TYPE_MTP`` with its own KV cache.
- The main context exports, for every row of every batch, the state the head takes
  (``llama_set_embeddings_nextn(ctx, true, unmasked)``; deepseek4: the 4 hyper-connection streams,
  ``llama_model_n_embd_out`` = 4 x hidden wide).
- The head's KV row at position p is made of token p and the main model's state at p - 1 (zeros at
  position 0, where llama.cpp's carried state starts). Rows enter with the next draft: one MTP decode of
  [rows not yet ingested..., seed], the seed being the sampled token at n_past with the state at n_past - 1;
  each further draft is one decode of the drafted token with the head's own output state
  (``llama_get_embeddings_nextn_ith``). The drafted rows then leave the head's KV (``llama_memory_seq_rm``);
  the seed stays, a true row.
- Verify: one main decode of [sampled, d_1..d_k] with logits on every row; drafts are accepted while they
  equal the main model's argmax; the rejected rows leave the main KV (``llama_memory_seq_rm``); the accepted
  ones enter the head's KV with the next draft, paired with the verify batch's states.

The head's logits therefore differ from flashmtp's by exactly that zero-state row at position 0 (llama.cpp's
``pending_h`` starts as zeros): flashmtp, like DeepSeek's reference ``MTPBlock`` (and its training), has no
such row, so its row i is llama.cpp's row i + 1 (a uniform RoPE shift) without the extra key every later row
attends to. ``first_draft_logits`` measures it: without that row the logits agree to ~1e-6 (F32 KV cache, no
flash attention; ~1e-3 with llama.cpp's defaults, F16 KV cache and flash attention, which on the CPU rounds to
F16 even over an F32 cache, as its main model's logits do); with it, on a random V4-proportioned model, by 4%
at the last row of a 24-token prompt and 29% at its second row (max |difference| / max |logit|).

MTP off is llama.cpp's plain loop, one decode per token, on the same main context (which keeps the rollback
snapshots its compressed caches need, as a server with drafting on would). Generation time excludes the
prompt's decode and includes this loop's Python (a few ctypes calls and an argmax per decode).
"""

from __future__ import annotations

import ctypes
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# What llama.cpp's MTP-only loader needs from the main model that a flashmtp sidecar leaves out.
SHARED_TENSORS = ("token_embd.weight", "output_norm.weight", "output.weight")


def llama_cpp_sidecar(main: str, head: str, out_dir: Path) -> str:
    """``head`` as llama.cpp loads an MTP file: itself when it carries the shared tensors, else a copy in
    out_dir with the main model's token_embd, output_norm and output added (the bytes unchanged)."""
    import gguf

    side = gguf.GGUFReader(head)
    names = {t.name for t in side.tensors}
    if all(n in names for n in SHARED_TENSORS):
        return head
    out = out_dir / f"llama-cpp-{Path(head).name}"
    writer = gguf.GGUFWriter(out, arch=str(side.fields["general.architecture"].contents()))
    for name, f in side.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name.startswith("flashmtp."):
            continue
        sub_type = f.types[1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, f.contents(), f.types[0], sub_type)
    shared = [t for t in gguf.GGUFReader(main).tensors if t.name in SHARED_TENSORS and t.name not in names]
    for t in [*side.tensors, *shared]:
        writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(out)


@dataclass
class LlamaCppGeneration:
    """One greedy generation: the tokens (the prompt excluded), and what drafting did."""
    tokens: list[int]
    seconds: float
    drafted: int = 0
    accepted: int = 0
    rounds: int = 0
    tried_at: list[int] = field(default_factory=lambda: [0] * 8)
    accepted_at: list[int] = field(default_factory=lambda: [0] * 8)


class _Batch:
    """A ``llama_batch`` over numpy buffers, one sequence: token ids, positions, output flags and, for the
    head, one state row per token (``embd``, read together with the token ids)."""

    def __init__(self, lib: Any, capacity: int, width: int) -> None:
        i32 = ctypes.POINTER(ctypes.c_int32)
        self.capacity = capacity
        self.token = np.zeros(capacity, np.int32)
        self.pos = np.zeros(capacity, np.int32)
        self.n_seq_id = np.ones(capacity, np.int32)
        self.seq0 = np.zeros(1, np.int32)
        self.seq_ids = (i32 * capacity)(*[self.seq0.ctypes.data_as(i32)] * capacity)
        self.output = np.zeros(capacity, np.int8)
        self.state = np.zeros((capacity, width), np.float32) if width else None  # [capacity, width]
        self.batch = lib.llama_batch()
        self.batch.token = self.token.ctypes.data_as(i32)
        self.batch.embd = self.state.ctypes.data_as(ctypes.POINTER(ctypes.c_float)) if width else None
        self.batch.pos = self.pos.ctypes.data_as(i32)
        self.batch.n_seq_id = self.n_seq_id.ctypes.data_as(i32)
        self.batch.seq_id = ctypes.cast(self.seq_ids, ctypes.POINTER(i32))
        self.batch.logits = self.output.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))

    def fill(self, tokens: list[int], pos0: int, all_outputs: bool, state: np.ndarray | None = None) -> Any:
        """Tokens at pos0.. (with their state rows [n, width] for the head); logits for every row or the
        last."""
        n = len(tokens)
        if n > self.capacity:
            raise ValueError(f"a batch of {n} tokens exceeds the context's {self.capacity}")
        self.token[:n] = tokens
        self.pos[:n] = np.arange(pos0, pos0 + n)
        self.output[:n] = 1 if all_outputs else 0
        self.output[n - 1] = 1
        if state is not None:
            self.state[:n] = state
        self.batch.n_tokens = n
        return self.batch


class LlamaCppMtp:
    """A main model and its MTP head in llama.cpp, one sequence of up to n_ctx positions."""

    def __init__(self, main: str, head: str, threads: int, n_ctx: int, max_draft: int, tmp_dir: Path,
                 exact: bool = False) -> None:
        """``exact``: F32 KV caches and no flash attention (which rounds to F16 on the CPU), for comparing
        logits, not for timing."""
        import llama_cpp
        from llama_cpp import llama_cpp_ext

        self.lib = lib = llama_cpp
        self.ext = llama_cpp_ext
        self.exact = exact
        lib.llama_backend_init()
        params = lib.llama_model_default_params()
        self.main = self._load(main, params)
        params.load_mtp = True
        self.head = self._load(llama_cpp_sidecar(main, head, tmp_dir), params)
        if lib.llama_model_n_layer_nextn(self.head) < 1:
            raise ValueError(f"llama.cpp finds no MTP block in {head}")
        # The compressed caches drop rejected positions only back to a snapshot: one per verified position.
        self.ctx = self._context(self.main, lib.LLAMA_CONTEXT_TYPE_DEFAULT, threads, n_ctx, max_draft + 1)
        self.ctx_head = self._context(self.head, lib.LLAMA_CONTEXT_TYPE_MTP, threads, n_ctx, 0)
        self.ext.llama_set_embeddings_nextn(self.ctx_head, True, True)
        self.memory, self.memory_head = lib.llama_get_memory(self.ctx), lib.llama_get_memory(self.ctx_head)
        self.vocab = lib.llama_model_get_vocab(self.main)
        self.n_vocab = lib.llama_vocab_n_tokens(self.vocab)
        self.width = lib.llama_model_n_embd_out(self.main)
        self.batch = _Batch(lib, n_ctx, 0)
        self.head_batch = _Batch(lib, n_ctx, self.width)

    def _load(self, path: str, params: Any) -> Any:
        model = self.lib.llama_model_load_from_file(path.encode(), params)
        if not model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        return model

    def _context(self, model: Any, kind: int, threads: int, n_ctx: int, snapshots: int) -> Any:
        params = self.lib.llama_context_default_params()
        params.n_rs_seq = snapshots
        params.n_ctx = params.n_batch = params.n_ubatch = n_ctx
        params.n_threads = params.n_threads_batch = threads
        params.ctx_type = kind
        if self.exact:
            params.type_k = params.type_v = self.lib.GGML_TYPE_F32
            params.flash_attn_type = self.lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx = self.lib.llama_init_from_model(model, params)
        if not ctx:
            raise RuntimeError("llama.cpp could not create its " +
                               ("MTP" if kind == self.lib.LLAMA_CONTEXT_TYPE_MTP else "main") + " context")
        return ctx

    def _decode(self, ctx: Any, batch: Any) -> None:
        status = self.lib.llama_decode(ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode of {batch.n_tokens} tokens returned {status}")

    def _rewind(self, memory: Any, n_past: int) -> None:
        if not self.lib.llama_memory_seq_rm(memory, 0, n_past, -1):
            raise RuntimeError(f"llama_memory_seq_rm refused to drop the positions from {n_past} on")

    def _argmax(self, ctx: Any, row: int) -> int:
        return int(np.ctypeslib.as_array(self.lib.llama_get_logits_ith(ctx, row), (self.n_vocab,)).argmax())

    def _states(self, n: int) -> np.ndarray:
        """The main context's head states of the last batch's n rows, [n, width]."""
        return np.ctypeslib.as_array(self.ext.llama_get_embeddings_nextn(self.ctx), (n, self.width)).copy()

    def _draft(self, rows: list[int], rows_state: np.ndarray, seed: int, n_past: int, seed_state: np.ndarray,
               k: int) -> list[int]:
        """Up to k drafts for positions n_past + 1..: the head ingests `rows` (positions n_past - len(rows)..,
        states rows_state [len(rows), width]) and the seed in one decode, then drafts from its own states.
        Stops after a drafted end of generation."""
        lib = self.lib
        tokens = [*rows, seed]
        state = np.vstack([rows_state, seed_state[None]])
        self._decode(self.ctx_head, self.head_batch.fill(tokens, n_past - len(rows), False, state))
        row, drafts = len(tokens) - 1, []
        while True:
            drafts.append(self._argmax(self.ctx_head, row))
            if len(drafts) == k or lib.llama_vocab_is_eog(self.vocab, drafts[-1]):
                break
            own = np.ctypeslib.as_array(self.ext.llama_get_embeddings_nextn_ith(self.ctx_head, row),
                                        (1, self.width))  # the head's output state, the next draft's input
            self._decode(self.ctx_head, self.head_batch.fill(drafts[-1:], n_past + len(drafts), True, own))
            row = 0
        self._rewind(self.memory_head, n_past + 1)  # the drafted rows; the seed stays
        return drafts

    def generate(self, prompt: list[int], max_tokens: int, draft: int) -> LlamaCppGeneration:
        """Greedy: up to max_tokens tokens after prompt (fewer at an end of generation), drafting `draft`
        tokens per round (0: MTP off)."""
        lib = self.lib
        lib.llama_memory_clear(self.memory, True)
        lib.llama_memory_clear(self.memory_head, True)
        self.ext.llama_set_embeddings_nextn(self.ctx, draft > 0, False)
        n_past = len(prompt)
        self._decode(self.ctx, self.batch.fill(prompt, 0, False))
        start = time.perf_counter()
        out = LlamaCppGeneration([], 0.0)
        token = self._argmax(self.ctx, n_past - 1)
        if draft:
            states = self._states(n_past)  # [n_past, width]
            rows, rows_state = prompt, np.vstack([np.zeros((1, self.width), np.float32), states[:-1]])
            seed_state = states[-1]

        def emit(t: int) -> bool:
            out.tokens.append(t)
            return len(out.tokens) == max_tokens or lib.llama_vocab_is_eog(self.vocab, t)

        while not emit(token):
            if not draft:
                self._decode(self.ctx, self.batch.fill([token], n_past, False))
                token, n_past = self._argmax(self.ctx, 0), n_past + 1
                continue
            drafts = self._draft(rows, rows_state, token, n_past, seed_state,
                                 min(draft, max_tokens - len(out.tokens)))
            k = len(drafts)
            self._decode(self.ctx, self.batch.fill([token, *drafts], n_past, True))
            states = self._states(k + 1)  # [k + 1, width]
            accepted = 0
            while accepted < k and drafts[accepted] == self._argmax(self.ctx, accepted):
                accepted += 1
            out.rounds += 1
            out.drafted += k
            out.accepted += accepted
            for i in range(min(k, accepted + 1)):
                out.tried_at[i] += 1
                out.accepted_at[i] += i < accepted
            self._rewind(self.memory, n_past + accepted + 1)
            if any(emit(d) for d in drafts[:accepted]):
                break
            rows, rows_state, seed_state = drafts[:accepted], states[:accepted], states[accepted]
            token, n_past = self._argmax(self.ctx, accepted), n_past + accepted + 1
        out.seconds = time.perf_counter() - start
        return out


def first_draft_logits(main: str, head: str, prompt: list[int], exact: bool) -> dict[str, Any]:
    """The head's logits over a prompt in one MTP decode, as llama.cpp lays its rows out and without its
    position-0 row: {"seed": the main model's argmax after the prompt, "with_row_0" and "without_row_0":
    [len(prompt), n_vocab], row i the head's guess with the main state at i and token i + 1 (the seed at the
    last row), which flashmtp's ``Session.draft(prompt[i + 1])`` gives after decoding prompt[:i + 1]}.
    ``exact``: see LlamaCppMtp."""
    n = len(prompt)
    with tempfile.TemporaryDirectory() as tmp:
        r = LlamaCppMtp(main, head, 1, n + 8, 1, Path(tmp), exact)
        r.ext.llama_set_embeddings_nextn(r.ctx, True, False)
        r._decode(r.ctx, r.batch.fill(prompt, 0, False))
        seed, states = r._argmax(r.ctx, n - 1), r._states(n)  # states [n, width]
        out: dict[str, Any] = {"seed": seed}
        zero = np.zeros((1, r.width), np.float32)
        for name, tokens, pos0, state in (("with_row_0", [*prompt, seed], 0, np.vstack([zero, states])),
                                          ("without_row_0", [*prompt[1:], seed], 1, states)):
            r.lib.llama_memory_clear(r.memory_head, True)
            r._decode(r.ctx_head, r.head_batch.fill(tokens, pos0, True, state))
            rows = range(len(tokens) - n, len(tokens))  # the zero-state row's own logits are not compared
            logits = [r.lib.llama_get_logits_ith(r.ctx_head, i) for i in rows]
            out[name] = np.stack([np.ctypeslib.as_array(row, (r.n_vocab,)) for row in logits])
        return out


def measure(main: str, head: str, threads: int, prompts: dict[str, list[list[int]]], max_tokens: int,
            settings: tuple[int, ...]) -> dict[str, list[list[LlamaCppGeneration]]]:
    """Per domain, per prompt, one generation per setting (interleaved prompt by prompt, as flashmtp's)."""
    n_ctx = max(len(p) for ps in prompts.values() for p in ps) + max_tokens + max(settings) + 8
    with tempfile.TemporaryDirectory() as tmp:
        runner = LlamaCppMtp(main, head, threads, n_ctx, max(settings), Path(tmp))
        first = next(iter(prompts.values()))[0]
        runner.generate(first, 8, 0)  # warm-up
        runner.generate(first, 8, max(settings))
        return {domain: [[runner.generate(p, max_tokens, s) for s in settings] for p in ps]
                for domain, ps in prompts.items()}
