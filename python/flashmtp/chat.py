"""Chat: a GGUF file's jinja chat template rendered as transformers renders it, and conversations that keep
their KV cache between turns.

    template = ChatTemplate(source, bos_token="<s>", eos_token="</s>")
    prompt = template.render([{"role": "user", "content": "Hi"}])       # ends with the assistant's header

    chat = Chat(model, system="Answer briefly.")
    for piece in chat.send("What is a GGUF file?", stream=True): ...   # the reply, streamed
    chat.send("And MTP?")                                               # decodes only the new turn

Rendering follows transformers' ``apply_chat_template``: an ImmutableSandboxedEnvironment with trim_blocks and
lstrip_blocks, the loopcontrols extension and ``{% generation %}`` blocks, ``raise_exception``,
``strftime_now``, a ``tojson`` filter that keeps non-ASCII text, and the variables ``messages``,
``add_generation_prompt``, ``bos_token``, ``eos_token``, ``tools`` and ``documents``.
tests/python/test_chat.py compares the text with transformers' on both real models.

The rendered prompt is tokenized as llama.cpp does (common/chat.cpp): control-token text such as
``<|im_start|>`` becomes those tokens, BOS is added when the tokenizer asks for it, and a BOS the template
wrote itself is cut from the text first so it is not doubled. A file without a chat template gets ChatML, as
in llama.cpp, with a warning; a deepseek4 file whose template ignores tools renders conversations with tools
in DeepSeek-V4's format (DEEPSEEK4_TOOLS_TEMPLATE). Generation stops at any end-of-generation token
(``Tokenizer.eog_ids``: EOS and end-of-turn tokens such as ``<|im_end|>``).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from flashmtp import _core

if TYPE_CHECKING:
    import jinja2

    from flashmtp.model import Model

__all__ = ["CHATML_TEMPLATE", "DEEPSEEK4_TOOLS_TEMPLATE", "Chat", "ChatTemplate", "check_messages",
           "prompt_tokens"]

Message = Mapping[str, Any]  # {"role": "system" | "user" | "assistant" | ..., "content": str, ...}

#: llama.cpp's fallback for files without a template (CHATML_TEMPLATE_SRC in common/chat.cpp).
CHATML_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "  {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "  {{- '<|im_start|>assistant\\n' -}}\n"
    "{%- endif -%}"
)

#: DeepSeek-V4's conversation format with tools, ours, for deepseek4 files whose template ignores ``tools``
#: (ChatTemplate.from_model). As DeepSeek-V3.2/V4 render it: the system prompt (the system messages, joined,
#: after BOS) ends with a "## Tools" section (how to write a DSML call block, then each tool's function
#: schema as one JSON line); an assistant's calls follow its text after a blank line as a DSML block, string
#: arguments raw and the others JSON; tool results are <tool_result> blocks of the next user turn; a reply
#: without thinking opens with "</think>".
#: flashmtp.server.tools parses the calls back. A string argument holding the parameter's closing tag gets
#: its "<" written "&lt;" (a tool result holding "</tool_result>" likewise), as antirez/ds4 does.
DEEPSEEK4_TOOLS_TEMPLATE = """\
{% set tools_intro %}
## Tools

You can use the tools below to answer the user. To call tools, write a "<｜DSML｜tool_calls>" block \
like this:

<｜DSML｜tool_calls>
<｜DSML｜invoke name="$TOOL_NAME">
<｜DSML｜parameter name="$PARAMETER_NAME" string="true|false">$PARAMETER_VALUE</｜DSML｜parameter>
...
</｜DSML｜invoke>
<｜DSML｜invoke name="$TOOL_NAME2">
...
</｜DSML｜invoke>
</｜DSML｜tool_calls>

Write a string parameter as plain text, without escaping or quotes, and set string="true". Write any other \
type (number, boolean, array, object) as JSON and set string="false". Several invokes in one block are \
calls made together.

### Available Tool Schemas

{% endset %}
{%- set user_roles = ['user', 'tool'] %}
{%- set system = messages | selectattr('role', 'equalto', 'system') | map(attribute='content')
                          | join('\\n\\n') %}
{{- bos_token + system }}
{%- if tools %}
    {{- ('\\n\\n' if system else '') + tools_intro }}
    {%- for tool in tools %}
        {{- ('\\n' if not loop.first else '') + (tool.function or tool) | tojson }}
    {%- endfor %}
    {{- '\\n\\nCall only these tools, with the parameter names and types their schemas give.' }}
{%- endif %}
{%- for m in messages if m.role != 'system' %}
    {%- set after_user = not loop.first and loop.previtem.role in user_roles %}
    {%- if m.role in user_roles %}
        {{- '\\n\\n' if after_user else '<｜User｜>' }}
        {%- if m.role == 'tool' %}
            {{- '<tool_result>' + m.content | replace('</tool_result>', '&lt;/tool_result>')
                + '</tool_result>' }}
        {%- else %}
            {{- m.content }}
        {%- endif %}
    {%- elif m.role == 'assistant' %}
        {{- ('<｜Assistant｜></think>' if after_user else '') + (m.content or '') }}
        {%- if m.tool_calls %}
            {{- '\\n\\n<｜DSML｜tool_calls>\\n' }}
            {%- for call in m.tool_calls %}
                {%- set arguments = call.function.arguments %}
                {{- '<｜DSML｜invoke name="' + call.function.name + '">\\n' }}
                {%- if arguments is mapping %}
                    {%- for key, value in arguments.items() %}
                        {{- '<｜DSML｜parameter name="' + key + '" string="' }}
                        {%- if value is string %}
                            {{- 'true">' + value | replace('</｜DSML｜parameter>',
                                                           '&lt;/｜DSML｜parameter>') }}
                        {%- else %}
                            {{- 'false">' + value | tojson }}
                        {%- endif %}
                        {{- '</｜DSML｜parameter>\\n' }}
                    {%- endfor %}
                {%- else %}
                    {{- arguments ~ '\\n' }}{# a JSON text: the parser takes an object in the invoke #}
                {%- endif %}
                {{- '</｜DSML｜invoke>\\n' }}
            {%- endfor %}
            {{- '</｜DSML｜tool_calls>' }}
        {%- endif %}
        {{- eos_token }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt and messages[-1].role != 'assistant' %}
    {{- '<｜Assistant｜></think>' }}
{%- endif %}
"""


def _compile(source: str) -> jinja2.Template:
    """The template in a sandbox configured as transformers' ``_compile_jinja_template``."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant text for training masks; rendering keeps
        # the text only.
        tags = {"generation"}

        def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller: Callable[[], str]) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
               separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
        # jinja's own filter escapes HTML characters, which templates do not expect.
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


class ChatTemplate:
    """A jinja chat template with the special-token texts it may refer to."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "",
                 tool_fallback: ChatTemplate | None = None) -> None:
        """tool_fallback: the template for conversations with tools (offered, called or answered), for a
        source that cannot render them."""
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.tool_fallback = tool_fallback
        self._template = _compile(source)  # jinja2.TemplateSyntaxError here for a broken template

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True,
               tools: Sequence[Mapping[str, Any]] | None = None,
               documents: Sequence[Mapping[str, Any]] | None = None, **kwargs: Any) -> str:
        """Prompt text of messages; tools (JSON schemas), documents and extra keyword arguments become
        template variables, as in transformers. A template's ``raise_exception`` raises
        ``jinja2.TemplateError`` with its message."""
        if self.tool_fallback is not None and (tools or any(m.get("tool_calls") or m.get("role") == "tool"
                                                            for m in messages)):
            return self.tool_fallback.render(messages, add_generation_prompt, tools, documents, **kwargs)
        return self._template.render(messages=[dict(m) for m in messages], tools=tools, documents=documents,
                                     add_generation_prompt=add_generation_prompt, bos_token=self.bos_token,
                                     eos_token=self.eos_token, **kwargs)

    @classmethod
    def from_model(cls, model: Model) -> ChatTemplate:
        """The model file's tokenizer.chat_template, or ChatML (with a warning) when it has none. A deepseek4
        file whose template ignores ``tools`` (the shipped tiny-v4's; a conversion without DeepSeek's own)
        renders conversations with tools in DeepSeek-V4's format (DEEPSEEK4_TOOLS_TEMPLATE): the model must
        be told its tools, and shown its calls and their results, as it was trained to read them."""
        from flashmtp.gguf import GGUFFile

        with GGUFFile(model.path) as file:
            source = file.metadata.get("tokenizer.chat_template")
        if source is None:
            warnings.warn(f"{model.path} has no tokenizer.chat_template; using ChatML (as llama.cpp does)",
                          stacklevel=3)
            source = CHATML_TEMPLATE
        tokenizer = model.tokenizer
        bos = tokenizer.token_text(tokenizer.bos_id) if tokenizer.bos_id >= 0 else ""
        eos = tokenizer.token_text(tokenizer.eos_id) if tokenizer.eos_id >= 0 else ""
        fallback = None
        if model.architecture == "deepseek4" and "tools" not in source:
            fallback = cls(DEEPSEEK4_TOOLS_TEMPLATE, bos_token=bos, eos_token=eos)
        return cls(source, bos_token=bos, eos_token=eos, tool_fallback=fallback)


def prompt_tokens(tokenizer: _core.Tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt, as llama.cpp tokenizes it: control-token text parsed, BOS added when
    the tokenizer asks for it, after cutting a BOS the template already wrote (the C++ CLI's function)."""
    return _core.chat_prompt_tokens(tokenizer, text)


def check_messages(messages: Sequence[Message]) -> None:
    """ValueError naming the problem unless messages is a non-empty list of role/content mappings."""
    if not messages:
        raise ValueError("chat: the conversation has no messages")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValueError(f"chat: message {i} is not a mapping with 'role' and 'content': {m!r}")


class Chat:
    """A conversation over one kept session: each send() renders the whole conversation, keeps the cached
    tokens it shares with the previous turn (Session.rewind past the rest) and decodes only the new ones.
    Exact rewind and batch-invariant kernels make each reply identical to rendering the conversation into a
    fresh session. Use from one thread."""

    def __init__(self, model: Model, system: str | None = None, n_ctx: int | None = None,
                 template: ChatTemplate | None = None, max_tokens: int = 512, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, seed: int = 0,
                 mtp: bool | None = None, draft: int | str = "auto", draft_mode: str = "coupled") -> None:
        """n_ctx: positions of the conversation's session (default: 4096, at most the training context).
        The sampling and MTP settings (see Model.generate) apply to every reply; bad ones raise
        ``ValueError`` here."""
        self.model = model
        self.template = template or model.chat_template
        self.system = system
        if max_tokens < 1:
            raise ValueError(f"chat: max_tokens must be >= 1, got {max_tokens}")
        _core.Sampler(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed)  # validates
        self.sampling = dict(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             min_p=min_p, seed=seed, draft=model._draft(mtp, draft), draft_mode=draft_mode,
                             draft_costs=model.draft_costs)
        self.session = model.session(n_ctx or min(4096, model.n_ctx_train))
        self.messages: list[dict[str, Any]] = []
        self._cached: list[int] = []  # tokens in the session's first positions
        #: Statistics of the latest reply (for stream=True: once its iterator is exhausted).
        self.last_stats: _core.GenerateStats | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system is not None else []

    def send(self, text: str, stream: bool = False) -> str | Iterator[str]:
        """Add a user message and generate the assistant's reply, which joins the conversation once complete.
        ``ValueError`` (the conversation unchanged) if the conversation no longer fits the context."""
        messages = [*self.messages, {"role": "user", "content": text}]
        prompt = prompt_tokens(self.model.tokenizer, self.template.render(messages))
        generation = _core.Generation(self.session, self.model.tokenizer, prompt, self._cached,
                                      **self.sampling)
        self._cached = generation.tokens[:generation.n_past]  # the constructor rewound past the rest
        pieces = self._run(generation, messages)
        return pieces if stream else "".join(pieces)

    def _run(self, generation: _core.Generation, messages: list[dict[str, Any]]) -> Iterator[str]:
        reply: list[str] = []
        try:
            while (piece := generation.step()) is not None:
                if piece:
                    reply.append(piece)
                    yield piece
        finally:  # an abandoned stream still leaves the session and its token record in step
            self._cached = generation.tokens[:generation.n_past]
        self.messages = [*messages, {"role": "assistant", "content": "".join(reply)}]
        self.last_stats = generation.stats
