"""Writes models/tiny-llama.gguf: a random-weight `llama` model small enough to ship in the repository (about
130 KB), for the README's first command (`flashmtp info models/tiny-llama.gguf`) and for tests.

Deterministic: the same gguf package version writes the same bytes. Shape: 2 blocks, embedding 64,
4 heads (2 KV heads), feed-forward 128, context 256. Tokenizer: byte-level BPE in gpt2's style (256 byte
tokens, merges learned from the text below, ChatML special tokens). Tensor types: norms F32, output F16,
token embedding and ffn_down Q8_0, attention and ffn_gate/ffn_up Q4_0.

    python models/recipes/make_tiny_llama.py [OUT.gguf]
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import gguf
import numpy as np

N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_LAYER, N_CTX, N_MERGES = 64, 4, 2, 128, 2, 256, 96
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEXT = """The quick brown fox jumps over the lazy dog. A model reads tokens, predicts the next token, and the
runtime checks several drafted tokens in one batch. The theory of the thing is that the other things then
run faster when the draft is right, and no slower when it is wrong. There is more to it than that."""

Q = gguf.GGMLQuantizationType


def byte_to_unicode() -> dict[int, str]:
    """gpt2's reversible map from bytes to printable characters (byte-level BPE vocabularies use it)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def learn_merges(text: str, n_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE on space-prefixed words: merge the most frequent adjacent pair, repeatedly (ties: first
    seen)."""
    b2u = byte_to_unicode()
    words = collections.Counter(
        tuple(b2u[b] for b in (" " + w if i else w).encode()) for i, w in enumerate(text.split())
    )
    merges = []
    for _ in range(n_merges):
        pairs: collections.Counter[tuple[str, str]] = collections.Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:], strict=False):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: pairs[p])
        merges.append(best)
        merged = collections.Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


def main() -> None:
    out = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "tiny-llama.gguf"
    )
    rng = np.random.default_rng(20260101)
    merges = learn_merges(TEXT, N_MERGES)
    tokens = [*byte_to_unicode().values(), *(a + b for a, b in merges), *SPECIAL_TOKENS]
    token_types = [gguf.TokenType.NORMAL] * (len(tokens) - len(SPECIAL_TOKENS)) + [gguf.TokenType.CONTROL] * 3
    n_vocab = len(tokens)

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny-llama")
    w.add_description("random weights; written by models/recipes/make_tiny_llama.py")
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges([f"{a} {b}" for a, b in merges])
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_chat_template(CHATML)

    def add(name: str, shape: tuple[int, ...], qtype: Q, scale: float = 0.05) -> None:
        # shape is numpy order: [rows, row length]; gguf stores rows of the last dimension.
        x = (rng.standard_normal(shape) * scale).astype(np.float32)
        if qtype == Q.F32:
            w.add_tensor(name, x)
        elif qtype == Q.F16:
            w.add_tensor(name, x.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)

    head_dim = N_EMBD // N_HEAD
    add("token_embd.weight", (n_vocab, N_EMBD), Q.Q8_0)
    for i in range(N_LAYER):
        add(f"blk.{i}.attn_norm.weight", (N_EMBD,), Q.F32, 1.0)
        add(f"blk.{i}.attn_q.weight", (N_EMBD, N_EMBD), Q.Q4_0)
        add(f"blk.{i}.attn_k.weight", (N_HEAD_KV * head_dim, N_EMBD), Q.Q4_0)
        add(f"blk.{i}.attn_v.weight", (N_HEAD_KV * head_dim, N_EMBD), Q.Q4_0)
        add(f"blk.{i}.attn_output.weight", (N_EMBD, N_EMBD), Q.Q4_0)
        add(f"blk.{i}.ffn_norm.weight", (N_EMBD,), Q.F32, 1.0)
        add(f"blk.{i}.ffn_gate.weight", (N_FF, N_EMBD), Q.Q4_0)
        add(f"blk.{i}.ffn_up.weight", (N_FF, N_EMBD), Q.Q4_0)
        add(f"blk.{i}.ffn_down.weight", (N_EMBD, N_FF), Q.Q8_0)
    add("output_norm.weight", (N_EMBD,), Q.F32, 1.0)
    add("output.weight", (n_vocab, N_EMBD), Q.F16)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out} ({out.stat().st_size} bytes, {n_vocab} tokens)")


if __name__ == "__main__":
    main()
