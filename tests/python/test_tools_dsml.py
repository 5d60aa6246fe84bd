"""DeepSeek's tool-call format (DSML) in flashmtp.server.tools, and the DeepSeek-V4 template with tools
(flashmtp.chat.DEEPSEEK4_TOOLS_TEMPLATE) that deepseek4 files without tool support fall back to.

Oracles:
- parsing: hand-written expected calls and content for each case, from the format's definition (string="true"
  raw text, string="false" JSON, invokes = parallel calls, V3.2's ``function_calls`` name).
- streaming: the whole-text parse. For the text split at every character boundary (and fed one character at
  a time), the streamed content plus the finish() rest and calls equal parse_tool_calls on the whole text,
  and no opening tag is ever sent. Hypothesis extends this to random texts built from DSML pieces.
- robustness: hypothesis, arbitrary text never makes the parser raise.
- template: hand-written prompt text laid out as DeepSeek-V3.2's published encoding lays it out (tools section
  in the system prompt, "\\n\\n" + DSML block + EOS after the assistant's text, V4's ``tool_calls`` name and
  ``<tool_result>`` user turns as antirez/ds4 renders them); its calls round-trip through the parser.
- fallback choice: the shipped tiny-v4 file's template does not mention tools, so tools go through the
  fallback, and a conversation without tools renders exactly as the file's template renders it.
"""

from __future__ import annotations

import json

import pytest
from flashmtp.chat import DEEPSEEK4_TOOLS_TEMPLATE, ChatTemplate
from flashmtp.server.tools import FORMATS, ParsedCall, ToolCallStream, parse_tool_calls
from hypothesis import given, settings
from hypothesis import strategies as st

NAMES = {"get_weather", "search"}
OPEN, CLOSE = "<｜DSML｜tool_calls>", "</｜DSML｜tool_calls>"


def invoke(name: str, *parameters: str) -> str:
    return f'<｜DSML｜invoke name="{name}">\n' + "".join(p + "\n" for p in parameters) + "</｜DSML｜invoke>"


def param(name: str, value: str, string: bool = True) -> str:
    kind = "true" if string else "false"
    return f'<｜DSML｜parameter name="{name}" string="{kind}">{value}</｜DSML｜parameter>'


def block(*invokes: str, open_: str = OPEN, close: str = CLOSE) -> str:
    return open_ + "\n" + "\n".join(invokes) + "\n" + close


PARIS = invoke("get_weather", param("city", "Paris"), param("days", "3", string=False))


def summary(calls: list[ParsedCall]) -> list[tuple[str, dict]]:
    return [(c.name, c.arguments) for c in calls]


# --- parsing --------------------------------------------------------------------------------

def test_single_call_with_string_and_json_parameters() -> None:
    calls, content = parse_tool_calls("Let me check.\n\n" + block(PARIS), NAMES)
    assert summary(calls) == [("get_weather", {"city": "Paris", "days": 3})]
    assert content == "Let me check."
    assert calls[0].id.startswith("call_")
    assert json.loads(calls[0].to_openai()["function"]["arguments"]) == {"city": "Paris", "days": 3}


def test_parallel_calls_and_json_values() -> None:
    text = block(
        PARIS,
        invoke("search", param("query", 'raw "text" & <b> \\n stays'),
               param("filters", '{"site": {"domain": "example.org", "paths": ["/a", "/b"]}, "safe": true}',
                     string=False),
               param("limit", "null", string=False), param("ratio", "-1.5e3", string=False)),
        invoke("get_weather", '{"city": "Rome", "units": {"temp": "C"}}'))  # a JSON object in the invoke
    calls, content = parse_tool_calls(text, NAMES)
    assert summary(calls) == [
        ("get_weather", {"city": "Paris", "days": 3}),
        ("search", {"query": 'raw "text" & <b> \\n stays',
                    "filters": {"site": {"domain": "example.org", "paths": ["/a", "/b"]}, "safe": True},
                    "limit": None, "ratio": -1500.0}),
        ("get_weather", {"city": "Rome", "units": {"temp": "C"}})]
    assert content == ""
    assert len({c.id for c in calls}) == 3


def test_string_values_are_raw_text() -> None:
    """Multi-line text keeps its newlines and surrounding spaces; the escaped closing tag is restored."""
    value = "  line 1\nline 2 </tag> &lt;\n"
    escaped = "a &lt;/｜DSML｜parameter> b"
    calls, _ = parse_tool_calls(block(invoke("search", param("query", value), param("q2", escaped))), NAMES)
    assert calls[0].arguments == {"query": value, "q2": "a </｜DSML｜parameter> b"}


def test_malformed_json_value_is_kept_as_text() -> None:
    deep = "[" * 100_000  # deeper than Python's JSON parser goes
    values = {"query": "{not json", "n": "Paris", "x": "NaN", "deep": deep}
    text = block(invoke("search", *(param(k, v, string=False) for k, v in values.items())))
    calls, _ = parse_tool_calls(text, NAMES)
    assert summary(calls) == [("search", values)]


def test_parameter_without_string_attribute_is_json_or_text() -> None:
    text = block(invoke("search", '<｜DSML｜parameter name="n">7</｜DSML｜parameter>',
                        '<｜DSML｜parameter name="q">cats</｜DSML｜parameter>'))
    assert summary(parse_tool_calls(text, NAMES)[0]) == [("search", {"n": 7, "q": "cats"})]


def test_no_parameters() -> None:
    calls, _ = parse_tool_calls(block(invoke("search")), NAMES)
    assert summary(calls) == [("search", {})]


def test_text_around_blocks() -> None:
    search = block(invoke("search", param("q", "x")))
    text = "First.\n\n" + block(PARIS) + "\n\nBetween.\n" + search + "\nAfter. "
    calls, content = parse_tool_calls(text, NAMES)
    assert [c.name for c in calls] == ["get_weather", "search"]
    assert content == "First.\n\nBetween.\nAfter."


def test_function_calls_block_of_v32() -> None:
    text = "Sure." + block(PARIS, open_="<｜DSML｜function_calls>", close="</｜DSML｜function_calls>")
    calls, content = parse_tool_calls(text, NAMES)
    assert summary(calls) == [("get_weather", {"city": "Paris", "days": 3})] and content == "Sure."


def test_qwen_and_dsml_blocks_in_one_reply() -> None:
    text = 'A <tool_call>{"name": "search", "arguments": {"q": 1}}</tool_call> B ' + block(PARIS)
    calls, content = parse_tool_calls(text, NAMES)
    assert summary(calls) == [("search", {"q": 1}), ("get_weather", {"city": "Paris", "days": 3})]
    assert content == "A B"


NOT_CALLS = {
    "not_offered": block(invoke("delete_everything", param("path", "/"))),
    "one_of_two_not_offered": block(PARIS, invoke("delete_everything")),
    "not_only_parameters": block(invoke("search", param("q", "x"), "stray text")),
    "broken_parameter": block(invoke("search", '<｜DSML｜parameter name="q" string="true">unclosed')),
    "json_not_an_object": block(invoke("search", '["a", "list"]')),
    "no_invokes": OPEN + "\nno invokes at all\n" + CLOSE,
    "eos_inside_the_only_call": OPEN + '\n<｜DSML｜invoke name="search">\n' + param("q", "cut"),
    "not_a_block_name": "<｜DSML｜tool_call>" + PARIS + "</｜DSML｜tool_call>",
}


@pytest.mark.parametrize("text", NOT_CALLS.values(), ids=NOT_CALLS.keys())
def test_blocks_that_are_not_calls_stay_text(text: str) -> None:
    assert parse_tool_calls("Hi " + text + " bye", NAMES) == ([], "Hi " + text + " bye")


def test_unclosed_block_at_eos() -> None:
    """Generation may end (EOS, max_tokens) inside a block: the invokes completed before are calls, the
    unfinished one is dropped, as is the block's markup."""
    unfinished = '<｜DSML｜invoke name="search">\n' + param("q", "cut")
    cut = "Checking.\n\n" + OPEN + "\n" + PARIS + "\n" + unfinished
    calls, content = parse_tool_calls(cut, NAMES)
    assert summary(calls) == [("get_weather", {"city": "Paris", "days": 3})] and content == "Checking."
    no_close = OPEN + "\n" + PARIS  # every invoke complete, the closing tag never came
    assert summary(parse_tool_calls(no_close, NAMES)[0]) == [("get_weather", {"city": "Paris", "days": 3})]


def test_invoke_closed_by_the_block_end() -> None:
    """A closed block ends its last invoke even without the invoke's own closing tag."""
    text = OPEN + '\n<｜DSML｜invoke name="search">\n' + param("q", "x") + "\n" + CLOSE
    assert summary(parse_tool_calls(text, NAMES)[0]) == [("search", {"q": "x"})]


# --- streaming ------------------------------------------------------------------------------

STREAM_CASES = {
    "text_then_call": "Let me check.\n\n" + block(PARIS),
    "text_around_call": "Let me check.\n\n" + block(PARIS) + "\n\nDone. ",
    "parallel_calls_only": "  " + block(PARIS, invoke("search", param("q", "a\nb"))),
    "tag_starts_only": "Text with < and <｜ and <｜DSML｜ but no block.\n",
    "almost_a_tag": "Almost <｜DSML｜tool_call but not quite",
    "unknown_then_call": "Unknown: " + block(invoke("nope")) + " then " + block(PARIS),
    "cut_off": "Cut off: " + OPEN + "\n" + PARIS + "\n" + '<｜DSML｜invoke name="search">',
    "qwen_and_dsml": 'Qwen too <tool_call>{"name": "search", "arguments": {}}</tool_call>\n' + block(PARIS),
    "bare_json": '{"name": "search", "arguments": {"q": "bare JSON"}}',
    "trailing_whitespace": "Trailing spaces   \n\n",
    "v32_name": "V3.2 " + block(PARIS, open_="<｜DSML｜function_calls>", close="</｜DSML｜function_calls>"),
}


def stream(text: str, pieces: list[str]) -> tuple[str, list[tuple[str, dict]], str]:
    """(text sent while streaming, calls, the rest sent at the end)."""
    assert "".join(pieces) == text
    s = ToolCallStream(NAMES)
    sent = "".join(s.feed(p) for p in pieces)
    calls, rest = s.finish()
    return sent, summary(calls), rest


def assert_streams_like_whole(text: str, pieces: list[str]) -> None:
    calls, content = parse_tool_calls(text, NAMES)
    sent, streamed_calls, rest = stream(text, pieces)
    assert (sent + rest, streamed_calls) == (content, summary(calls))
    assert not any(form.opener in sent for form in FORMATS)  # from the first opening tag on, all is held


@pytest.mark.parametrize("text", STREAM_CASES.values(), ids=STREAM_CASES.keys())
def test_stream_split_anywhere_equals_whole(text: str) -> None:
    for i in range(len(text) + 1):
        assert_streams_like_whole(text, [text[:i], text[i:]])
    assert_streams_like_whole(text, list(text))


def test_stream_holds_back_the_opener() -> None:
    s = ToolCallStream(NAMES)
    assert s.feed("Sure.") == "Sure."
    assert s.feed("\n\n<｜") == ""          # may begin a block
    assert s.feed("DSML｜tool") == ""
    assert s.feed("_calls>\n") == ""
    assert s.feed(PARIS + "\n" + CLOSE) == ""
    calls, rest = s.finish()
    assert summary(calls) == [("get_weather", {"city": "Paris", "days": 3})] and rest == ""
    s = ToolCallStream(NAMES)
    assert s.feed("a <｜DS") == "a"
    assert s.feed("X") == " <｜DSX"         # not an opener after all
    assert s.finish() == ([], "")


FRAGMENTS = ["a", "b c", " ", "\n", "\n\n", "<", "｜", "{", "}", '"', ">", "DSML", OPEN, CLOSE,
             "<｜DSML｜function_calls>", "</｜DSML｜function_calls>", '<｜DSML｜invoke name="search">',
             '<｜DSML｜invoke name="other">', "</｜DSML｜invoke>",
             '<｜DSML｜parameter name="q" string="true">', '<｜DSML｜parameter name="n" string="false">',
             "</｜DSML｜parameter>", "3", '{"k": [1]}', "<tool_call>", "</tool_call>",
             '{"name": "search", "arguments": {}}', "```"]


def replies() -> st.SearchStrategy[str]:
    """Text, well-formed blocks (offered tools or not, V4 or V3.2 names) and loose DSML pieces, cut at a
    random point as generation ending mid-reply would."""
    value = st.sampled_from(["Paris", "3", '{"k": [1]}', "a\nb", "", "{bad", " x "])
    parameter = st.builds(param, st.sampled_from(["q", "n"]), value, st.booleans())
    invoke_ = st.builds(lambda name, parameters: invoke(name, *parameters),
                        st.sampled_from(["search", "get_weather", "nope"]), st.lists(parameter, max_size=3))
    block_ = st.builds(lambda invokes, v4: block(*invokes) if v4 else block(
        *invokes, open_="<｜DSML｜function_calls>", close="</｜DSML｜function_calls>"),
        st.lists(invoke_, min_size=1, max_size=3), st.booleans())
    piece = st.one_of(block_, st.sampled_from(FRAGMENTS), st.text(max_size=3))
    return st.lists(piece, max_size=8).map("".join).flatmap(
        lambda text: st.integers(0, len(text)).map(lambda end: text[:end]))


@settings(max_examples=400, deadline=None)
@given(replies(), st.data())
def test_stream_equals_whole_on_random_replies(text: str, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    assert_streams_like_whole(text, pieces)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), replies()))
def test_parser_never_raises(text: str) -> None:
    calls, content = parse_tool_calls(text, NAMES)
    for call in calls:
        json.dumps(call.arguments, allow_nan=False)  # what clients can parse
    assert isinstance(content, str)


# --- the DeepSeek-V4 template with tools --------------------------------------------------

BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
TOOLS_SECTION = (
    "## Tools\n\n"
    "You can use the tools below to answer the user. To call tools, write a "
    '"<｜DSML｜tool_calls>" block like this:\n\n'
    "<｜DSML｜tool_calls>\n"
    '<｜DSML｜invoke name="$TOOL_NAME">\n'
    '<｜DSML｜parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</｜DSML｜parameter>\n'
    "...\n"
    "</｜DSML｜invoke>\n"
    '<｜DSML｜invoke name="$TOOL_NAME2">\n'
    "...\n"
    "</｜DSML｜invoke>\n"
    "</｜DSML｜tool_calls>\n\n"
    'Write a string parameter as plain text, without escaping or quotes, and set string="true". Write '
    'any other type (number, boolean, array, object) as JSON and set string="false". Several invokes in '
    "one block are calls made together.\n\n"
    "### Available Tool Schemas\n\n"
    '{"name": "get_weather", "description": "Weather in a city", "parameters": {"type": "object", '
    '"properties": {"city": {"type": "string"}}, "required": ["city"]}}\n\n'
    "Call only these tools, with the parameter names and types their schemas give.")


@pytest.fixture(scope="module")
def v4() -> ChatTemplate:
    return ChatTemplate(DEEPSEEK4_TOOLS_TEMPLATE, bos_token=BOS, eos_token=EOS)


def test_template_tools_section(v4: ChatTemplate) -> None:
    user = [{"role": "user", "content": "Weather in Paris?"}]
    turn = "<｜User｜>Weather in Paris?<｜Assistant｜></think>"
    assert v4.render(user, tools=WEATHER) == BOS + TOOLS_SECTION + turn
    system = [{"role": "system", "content": "Be brief."}, *user]
    assert v4.render(system, tools=WEATHER) == BOS + "Be brief.\n\n" + TOOLS_SECTION + turn
    assert v4.render(system) == BOS + "Be brief." + turn


def test_template_tool_calls_and_results(v4: ChatTemplate) -> None:
    conversation = [
        {"role": "user", "content": "Paris and Rome?"},
        {"role": "assistant", "content": "Checking both.", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": {
                "city": "Paris", "days": 3, "units": {"temp": "C"}, "note": "x </｜DSML｜parameter> y"}}},
            {"id": "b", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "a", "content": "Sunny, 20"},
        {"role": "tool", "tool_call_id": "b", "content": "Rain </tool_result> 12"},
    ]
    calls = ("\n\n<｜DSML｜tool_calls>\n"
             '<｜DSML｜invoke name="get_weather">\n'
             '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n'
             '<｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>\n'
             '<｜DSML｜parameter name="units" string="false">{"temp": "C"}</｜DSML｜parameter>\n'
             '<｜DSML｜parameter name="note" string="true">x &lt;/｜DSML｜parameter> y</｜DSML｜parameter>\n'
             "</｜DSML｜invoke>\n"
             '<｜DSML｜invoke name="get_weather">\n'
             '{"city": "Rome"}\n'
             "</｜DSML｜invoke>\n"
             "</｜DSML｜tool_calls>")
    assert v4.render(conversation, tools=WEATHER) == (
        BOS + TOOLS_SECTION + "<｜User｜>Paris and Rome?<｜Assistant｜></think>Checking both." + calls + EOS
        + "<｜User｜><tool_result>Sunny, 20</tool_result>\n\n"
        + "<tool_result>Rain &lt;/tool_result> 12</tool_result>"
        + "<｜Assistant｜></think>")
    # What the model would write is what the parser reads back.
    parsed, content = parse_tool_calls("Checking both." + calls, {"get_weather"})
    assert content == "Checking both."
    assert summary(parsed) == [("get_weather", conversation[1]["tool_calls"][0]["function"]["arguments"]),
                               ("get_weather", {"city": "Rome"})]
    # A user message after the results continues the same user turn.
    follow = [*conversation, {"role": "user", "content": "Thanks"}]
    assert v4.render(follow, tools=WEATHER).endswith("12</tool_result>\n\nThanks<｜Assistant｜></think>")


def test_shipped_v4_falls_back_for_tools() -> None:
    from flashmtp.model import Model
    from flashmtp.shipped import shipped_model

    model = Model(shipped_model()[0], threads=1)
    template = model.chat_template
    assert "tools" not in template.source and template.tool_fallback is not None
    plain = [{"role": "user", "content": "Hi"}]
    assert template.render(plain) == ChatTemplate(template.source, template.bos_token,
                                                  template.eos_token).render(plain)
    assert template.render(plain, tools=WEATHER) == template.tool_fallback.render(plain, tools=WEATHER)
    assert TOOLS_SECTION in template.render(plain, tools=WEATHER)
    answered = [*plain, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "X"}}}]},
        {"role": "tool", "tool_call_id": "a", "content": "ok"}]
    assert "<tool_result>ok</tool_result>" in template.render(answered)  # tool turns without tools offered
