"""The HTTP API (FastAPI): OpenAI's /v1/chat/completions, /v1/completions and /v1/models, plus /health and
/metrics. Request handling only; generation runs in flashmtp.server.slots.

    app = create_app(Model("model.gguf"), "model", n_slots=2, n_ctx=4096)
    uvicorn.run(app, host="127.0.0.1", port=8080)

Chat prompts are the GGUF's jinja chat template rendered as transformers renders it (flashmtp.chat), with
the request's tools (DeepSeek-V4's format when a deepseek4 file's template ignores them). Errors are
OpenAI's envelope ``{"error": {message, type, param, code}}`` with a 4xx status for every problem in the
request: malformed JSON, wrong types, an unknown model, a prompt that does not fit the context, unsupported
options. During a stream, an error is sent as a final ``data:`` event.
A client that disconnects cancels its generation (before its next token) or its place in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from flashmtp.chat import prompt_tokens
from flashmtp.model import Model
from flashmtp.server.logprobs import TokenLogprob
from flashmtp.server.metrics import Metrics, mtp_counts
from flashmtp.server.protocol import (
    APIError,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ErrorResponse,
    unsupported,
)
from flashmtp.server.slots import Done, Failed, Job, Scheduler
from flashmtp.server.tools import ToolCallStream, parse_tool_calls

__all__ = ["create_app"]

# llama.cpp server's sampling defaults, for fields a request leaves unset.
DEFAULT_SAMPLING = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05}
MAX_BODY_BYTES = 32 << 20  # far above any context's worth of text
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the rest of the context

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")

Scope = MutableMapping[str, Any]
Chunks = Callable[[AsyncIterator[Any]], AsyncIterator[dict[str, Any]]]  # a job's events -> response chunks
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class _Middleware:
    """Counts answered requests by endpoint and status, checks the API key (if the server has one) on
    /v1/ paths, refuses bodies over MAX_BODY_BYTES (parsed on the event loop, they would stall every
    stream), and reads every POST body as JSON whatever its content type (``curl -d`` sends form
    encoding; OpenAI-compatible servers accept it). A plain ASGI wrapper: unlike Starlette's
    BaseHTTPMiddleware it neither buffers streams nor hides disconnects."""

    def __init__(self, app: ASGIApp, metrics: Metrics, api_key: str | None) -> None:
        self.app = app
        self.metrics = metrics
        self.authorization = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST":
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "/v1/models/{model}" if path.startswith("/v1/models/") \
            else "other"

        async def counting_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                self.metrics.request(endpoint, message["status"])
            await send(message)

        headers = dict(scope["headers"])
        refusal = None
        if self.authorization and path.startswith("/v1/") and \
                not hmac.compare_digest(headers.get(b"authorization", b""), self.authorization):
            refusal = APIError(401, "missing or wrong API key (Authorization: Bearer KEY)",
                               code="invalid_api_key")
        elif int(headers.get(b"content-length", b"0") or 0) > MAX_BODY_BYTES:
            refusal = APIError(413, f"request body over {MAX_BODY_BYTES >> 20} MiB", code="body_too_large")
        if refusal:
            await _error(refusal)(scope, receive, counting_send)
            return
        received = 0

        async def limited_receive() -> Any:  # a chunked body has no Content-Length to check first
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:
                raise APIError(413, f"request body over {MAX_BODY_BYTES >> 20} MiB", code="body_too_large")
            return message

        await self.app(scope, limited_receive, counting_send)


def _error(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def _is_field(part: object) -> bool:
    # pydantic's error locations name the branch of a union that failed ("str", "list[TextPart]",
    # "NamedToolChoice"); the client's field path is the rest (our fields are lower-case identifiers).
    return isinstance(part, int) or (isinstance(part, str) and part.isidentifier() and part.islower()
                                     and part not in ("body", "str", "int", "float", "bool", "dict", "list"))


def _validation_message(e: RequestValidationError) -> APIError:
    first = e.errors()[0]
    loc = [str(p) for p in first.get("loc", ()) if _is_field(p)]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error") or first.get("msg")
        return APIError(400, f"malformed JSON in the request body: {detail}", code="invalid_json")
    where = ".".join(loc)
    return APIError(400, f"{where or 'request body'}: {first.get('msg')}", param=where or None)


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
    # The body has been read: the next ASGI message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancel()


def _usage(stats: Any) -> dict[str, Any]:
    drafted, accepted = mtp_counts(stats)
    return {
        "prompt_tokens": stats.n_prompt,
        "completion_tokens": stats.n_generated,
        "total_tokens": stats.n_prompt + stats.n_generated,
        "prompt_tokens_details": {"cached_tokens": stats.n_reused},
        # Extension: MTP draft statistics (zeros until the runtime reports them) and engine timings.
        "flashmtp": {"drafted_tokens": drafted, "accepted_tokens": accepted,
                     "prompt_tokens_per_s": round(stats.prompt_tokens_per_s, 2),
                     "generated_tokens_per_s": round(stats.generated_tokens_per_s, 2)},
    }


def _token(b: bytes) -> str:
    return b.decode("utf-8", errors="replace")


def _chat_logprobs(entries: list[TokenLogprob]) -> dict[str, Any]:
    """OpenAI's chat ``logprobs``: per token its text, bytes, log-probability and the top alternatives."""
    def one(token: bytes, logprob: float) -> dict[str, Any]:
        return {"token": _token(token), "logprob": logprob, "bytes": list(token)}

    return {"content": [{**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}
                        for e in entries]}


def _completion_logprobs(entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """OpenAI's legacy completion ``logprobs``; text_offset counts characters from the choice's start
    (offset: text before the first token, e.g. the echoed prompt)."""
    offsets, tops = [], []
    for e in entries:
        offsets.append(offset)
        offset += len(_token(e.token))
        top: dict[str, float] = {}
        for t, lp in e.top:  # tokens that decode alike (U+FFFD) share a key: keep the likeliest
            top.setdefault(_token(t), lp)
        tops.append(top)
    return {"tokens": [_token(e.token) for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": tops, "text_offset": offsets}


def _sse(data: dict[str, Any] | str) -> str:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n"


def _text_of(message: ChatMessage, index: int) -> str:
    content = message.content
    if content is None:
        if message.role == "assistant" and message.tool_calls:
            return ""
        raise APIError(400, f"messages.{index}.content: required for a {message.role} message",
                       param=f"messages.{index}.content")
    return content if isinstance(content, str) else "".join(part.text for part in content)


def _template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The messages as chat templates expect them: text content, tool-call arguments as objects (Qwen's
    template writes ``arguments | tojson``), OpenAI's "developer" role as "system"."""
    out = []
    for i, m in enumerate(messages):
        d: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": _text_of(m, i)}
        if m.name is not None:
            d["name"] = m.name
        if m.tool_call_id is not None:
            d["tool_call_id"] = m.tool_call_id
        if m.tool_calls:
            calls = []
            for j, call in enumerate(m.tool_calls):
                try:
                    arguments = json.loads(call.function.arguments)
                except json.JSONDecodeError:
                    arguments = None
                if not isinstance(arguments, dict):
                    raise APIError(400, f"messages.{i}.tool_calls.{j}.function.arguments: not a JSON object",
                                   param=f"messages.{i}.tool_calls.{j}.function.arguments")
                calls.append({"id": call.id, "type": "function",
                              "function": {"name": call.function.name, "arguments": arguments}})
            d["tool_calls"] = calls
        out.append(d)
    return out


class _Server:
    def __init__(self, model: Model, model_id: str, n_slots: int, n_ctx: int, max_queue: int,
                 draft: int | str, draft_mode: str) -> None:
        self.model = model
        self.model_id = model_id
        # Generation's draft argument: off without a head, -1 for auto.
        self.draft = 0 if not model.has_mtp else -1 if draft == "auto" else int(draft)
        self.draft_mode = draft_mode
        self.metrics = Metrics()
        self.scheduler = Scheduler(model, n_slots, n_ctx, max_queue, self.metrics)
        self.created = int(time.time())

    # --- request checks -------------------------------------------------------------------------------

    def check_model(self, name: str) -> None:
        if name != self.model_id:
            raise APIError(404, f"model {name!r} does not exist; this server serves {self.model_id!r}",
                           param="model", code="model_not_found")

    def job(self, request: ChatCompletionRequest | CompletionRequest, prompt: list[int],
            max_tokens: int | None, logprobs: int | None) -> Job:
        """A job for prompt, with max_tokens (None: the rest of the context) checked against the context."""
        n_ctx, n_prompt = self.scheduler.n_ctx, len(prompt)
        if n_prompt == 0:
            raise APIError(400, "the prompt is empty", param="prompt")
        if n_prompt >= n_ctx:
            raise APIError(400, f"the prompt has {n_prompt} tokens but the context holds {n_ctx} (server "
                                "--ctx), leaving no room for a reply", code="context_length_exceeded")
        if max_tokens is None:
            max_tokens = n_ctx - n_prompt
        elif n_prompt + max_tokens > n_ctx:
            raise APIError(400, f"the prompt ({n_prompt} tokens) plus max_tokens ({max_tokens}) exceeds the "
                                f"context of {n_ctx} tokens (server --ctx)", param="max_tokens",
                           code="context_length_exceeded")
        stop = [request.stop] if isinstance(request.stop, str) else request.stop or []
        sampling = {k: v if (v := getattr(request, k)) is not None else default
                    for k, default in DEFAULT_SAMPLING.items()}
        # Without a seed, every request draws its own (as OpenAI and llama.cpp do).
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        return Job(prompt=prompt, max_tokens=max_tokens, seed=seed, stop=stop, logprobs=logprobs,
                   draft=self.draft, draft_mode=self.draft_mode, **sampling)

    def chat_prompt(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
        import jinja2

        try:
            text = self.model.chat_template.render(messages, tools=tools)
        except jinja2.TemplateError as e:  # the template's raise_exception: e.g. roles must alternate
            raise APIError(400, f"the model's chat template refused the messages: {e}",
                           param="messages") from None
        return prompt_tokens(self.model.tokenizer, text)

    def completion_prompt(self, prompt: Any) -> tuple[list[int], str]:
        """(token ids, text) of a completion prompt in any of OpenAI's four forms (batches of one)."""
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise APIError(400, f"prompt: batches of {len(prompt)} prompts are not supported (one per "
                                    "request)", param="prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            # Control-token text is parsed, as llama.cpp's server does for raw prompts.
            return self.model.tokenize(prompt, add_special=True, parse_special=True), prompt
        n_vocab = self.model.n_vocab
        if (bad := next((t for t in prompt if not 0 <= t < n_vocab), None)) is not None:
            raise APIError(400, f"prompt: token id {bad} is outside the vocabulary [0, {n_vocab})",
                           param="prompt")
        return list(prompt), self.model.detokenize(prompt)

    def tools_for(self, request: ChatCompletionRequest) -> list[dict[str, Any]] | None:
        """The tools offered to the template (all, one named by tool_choice, or none). Without constrained
        decoding a call cannot be forced: "required" and a named tool only narrow what is offered."""
        if not request.tools or request.tool_choice == "none":
            return None
        tools = [t.model_dump(exclude_none=True) for t in request.tools]
        if choice := getattr(request.tool_choice, "function", None):
            tools = [t for t in tools if t["function"]["name"] == choice.name]
            if not tools:
                raise APIError(400, f"tool_choice names {choice.name!r}, which is not in tools",
                               param="tool_choice")
        return tools

    # --- responses ------------------------------------------------------------------------------------

    async def complete(self, request: Request, job: Job) -> tuple[str, list[TokenLogprob], Done]:
        """The whole generation's text, its tokens' log-probabilities (if the job asks for them) and its end;
        the job cancelled if the client goes."""
        watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
        pieces: list[str] = []
        logprobs: list[TokenLogprob] = []
        try:
            async with contextlib.aclosing(self.scheduler.run(job)) as events:
                async for event in events:
                    if isinstance(event, Failed):
                        raise event.error
                    if isinstance(event, Done):
                        return "".join(pieces), logprobs, event
                    pieces.append(event.text)
                    logprobs += event.logprobs
        finally:
            watcher.cancel()
        raise AssertionError("the event stream ended without Done or Failed")

    async def stream(self, request: Request, job: Job, chunks: Chunks) -> StreamingResponse:
        """SSE of chunks(events), ending with ``[DONE]``; an error becomes a final error event."""
        if self.scheduler.n_queued >= self.scheduler.max_queue:  # refused before the stream starts
            raise APIError(503, "server busy: the request queue is full; retry later", type="server_error",
                           code="queue_full")

        async def body() -> AsyncIterator[str]:
            watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
            try:
                async with contextlib.aclosing(self.scheduler.run(job)) as events:
                    async for chunk in chunks(events):
                        yield _sse(chunk)
                yield _sse("[DONE]")
            except APIError as e:
                yield _sse(e.body())
            finally:
                watcher.cancel()

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def chat_completions(server: _Server, request: Request, body: ChatCompletionRequest) -> Any:
    server.check_model(body.model)
    if refusal := unsupported(body):
        raise refusal
    tools = server.tools_for(body)
    names = {t["function"]["name"] for t in tools} if tools else set()
    messages = _template_messages(body.messages)
    prompt = await asyncio.to_thread(server.chat_prompt, messages, tools)
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    job = server.job(body, prompt, body.max_completion_tokens or body.max_tokens, logprobs)
    base = {"id": "chatcmpl-" + secrets.token_hex(12), "created": int(time.time()), "model": server.model_id}

    if not body.stream:
        text, entries, done = await server.complete(request, job)
        calls, content = parse_tool_calls(text, names) if names else ([], text)
        message: dict[str, Any] = {"role": "assistant", "content": content or (None if calls else "")}
        if calls:
            message["tool_calls"] = [c.to_openai() for c in calls]
        finish = "tool_calls" if calls else done.finish_reason
        return {**base, "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": finish,
                             "logprobs": _chat_logprobs(entries) if logprobs is not None else None}],
                "usage": _usage(done.stats)}

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(delta: dict[str, Any], finish: str | None = None,
              entries: list[TokenLogprob] | None = None) -> dict[str, Any]:
        return {**base, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                             "logprobs": _chat_logprobs(entries) if entries else None}]}

    async def chunks(events: AsyncIterator[Any]) -> AsyncIterator[dict[str, Any]]:
        filter_calls = ToolCallStream(names) if names else None
        yield chunk({"role": "assistant", "content": ""})
        async for event in events:
            if isinstance(event, Failed):
                raise event.error
            if isinstance(event, Done):
                calls = []
                if filter_calls:
                    calls, rest = filter_calls.finish()
                    if rest:
                        yield chunk({"content": rest})
                    for i, call in enumerate(calls):
                        yield chunk({"tool_calls": [call.to_openai(index=i)]})
                yield chunk({}, "tool_calls" if calls else event.finish_reason)
                if include_usage:
                    yield {**base, "object": "chat.completion.chunk", "choices": [],
                           "usage": _usage(event.stats)}
                return
            text = filter_calls.feed(event.text) if filter_calls else event.text
            if text or event.logprobs:
                yield chunk({"content": text} if text else {}, entries=event.logprobs)

    return await server.stream(request, job, chunks)


async def completions(server: _Server, request: Request, body: CompletionRequest) -> Any:
    server.check_model(body.model)
    if refusal := unsupported(body):
        raise refusal
    prompt, prompt_text = await asyncio.to_thread(server.completion_prompt, body.prompt)
    max_tokens = body.max_tokens if body.max_tokens is not None else min(
        COMPLETION_MAX_TOKENS, max(server.scheduler.n_ctx - len(prompt), 1))
    job = server.job(body, prompt, max_tokens, body.logprobs)
    base = {"id": "cmpl-" + secrets.token_hex(12), "object": "text_completion", "created": int(time.time()),
            "model": server.model_id}
    echo = prompt_text if body.echo else ""

    def choice(text: str, finish: str | None, entries: list[TokenLogprob] | None = None,
               offset: int = 0) -> dict[str, Any]:
        """offset: characters of the choice's text before this one (text_offset)."""
        logprobs = None
        if body.logprobs is not None and entries is not None:
            logprobs = _completion_logprobs(entries, offset)
        return {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}

    if not body.stream:
        text, entries, done = await server.complete(request, job)
        return {**base, "choices": [choice(echo + text, done.finish_reason, entries, len(echo))],
                "usage": _usage(done.stats)}

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def chunks(events: AsyncIterator[Any]) -> AsyncIterator[dict[str, Any]]:
        sent = len(echo)
        if echo:
            yield {**base, "choices": [choice(echo, None)]}
        async for event in events:
            if isinstance(event, Failed):
                raise event.error
            if isinstance(event, Done):
                yield {**base, "choices": [choice("", event.finish_reason)]}
                if include_usage:
                    yield {**base, "choices": [], "usage": _usage(event.stats)}
                return
            yield {**base, "choices": [choice(event.text, None, event.logprobs, sent)]}
            sent += len(event.text)

    return await server.stream(request, job, chunks)


def create_app(model: Model, model_id: str, n_slots: int = 1, n_ctx: int | None = None,
               max_queue: int = 64, api_key: str | None = None, draft: int | str = "auto",
               draft_mode: str = "coupled") -> FastAPI:
    """The server's ASGI app over a loaded model. n_ctx: positions of each slot's session (default 4096,
    at most the training context). Slot sessions are allocated here. With an api_key, /v1/ requests must
    carry ``Authorization: Bearer API_KEY``. With a model that has an MTP draft head, generations draft
    ``draft`` tokens per round (1..8, 0 off, "auto") in ``draft_mode`` (see Model.generate), except for
    logprobs requests."""
    server = _Server(model, model_id, n_slots, n_ctx or min(4096, model.n_ctx_train), max_queue, draft,
                     draft_mode)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        server.scheduler.shutdown()

    app = FastAPI(title="flashmtp", summary="OpenAI-compatible API over a flashmtp model",
                  lifespan=lifespan)
    app.state.server = server

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return _error(e)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return _error(_validation_message(e))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        response = _error(APIError(e.status_code, str(e.detail)))
        response.headers.update(e.headers or {})  # a 405's Allow
        return response

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        return _error(APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error"))

    errors: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorResponse, "description": "a malformed, invalid or unsupported request"},
        404: {"model": ErrorResponse, "description": "unknown model"}}
    generation_responses: dict[int | str, dict[str, Any]] = {
        200: {"description": "the completion (JSON), or with stream=true server-sent events of chunks",
              "content": {"text/event-stream": {}}},
        **errors,
        503: {"model": ErrorResponse, "description": "the request queue is full"}}

    @app.post("/v1/chat/completions", responses=generation_responses)
    async def _chat(request: Request, body: ChatCompletionRequest) -> Any:
        return await chat_completions(server, request, body)

    @app.post("/v1/completions", responses=generation_responses)
    async def _completions(request: Request, body: CompletionRequest) -> Any:
        return await completions(server, request, body)

    def model_card() -> dict[str, Any]:
        return {"id": server.model_id, "object": "model", "created": server.created, "owned_by": "flashmtp",
                "meta": {"architecture": model.architecture, "n_vocab": model.n_vocab,
                         "n_ctx_train": model.n_ctx_train, "n_ctx": server.scheduler.n_ctx}}

    @app.get("/v1/models")
    async def _models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_name:path}", responses=errors)
    async def _model(model_name: str) -> dict[str, Any]:
        server.check_model(model_name)
        return model_card()

    @app.get("/health")
    async def _health() -> dict[str, Any]:
        s = server.scheduler
        return {"status": "ok", "slots": s.n_slots, "slots_busy": server.metrics.n_running,
                "queued": s.n_queued}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def _metrics() -> PlainTextResponse:
        return PlainTextResponse(server.metrics.prometheus(server.scheduler.n_slots),
                                 media_type="text/plain; version=0.0.4")

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        # Validation errors are answered 400 in OpenAI's envelope, not FastAPI's 422.
        schema = default_openapi()
        for operations in schema["paths"].values():
            for operation in operations.values():
                operation["responses"].pop("422", None)
        components = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        # One model is served: saying so lets schema-driven clients (and fuzzers) name it.
        for name in ("ChatCompletionRequest", "CompletionRequest"):
            components[name]["properties"]["model"]["enum"] = [server.model_id]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(_Middleware, metrics=server.metrics, api_key=api_key)
    return app
