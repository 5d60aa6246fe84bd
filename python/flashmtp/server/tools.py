"""Tool calls in generated text: Qwen2.5's ``<tool_call>{json}</tool_call>`` blocks, and a bare JSON object
that names an offered tool (optionally in a Markdown code fence), as Ollama recognises it: small models such
as Qwen2.5-Coder-0.5B answer ``` ```json {"name": ..., "arguments": {...}} ``` ``` without the tags, and a
client offered tools expects a call, not text.

    calls, content = parse_tool_calls(text, {"get_weather"})
    stream = ToolCallStream({"get_weather"})
    safe = stream.feed(piece)          # text that can be sent now
    calls, content = stream.finish()   # the held-back rest: the calls, and text still to send
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

__all__ = ["ParsedCall", "ToolCallStream", "parse_tool_calls"]

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_TAGGED = re.compile(re.escape(OPEN) + r"(.*?)(?:" + re.escape(CLOSE) + r"|\Z)", re.DOTALL)
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


def _call_from_json(value: Any, names: Collection[str]) -> ParsedCall | None:
    """A call from {"name": tool, "arguments" | "parameters": {...}}, else None."""
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):  # some models double-encode the arguments
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ParsedCall(value["name"], arguments, "call_" + secrets.token_hex(12))


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def parse_tool_calls(text: str, names: Collection[str]) -> tuple[list[ParsedCall], str]:
    """The tool calls in a whole reply and the text left around them.

    Tagged blocks are taken wherever they are (a final unclosed block too: generation may end at EOS before
    the closing tag); a block that is not a call of an offered tool stays in the text. Without tags, the
    whole reply (whitespace and a code fence stripped) must be one call or a JSON list of calls."""
    if OPEN in text:
        calls: list[ParsedCall] = []
        kept: list[str] = []
        last = 0
        for match in _TAGGED.finditer(text):
            call = _call_from_json(_loads(match.group(1).strip()), names)
            if call is None:
                continue
            calls.append(call)
            kept.append(text[last:match.start()])
            last = match.end()
        kept.append(text[last:])
        return calls, "".join(kept).strip() if calls else text
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


class ToolCallStream:
    """Streams a reply's text while holding back what may be a tool call.

    A reply that starts (after whitespace) like a call, with ``{``, ``[``, a code fence or the opening tag,
    is held whole until :meth:`finish` parses it. Otherwise text streams, except a tail that may begin the
    opening tag; from the tag on, the rest is held."""

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
            if head.startswith(("{", "[", "```", OPEN)):
                self._holding_all = True
                return ""
            if any(start.startswith(head) for start in ("```", OPEN)):
                return ""  # whitespace, or too short to tell a fence or the tag from text
            self._started = True
        tag = self._held.find(OPEN)
        if tag >= 0:
            safe, self._held = self._held[:tag], self._held[tag:]
            self._holding_all = True
            return safe
        keep = next((k for k in range(min(len(OPEN) - 1, len(self._held)), 0, -1)
                     if self._held.endswith(OPEN[:k])), 0)
        cut = len(self._held) - keep
        safe, self._held = self._held[:cut], self._held[cut:]
        return safe

    def finish(self) -> tuple[list[ParsedCall], str]:
        """The held-back text, parsed: (calls, text still to send)."""
        held, self._held = self._held, ""
        return parse_tool_calls(held, self.names)
