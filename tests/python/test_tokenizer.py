"""Tokenizer (csrc/runtime/tokenizer.cpp) against Hugging Face `tokenizers` as the oracle.

The oracle is built from the same GGUF metadata (vocabulary, merges, token types) with the pre-tokenizer
that the model's tokenizer.json uses for its tokenizer.ggml.pre value, so the comparison checks our
pre-tokenizer matchers, BPE merge order and special-token matching. Token ids must be identical (no
tolerance: tokenization is exact); decode(encode(s)) must give s back byte for byte.
"""

from __future__ import annotations

import functools
import random

import pytest
from flashmtp import _core

tokenizers = pytest.importorskip("tokenizers", reason="the oracle needs `pip install tokenizers`")

TOKEN_TYPE_UNKNOWN = 2
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")
# llama.cpp's regexes for tokenizer.ggml.pre "default" (llm_tokenizer_bpe), each splitting the pieces of the
# one before. No Hugging Face tokenizer.json uses them: the oracle is the same Splits in tokenizers' engine.
DEFAULT_PATTERNS = (
    r"[\p{P}\$\+<=>\^~\|]+",
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)",
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
)
# DeepSeek V3's tokenizer.json: three Splits in sequence.
DEEPSEEK3_PATTERNS = (
    r"\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
)


@functools.cache
def gguf_tokenizer_fields(path) -> dict:
    # Read with our GGUF reader (checked against the gguf package in test_gguf.py): 200x faster than gguf's.
    items = _core.GGUFFile.open(str(path)).metadata_items()
    return {k: v for k, v in items if k.startswith("tokenizer.ggml.")}


def oracle_tokenizer(path, parse_special: bool):
    """A tokenizers.Tokenizer equivalent to the GGUF's, as llama.cpp's convert script recorded it."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

    fields = gguf_tokenizer_fields(path)
    tokens = fields["tokenizer.ggml.tokens"]
    types = fields["tokenizer.ggml.token_type"]
    pre = fields["tokenizer.ggml.pre"]
    vocab: dict[str, int] = {}
    for i, text in enumerate(tokens):
        vocab.setdefault(text, i)
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
    bpe = models.BPE(vocab, merges, ignore_merges=pre == "llama-bpe")
    tok = tokenizers.Tokenizer(bpe)
    if pre == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif pre == "default":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            *(pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False) for p in DEFAULT_PATTERNS),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    elif pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    elif pre in ("qwen2", "llama-bpe"):
        pattern = QWEN2_PATTERN if pre == "qwen2" else LLAMA3_PATTERN
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    elif pre == "deepseek-v3":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            *(pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False) for p in DEEPSEEK3_PATTERNS),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        raise AssertionError(f"no oracle for tokenizer.ggml.pre {pre!r}")
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False)
               for t, ty in zip(tokens, types, strict=True)
               if ty in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_UNKNOWN) and t]
    user = [AddedToken(t, special=False, normalized=False)
            for t, ty in zip(tokens, types, strict=True) if ty == TOKEN_TYPE_USER_DEFINED and t]
    if user:
        tok.add_tokens(user)
    if parse_special and special:
        tok.add_special_tokens(special)
    return tok


# ---- test strings ------------------------------------------------------------------------------------------

FRAGMENTS = [
    "hello", "Hello", "world", "the", " quick brown fox", "don't", "I'm", "you're", "we've", "they'll",
    "she'd", "IT'S", "WE'LL", "'s", "'t", "''", "'", "rock'n'roll", "o'clock", "123", "3.14159",
    "1,000,000", "2024-01-31", "0x1F", "1e-9", "٣٤٥", "½", "Ⅻ", "²", "①", "café", "naïve", "Straße",
    "ñandú", "Привет", "мир", "Ελληνικά", "日本語", "中文字符", "한국어",
    "ひらがな", "カタカナ", "مرحبا", "שלום", "हिन्दी", "தமிழ்", "ไทย", "ქართული",
    "😀", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🇫🇷", "❤️", "🤖", "✓", "€",
    "£", "¥", "©", "™", "→", "∑", "√", "∞", "≠", "def f(x):\n    return x + 1\n",
    "int main() { return 0; }", "for (i = 0; i < n; ++i)", "a->b", "x == y", "#include <stdio.h>",
    "// comment", "/* c */", '<div class="a">', '{"key": [1, 2]}', "$HOME", "@user",
    "https://example.com/path?q=1&r=2", "C:\\Users\\x", "...", "!!!", "?!", "---", "***", "___", "~~",
    " ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n ", "\xa0", "\u3000", "\u2009", "\u200b",
    "\x0b", "\x0c", "\x85", "\u2028", "\x1c", "\x00", "\x7f", "\ufeff", "́", "é", "\ud7ff", "𝐀",
    "\U0010fffd", "\ue000", "\x01\x02", "x.y", ".com", "。", "ー", "漢字かなカナ", "123456789", "中1文",
]
SEPARATORS = ["", " ", "  ", "\n", "\t", " \n", "\r\n", ", ", ". ", "   \n\n", "\u00a0"]


def varied_strings(specials: list[str], n: int = 520, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = ["", " ", "a", "\n", "  hello", "hello  ", "   ", "a  b", "a \n b", "x\n\n\ny", "'s'S'Re",
           "12345678", "a1b2c3", " 1 22 333 4444", "\t\tfoo", "foo\t\t", " !!", "!!\n\n", "(word", '"quoted"',
           "ﬁ ligature", "ſ 'ſ", "K Kelvin"]
    pieces = FRAGMENTS + specials
    while len(out) < n:
        k = rng.randint(1, 12)
        parts = []
        for _ in range(k):
            parts.append(rng.choice(pieces))
            parts.append(rng.choice(SEPARATORS))
        if rng.random() < 0.2:  # random code points from a few blocks, assigned in every Unicode version used
            block = rng.choice([(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x4E00, 0x4FFF),
                                (0x3040, 0x30FF), (0xAC00, 0xAD00), (0x1F600, 0x1F64F), (0x2000, 0x206F)])
            parts.append("".join(chr(rng.randint(*block)) for _ in range(rng.randint(1, 20))))
        out.append("".join(parts))
    # Dense mixes of the characters the patterns treat differently, to reach their corner cases.
    tricky = [*"aZé日1٣ ''sStTlLdDrReEvV.,!?-_<|>\n\r\t", "\u00a0", "\u3000", "\x85", "\x0b", "😀", "\u0301",
              "<|im_start|>", "<|endoftext|>", "\x01", "\u200b", "。", "日", "か", "ー"]
    for _ in range(n):
        out.append("".join(rng.choice(tricky) for _ in range(rng.randint(1, 24))))
    # Code points from every plane, assigned or not: checks the category table (Unicode 16.0, as the
    # oracle's regex engine) rather than the patterns.
    for _ in range(n):
        cpts = (rng.choice([rng.randint(0, 0x2FFF), rng.randint(0x3000, 0x33FFF), rng.randint(0, 0x10FFFF)])
                for _ in range(rng.randint(1, 8)))
        out.append("".join(chr(c) for c in cpts if not 0xD800 <= c <= 0xDFFF))
    return out


def check_against_oracle(path, n_strings: int = 520) -> None:
    ours = _core.Tokenizer.from_gguf(str(path))
    fields = gguf_tokenizer_fields(path)
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    specials = [t for t, ty in zip(tokens, types, strict=True)
                if ty in (TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)]
    strings = varied_strings(specials, n_strings)
    # Bytes the vocabulary has no token for are dropped (by both), so only text without them round-trips.
    dropped = {b for b in range(256) if not ours.encode(bytes([b]), add_special=False)}
    for parse_special in (False, True):
        oracle = oracle_tokenizer(path, parse_special)
        for s in strings:
            expected = oracle.encode(s, add_special_tokens=False).ids
            got = ours.encode(s, add_special=False, parse_special=parse_special)
            assert got == expected, f"{s!r} (parse_special={parse_special}): {got} != oracle {expected}"
            if not dropped.intersection(s.encode()):
                assert ours.decode(got) == s, f"round trip of {s!r}"


# ---- tests -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2_path():
    from flashmtp.testing.models import fetch_or_skip

    return fetch_or_skip("smollm2-135m-q4_1")


@pytest.fixture(scope="module")
def qwen2_path():
    from flashmtp.testing.models import fetch_or_skip

    return fetch_or_skip("qwen2.5-coder-0.5b-q4_k_m")


TINY_LLAMA = "models/tiny-llama.gguf"


def write_tokenizer_gguf(path, fields: dict, pre: str, add_bos: bool | None = None) -> str:
    """A GGUF holding only tokenizer metadata: `fields` (tokenizer.ggml.*) with tokenizer.ggml.pre = pre."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_tokenizer_model(fields["tokenizer.ggml.model"])
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(fields["tokenizer.ggml.tokens"])
    writer.add_token_types([int(x) for x in fields["tokenizer.ggml.token_type"]])
    writer.add_token_merges(fields["tokenizer.ggml.merges"])
    writer.add_bos_token_id(int(fields["tokenizer.ggml.bos_token_id"]))
    writer.add_eos_token_id(int(fields["tokenizer.ggml.eos_token_id"]))
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def test_unicode_tables_match_the_oracle_version():
    # The oracle's regex engine (Oniguruma in tokenizers) classifies code points by Unicode 16.0.
    assert _core.unicode_version == "16.0.0"


def test_smollm2_matches_oracle(smollm2_path):
    check_against_oracle(smollm2_path)


def test_qwen2_matches_oracle(qwen2_path):
    check_against_oracle(qwen2_path)


def test_tiny_llama_matches_oracle():
    check_against_oracle(TINY_LLAMA)


def test_tiny_v4_matches_oracle():
    # The shipped trained DeepSeek-V4's own byte-level BPE: 4096 tokens, DeepSeek V3's pre-tokenizer.
    check_against_oracle("models/tiny-v4-bf16.gguf")


@pytest.mark.parametrize("pre", ["default", "gpt2", "llama-bpe", "deepseek-v3"])
def test_other_pre_tokenizers_on_the_smollm2_vocabulary(smollm2_path, tmp_path, pre):
    # No llama 3 or DeepSeek model is at hand: SmolLM2's 49k-token vocabulary with another tokenizer.ggml.pre
    # exercises llama.cpp's default (punctuation runs, GPT-2's pattern, number runs, then 3 ASCII digits at a
    # time), the plain GPT-2 pattern, llama 3's (numbers in runs of up to 3, whole-word tokens unmerged) and
    # DeepSeek V3's (numbers, then CJK and kana runs, isolated before the main pattern).
    path = write_tokenizer_gguf(tmp_path / f"{pre}.gguf", gguf_tokenizer_fields(smollm2_path), pre)
    assert _core.Tokenizer.from_gguf(path).pre == pre
    check_against_oracle(path)


def test_smollm2_metadata_and_specials(smollm2_path):
    t = _core.Tokenizer.from_gguf(str(smollm2_path))
    assert (t.n_vocab, t.bos_id, t.eos_id, t.add_bos, t.pre) == (49152, 1, 2, False, "smollm")
    text = "<|im_start|>user\nHi<|im_end|>"
    with_specials = t.encode(text, parse_special=True)
    assert with_specials[0] == 1 and with_specials[-1] == 2
    # Without parse_special the markers are ordinary text, and decode gives them back.
    plain = t.encode(text, parse_special=False)
    assert 1 not in plain and 2 not in plain
    assert t.decode(plain) == t.decode(with_specials) == text


def test_add_special_prepends_bos_when_the_model_asks(tmp_path):
    fields = gguf_tokenizer_fields(TINY_LLAMA)
    t = _core.Tokenizer.from_gguf(TINY_LLAMA)  # no tokenizer.ggml.add_bos_token: gpt2 vocabularies add none
    assert not t.add_bos and t.encode("the token") == t.encode("the token", add_special=False)
    t = _core.Tokenizer.from_gguf(write_tokenizer_gguf(tmp_path / "bos.gguf", fields, "gpt2", add_bos=True))
    plain = t.encode("the token", add_special=False)
    assert t.add_bos and t.encode("the token") == [t.bos_id, *plain]
    assert t.encode("", add_special=True) == [t.bos_id]


def test_invalid_utf8_bytes_round_trip(smollm2_path):
    t = _core.Tokenizer.from_gguf(str(smollm2_path))
    # Lone continuation bytes, truncated sequences, a surrogate, a value above U+10FFFF, an overlong form.
    for raw in [b"a\x80b", b"\xe6\x97", b"\xf0\x9f\x98", b"\xed\xa0\x80", b"\xf4\x90\x80\x80 ok",
                b"\xe0\x80"]:
        assert t.decode_bytes(t.encode(raw, add_special=False)) == raw


def test_bytes_without_a_token_are_dropped_as_the_oracle_does(smollm2_path):
    # SmolLM2's vocabulary has no token for byte 0x04 (nor 0x06, 0x13, ...): both tokenizers skip it.
    t = _core.Tokenizer.from_gguf(str(smollm2_path))
    oracle = oracle_tokenizer(smollm2_path, parse_special=False)
    for s in ["a\x04b", "\x04", "x \x06\x13 y", "1\x042"]:
        assert t.encode(s, add_special=False) == oracle.encode(s, add_special_tokens=False).ids
    assert t.encode("\x04", add_special=False) == []


def test_stream_emits_whole_characters_only(smollm2_path):
    t = _core.Tokenizer.from_gguf(str(smollm2_path))
    text = "Emoji 👨‍👩‍👧‍👦 and 日本語 and é"
    ids = t.encode(text, add_special=False)
    stream = _core.TokenTextStream(t)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    # A lone lead byte is held back, then released (as U+FFFD) only by flush.
    byte_e6 = next(i for i in range(t.n_vocab) if t.token_bytes(i) == b"\xe6")
    stream = _core.TokenTextStream(t)
    assert stream.push(byte_e6) == ""
    assert stream.flush() == "\ufffd"


def test_bad_ids_raise():
    t = _core.Tokenizer.from_gguf(TINY_LLAMA)
    with pytest.raises(IndexError, match="outside the vocabulary"):
        t.decode([t.n_vocab])
    with pytest.raises(IndexError, match="outside the vocabulary"):
        t.token_bytes(-1)


def test_unsupported_or_broken_metadata_raises(tmp_path):
    fields = dict(gguf_tokenizer_fields(TINY_LLAMA))
    with pytest.raises(_core.GGUFError, match='tokenizer.ggml.pre "deepseek-llm" is not supported'):
        _core.Tokenizer.from_gguf(write_tokenizer_gguf(tmp_path / "pre.gguf", fields, "deepseek-llm"))
    fields["tokenizer.ggml.merges"] = [*fields["tokenizer.ggml.merges"], "Ġt nosuchtoken"]
    with pytest.raises(_core.GGUFError, match=r"merges\[96\] .* not in tokenizer.ggml.tokens"):
        _core.Tokenizer.from_gguf(write_tokenizer_gguf(tmp_path / "merge.gguf", fields, "gpt2"))
