"""Tool calls in generated text, in the shapes models write them:

- Qwen2.5's ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks;
- DeepSeek's DSML blocks (the separator is the fullwidth bar U+FF5C; V4 names the block ``tool_calls``,
  V3.2 ``function_calls``)::

      <｜DSML｜tool_calls>
      <｜DSML｜invoke name="get_weather">
      <｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>
      <｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>
      </｜DSML｜invoke>
      </｜DSML｜tool_calls>

  string="true" values are raw text, string="false" ones JSON; several invokes are parallel calls; an invoke
  holding a JSON object instead of parameters is accepted too;
- a bare JSON object that names an offered tool (optionally in a Markdown code fence), as Ollama recognises
  it: small models such as Qwen2.5-Coder-0.5B answer ``` ```json {"name": ..., "arguments": {...}} ``` ```
  without the tags, and a client offered tools expects a call, not text.

    calls, content = parse_tool_calls(text, {"get_weather"})
    stream = ToolCallStream({"get_weather"})
    safe = stream.feed(piece)          # text that can be sent now
    calls, content = stream.finish()   # the held-back rest: the calls, and text still to send

The tagged shapes are one table, FORMATS (opening tag, closing tag, parser of the text between), read alike
by the parser and the stream. Only calls of offered tools count: a block that is not wholly such calls stays
in the text. The content is the text without the call blocks, each taken with the whitespace before it (V4
writes "\\n\\n" before its block), and without trailing whitespace when there were calls; a stream sends
exactly that content, so streamed and whole replies agree.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

__all__ = ["FORMATS", "ParsedCall", "ToolCallStream", "parse_tool_calls"]

_FENCE = re.compile(r"\A```[A-Za-z]*\s*\n?(.*?)\n?```\Z", re.DOTALL)


@dataclass
class ParsedCall:
    name: str
    arguments: dict[str, Any]
    id: str

    def to_openai(self, index: int | None = None) -> dict[str, Any]:
        call = {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)}}
        return call if index is None else {"index": index, **call}


def _new_call(name: str, arguments: dict[str, Any]) -> ParsedCall:
    return ParsedCall(name, arguments, "call_" + secrets.token_hex(12))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python reads NaN and Infinity; a client's JSON parser does not


def _json_or_text(text: str) -> Any:
    """The JSON value of text, else text itself (also when nested too deep for Python's parser)."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return text


def _loads(text: str) -> Any:
    """The JSON value of text, None if it is not JSON."""
    value = _json_or_text(text)
    return None if value is text else value


def _call_from_json(value: Any, names: Collection[str]) -> ParsedCall | None:
    """A call from {"name": tool, "arguments" | "parameters": {...}}, else None."""
    if not isinstance(value, dict) or not isinstance(name := value.get("name"), str) or name not in names:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):  # some models double-encode the arguments
        arguments = _loads(arguments)
    if not isinstance(arguments, dict):
        return None
    return _new_call(name, arguments)


# --- the block formats -------------------------------------------------------------------------------------

def _qwen_calls(body: str, names: Collection[str], closed: bool) -> list[ParsedCall] | None:
    call = _call_from_json(_loads(body.strip()), names)
    return [call] if call else None


_DSML = "｜DSML｜"
_INVOKE = re.compile(rf'<{_DSML}invoke\s+name="([^"]*)"\s*>(.*?)(</{_DSML}invoke>|\Z)', re.DOTALL)
_PARAMETER = re.compile(rf'<{_DSML}parameter\s+name="([^"]*)"(?:\s+string="(true|false)")?\s*>(.*?)'
                        rf'</{_DSML}parameter>', re.DOTALL)
# A string value containing the closing tag itself is written with its "<" as "&lt;" (our template does so).
_PARAMETER_CLOSE = f"</{_DSML}parameter>"
_ESCAPED_PARAMETER_CLOSE = "&lt;" + _PARAMETER_CLOSE[1:]


def _dsml_arguments(invoke: str) -> dict[str, Any] | None:
    """An invoke's arguments: its parameters, or a JSON object written in their place; None if it holds
    anything else (a malformed parameter would silently lose an argument)."""
    if _PARAMETER.sub("", invoke).strip():
        value = _loads(invoke.strip())
        return value if isinstance(value, dict) else None
    arguments: dict[str, Any] = {}
    for name, string, value in _PARAMETER.findall(invoke):
        if string == "true":
            arguments[name] = value.replace(_ESCAPED_PARAMETER_CLOSE, _PARAMETER_CLOSE)
        else:
            # JSON as string="false" promises; a value that is not JSON is passed on as the text the model
            # wrote rather than dropping the call: the tool can reject a bad argument, a lost call is silent.
            arguments[name] = _json_or_text(value)
    return arguments


def _dsml_calls(body: str, names: Collection[str], closed: bool) -> list[ParsedCall] | None:
    calls = []
    for invoke in _INVOKE.finditer(body):
        name, inner, end_tag = invoke.groups()
        if not end_tag and not closed:
            break  # generation ended inside this invoke: half a call cannot be run
        arguments = _dsml_arguments(inner)
        if name not in names or arguments is None:
            return None
        calls.append(_new_call(name, arguments))
    return calls or None


@dataclass(frozen=True)
class _Format:
    opener: str
    closer: str
    # (text between the tags, offered tool names, whether the closing tag came) -> the block's calls, or
    # None when the block is not wholly calls of offered tools (it then stays in the text).
    calls: Callable[[str, Collection[str], bool], list[ParsedCall] | None]


FORMATS = (
    _Format("<tool_call>", "</tool_call>", _qwen_calls),                                   # Qwen2.5
    _Format(f"<{_DSML}tool_calls>", f"</{_DSML}tool_calls>", _dsml_calls),                 # DeepSeek-V4
    _Format(f"<{_DSML}function_calls>", f"</{_DSML}function_calls>", _dsml_calls),         # DeepSeek-V3.2
)
_OPENERS = tuple(f.opener for f in FORMATS)


def _first_opener(text: str, start: int = 0) -> tuple[int, _Format] | None:
    found = [(i, f) for f in FORMATS if (i := text.find(f.opener, start)) >= 0]
    return min(found, key=lambda hit: hit[0], default=None)


def _partial_opener(text: str) -> int:
    """Length of the longest end of text that may begin an opening tag."""
    return max((k for opener in _OPENERS for k in range(min(len(opener) - 1, len(text)), 0, -1)
                if text.endswith(opener[:k])), default=0)


# --- parsing -----------------------------------------------------------------------------------------------

def _parse_blocks(text: str, names: Collection[str]) -> tuple[list[ParsedCall], str]:
    calls: list[ParsedCall] = []
    kept: list[str] = []
    last = position = 0  # end of the last call block taken out; where the search goes on
    while (block := _first_opener(text, position)) is not None:
        start, form = block
        body_start = start + len(form.opener)
        close = text.find(form.closer, body_start)
        body_end = close if close >= 0 else len(text)  # unclosed: generation may stop before the tag
        position = body_end + len(form.closer) if close >= 0 else len(text)
        found = form.calls(text[body_start:body_end], names, close >= 0)
        if found is None:
            continue
        calls += found
        kept.append(text[last:start].rstrip())
        last = position
    if not calls:
        return [], text
    kept.append(text[last:])
    return calls, "".join(kept).rstrip()


def parse_tool_calls(text: str, names: Collection[str]) -> tuple[list[ParsedCall], str]:
    """The tool calls in a whole reply and the text left around them.

    Tagged blocks are taken wherever they are (a final unclosed block too: generation may end at EOS before
    the closing tag); a block that is not a call of an offered tool stays in the text. Without tags, the
    whole reply (whitespace and a code fence stripped) must be one call or a JSON list of calls."""
    if any(opener in text for opener in _OPENERS):
        return _parse_blocks(text, names)
    body = text.strip()
    if fenced := _FENCE.match(body):
        body = fenced.group(1).strip()
    if not body.startswith(("{", "[")):
        return [], text
    value = _loads(body)
    values = value if isinstance(value, list) else [value]
    calls = [_call_from_json(v, names) for v in values]
    if not values or any(c is None for c in calls):
        return [], text
    return calls, ""  # type: ignore[return-value]  # no None left


_WHOLE_REPLY_CALL = ("{", "[", "```", *_OPENERS)  # a reply starting so is held whole


class ToolCallStream:
    """Streams a reply's text while holding back what may be a tool call.

    A reply that starts (after whitespace) like a call, with ``{``, ``[``, a code fence or an opening tag,
    is held whole until :meth:`finish` parses it. Otherwise text streams, except a tail that may begin a
    block (trailing whitespace and the start of an opening tag, which is several tokens long); from the
    first opening tag on, the rest is held."""

    def __init__(self, names: Collection[str]) -> None:
        self.names = names
        self._held = ""      # text not sent yet
        self._holding_all = False
        self._started = False  # the first non-whitespace character has been seen

    def feed(self, piece: str) -> str:
        """Text of the reply so far that is certainly not part of a call."""
        self._held += piece
        if self._holding_all:
            return ""
        if not self._started:
            head = self._held.lstrip()
            if head.startswith(_WHOLE_REPLY_CALL):
                self._holding_all = True
                return ""
            if any(start.startswith(head) for start in _WHOLE_REPLY_CALL):
                return ""  # whitespace, or too short to tell a fence or a tag from text
            self._started = True
        if (block := _first_opener(self._held)) is not None:
            end = block[0]
            self._holding_all = True
        else:
            end = len(self._held) - _partial_opener(self._held)
        cut = len(self._held[:end].rstrip())  # the whitespace before a call block goes with it
        safe, self._held = self._held[:cut], self._held[cut:]
        return safe

    def finish(self) -> tuple[list[ParsedCall], str]:
        """The held-back text, parsed: (calls, text still to send)."""
        held, self._held = self._held, ""
        return parse_tool_calls(held, self.names)
