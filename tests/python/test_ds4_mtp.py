"""The deepseek4 MTP head and speculative decoding, end to end on tiny random DeepSeek-V4 checkpoints
(flashmtp.testing.tiny_deepseek4, converted by `flashmtp convert` into a main GGUF and its MTP sidecar).

Oracles:
- the head's logits: flashmtp.testing.ds4_mtp_ref (transformers' V4 decoder layer and hyper-head assembled as
  spec/deepseek4.md "MTP" says) on transformers' own final streams, F32, within 1e-4 relative, for every
  position of a 40-token prefix (sliding window 8: the head's catch-up crosses several windows) and for
  recursive drafting steps;
- the catch-up path (drafting after every token, after chunks, after more than a window, after rewinds):
  bitwise against drafting once;
- speculative generation: bitwise the same tokens as plain decoding (greedy; sampling in the coupled and
  greedy-draft modes, which are seed-stable) for many prompts, lengths and draft lengths 1..4 and auto, on a
  model whose drafts are accepted often enough that both acceptance and rollback paths run many times;
- the residual mode (min(1, p/q) and residual resampling): chi-square of 2-token continuations against the
  main model's exact distribution (sampler.distribution), 2000 runs;
- rewind: random decode / draft / verify / rewind sequences (hypothesis) against a fresh session that decoded
  only the kept tokens, bitwise, main logits and draft logits.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")
pytest.importorskip("tokenizers")

import flashmtp  # noqa: E402
from flashmtp import _core  # noqa: E402
from flashmtp.convert import convert, mtp_path  # noqa: E402
from flashmtp.testing.tiny_deepseek4 import TinyDeepseek4, make_tiny_deepseek4  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

T = 40  # prefix length: five sliding windows of 8


@pytest.fixture(scope="module")
def tiny() -> TinyDeepseek4:
    return make_tiny_deepseek4(seed=0)


@pytest.fixture(scope="module")
def files(tiny: TinyDeepseek4, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """F32 main + sidecar of `tiny`, and of a "peaked" variant whose output matrix favours two tokens (not
    BOS or EOS): the main model and the head (which shares that matrix) then agree often enough (about 20%
    of drafts) that drafts are both accepted and rejected many times."""
    import torch

    root = tmp_path_factory.mktemp("ds4mtp")
    out = {}
    peaked = TinyDeepseek4(tiny.config, {k: v.clone() for k, v in tiny.state.items()}, tiny.mtp)
    with torch.no_grad():
        peaked.state["lm_head.weight"][10:12] *= 12
    for name, model in (("f32", tiny), ("peaked", peaked)):
        checkpoint = model.write(root / "ckpt" / name, "release")
        out[name] = root / f"tiny-{name}.gguf"
        convert(checkpoint, out[name], "f32", progress=False)
    return out


@pytest.fixture(scope="module")
def tokens(tiny: TinyDeepseek4) -> np.ndarray:
    return np.random.default_rng(1).integers(0, tiny.config.vocab_size, T + 8).astype(np.int32)


def engine(path: Path, threads: int = 1) -> _core.Engine:
    return _core.Engine(str(path), threads, str(mtp_path(path)))


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


# ---- the head against the PyTorch reference ----------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(tiny: TinyDeepseek4):
    import torch

    torch.set_num_threads(1)
    return tiny.reference()


def test_head_matches_the_reference_at_every_position(files: dict[str, Path], tokens: np.ndarray,
                                                       reference) -> None:
    import torch
    from flashmtp.testing.ds4_mtp_ref import main_final_streams

    model, mtp = reference
    ids = torch.tensor(tokens[: T + 1].astype(np.int64))
    with torch.no_grad():
        streams = main_final_streams(model, ids[:T].unsqueeze(0))
        theirs = mtp(streams, ids[1 : T + 1])[0].double().numpy()  # [T, V]: position i guesses token i + 2
    session = engine(files["f32"]).session()
    errors = []
    for p in range(1, T + 1):  # positions [0, p) decoded, token p sampled: the head's position p - 1
        session.decode(tokens[p - 1 : p], 0)
        errors.append(relative_error(session.draft(int(tokens[p])), theirs[p - 1]))
    assert max(errors) < 1e-4, f"max relative error {max(errors):.2e} at position {int(np.argmax(errors))}"


def test_recursive_drafting_matches_the_reference(files: dict[str, Path], tokens: np.ndarray,
                                                  reference) -> None:
    """Steps 2..4 feed the head its own output streams with the drafted token (given here, not argmax, so
    that the comparison does not hinge on near ties)."""
    import torch
    from flashmtp.testing.ds4_mtp_ref import main_final_streams

    model, mtp = reference
    ids = torch.tensor(tokens.astype(np.int64))
    drafted = [int(t) for t in tokens[T + 1 : T + 4]]
    with torch.no_grad():
        streams = main_final_streams(model, ids[:T].unsqueeze(0))
        next_ids = ids[1 : T + 1]
        logits, out = mtp(streams, next_ids)
        expected = [logits[-1].double().numpy()]
        for d in drafted:
            streams = torch.cat([streams, out[-1:]])
            next_ids = torch.cat([next_ids, torch.tensor([d])])
            logits, out = mtp(streams, next_ids)
            expected.append(logits[-1].double().numpy())
    session = engine(files["f32"]).session()
    session.decode(tokens[:T], 0)
    ours = [session.draft(int(tokens[T]))] + [session.draft_next(d) for d in drafted]
    for step, (a, b) in enumerate(zip(ours, expected, strict=True)):
        assert relative_error(a, b) < 1e-4, f"draft step {step + 1}"


# ---- catch-up paths ----------------------------------------------------------------------------------------

def test_draft_logits_do_not_depend_on_the_catch_up_path(files: dict[str, Path], tokens: np.ndarray) -> None:
    e = engine(files["f32"])
    once = e.session()
    once.decode(tokens[:T], 0)
    expected = [once.draft(int(tokens[T])), once.draft_next(7), once.draft_next(9)]

    def check(session: _core.Session) -> None:
        got = [session.draft(int(tokens[T])), session.draft_next(7), session.draft_next(9)]
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, b)

    every_token = e.session()  # drafting (and abandoning drafts) after every token
    for p in range(T):
        every_token.decode(tokens[p : p + 1], 0)
        every_token.draft(int(tokens[p + 1]))
        every_token.draft_next(3)
    check(every_token)

    chunks = e.session()  # chunks, a draft with a token that is then not decoded, a rewind, a long gap
    for a, b in [(0, 5), (5, 6), (6, 19), (19, 22)]:
        chunks.decode(tokens[a:b], 0)
        chunks.draft(11)
    chunks.rewind(20)
    chunks.decode(tokens[20:T], 0)
    check(chunks)
    check(chunks)  # drafting twice at one position


# ---- speculative generation --------------------------------------------------------------------------------

PROMPTS = ["the quick brown fox", "def convert(hf_dir, out):", "jumps over", "return out", "a", "dog dog dog",
           "the lazy dog def", "fox(", "over the quick", "convert the brown"]


def test_greedy_speculative_output_is_plain_greedy(files: dict[str, Path]) -> None:
    model = flashmtp.Model(files["peaked"], threads=1, mtp=mtp_path(files["peaked"]))
    rng = np.random.default_rng(0)
    accepted = rejected = 0
    for prompt in PROMPTS:
        n = int(rng.integers(1, 64))
        plain = model.generate(prompt, max_tokens=n, temperature=0, mtp=False)
        plain_tokens = model.last_stats.n_generated
        for draft in (1, 2, 3, 4, "auto"):
            text = model.generate(prompt, max_tokens=n, temperature=0, draft=draft)
            assert text == plain, (prompt, n, draft)
            stats = model.last_stats
            assert stats.n_generated == plain_tokens
            spec = stats.speculative
            assert spec.accepted <= spec.drafted and sum(spec.accepted_at) == spec.accepted
            accepted += spec.accepted
            rejected += spec.rollbacks
    # both paths ran often
    assert accepted > 50 and rejected > 100, (accepted, rejected)


def test_chat_with_drafts_gives_the_same_replies(files: dict[str, Path]) -> None:
    """A kept session across turns (prefix reuse, rewinds) with drafting: the same replies as without."""
    from flashmtp.chat import Chat, ChatTemplate

    model = flashmtp.Model(files["peaked"], threads=1, mtp=mtp_path(files["peaked"]))
    template = ChatTemplate("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    chats = [Chat(model, template=template, max_tokens=30, temperature=0, mtp=mtp, draft=2)
             for mtp in (False, True)]
    for text in ["the quick brown fox", "jumps over", "the lazy dog"]:
        plain, drafted = (chat.send(text) for chat in chats)
        assert drafted == plain
    assert chats[1].last_stats.speculative.drafted > 0


@pytest.mark.parametrize("mode", ["coupled", "greedy"])
def test_seed_stable_modes_sample_the_plain_text(files: dict[str, Path], mode: str) -> None:
    model = flashmtp.Model(files["peaked"], threads=1, mtp=mtp_path(files["peaked"]))
    drafted = 0
    for seed, prompt in enumerate(PROMPTS):
        kwargs = dict(max_tokens=40, temperature=0.9, top_k=0, top_p=1.0, min_p=0.0, seed=seed)
        plain = model.generate(prompt, mtp=False, **kwargs)
        for draft in (1, 3):
            assert model.generate(prompt, draft=draft, draft_mode=mode, **kwargs) == plain, (seed, draft)
            drafted += model.last_stats.speculative.accepted
    assert drafted > 0


def test_residual_mode_samples_the_main_distribution(files: dict[str, Path]) -> None:
    """Chi-square of (t1, t2) over 2000 seeds, draft 1: t2 is the verified draft or its residual resample."""
    from scipy.stats import chisquare

    path = files["peaked"]
    model = flashmtp.Model(path, threads=1, mtp=mtp_path(path))
    sampling = dict(temperature=1.0, top_k=3, top_p=1.0, min_p=0.0)
    prompt_ids = model.tokenize("the quick brown fox")
    # The exact joint distribution: p(t1) p(t2 | t1), as the sampler chain defines them.
    sampler = _core.Sampler(seed=0, **sampling)
    session = model.session(64)
    first_ids, first_probs = sampler.distribution(session.decode(np.array(prompt_ids, np.int32), 1)[0],
                                                  prompt_ids)
    joint = {}
    for t1, p1 in zip(first_ids.tolist(), first_probs.tolist(), strict=True):
        session.rewind(len(prompt_ids))
        second = sampler.distribution(session.decode(np.array([t1], np.int32), 1)[0], prompt_ids + [t1])
        for t2, p2 in zip(*(a.tolist() for a in second), strict=True):
            joint[(t1, t2)] = p1 * p2
    assert not any(model.tokenizer.is_eog(t) for t, _ in joint)  # every run generates two tokens
    counts = dict.fromkeys(joint, 0)
    accepted = 0
    n_runs = 2000
    for seed in range(n_runs):
        generation = _core.Generation(model.engine, model.tokenizer, "the quick brown fox", 2, 0,
                                      sampling["temperature"], sampling["top_k"], sampling["top_p"],
                                      sampling["min_p"], seed, draft=1, draft_mode="residual")
        while generation.step() is not None:
            pass
        accepted += generation.stats.speculative.accepted
        counts[tuple(generation.tokens[-2:])] += 1
    expected = np.array([joint[k] for k in counts]) * n_runs
    observed = np.array([counts[k] for k in counts])
    assert 0.05 * n_runs < accepted < 0.95 * n_runs  # the test exercises both acceptance and resampling
    assert chisquare(observed, expected / expected.sum() * observed.sum()).pvalue > 1e-3


# ---- rewind ------------------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["decode", "draft", "verify", "rewind"]), st.integers(1, 6),
                          st.integers(0, 299)), min_size=1, max_size=14))
def test_random_decode_draft_rewind_sequences_are_exact(files: dict[str, Path], ops) -> None:
    e = engine(files["f32"])
    session = e.session(160)
    history: list[int] = []
    for op, n, token in ops:
        if op == "decode" or not history:
            ids = [(token + 7 * i) % 300 for i in range(n)]
            session.decode(np.array(ids, np.int32), 0)
            history += ids
        elif op == "draft":
            session.draft(token)
            for i in range(n - 1):
                session.draft_next((token + i) % 300)
        elif op == "verify":  # a verify batch of n tokens, then keep a prefix of it
            ids = [(token + 3 * i) % 300 for i in range(n)]
            session.draft(ids[0])
            session.decode(np.array(ids, np.int32), len(ids))
            history += ids
            keep = len(history) - (token % (n + 1))
            session.rewind(keep)
            del history[keep:]
        else:  # a rewind, sometimes beyond the in-place depth
            keep = max(0, len(history) - (n if token % 4 else 20 + n))
            session.rewind(keep)
            del history[keep:]
    fresh = e.session(160)
    probe = np.array([5, 6], np.int32)
    if history:
        fresh.decode(np.array(history, np.int32), 0)
        np.testing.assert_array_equal(session.draft(17), fresh.draft(17))
        np.testing.assert_array_equal(session.draft_next(4), fresh.draft_next(4))
    np.testing.assert_array_equal(session.decode(probe), fresh.decode(probe))


# ---- files and errors --------------------------------------------------------------------------------------

def sidecar_with_copies(main: Path, sidecar: Path, out: Path, scale_output: float = 1.0) -> Path:
    """`sidecar` plus copies of the main model's token_embd, output_norm and output, as llama.cpp's
    converter writes them (optionally a different output matrix)."""
    import gguf

    rm, rs = gguf.GGUFReader(main), gguf.GGUFReader(sidecar)
    writer = gguf.GGUFWriter(out, arch="deepseek4")
    for name, field in rs.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        sub_type = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub_type)
    for t in rs.tensors:
        writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    for t in rm.tensors:
        if t.name in ("token_embd.weight", "output_norm.weight", "output.weight"):
            data = np.array(t.data) * (scale_output if t.name == "output.weight" else 1.0)
            writer.add_tensor(t.name, data.astype(np.float32), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def test_llama_cpp_style_sidecar_shares_identical_copies(files: dict[str, Path], tokens: np.ndarray,
                                                         tmp_path: Path) -> None:
    main = files["f32"]
    ours = engine(main)
    copies = _core.Engine(str(main), 1, str(sidecar_with_copies(main, mtp_path(main), tmp_path / "c.gguf")))
    different = _core.Engine(str(main), 1, str(sidecar_with_copies(main, mtp_path(main), tmp_path / "d.gguf",
                                                                   scale_output=2.0)))
    assert copies.draft_head_bytes == ours.draft_head_bytes  # the copies are not read
    assert different.draft_head_bytes > ours.draft_head_bytes  # its own output matrix is
    drafts = []
    for e in (ours, copies, different):
        session = e.session()
        session.decode(tokens[:T], 0)
        drafts.append(session.draft(int(tokens[T])))
    np.testing.assert_array_equal(drafts[0], drafts[1])
    np.testing.assert_allclose(drafts[2], 2 * drafts[0], rtol=1e-5, atol=1e-6)


def test_sidecar_errors(files: dict[str, Path], tmp_path: Path, repo_root: Path) -> None:
    main = files["f32"]
    other = make_tiny_deepseek4(seed=1, hidden_size=128)
    other_main = tmp_path / "other.gguf"
    convert(other.write(tmp_path / "other", "release"), other_main, "f32", progress=False)
    with pytest.raises(flashmtp.GGUFError, match="does not match the main model: hidden size .* 128 vs the "
                                                 "main model's 256"):
        _core.Engine(str(main), 1, str(mtp_path(other_main)))
    with pytest.raises(flashmtp.GGUFError, match="no MTP block"):
        _core.Engine(str(main), 1, str(main))
    llama = repo_root / "models" / "tiny-llama.gguf"
    with pytest.raises(flashmtp.GGUFError, match="an MTP head needs a deepseek4 main model"):
        _core.Engine(str(llama), 1, str(mtp_path(main)))
    plain = flashmtp.Model(main, threads=1)
    assert not plain.has_mtp
    with pytest.raises(ValueError, match="mtp=True needs an MTP draft head"):
        plain.generate("the", max_tokens=2, mtp=True)
    with pytest.raises(ValueError, match="draft must be 'auto' or an int"):
        flashmtp.Model(main, threads=1, mtp=mtp_path(main)).generate("the", max_tokens=2, draft=9)
    session = plain.session(16)
    with pytest.raises(RuntimeError, match="no MTP draft head"):
        session.draft(1)
    with pytest.raises(ValueError, match="drafting needs an MTP draft head"):  # at once, not mid-generation
        _core.Generation(session, plain.tokenizer, [1, 2], [], 4, 0.0, 40, 0.95, 0.05, 0, draft=2)
    session = engine(main).session(16)
    with pytest.raises(ValueError, match="the session is empty"):
        session.draft(1)
    with pytest.raises(RuntimeError, match="call draft first"):
        session.draft_next(1)
    session.decode(np.array([1, 2], np.int32), 0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        session.draft(300)
    session.draft(3)
    for _ in range(_core.Session.max_draft - 1):
        session.draft_next(3)
    with pytest.raises(ValueError, match="at most 8 tokens"):
        session.draft_next(3)


# ---- command lines -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["compiled", "python"])
def test_run_command_with_a_head_prints_the_same_text(files: dict[str, Path], cli_binary: str,
                                                     which: str) -> None:
    import subprocess
    import sys

    main = files["peaked"]
    command = {"compiled": [cli_binary, "run"], "python": [sys.executable, "-m", "flashmtp", "run"]}[which]
    command += ["-m", str(main), "-p", "the quick brown fox", "-n", "40", "--temp", "0", "-t", "1"]
    plain = subprocess.run(command, capture_output=True, text=True, check=True)
    with_head = subprocess.run(command + ["--mtp", str(mtp_path(main)), "--draft", "3"], capture_output=True,
                               text=True, check=True)
    assert with_head.stdout == plain.stdout
    assert "mtp:" not in plain.stderr
    assert re.search(r"mtp: +\d+ rounds, \d+ drafted, \d+ accepted", with_head.stderr), with_head.stderr
    assert "acceptance by draft position: 1:" in with_head.stderr
    bad = subprocess.run(command + ["--mtp", str(main)], capture_output=True, text=True)
    assert bad.returncode != 0 and "no MTP block" in bad.stderr
    no_head = subprocess.run(command + ["--draft", "2"], capture_output=True, text=True)
    assert no_head.returncode != 0 and "--draft needs an MTP draft head" in no_head.stderr


def test_bench_mtp_smoke(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`flashmtp bench mtp` on the peaked tiny model and held-out code (the standard library: no download):
    every setting's text equals MTP off's; the CSV has a row per setting. Durations are never asserted."""
    import csv

    from flashmtp.cli import main

    main_file, out = files["peaked"], tmp_path / "mtp.csv"
    assert main(["bench", "mtp", "-m", str(main_file), "--mtp", str(mtp_path(main_file)), "--threads", "1",
                 "--prompts", "2", "--tokens", "12", "--prompt-chars", "120", "--domains", "code",
                 "--csv", str(out)]) == 0
    assert "llama.cpp: not measured" in capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert [r["setting"] for r in rows] == ["off", "draft 1", "draft 2", "draft 3", "draft auto"]
    assert all(r["same text"] == "2/2" for r in rows)
