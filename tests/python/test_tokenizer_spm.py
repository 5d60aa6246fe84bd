"""SentencePiece-style tokenizer (tokenizer.ggml.model "llama", csrc/runtime/tokenizer_spm.cpp).

Semantics are llama.cpp's (llm_tokenizer_spm and llama_vocab::tokenize): control, unknown (with parse_special)
and user-defined tokens are cut out of the raw text first; each remaining span gets a leading space when
add_space_prefix is set and it starts the text or follows a special token; spaces become U+2581; adjacent
pieces merge best score first, leftmost among equal scores; pieces without a token become <0xNN> tokens.

Oracle: the `sentencepiece` library's BPE model, built from the GGUF's pieces, scores and types. llama.cpp's
merge loop follows its BPE encoder (same queue order, same byte fallback). sentencepiece does not know
llama.cpp's framing, so the test does it in a few lines (cut out the specials leftmost-longest, prepend the
space), and sentencepiece encodes each span. One difference is bridged in the oracle: llama.cpp merges into
any token, sentencepiece only into normal ones, so control pieces are handed to it as normal pieces (a
control text that merges can reach is tokenized as that control token; test_control_token_reachable_by_merges
shows it).
Ids must be identical (no tolerance), and decode(encode(s)) gives s back.

A second oracle, transformers' GGUF tokenizer for gemma3 (AutoTokenizer with gguf_file), agrees except on two
classes of input, where it differs from llama.cpp by construction: it respells Gemma's user-defined
space-run tokens ("  " .. 31 spaces) as U+2581 runs and merges them as pieces, so (1) a run of more than 31
spaces splits differently (llama.cpp: 31 spaces, then the rest; transformers: by merge order, e.g. 16 + 16)
and (2) literal U+2581 characters next to a space or another U+2581 merge into those pieces.
"""

from __future__ import annotations

import functools
import math
import random
import re
import sysconfig
from pathlib import Path

import pytest
from flashmtp import _core
from test_tokenizer import gguf_tokenizer_fields, varied_strings

TOKEN_TYPE_NORMAL, TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 1, 2, 3, 4
TOKEN_TYPE_BYTE = 6
SPACE = "\u2581"

# Strings that reach byte fallback, the texts of byte and control tokens, space runs around Gemma's longest
# user-defined one (31 spaces), literal U+2581, and Gemma's one token with U+2581 inside (">▁</": no word
# boundary before that U+2581, see encode_spm).
EXTRA_STRINGS = [
    "p> </p", "a > </b", "x>> </", "> </", "<b>> </b>",
    "<0x41>", "x<0x41>y", "<0xFF><0x00>", "<start_of_turn>", "<unused12>", "<eos><bos>", "<pad>x", "<mask",
    " " * 31, " " * 32, "a" + " " * 40 + "b", "\t" * 40, "\n" * 33, SPACE, SPACE * 3 + "x", " " + SPACE + " ",
    "\U0001fae8\U0001fae9", "\u0e01\u0e34\u0e19", "\U00010348", "\ufffd", "\x00\x01\x7f", "\u200d\u200d",
]


@pytest.fixture(scope="module")
def gemma3_path():
    from flashmtp.testing.models import fetch_or_skip

    return fetch_or_skip("gemma3-270m-q4_k_m")


@functools.cache
def sentencepiece_model(path):
    """A sentencepiece BPE processor with the GGUF's pieces, scores and types (control ones as normal)."""
    spm = pytest.importorskip("sentencepiece", reason="the oracle needs `pip install sentencepiece`")
    from sentencepiece import sentencepiece_model_pb2 as pb

    fields = gguf_tokenizer_fields(path)
    tokens, types, scores = (fields[f"tokenizer.ggml.{k}"] for k in ("tokens", "token_type", "scores"))
    piece = pb.ModelProto.SentencePiece
    kinds = {TOKEN_TYPE_NORMAL: piece.NORMAL, TOKEN_TYPE_UNKNOWN: piece.UNKNOWN,
             TOKEN_TYPE_CONTROL: piece.NORMAL, TOKEN_TYPE_USER_DEFINED: piece.USER_DEFINED, 5: piece.UNUSED,
             TOKEN_TYPE_BYTE: piece.BYTE}
    model = pb.ModelProto()
    model.trainer_spec.model_type = pb.TrainerSpec.BPE
    model.trainer_spec.byte_fallback = True
    model.trainer_spec.vocab_size = len(tokens)
    model.trainer_spec.unk_id = int(fields.get("tokenizer.ggml.unknown_token_id", -1))
    model.trainer_spec.bos_id = model.trainer_spec.eos_id = model.trainer_spec.pad_id = -1
    # Normalization is the test's (llama.cpp's framing): only spaces are rewritten, by sentencepiece.
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = False
    model.normalizer_spec.remove_extra_whitespaces = False
    model.normalizer_spec.escape_whitespaces = True
    for i, (text, kind, score) in enumerate(zip(tokens, types, scores, strict=True)):
        p = model.pieces.add()
        p.piece, p.score = text, score
        p.type = piece.UNKNOWN if i == model.trainer_spec.unk_id else kinds.get(int(kind), piece.NORMAL)
    return spm.SentencePieceProcessor(model_proto=model.SerializeToString())


@functools.cache
def special_matcher(path, parse_special: bool) -> tuple[re.Pattern, dict[str, int]]:
    """A regex finding the leftmost-longest special token (an alternation tried longest first), and ids."""
    fields = gguf_tokenizer_fields(path)
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    wanted = (TOKEN_TYPE_USER_DEFINED, TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL) if parse_special else (
        TOKEN_TYPE_USER_DEFINED,)
    ids: dict[str, int] = {}
    for i, (t, ty) in enumerate(zip(tokens, types, strict=True)):
        if ty in wanted and t:
            ids.setdefault(t, i)
    return re.compile("|".join(re.escape(t) for t in sorted(ids, key=len, reverse=True))), ids


def oracle_encode(path, text: str, parse_special: bool, add_space_prefix: bool) -> list[int]:
    """llama.cpp's framing around sentencepiece's merges (see the module docstring)."""
    sp = sentencepiece_model(path)
    specials, ids = special_matcher(path, parse_special)
    out: list[int] = []
    after_special, pos = True, 0

    def span(s: str) -> None:
        nonlocal after_special
        if s:
            out.extend(sp.encode((" " if add_space_prefix and after_special else "") + s))
            after_special = False

    for m in specials.finditer(text):
        span(text[pos:m.start()])
        out.append(ids[m.group()])
        after_special, pos = True, m.end()
    span(text[pos:])
    return out


def write_spm_gguf(path, fields: dict, **flags) -> str:
    """A GGUF holding SPM tokenizer metadata: `fields` (tokenizer.ggml.*) with add_* flags overridden."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(fields["tokenizer.ggml.tokens"])
    writer.add_token_scores([float(x) for x in fields["tokenizer.ggml.scores"]])
    writer.add_token_types([int(x) for x in fields["tokenizer.ggml.token_type"]])
    for key in ("bos", "eos", "unk"):
        if f"tokenizer.ggml.{key}_token_id" in fields:
            getattr(writer, f"add_{key}_token_id")(int(fields[f"tokenizer.ggml.{key}_token_id"]))
    for key, value in flags.items():  # add_bos_token, add_eos_token, add_space_prefix
        if value is not None:
            writer.add_bool(f"tokenizer.ggml.{key}", value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def check_against_oracle(path, strings: list[str], add_space_prefix: bool) -> None:
    ours = _core.Tokenizer.from_gguf(str(path))
    assert ours.model == "llama" and ours.add_space_prefix == add_space_prefix
    for parse_special in (False, True):
        for s in strings:
            expected = oracle_encode(path, s, parse_special, add_space_prefix)
            got = ours.encode(s, add_special=False, parse_special=parse_special)
            assert got == expected, f"{s!r} (parse_special={parse_special}): {got} != oracle {expected}"
            # Specials decode to their text, but the prefix space after one stays (llama.cpp's rule), and a
            # literal U+2581 comes back as a space.
            plain = all(ours.token_type(i) in (TOKEN_TYPE_NORMAL, TOKEN_TYPE_BYTE) for i in got)
            if SPACE not in s and (plain or not add_space_prefix):
                assert ours.decode(got) == s, f"round trip of {s!r}"


def gemma3_specials(path) -> list[str]:
    fields = gguf_tokenizer_fields(path)
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    return [t for t, ty in zip(tokens, types, strict=True)
            if ty in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)]


# ---- gemma-3 (262k pieces, byte fallback, no prefix space, space and newline runs as user-defined tokens) --

def test_gemma3_matches_sentencepiece(gemma3_path):
    check_against_oracle(gemma3_path, varied_strings(gemma3_specials(gemma3_path), 520) + EXTRA_STRINGS,
                         add_space_prefix=False)


def test_gemma3_long_texts_match_sentencepiece(gemma3_path):
    # 300 KB of Python sources (cut into lines by Gemma's user-defined newline tokens) and ~200 KB of words
    # in one span with no newline: long merge queues, and every word boundary encode_spm cuts at.
    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    code = "".join(path.read_text(encoding="utf-8") for path in sources[:40])[:300_000]
    words, rng = code.split(), random.Random(0)
    one_span = " ".join(rng.choice(words) for _ in range(30000))
    ours = _core.Tokenizer.from_gguf(str(gemma3_path))
    for text in (code, one_span):
        for parse_special in (False, True):
            expected = oracle_encode(gemma3_path, text, parse_special, add_space_prefix=False)
            assert ours.encode(text, add_special=False, parse_special=parse_special) == expected
        assert ours.decode(ours.encode(text, add_special=False)) == text


def test_gemma3_vocabulary_with_add_space_prefix(gemma3_path, tmp_path):
    # Llama 2-style vocabularies prepend a space; Gemma's vocabulary with the flag set exercises it on the
    # same pieces: a space before the text and after every special token, removed again by decode.
    fields = gguf_tokenizer_fields(gemma3_path)
    path = write_spm_gguf(tmp_path / "prefix.gguf", fields, add_space_prefix=True, add_bos_token=True)
    check_against_oracle(path, varied_strings(gemma3_specials(gemma3_path), 160, seed=1) + EXTRA_STRINGS,
                         add_space_prefix=True)


def test_gemma3_metadata_and_specials(gemma3_path):
    t = _core.Tokenizer.from_gguf(str(gemma3_path))
    assert (t.model, t.n_vocab, t.bos_id, t.eos_id) == ("llama", 262144, 2, 1)
    assert (t.add_bos, t.add_eos, t.add_space_prefix) == (True, False, False)
    assert t.token_text(238) == "<0x00>" and t.token_bytes(238) == b"\x00" and t.token_score(238) == 0.0
    text = "<start_of_turn>user\nHi  there<end_of_turn>"
    ids = t.encode(text, add_special=True, parse_special=True)
    assert ids[:2] == [2, 105] and ids[-1] == 106
    assert t.decode(ids) == "<bos>" + text
    plain = t.encode(text, add_special=False, parse_special=False)
    assert 105 not in plain and t.decode(plain) == text
    # User-defined tokens are cut out whatever parse_special says: "\n" and the two-space run.
    assert 107 in plain and 138 in plain
    # A merge across a space: Gemma's token ">▁</".
    assert [t.token_text(i) for i in t.encode("p> </p", add_special=False)] == ["p", ">▁</", "p"]


def test_gemma3_stream_emits_whole_characters(gemma3_path):
    t = _core.Tokenizer.from_gguf(str(gemma3_path))
    text = "rare \U0001fae8 and \U00010348 and 日本語 end"  # the first two: byte tokens in Gemma's vocabulary
    ids = t.encode(text, add_special=False)
    assert any(t.token_type(i) == TOKEN_TYPE_BYTE for i in ids)
    stream = _core.TokenTextStream(t)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)


@pytest.mark.slow
def test_transformers_gguf_tokenizer_agrees_except_documented_classes(gemma3_path):
    # Slow: transformers rebuilds ~1M merges from the 262k-piece vocabulary (about 30 s here).
    transformers = pytest.importorskip("transformers", reason="the second oracle needs transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(gemma3_path.parent), gguf_file=gemma3_path.name)
    ours = _core.Tokenizer.from_gguf(str(gemma3_path))
    differs_by_construction = re.compile(" {32}|[ \u2581]\u2581|\u2581 ")  # the two classes in the docstring
    strings = varied_strings(gemma3_specials(gemma3_path), 520) + EXTRA_STRINGS
    compared = 0
    for s in strings:
        if differs_by_construction.search(s):
            continue
        compared += 1
        expected = hf.encode(s, add_special_tokens=False)
        assert ours.encode(s, add_special=False, parse_special=True) == expected, s
    assert compared >= 500
    assert ours.encode("Hi", add_special=True) == hf.encode("Hi", add_special_tokens=True)
    # The first class: llama.cpp's user-defined 31-space token, then the 32nd space joins the comma.
    assert ours.encode(" " * 32 + ",", add_special=False) == [167, 1031]


# ---- a hand-made vocabulary: each rule on its own, no download -----------------------------------------

# (text, type, score). Scores decide merge order: higher first.
TINY_VOCAB = [
    ("<unk>", TOKEN_TYPE_UNKNOWN, 0.0), ("<s>", TOKEN_TYPE_CONTROL, 0.0), ("</s>", TOKEN_TYPE_CONTROL, 0.0),
    *((f"<0x{b:02X}>", TOKEN_TYPE_BYTE, 0.0) for b in range(256)),
    ("<u>", TOKEN_TYPE_USER_DEFINED, 0.0), ("<x>", TOKEN_TYPE_CONTROL, -50.0),
    (SPACE, TOKEN_TYPE_NORMAL, -1.0), ("a", TOKEN_TYPE_NORMAL, -2.0), ("b", TOKEN_TYPE_NORMAL, -3.0),
    ("c", TOKEN_TYPE_NORMAL, -4.0), ("<", TOKEN_TYPE_NORMAL, -5.0), ("x", TOKEN_TYPE_NORMAL, -6.0),
    (">", TOKEN_TYPE_NORMAL, -7.0), ("aa", TOKEN_TYPE_NORMAL, -10.0), ("ab", TOKEN_TYPE_NORMAL, -12.0),
    ("bc", TOKEN_TYPE_NORMAL, -11.0), (SPACE + "a", TOKEN_TYPE_NORMAL, -13.0),
    ("<x", TOKEN_TYPE_NORMAL, -14.0),
]
TINY_IDS = {text: i for i, (text, _, _) in enumerate(TINY_VOCAB)}


def tiny_tokenizer(tmp_path, name="tiny.gguf", vocab=TINY_VOCAB, **flags) -> _core.Tokenizer:
    fields = {"tokenizer.ggml.tokens": [t for t, _, _ in vocab],
              "tokenizer.ggml.token_type": [k for _, k, _ in vocab],
              "tokenizer.ggml.scores": [s for _, _, s in vocab], "tokenizer.ggml.bos_token_id": 1,
              "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.unknown_token_id": 0}
    return _core.Tokenizer.from_gguf(write_spm_gguf(tmp_path / name, fields, **flags))


def pieces(t: _core.Tokenizer, ids: list[int]) -> list[str]:
    return [t.token_text(i) for i in ids]


def test_tiny_merges_best_score_first_and_leftmost_on_ties(tmp_path):
    t = tiny_tokenizer(tmp_path, add_space_prefix=False)
    # "aaa": both pairs make "aa" (same score): the left one merges, then "aa"+"a" is no token.
    assert pieces(t, t.encode("aaa", add_special=False)) == ["aa", "a"]
    # "abc": "bc" (-11) beats "ab" (-12) although "ab" is further left.
    assert pieces(t, t.encode("abc", add_special=False)) == ["a", "bc"]
    # The same rules in sentencepiece.
    path = str(tmp_path / "tiny.gguf")
    for s in ["aaa", "abc", "aaaa", "abcabc", "a a", "cab"]:
        assert t.encode(s, add_special=False) == oracle_encode(path, s, False, False), s


def test_tiny_byte_fallback_and_stream(tmp_path):
    t = tiny_tokenizer(tmp_path, add_space_prefix=False)
    ids = t.encode("aé", add_special=False)  # é = C3 A9 has no piece: two byte tokens
    assert pieces(t, ids) == ["a", "<0xC3>", "<0xA9>"]
    assert t.decode(ids) == "aé"
    stream = _core.TokenTextStream(t)
    assert [stream.push(i) for i in ids] == ["a", "", "é"]
    assert t.encode("\x00", add_special=False) == [TINY_IDS["<0x00>"]]


def test_tiny_space_prefix_is_the_default_and_follows_specials(tmp_path):
    t = tiny_tokenizer(tmp_path)  # no tokenizer.ggml.add_space_prefix: llama.cpp's SPM default is on
    assert t.add_space_prefix and t.add_bos and not t.add_eos
    assert pieces(t, t.encode("a a", add_special=False)) == [SPACE + "a", SPACE + "a"]
    assert t.decode(t.encode("a a", add_special=False)) == "a a"  # decode drops the prefix space again
    # A span after a special token (control or user-defined) gets its own prefix space.
    assert pieces(t, t.encode("<s>a<u>a", add_special=True, parse_special=True)) == [
        "<s>", "<s>", SPACE + "a", "<u>", SPACE + "a"]
    assert pieces(t, t.encode("", add_special=True)) == ["<s>"]


def test_tiny_add_eos_and_no_bos(tmp_path):
    t = tiny_tokenizer(tmp_path, add_bos_token=False, add_eos_token=True, add_space_prefix=False)
    assert pieces(t, t.encode("ab", add_special=True)) == ["ab", "</s>"]
    assert pieces(t, t.encode("ab", add_special=False)) == ["ab"]


def test_control_token_reachable_by_merges(tmp_path):
    # llama.cpp merges into any token: with parse_special off, "<" "x" -> "<x", then "<x" ">" -> the control
    # token "<x>" (sentencepiece would stop at "<x" ">"). User-defined "<u>" is cut out either way.
    t = tiny_tokenizer(tmp_path, add_space_prefix=False)
    assert pieces(t, t.encode("<x>", add_special=False, parse_special=False)) == ["<x>"]
    assert pieces(t, t.encode("<x>", add_special=False, parse_special=True)) == ["<x>"]
    assert pieces(t, t.encode("<u><s>", add_special=False, parse_special=False)) == [
        "<u>", "<", "<0x73>", ">"]


def test_bad_spm_metadata_raises(tmp_path):
    bad_score = [(t, k, math.nan if t == "a" else s) for t, k, s in TINY_VOCAB]
    with pytest.raises(_core.GGUFError, match=r"tokenizer.ggml.scores\[\d+\] is NaN"):
        tiny_tokenizer(tmp_path, "nan.gguf", bad_score)
    bad_byte = [("<0xZZ>", k, s) if t == "<0x41>" else (t, k, s) for t, k, s in TINY_VOCAB]
    with pytest.raises(_core.GGUFError, match=r'"<0xZZ>" is a byte token \(type 6\) but not spelled <0xNN>'):
        tiny_tokenizer(tmp_path, "byte.gguf", bad_byte)
