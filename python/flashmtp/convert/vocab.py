"""The tokenizer of a checkpoint as GGUF metadata: gpt2-style byte-level BPE from tokenizer.json.

Writes what llama.cpp's converter writes for DeepSeek-V3/V4 (``_set_vocab_gpt2``): model "gpt2", pre-tokenizer
"deepseek-v3" (V4 reuses V3's tokenizer), one entry per id up to the model's vocab_size (ids the tokenizer
does not use become ``[PADn]``, type UNUSED), token types (added tokens CONTROL when marked special or when
they look special by llama.cpp's rule, else USER_DEFINED; the rest NORMAL); then gguf's SpecialVocab adds
the merges, the bos / eos / pad ids, the add_bos / add_eos flags and the chat template (tokenizer_config.json,
chat_template.jinja or chat_template.json), exactly as llama.cpp does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf

from flashmtp.convert.checkpoint import ConvertError

__all__ = ["Vocab"]

PRE_TOKENIZER = "deepseek-v3"


def _looks_special(text: str) -> bool:
    """llama.cpp's converter also makes these added tokens CONTROL when the tokenizer does not mark them
    special (DeepSeek's ``<｜...｜>`` among them)."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<｜") and text.endswith("｜>"))
            or (text.startswith("<unused") and text.endswith(">")))


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    token_types: list[int]
    special: gguf.SpecialVocab

    @classmethod
    def load(cls, directory: Path, vocab_size: int) -> Vocab:
        path = directory / "tokenizer.json"
        if not path.is_file():
            raise ConvertError(f"{directory}: no tokenizer.json (the GGUF file needs the tokenizer)")
        try:
            tokenizer = json.loads(path.read_text(encoding="utf-8"))
            model = tokenizer["model"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ConvertError(f"{path}: expected a Hugging Face tokenizer JSON with a 'model'") from e
        if model.get("type") != "BPE":
            raise ConvertError(f"{path}: tokenizer model is {model.get('type')!r}; only (gpt2-style) BPE "
                               "converts")

        by_id: dict[int, str] = {}
        for text, token_id in model["vocab"].items():
            by_id[int(token_id)] = text
        added = {int(t["id"]): t for t in tokenizer.get("added_tokens", [])}
        for token_id, t in added.items():
            by_id[token_id] = t["content"]
        too_big = sorted(i for i in by_id if not 0 <= i < vocab_size)
        if too_big:
            raise ConvertError(f"{path}: token id {too_big[-1]} is outside the model's vocab_size "
                               f"{vocab_size}")

        tokens, types = [], []
        for i in range(vocab_size):
            if i not in by_id:
                tokens.append(f"[PAD{i}]")
                types.append(gguf.TokenType.UNUSED)
            elif i in added:
                if added[i].get("special") or _looks_special(by_id[i]):
                    tokens.append(by_id[i])
                    types.append(gguf.TokenType.CONTROL)
                else:  # llama.cpp stores user-defined tokens pre-normalized: the metaspace as a space
                    tokens.append(by_id[i].replace("\u2581", " "))
                    types.append(gguf.TokenType.USER_DEFINED)
            else:
                tokens.append(by_id[i])
                types.append(gguf.TokenType.NORMAL)

        # SpecialVocab reads the merges from tokenizer.json in either of its formats, as llama.cpp does.
        special = gguf.SpecialVocab(directory, load_merges=True, n_vocab=vocab_size)
        if not special.merges:
            raise ConvertError(f"{path}: the BPE model has no merges")
        return cls(tokens, [int(t) for t in types], special)

    def add_to(self, writer: gguf.GGUFWriter) -> None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(PRE_TOKENIZER)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.token_types)
        self.special.add_to_gguf(writer, quiet=True)  # merges, special token ids and flags, chat template
