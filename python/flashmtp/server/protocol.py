"""The OpenAI wire format the server accepts: request bodies (pydantic, strict types) and the error envelope.

Requests are validated strictly (a string is not a number, 0 is not a bool) so a client's type mistake is a
400 naming the field rather than a silently coerced value. Unknown fields are ignored, as OpenAI-compatible
servers do (clients send ``user``, ``metadata``, ``store``...); known fields the runtime cannot honour (n > 1,
penalties, logit_bias, JSON response formats) are refused by :func:`unsupported` with a message
naming them, never silently dropped.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class APIError(Exception):
    """An error answered as OpenAI does: HTTP status and ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """The body of every error response (OpenAI's)."""

    error: ErrorDetail


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(_Strict):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Strict):
    include_usage: bool = False


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]


Stop = str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=16)] | None


class _Sampling(_Strict):
    """Fields shared by both endpoints. Unset sampling fields take llama.cpp's server defaults (temperature
    0.8, top_k 40, top_p 0.95, min_p 0.05); top_k and min_p are llama.cpp extensions."""

    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**64)] | None = None
    stop: Stop = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None  # OpenAI's newer name for max_tokens
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None


class CompletionRequest(_Sampling):
    # A text, token ids, or a batch of one of either (OpenAI's four prompt forms, batches of one only).
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    suffix: str | None = None
    best_of: int | None = None


def unsupported(request: ChatCompletionRequest | CompletionRequest) -> APIError | None:
    """A 400 naming the first requested feature this server does not implement, else None."""
    refusals = [
        (request.n != 1, "n", "n must be 1: one choice per request"),
        (request.presence_penalty != 0 or request.frequency_penalty != 0, "presence_penalty",
         "presence_penalty and frequency_penalty are not supported (must be 0)"),
        (bool(request.logit_bias), "logit_bias", "logit_bias is not supported"),
    ]
    if isinstance(request, ChatCompletionRequest):
        refusals += [
            (request.top_logprobs is not None and not request.logprobs, "top_logprobs",
             "top_logprobs needs logprobs: true"),
            (request.response_format is not None and request.response_format.type != "text",
             "response_format", "response_format: only type \"text\" is supported (no constrained output)"),
        ]
    else:
        refusals += [
            (request.suffix is not None, "suffix", "suffix (fill-in-the-middle) is not supported"),
            (request.best_of not in (None, 1), "best_of", "best_of must be 1"),
        ]
    for refused, param, message in refusals:
        if refused:
            return APIError(400, message, param=param, code="unsupported_parameter")
    return None
