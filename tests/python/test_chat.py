"""Chat: jinja rendering (flashmtp.chat), the compiled CLI's built-in formatter (csrc/runtime/chat.cpp),
end-of-generation tokens, KV-cache reuse between turns, and both `chat` command lines.

Oracles:
- rendering: transformers. Fast tests render the GGUF's template string with transformers'
  ``render_jinja_template``; the slow test builds the whole tokenizer from the GGUF (``AutoTokenizer
  .from_pretrained(dir, gguf_file=...)``) and compares ``apply_chat_template`` text and token ids. Exact text.
- built-in formatter: our jinja rendering, on the real models' templates and on canonical templates of each
  family (the published Llama 3 and Gemma templates, ChatML, DeepSeek V3's without its tool branches). Exact.
- end-of-generation ids: llama.cpp's rules (llama-vocab.cpp) applied by hand to each vocabulary.
- reuse of the KV cache: the same conversation rendered into a fresh session (greedy, so bit-identical
  logits give identical text).
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
from flashmtp import _core
from flashmtp.chat import CHATML_TEMPLATE, Chat, ChatTemplate, prompt_tokens
from flashmtp.model import Model
from flashmtp.testing.models import fetch_or_skip

ROOT = Path(__file__).resolve().parent.parent.parent
TINY = ROOT / "models" / "tiny-llama.gguf"
REAL_MODELS = ["smollm2-135m-q4_1", "qwen2.5-coder-0.5b-q4_k_m"]


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


CONVERSATIONS = {
    "user": [msg("user", "Hello!")],
    "system_user": [msg("system", "You are terse."), msg("user", "Name a prime.")],
    "multi_turn": [msg("system", "Be kind."), msg("user", "Hi"), msg("assistant", "Hello! How can I help?"),
                   msg("user", "Tell me a joke.")],
    "no_system_multi_turn": [msg("user", "2+2?"), msg("assistant", "4"), msg("user", "And 3+3?")],
    "unicode": [msg("user", "Ünïcödé ✓ 日本語 🙂 — \"quotes\", 'apostrophes', <tags> & {{braces}} {% x %}"),
                msg("assistant", "  spaced reply \n"), msg("user", "\tتمام؟\n\nnew line")],
}

# Canonical templates of the built-in families.
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content"
    "'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assis"
    "tant\n' }}{% endif %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|"
    "start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim "
    "+ '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endi"
    "f %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assist"
    "ant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messag"
    "es[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first_u"
    'ser_prefix = "" %}{% set loop_messages = messages %}{% endif %}{% for message in loop_me'
    "ssages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exceptio"
    'n("Conversation roles must alternate user/assistant/user/assistant/...") }}{% endif %}{%'
    ' if (message[\'role\'] == \'assistant\') %}{% set role = "model" %}{% else %}{% set role = m'
    "essage['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if lo"
    'op.first else "") + message[\'content\'] | trim + \'<end_of_turn>\n\' }}{% endfor %}{% if add'
    "_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
DEEPSEEK3 = (
    '{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% e'
    "ndif %}{% set ns = namespace(is_first=false, is_tool=false, system_prompt='', is_first_s"
    "p=true) %}{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.i"
    "s_first_sp %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns"
    ".is_first_sp = false %}{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + "
    "message['content'] %}{%- endif %}{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_pr"
    "ompt }}{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_to"
    "ol = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}{%- if message['role'] == '"
    "assistant' and message['content'] is not none %}{{'<｜Assistant｜>' + message['content'] +"
    " '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor -%}{% if add_generation_prompt and not ns"
    ".is_tool %}{{'<｜Assistant｜>'}}{% endif %}"
)
FAMILIES = {
    "chatml": (CHATML, "<s>"),
    "llama3": (LLAMA3, "<|begin_of_text|>"),
    "gemma": (GEMMA, "<bos>"),
    "deepseek3": (DEEPSEEK3, "<｜begin▁of▁sentence｜>"),
}
FAMILY_CONVERSATIONS = {
    **CONVERSATIONS,
    "two_systems": [msg("system", "First."), msg("system", "Second."), msg("user", "Go")],
    "system_only": [msg("system", "Only a system message.")],
}


def hf_render(source: str, messages: list[dict[str, str]], add_generation_prompt: bool,
              **special: str) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[messages], chat_template=source,
                                        add_generation_prompt=add_generation_prompt, **special)
    return rendered[0]


def render_both(source: str, bos: str, messages: list[dict[str, str]], add_generation_prompt: bool):
    """(jinja text, built-in formatter text), "refused" where one raises (TemplateError, ValueError)."""
    results = []
    for render in (lambda: ChatTemplate(source, bos_token=bos).render(messages, add_generation_prompt),
                   lambda: _core.ChatTemplate.detect(source, bos).apply(messages, add_generation_prompt)):
        try:
            results.append(render())
        except (jinja2.TemplateError, ValueError):
            results.append("refused")
    return results


@functools.cache
def builtin_template(path: str) -> _core.ChatTemplate:
    return _core.ChatTemplate.from_gguf(path)


@pytest.fixture(scope="module")
def tiny() -> Model:
    return Model(TINY, threads=2)


@pytest.fixture(scope="module", params=REAL_MODELS)
def real_model(request: pytest.FixtureRequest) -> Model:
    return Model(fetch_or_skip(request.param), threads=2)


@pytest.fixture(scope="module")
def smollm2() -> Model:
    return Model(fetch_or_skip("smollm2-135m-q4_1"), threads=2)


def tiny_with_metadata(tmp_path: Path, name: str, new: dict[str, object],
                       remove: tuple[str, ...] = ()) -> Path:
    """A copy of the tiny llama with metadata keys added or changed (`new`, str or bool values) or removed."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    types = {str: gguf.GGUFValueType.STRING, bool: gguf.GGUFValueType.BOOL}
    reader = gguf.GGUFReader(str(TINY))
    path = tmp_path / name
    writer = gguf.GGUFWriter(str(path), arch="llama")
    copy_with_new_metadata(reader, writer, {k: MetadataDetails(types[type(v)], v) for k, v in new.items()},
                           list(remove))
    return path


# ---- rendering: jinja vs transformers ----------------------------------------------------------------------

@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_matches_transformers(real_model: Model, conversation: str,
                                     add_generation_prompt: bool) -> None:
    template = real_model.chat_template
    messages = CONVERSATIONS[conversation]
    expected = hf_render(template.source, messages, add_generation_prompt, bos_token=template.bos_token,
                         eos_token=template.eos_token)
    assert template.render(messages, add_generation_prompt) == expected


@pytest.mark.slow  # transformers builds both tokenizers from the GGUF files: about a minute here
@pytest.mark.parametrize("name", REAL_MODELS)
def test_render_and_tokens_match_transformers_tokenizer(name: str) -> None:
    from transformers import AutoTokenizer

    path = fetch_or_skip(name)
    hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = Model(path, threads=1)
    for conversation, messages in CONVERSATIONS.items():
        text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert model.chat_template.render(messages) == text, conversation
        expected_ids = hf(text, add_special_tokens=True)["input_ids"]
        assert prompt_tokens(model.tokenizer, text) == expected_ids, conversation


def test_template_features() -> None:
    # The transformers environment: tojson keeps non-ASCII, raise_exception raises, loop controls and
    # {% generation %} blocks parse, tools and extra variables reach the template, the sandbox holds.
    t = ChatTemplate("{{ messages[0] | tojson }}|{% for m in messages %}{% if loop.index > 1 %}{% break %}"
                     "{% endif %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
                     "|{{ tools | length }}"
                     "|{{ extra }}|{{ strftime_now('%Y') | length }}")
    assert t.render([msg("user", "é"), msg("user", "x")], tools=[{"a": 1}], extra="E") == \
        '{"role": "user", "content": "é"}|é|1|E|4'
    with pytest.raises(jinja2.TemplateError, match="boom"):
        ChatTemplate("{{ raise_exception('boom') }}").render([msg("user", "x")])
    with pytest.raises(jinja2.exceptions.SecurityError):
        ChatTemplate("{{ messages.__class__.__init__.__globals__ }}").render([msg("user", "x")])


# ---- built-in formatter (compiled CLI) vs jinja ------------------------------------------------------------

@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_builtin_formatter_matches_real_templates(real_model: Model, conversation: str) -> None:
    builtin = builtin_template(real_model.path)
    assert builtin.family == "chatml" and builtin.has_file_template
    messages = CONVERSATIONS[conversation]
    for add_generation_prompt in (True, False):
        assert builtin.apply(messages, add_generation_prompt) == \
            real_model.chat_template.render(messages, add_generation_prompt)


def test_builtin_formatter_reads_default_system_turns(real_model: Model) -> None:
    expected = {"llama": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
                "qwen2": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."}
    assert builtin_template(real_model.path).default_system == expected[real_model.architecture]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("conversation", FAMILY_CONVERSATIONS)
def test_builtin_formatter_matches_canonical_templates(family: str, conversation: str) -> None:
    source, bos = FAMILIES[family]
    assert _core.ChatTemplate.detect(source, bos).family == family
    assert _core.ChatTemplate.detect(source, bos).default_system == ""
    messages = FAMILY_CONVERSATIONS[conversation]
    for add_generation_prompt in (True, False):
        jinja_text, builtin_text = render_both(source, bos, messages, add_generation_prompt)
        assert builtin_text == jinja_text
        if jinja_text != "refused":
            assert jinja_text == hf_render(source, messages, add_generation_prompt, bos_token=bos)


def test_builtin_formatter_gemma_alternation() -> None:
    # Both refuse a conversation whose turns do not alternate, as the Gemma template raises.
    assert render_both(GEMMA, "<bos>", [msg("user", "a"), msg("user", "b")], True) == ["refused", "refused"]


def test_builtin_formatter_refusals() -> None:
    with pytest.raises(ValueError, match="Python `flashmtp chat`"):
        _core.ChatTemplate.detect("{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}")
    with pytest.raises(ValueError, match="Python `flashmtp chat`"):  # phi-4: ChatML plus <|im_sep|>
        _core.ChatTemplate.detect("<|im_start|>{{ role }}<|im_sep|>")
    chatml = _core.ChatTemplate.detect(CHATML)
    with pytest.raises(ValueError, match="no messages"):
        chatml.apply([])
    with pytest.raises(ValueError, match="role \"tool\""):
        chatml.apply([msg("tool", "{}")])


# ---- tokens: end of generation, BOS ------------------------------------------------------------------------

def test_eog_ids_follow_llama_cpp(real_model: Model) -> None:
    # llama.cpp's rules by hand: EOS, end-of-turn texts, FIM pad / repo / file-separator texts.
    tokenizer = real_model.tokenizer
    texts = {tokenizer.token_text(i) for i in tokenizer.eog_ids}
    expected = {"llama": {"<|endoftext|>", "<|im_end|>", "<reponame>"},
                "qwen2": {"<|endoftext|>", "<|im_end|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"}}
    assert texts == expected[real_model.architecture]
    assert tokenizer.eos_id in tokenizer.eog_ids and tokenizer.is_eog(tokenizer.eos_id)
    assert tokenizer.eog_ids == sorted(tokenizer.eog_ids)


def test_prompt_tokens_parse_specials_without_double_bos(tmp_path: Path, tiny: Model) -> None:
    tokenizer = tiny.tokenizer
    text = "<|im_start|>user\nhi<|im_end|>\n"
    assert prompt_tokens(tokenizer, text) == tokenizer.encode(text, True, True)
    assert tokenizer.token_text(prompt_tokens(tokenizer, text)[0]) == "<|im_start|>"
    # A tokenizer that adds BOS, and a template that writes it too: one BOS, as llama.cpp.
    path = tiny_with_metadata(tmp_path, "bos.gguf", {"tokenizer.ggml.add_bos_token": True,
                                                      "tokenizer.chat_template": "{{ bos_token }}" + CHATML})
    model = Model(path, threads=1)
    bos = model.tokenizer.bos_id
    ids = prompt_tokens(model.tokenizer, model.chat_template.render([msg("user", "hi")]))
    assert ids[0] == bos and ids.count(bos) == 1
    assert ids[1:] == model.tokenizer.encode(ChatTemplate(CHATML).render([msg("user", "hi")]), False, True)


def test_missing_template_falls_back_to_chatml(tmp_path: Path) -> None:
    path = tiny_with_metadata(tmp_path, "no-template.gguf", {}, remove=("tokenizer.chat_template",))
    model = Model(path, threads=1)
    with pytest.warns(UserWarning, match="no tokenizer.chat_template; using ChatML"):
        template = model.chat_template
    assert template.source == CHATML_TEMPLATE
    messages = CONVERSATIONS["multi_turn"]
    assert template.render(messages) == ChatTemplate(CHATML).render(messages)
    builtin = _core.ChatTemplate.from_gguf(str(path))
    assert not builtin.has_file_template and builtin.apply(messages) == template.render(messages)


# ---- generation --------------------------------------------------------------------------------------------

def greedy_oracle(model: Model, prompt: list[int], max_tokens: int) -> list[int]:
    """argmax continuation from session.decode until an end-of-generation token or max_tokens."""
    import numpy as np

    session = model.session(n_ctx=len(prompt) + max_tokens)
    logits = session.decode(np.array(prompt, dtype=np.int32), n_logits=1)[0]
    out: list[int] = []
    while len(out) < max_tokens:
        out.append(int(np.argmax(logits)))
        if model.tokenizer.is_eog(out[-1]):
            break
        logits = session.decode(np.array(out[-1:], dtype=np.int32), n_logits=1)[0]
    return out


def test_chat_greedy_matches_oracle(tiny: Model) -> None:
    messages = CONVERSATIONS["multi_turn"]
    prompt = prompt_tokens(tiny.tokenizer, tiny.chat_template.render(messages))
    ids = greedy_oracle(tiny, prompt, 16)
    reply = tiny.chat(messages, max_tokens=16, temperature=0)
    assert reply == tiny.detokenize([i for i in ids if not tiny.tokenizer.is_eog(i)])
    assert tiny.last_stats.n_prompt == len(prompt) and tiny.last_stats.n_generated == len(ids)
    assert "".join(tiny.chat(messages, max_tokens=16, temperature=0, stream=True)) == reply


def test_chat_with_explicit_template(tiny: Model) -> None:
    # The smoke test of template=: any template, here Llama 3's, whose markers this vocabulary lacks.
    template = ChatTemplate(LLAMA3, bos_token="<s>")
    reply = tiny.chat([msg("user", "hi")], max_tokens=8, temperature=0.7, seed=5, template=template)
    assert isinstance(reply, str) and 1 <= tiny.last_stats.n_generated <= 8
    prompt = prompt_tokens(tiny.tokenizer, template.render([msg("user", "hi")]))
    assert tiny.last_stats.n_prompt == len(prompt)
    with pytest.raises(ValueError, match="no messages"):
        tiny.chat([])
    with pytest.raises(ValueError, match="'role' and 'content'"):
        tiny.chat([{"content": "x"}])


def test_generation_stops_at_any_eog_token(tiny: Model) -> None:
    # With this seed the tiny llama samples <|endoftext|> (352, an end-of-generation token by its text, not
    # the file's EOS) as its third token: generation ends there.
    tokenizer = tiny.tokenizer
    generation = _core.Generation(tiny.engine, tokenizer, "Once upon a time", 40, 0, 1.0, 0, 1.0, 0.0, 7)
    while generation.step() is not None:
        pass
    last = generation.tokens[-1]
    assert tokenizer.token_text(last) == "<|endoftext|>" and last != tokenizer.eos_id
    assert generation.stats.stopped_at_eos and generation.stats.n_generated == 3


def test_smollm2_reply_ends_at_end_of_turn(smollm2: Model) -> None:
    smollm2.chat([msg("user", "Say hello.")], max_tokens=64, temperature=0)
    assert smollm2.last_stats.stopped_at_eos and smollm2.last_stats.n_generated < 64


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_chat_reuses_cache_with_identical_replies(tiny: Model, which: str) -> None:
    model = tiny if which == "tiny" else Model(fetch_or_skip("smollm2-135m-q4_1"), threads=2)
    chat = Chat(model, system="Be brief.", max_tokens=24, temperature=0, n_ctx=512)
    n_prompt_before = 0
    for turn, text in enumerate(["Hello, who are you?", "What is the capital of France?", "Thanks!"]):
        reply = chat.send(text)
        fresh = model.chat(chat.messages[:-1], max_tokens=24, temperature=0)
        assert reply == fresh, f"turn {turn}"
        assert chat.messages[-1] == msg("assistant", reply)
        # ChatML: the previous turn's prompt is a prefix of this one, so at least it was kept.
        assert chat.last_stats.n_reused >= n_prompt_before, f"turn {turn}"
        n_prompt_before = chat.last_stats.n_prompt
    chat.reset()
    assert chat.messages == [msg("system", "Be brief.")]
    assert chat.send("Hello, who are you?") == model.chat(
        [msg("system", "Be brief."), msg("user", "Hello, who are you?")], max_tokens=24, temperature=0)


def test_generation_over_kept_session_checks_its_cache(tiny: Model) -> None:
    session = tiny.session(n_ctx=64)
    with pytest.raises(ValueError, match="3 cached tokens given, but the session holds only 0"):
        _core.Generation(session, tiny.tokenizer, [1, 2, 3, 4], [1, 2, 3], 4, 0.0, 40, 0.95, 0.05, 0)
    # A prompt entirely in the cache decodes its last token again (its logits pick the next token).
    first = _core.Generation(session, tiny.tokenizer, [5, 6, 7], [], 2, 0.0, 40, 0.95, 0.05, 0)
    while first.step() is not None:
        pass
    cached = first.tokens[:first.n_past]
    again = _core.Generation(session, tiny.tokenizer, [5, 6, 7], cached, 2, 0.0, 40, 0.95, 0.05, 0)
    assert again.stats.n_reused == 2 and session.n_past == 2
    while again.step() is not None:
        pass
    assert again.tokens == first.tokens


def test_chat_context_overflow_leaves_conversation(tiny: Model) -> None:
    chat = Chat(tiny, max_tokens=8, temperature=0, n_ctx=96)
    chat.send("hi")
    before = list(chat.messages)
    with pytest.raises(ValueError, match="exceeds the context of 96 positions"):
        chat.send("word " * 100)
    assert chat.messages == before
    chat.send("again")  # the session still works after the refused turn
    assert len(chat.messages) == 4


# ---- command lines -----------------------------------------------------------------------------------------

def run(cmd: list[str], stdin: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, input=stdin.encode(), capture_output=True, timeout=120, cwd=ROOT)
    # Random weights sample bytes that are not UTF-8: the compiled CLI writes them as they are.
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(errors="replace"),
                                       result.stderr.decode(errors="replace"))


def chat_commands(cli_binary: str) -> dict[str, list[str]]:
    return {"compiled": [cli_binary, "chat"], "python": [sys.executable, "-m", "flashmtp", "chat"]}


@pytest.mark.parametrize("which", ["compiled", "python"])
def test_chat_command_on_tiny(tiny: Model, cli_binary: str, which: str) -> None:
    cmd = [*chat_commands(cli_binary)[which], "-m", str(TINY), "-n", "6", "--temp", "0", "-t", "1"]
    result = run(cmd, "hello\n\n/reset\nhello\n/exit\nnot read\n")
    assert result.returncode == 0, result.stderr
    expected = tiny.chat([msg("user", "hello")], max_tokens=6, temperature=0)
    if which == "compiled":
        expected = expected.replace("\ufffd", "")
        assert result.stdout.replace("\ufffd", "") == f"{expected}\n{expected}\n"
    else:
        assert result.stdout == f"{expected}\n{expected}\n"
    assert result.stderr.count("[prompt:") == 2 and "(conversation cleared)" in result.stderr
    assert "load:" in result.stderr and "Traceback" not in result.stderr
    # End of input quits too.
    assert run(cmd, "hello\n").returncode == 0


@pytest.mark.parametrize("which", ["compiled", "python"])
def test_chat_command_errors(tmp_path: Path, cli_binary: str, which: str) -> None:
    cmd = chat_commands(cli_binary)[which]
    result = run([*cmd], "")
    if which == "compiled":
        assert result.returncode == 2 and "usage" in result.stderr
    else:  # no -m: the shipped model (flashmtp.shipped), and end of input quits
        assert result.returncode == 0 and "load:" in result.stderr
    # A turn that does not fit: an error line, and the conversation goes on.
    result = run([*cmd, "-m", str(TINY), "-n", "4", "-c", "24", "--temp", "0"], "word " * 30 + "\nhi\n")
    assert result.returncode == 0, result.stderr
    assert "exceeds the context of 24 positions" in result.stderr and result.stderr.count("[prompt:") == 1
    # Bad sampler settings end the command before the first turn.
    result = run([*cmd, "-m", str(TINY), "--top-p", "2"], "hi\n")
    assert result.returncode in (1, 2) and "top_p" in result.stderr and "[prompt:" not in result.stderr
    if which == "compiled":  # a template of no built-in family
        custom = {"tokenizer.chat_template": "{{ messages[0].content }}"}
        path = tiny_with_metadata(tmp_path, "custom.gguf", custom)
        result = run([*cmd, "-m", str(path)], "hi\n")
        assert result.returncode == 1 and "use the Python `flashmtp chat`" in result.stderr


def test_chat_commands_agree_on_smollm2(smollm2: Model, cli_binary: str) -> None:
    # Multi-turn, real text: the compiled CLI's built-in ChatML and the Python CLI's jinja give the same
    # replies, and both equal Chat (whose replies equal fresh renders, above).
    lines = ["What is the capital of France?", "And of Italy?"]
    chat = Chat(smollm2, system="Answer in one sentence.", max_tokens=24, temperature=0)
    expected = "".join(chat.send(line) + "\n" for line in lines)
    for which, cmd in chat_commands(cli_binary).items():
        options = ["--system", "Answer in one sentence.", "-n", "24", "--temp", "0"]
        result = run([*cmd, "-m", smollm2.path, *options], "\n".join(lines) + "\n")
        assert result.returncode == 0, result.stderr
        assert result.stdout == expected, which
