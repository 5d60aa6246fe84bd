"""`flashmtp serve` (python/flashmtp/server): the official ``openai`` client against a server started here on
loopback (uvicorn in a thread, a free port), plus raw HTTP for malformed requests.

Oracles:
- text: the Python API on the same model (``Model.generate`` / ``Model.chat``, greedy or the same seed and
  sampler settings): the server must add nothing and lose nothing. Exact text.
- concurrency: each prompt's greedy reply alone (sequentially); 8 concurrent clients must get exactly those.
  Batch-invariant kernels and exact rewind make a slot's cached prefix and a neighbour's load irrelevant.
- stop sequences: the reply without them, cut before the first occurrence.
- tool calls: Qwen2.5-Coder-0.5B calls get_weather for "What is the weather in Paris?" (as a fenced bare
  JSON object); the round trip's prompt is the template rendered from the hand-written conversation. The
  shipped tiny-v4 (DeepSeek-V4, not trained to call tools) gets the DeepSeek-V4 template's tools section, and
  a scripted DSML reply comes back as the call it writes.
- errors: OpenAI's envelope and status (400 / 404) for each kind of bad request; the server answers a good
  request afterwards.
- cancellation: a dropped stream frees its slot long before max_tokens (the /metrics token counter).
The tiny random model covers the fast tests; the fetched Qwen2.5-Coder-0.5B the ones that need language.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the server needs fastapi (pip install 'flashmtp[serve]')")
pytest.importorskip("uvicorn", reason="the server needs uvicorn (pip install 'flashmtp[serve]')")
openai = pytest.importorskip("openai", reason="the tests drive the server with the openai client")
httpx = pytest.importorskip("httpx", reason="raw HTTP requests need httpx")

import uvicorn  # noqa: E402
from flashmtp import _core  # noqa: E402
from flashmtp.chat import prompt_tokens  # noqa: E402
from flashmtp.model import Model  # noqa: E402
from flashmtp.server.app import create_app  # noqa: E402
from flashmtp.server.slots import StopMatcher  # noqa: E402
from flashmtp.server.tools import ToolCallStream, parse_tool_calls  # noqa: E402
from flashmtp.testing.models import fetch_or_skip  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent
TINY = ROOT / "models" / "tiny-llama.gguf"
QWEN = "qwen2.5-coder-0.5b-q4_k_m"
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


class Server:
    def __init__(self, url: str, model: Model, model_id: str) -> None:
        self.url = url
        self.model = model
        self.model_id = model_id
        self.client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)

    def post(self, path: str, body: object = None, content: bytes | None = None) -> httpx.Response:
        return httpx.post(self.url + path, json=body, content=content, timeout=60)

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


@contextlib.contextmanager
def serve(model: Model, model_id: str, **kwargs: object) -> Iterator[Server]:
    app = create_app(model, model_id, **kwargs)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield Server(f"http://127.0.0.1:{sock.getsockname()[1]}", model, model_id)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def tiny_model() -> Model:
    return Model(TINY, threads=2)


@pytest.fixture(scope="module")
def tiny(tiny_model: Model) -> Iterator[Server]:
    with serve(tiny_model, "tiny", n_slots=3) as server:
        yield server


@pytest.fixture(scope="module")
def qwen_model() -> Model:
    return Model(fetch_or_skip(QWEN), threads=2)


@pytest.fixture(scope="module")
def qwen(qwen_model: Model) -> Iterator[Server]:
    with serve(qwen_model, "qwen", n_slots=4, n_ctx=2048) as server:
        yield server


COUNTING = {"model": "qwen", "messages": [{"role": "user", "content": "Count from 1 to 2000, one per line."}],
            "max_tokens": 1500, "temperature": 0, "stream": True}  # no end-of-generation token for minutes


def wait_for(server: Server, key: str, value: int, what: str) -> None:
    deadline = time.monotonic() + 30
    while httpx.get(server.url + "/health").json()[key] != value:
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# --- pure functions ---------------------------------------------------------------------------------------

def test_stop_matcher_holds_back_partial_stops() -> None:
    stop = StopMatcher(["END", "\n\n"])
    assert stop.feed("abc E") == ("abc ", False)    # "E" may start "END"
    assert stop.feed("N") == ("", False)
    assert stop.feed("X\n") == ("ENX", False)
    assert stop.feed("\nmore") == ("", True)
    assert StopMatcher([]).feed("x") == ("x", False)


def test_parse_tool_calls() -> None:
    names = {"get_weather"}
    calls, text = parse_tool_calls('Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "X"}}\n'
                                   '</tool_call>\n<tool_call>{"name": "get_weather", "arguments": {}}', names)
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "X"}), ("get_weather", {})]
    assert text == "Sure."
    fenced = '```json\n{"name": "get_weather", "parameters": {"city": "Y"}}\n```'
    calls, text = parse_tool_calls(fenced, names)
    assert [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Y"})] and text == ""
    for not_a_call in ['{"name": "other", "arguments": {}}', '{"name": "get_weather", "arguments": 3}',
                       "<tool_call>not json</tool_call>", "plain text", "{broken"]:
        assert parse_tool_calls(not_a_call, names) == ([], not_a_call)


def test_tool_call_stream_sends_text_holds_calls() -> None:
    def run(text: str) -> tuple[str, list[str], str]:
        stream = ToolCallStream({"f"})
        sent = "".join(stream.feed(ch) for ch in text)
        calls, rest = stream.finish()
        return sent, [c.name for c in calls], rest

    assert run('Let me check. <tool_call>{"name": "f", "arguments": {}}</tool_call>') == \
        ("Let me check.", ["f"], "")  # the space before the block goes with it
    assert run('  {"name": "f", "arguments": {"a": 1}}') == ("", ["f"], "")
    assert run("a < b and <tool") == ("a < b and", [], " <tool")  # may still begin a block
    assert run("{not a call}") == ("", [], "{not a call}")


# --- tiny model: protocol, errors, concurrency ------------------------------------------------------------

def test_models_and_health(tiny: Server) -> None:
    assert [m.id for m in tiny.client.models.list().data] == ["tiny"]
    assert tiny.client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        tiny.client.models.retrieve("gpt-4")
    health = httpx.get(tiny.url + "/health").json()
    assert health["status"] == "ok" and health["slots"] == 3


def test_completion_matches_python_api(tiny: Server) -> None:
    prompt = "Once upon a time"
    expected = tiny.model.generate(prompt, max_tokens=20, temperature=0)
    r = tiny.client.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0)
    assert r.choices[0].text == expected
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 20
    assert r.usage.prompt_tokens == len(tiny.model.tokenize(prompt))
    streamed = tiny.client.completions.create(model="tiny", prompt=prompt, max_tokens=20, temperature=0,
                                              stream=True)
    assert "".join(c.choices[0].text for c in streamed) == expected
    tokens = tiny.model.tokenize(prompt)
    by_ids = tiny.client.completions.create(model="tiny", prompt=tokens, max_tokens=20, temperature=0,
                                            echo=True)
    assert by_ids.choices[0].text == tiny.model.detokenize(tokens) + expected


def test_chat_stream_equals_whole(tiny: Server) -> None:
    messages = [{"role": "user", "content": "Hello there"}]
    whole = tiny.client.chat.completions.create(model="tiny", messages=messages, max_tokens=24, temperature=0)
    chunks = list(tiny.client.chat.completions.create(model="tiny", messages=messages, max_tokens=24,
                                                      temperature=0, stream=True,
                                                      stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 24
    assert chunks[-1].usage.flashmtp == {**whole.usage.flashmtp, **{
        k: chunks[-1].usage.flashmtp[k] for k in ("prompt_tokens_per_s", "generated_tokens_per_s")}}
    assert whole.usage.flashmtp["drafted_tokens"] == 0  # no MTP figures from the runtime yet


def test_chat_message_forms(tiny: Server) -> None:
    """Text parts are joined; OpenAI's "developer" role is the templates' "system"."""
    def reply(messages: list[dict]) -> str:
        return tiny.client.chat.completions.create(model="tiny", messages=messages, max_tokens=12,
                                                   temperature=0).choices[0].message.content

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    plain = reply(messages)
    parts = [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]
    assert reply([{"role": "developer", "content": "Be brief."}, {"role": "user", "content": parts}]) == plain
    assert plain == tiny.model.chat(messages, max_tokens=12, temperature=0)


@pytest.mark.parametrize(("temperature", "seed"), [(0.0, 0), (1.0, 5)])
def test_logprobs(tiny: Server, temperature: float, seed: int) -> None:
    """Oracle: the tokens of _core.Generation with the same settings, and the log-softmax of their logits
    from one fresh decode of the whole sequence (batch-invariant kernels: the same logits bit for bit)."""
    model = tiny.model
    prompt = model.tokenize("Once upon a time")
    generation = _core.Generation(model.session(64), model.tokenizer, prompt, [], 12, temperature, 40, 0.95,
                                  0.05, seed)
    while generation.step() is not None:
        pass
    generated = generation.tokens[len(prompt):]
    generated = generated[:-1] if model.tokenizer.is_eog(generated[-1]) else generated
    logits = model.session(64).decode(np.array(prompt + generated, dtype=np.int32)).astype(np.float64)
    log_probs = logits - logits.max(axis=1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
    expected = [log_probs[len(prompt) - 1 + i, t] for i, t in enumerate(generated)]

    r = tiny.client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=temperature,
                                       seed=seed, logprobs=3)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == model.detokenize(generated)
    assert lp.tokens == [model.tokenizer.token_bytes(t).decode("utf-8", "replace") for t in generated]
    np.testing.assert_allclose(lp.token_logprobs, expected, rtol=0, atol=1e-9)
    # Keyed by text, as OpenAI's legacy format is: tokens that decode alike (U+FFFD) share one key.
    assert all(1 <= len(top) <= 3 and max(top.values()) >= chosen
               for top, chosen in zip(lp.top_logprobs, lp.token_logprobs, strict=True))

    chat = tiny.client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=6, temperature=0, logprobs=True, top_logprobs=2)
    entries = chat.choices[0].logprobs.content
    text = chat.choices[0].message.content
    assert b"".join(bytes(e.bytes) for e in entries).decode("utf-8", "replace") == text
    assert all(e.top_logprobs[0].logprob == e.logprob for e in entries)  # greedy: the chosen token is the top
    plain = tiny.client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=6, temperature=0)
    assert plain.choices[0].message.content == text and plain.choices[0].logprobs is None


def test_stop_sequences(tiny: Server) -> None:
    full = tiny.client.completions.create(model="tiny", prompt="abc", max_tokens=40, temperature=0)
    text = full.choices[0].text
    stop = text[15:18]
    expected = text[:text.index(stop)]
    for stream in (False, True):
        r = tiny.client.completions.create(model="tiny", prompt="abc", max_tokens=40, temperature=0,
                                           stop=[stop], stream=stream)
        chunks = list(r) if stream else [r]
        assert "".join(c.choices[0].text for c in chunks) == expected
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_seed_reproducible(tiny: Server) -> None:
    def sample(seed: int) -> str:
        return tiny.client.completions.create(model="tiny", prompt="x y", max_tokens=32, temperature=1.0,
                                              seed=seed).choices[0].text

    assert sample(42) == sample(42) == tiny.model.generate("x y", max_tokens=32, temperature=1.0, seed=42)
    assert sample(42) != sample(43)


def test_concurrent_clients_get_their_own_outputs(tiny: Server) -> None:
    prompts = [f"prompt {i}: " + "ab " * i for i in range(8)]

    def complete(prompt: str) -> str:
        return tiny.client.completions.create(model="tiny", prompt=prompt, max_tokens=48,
                                              temperature=0).choices[0].text

    alone = [complete(p) for p in prompts]
    assert len(set(alone)) > 1
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(complete, prompts * 2)) == alone * 2


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "tiny", "prompt": "x", "max_tokens": "5"}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ({"model": "tiny", "prompt": "x", "stream": 1}, 400, "stream"),
    ({"model": "tiny", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "max_tokens": 10**12}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"model": "tiny", "prompt": "x", "seed": -1}, 400, "seed"),
    ({"model": "tiny", "prompt": "x", "n": 2}, 400, "n"),
    ({"model": "tiny", "prompt": "x", "logprobs": 6}, 400, "logprobs"),
    ({"model": "tiny", "prompt": [999999]}, 400, "prompt"),
    ({"model": "tiny", "prompt": ["a", "b"]}, 400, "prompt"),
    ({"model": "tiny", "prompt": ""}, 400, "prompt"),
    ({"model": "tiny"}, 400, "prompt"),
    ({"model": "gpt-4", "prompt": "x"}, 404, "model"),
    ({"prompt": "x"}, 400, "model"),
])
def test_bad_completion_requests(tiny: Server, body: dict, status: int, param: str) -> None:
    r = tiny.post("/v1/completions", body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["message"] and error["type"]


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "tiny", "messages": []}, "messages"),
    ({"model": "tiny", "messages": "hi"}, "messages"),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"model": "tiny", "messages": [{"role": "user"}]}, "messages.0.content"),
    ({"model": "tiny", "messages": [{"role": "user", "content": 3}]}, "messages.0.content"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
     "tools.0.function"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": WEATHER,
      "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"model": "tiny", "messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]},
     "messages.0.tool_calls.0.function.arguments"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}],
      "response_format": {"type": "json_object"}}, "response_format"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
])
def test_bad_chat_requests(tiny: Server, body: dict, param: str) -> None:
    r = tiny.post("/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_malformed_and_oversized_requests(tiny: Server) -> None:
    r = tiny.post("/v1/chat/completions", content=b'{"model": "tiny", "messages": [')
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    # Any content type is read as JSON (curl -d sends form encoding).
    r = httpx.post(tiny.url + "/v1/completions", content=b'{"model": "tiny", "prompt": "x", "max_tokens": 1}',
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 1
    long_prompt = "word " * 400  # > 256 positions (the tiny model's context)
    with pytest.raises(openai.BadRequestError) as e:
        tiny.client.completions.create(model="tiny", prompt=long_prompt, max_tokens=4)
    assert e.value.code == "context_length_exceeded"
    r = tiny.post("/v1/completions", content=b'{"model": "tiny", "prompt": "' + b"a" * (33 << 20) + b'"}')
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = tiny.post("/v1/nothing", {})
    assert r.status_code == 404 and "error" in r.json()
    # The server is still healthy.
    r = tiny.client.completions.create(model="tiny", prompt="ok", max_tokens=2)
    assert r.usage.completion_tokens == 2


def test_engine_failure_mid_generation(tiny: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception in the engine becomes a 500 (or a final stream event); the slot stays usable and
    consistent: the next request's text is the Python API's."""
    import flashmtp.server.slots as slots

    real = _core.Generation

    class Failing:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self.inner = real(*args, **kwargs)
            self.steps = 0

        def step(self) -> str | None:
            self.steps += 1
            if self.steps == 3:
                raise RuntimeError("simulated engine failure")
            return self.inner.step()

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

    monkeypatch.setattr(slots._core, "Generation", Failing)
    r = tiny.post("/v1/completions", {"model": "tiny", "prompt": "abc", "max_tokens": 8})
    assert r.status_code == 500 and "simulated engine failure" in r.json()["error"]["message"]
    with httpx.stream("POST", tiny.url + "/v1/completions", timeout=30,
                      json={"model": "tiny", "prompt": "abc", "max_tokens": 8, "stream": True}) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
    assert "simulated engine failure" in events[-1]["error"]["message"]
    monkeypatch.undo()
    r = tiny.client.completions.create(model="tiny", prompt="abc", max_tokens=8, temperature=0)
    assert r.choices[0].text == tiny.model.generate("abc", max_tokens=8, temperature=0)


def test_metrics(tiny: Server) -> None:
    before = tiny.metric("flashmtp_generated_tokens_total")
    tiny.client.completions.create(model="tiny", prompt="count", max_tokens=7, temperature=0)
    assert tiny.metric("flashmtp_generated_tokens_total") == before + 7
    text = httpx.get(tiny.url + "/metrics").text
    assert 'flashmtp_requests_total{endpoint="/v1/completions",status="200"}' in text
    assert "flashmtp_mtp_acceptance_ratio" in text and tiny.metric("flashmtp_slots") == 3


def test_api_key(tiny_model: Model) -> None:
    with serve(tiny_model, "tiny", api_key="sesame") as server:
        with pytest.raises(openai.AuthenticationError):
            server.client.models.list()
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="sesame", max_retries=0)
        assert client.completions.create(model="tiny", prompt="x", max_tokens=1).usage.completion_tokens == 1
        assert httpx.get(server.url + "/health").status_code == 200  # not under /v1/


# --- Qwen2.5-Coder-0.5B: language, tools, cancellation ----------------------------------------------------

def test_qwen_chat_matches_python_api(qwen: Server) -> None:
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2+2?"}]
    expected = qwen.model.chat(messages, max_tokens=24, temperature=0)
    r = qwen.client.chat.completions.create(model="qwen", messages=messages, max_tokens=24, temperature=0)
    assert r.choices[0].message.content == expected and "4" in expected
    streamed = qwen.client.chat.completions.create(model="qwen", messages=messages, max_tokens=24,
                                                   temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == expected
    # With log-probabilities (the Python loop of flashmtp.server.logprobs): the same reply.
    with_logprobs = qwen.client.chat.completions.create(model="qwen", messages=messages, max_tokens=24,
                                                        temperature=0, logprobs=True, top_logprobs=1)
    assert with_logprobs.choices[0].message.content == expected
    entries = with_logprobs.choices[0].logprobs.content
    assert b"".join(bytes(e.bytes) for e in entries).decode() == expected
    assert all(e.top_logprobs[0].logprob == e.logprob <= 0 for e in entries)


def test_qwen_stop_and_seed(qwen: Server) -> None:
    messages = [{"role": "user", "content": "List three fruits, one per line."}]
    full = qwen.client.chat.completions.create(model="qwen", messages=messages, max_tokens=20, temperature=0)
    text = full.choices[0].message.content
    assert "\n" in text.strip()
    cut = qwen.client.chat.completions.create(model="qwen", messages=messages, max_tokens=20, temperature=0,
                                              stop=["\n"])
    assert cut.choices[0].message.content == text[:text.index("\n")]
    assert cut.choices[0].finish_reason == "stop"

    def sampled(seed: int) -> str:
        return qwen.client.chat.completions.create(model="qwen", messages=messages, max_tokens=16,
                                                   temperature=1.0, seed=seed).choices[0].message.content

    assert sampled(7) == sampled(7) == qwen.model.chat(messages, max_tokens=16, temperature=1.0, seed=7)


def test_qwen_tool_call_round_trip(qwen: Server) -> None:
    messages: list[dict] = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = qwen.client.chat.completions.create(model="qwen", messages=messages, tools=WEATHER, max_tokens=48,
                                            temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}

    # Streamed: the same call, no text.
    chunks = list(qwen.client.chat.completions.create(model="qwen", messages=messages, tools=WEATHER,
                                                      max_tokens=48, temperature=0, stream=True))
    assert not "".join(c.choices[0].delta.content or "" for c in chunks)
    streamed_calls = [t for c in chunks for t in c.choices[0].delta.tool_calls or []]
    assert [(t.function.name, json.loads(t.function.arguments)) for t in streamed_calls] == \
        [("get_weather", {"city": "Paris"})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # The tool's answer goes back: the prompt is the template rendered from the conversation.
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "Cloudy, 18 degrees Celsius"}]
    r2 = qwen.client.chat.completions.create(model="qwen", messages=messages, tools=WEATHER, max_tokens=8,
                                             temperature=0)
    rendered = qwen.model.chat_template.render([
        messages[0],
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        messages[2]], tools=WEATHER)
    assert "<tool_response>\nCloudy, 18 degrees Celsius\n</tool_response>" in rendered
    assert r2.usage.prompt_tokens == len(prompt_tokens(qwen.model.tokenizer, rendered))
    assert r2.usage.prompt_tokens_details.cached_tokens > 0  # the first turn's tokens stayed in a slot

    # tool_choice "none": no tools offered, plain text back.
    r3 = qwen.client.chat.completions.create(model="qwen", messages=messages[:1], tools=WEATHER,
                                             tool_choice="none", max_tokens=8, temperature=0)
    assert r3.choices[0].message.tool_calls is None
    assert r3.choices[0].message.content == qwen.model.chat(messages[:1], max_tokens=8, temperature=0)


def test_qwen_disconnect_cancels_generation(qwen: Server) -> None:
    before = qwen.metric("flashmtp_generated_tokens_total")
    with httpx.stream("POST", qwen.url + "/v1/chat/completions", json=COUNTING, timeout=60) as r:
        lines = r.iter_lines()
        assert sum(1 for _, line in zip(range(12), lines, strict=False) if line.startswith("data:")) == 6
    wait_for(qwen, "slots_busy", 0, "the dropped stream's generation is still running")
    assert qwen.metric("flashmtp_generated_tokens_total") - before < 200


def test_qwen_queue(qwen_model: Model) -> None:
    """One slot, one queue place: a queued client that gives up leaves the queue; a full queue answers 503;
    a queued request runs once the slot frees."""
    with serve(qwen_model, "qwen", n_slots=1, max_queue=1) as server, \
            httpx.stream("POST", server.url + "/v1/chat/completions", json=COUNTING, timeout=60) as running:
        lines = (line for line in running.iter_lines() if line.startswith("data:"))
        next(lines), next(lines)  # the role, then the first token: the slot is taken
        quick = {"model": "qwen", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        with pytest.raises(httpx.ReadTimeout):  # queued behind the running stream, then the client gives up
            httpx.post(server.url + "/v1/chat/completions", json=quick, timeout=1.0)
        wait_for(server, "queued", 0, "a disconnected client stayed in the queue")
        with ThreadPoolExecutor(1) as pool:
            queued = pool.submit(server.client.chat.completions.create, **quick)
            wait_for(server, "queued", 1, "the second request did not queue")
            with pytest.raises(openai.InternalServerError) as e:  # 503: the queue is full
                server.client.chat.completions.create(**quick)
            assert e.value.status_code == 503 and e.value.code == "queue_full"
            running.close()  # frees the slot for the queued request
            assert queued.result(timeout=60).usage.completion_tokens <= 2


@pytest.mark.slow  # about 20 s on 2 cores: 8 prompts twice through a 0.5B model
def test_qwen_concurrent_clients_match_alone(qwen: Server) -> None:
    topics = ["cats", "the sea", "Python", "rain", "chess", "bread", "mountains", "jazz"]

    def ask(topic: str) -> str:
        return qwen.client.chat.completions.create(
            model="qwen", messages=[{"role": "user", "content": f"Write one sentence about {topic}."}],
            max_tokens=16, temperature=0).choices[0].message.content

    alone = [ask(t) for t in topics]
    assert len(set(alone)) == len(topics)
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(ask, topics)) == alone


# --- DeepSeek-V4 tool calls (DSML): the shipped tiny-v4 --------------------------------------------------

DSML_REPLY = ('Let me look.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="get_weather">\n'
              '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n'
              '</｜DSML｜invoke>\n</｜DSML｜tool_calls>')


@pytest.fixture(scope="module")
def v4() -> Iterator[Server]:
    from flashmtp.shipped import shipped_model

    with serve(Model(shipped_model()[0], threads=2), "tiny-v4", n_ctx=1024) as server:
        yield server


def test_v4_tools_reach_the_prompt(v4: Server) -> None:
    """The shipped model's template ignores tools: the prompt is DeepSeek-V4's with its tools section
    (oracle: the template's text, tokenized as the server does), not the file's template."""
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    tokenizer = v4.model.tokenizer
    r = v4.client.chat.completions.create(model="tiny-v4", messages=messages, tools=WEATHER, max_tokens=4,
                                          temperature=0)
    rendered = v4.model.chat_template.render(messages, tools=WEATHER)
    assert "## Tools\n" in rendered and '{"name": "get_weather", "description"' in rendered
    assert r.usage.prompt_tokens == len(prompt_tokens(tokenizer, rendered))
    plain = v4.client.chat.completions.create(model="tiny-v4", messages=messages, max_tokens=4, temperature=0)
    assert plain.usage.prompt_tokens == len(prompt_tokens(tokenizer, v4.model.chat_template.render(messages)))
    assert plain.usage.prompt_tokens < r.usage.prompt_tokens
    assert plain.choices[0].message.content == v4.model.chat(messages, max_tokens=4, temperature=0)


def test_v4_dsml_call_round_trip(v4: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny model is not trained to call tools, so its generation is scripted: the real Generation
    decodes the prompt (the slot stays consistent), its steps return DSML_REPLY in 3-character pieces. The
    call comes back parsed, whole and streamed, with no DSML in the content; the conversation with the
    call and its result then renders as the DeepSeek-V4 template renders it."""
    import flashmtp.server.slots as slots

    real = _core.Generation

    class Scripted:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self.inner = real(*args, **kwargs)
            self.pieces = [DSML_REPLY[i:i + 3] for i in range(0, len(DSML_REPLY), 3)]

        def step(self) -> str | None:
            return self.pieces.pop(0) if self.pieces else None

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

    monkeypatch.setattr(slots._core, "Generation", Scripted)
    messages: list[dict] = [{"role": "user", "content": "What is the weather in Paris?"}]
    request = {"model": "tiny-v4", "messages": messages, "tools": WEATHER, "max_tokens": 64}
    choice = v4.client.chat.completions.create(**request).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me look."
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}

    chunks = list(v4.client.chat.completions.create(**request, stream=True))
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert content == "Let me look."
    streamed = [t for c in chunks for t in c.choices[0].delta.tool_calls or []]
    assert [(t.function.name, json.loads(t.function.arguments)) for t in streamed] == \
        [("get_weather", {"city": "Paris"})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    monkeypatch.undo()

    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "Cloudy, 18 degrees Celsius"}]
    r = v4.client.chat.completions.create(model="tiny-v4", messages=messages, tools=WEATHER, max_tokens=2)
    rendered = v4.model.chat_template.render([
        messages[0],
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        messages[2]], tools=WEATHER)
    assert ("<｜Assistant｜></think>" + DSML_REPLY + "<｜end▁of▁sentence｜><｜User｜><tool_result>Cloudy, 18 "
            "degrees Celsius</tool_result><｜Assistant｜></think>") in rendered
    assert r.usage.prompt_tokens == len(prompt_tokens(v4.model.tokenizer, rendered))


# --- MTP: tiny random DeepSeek-V4 with its draft head ------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_ds4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Main GGUF and MTP sidecar of tests/python/test_ds4_mtp.py's "peaked" tiny model, whose head's drafts
    are accepted often enough (its output matrix favours two tokens) that both verify outcomes occur."""
    torch = pytest.importorskip("torch")
    for module in ("transformers", "safetensors", "tokenizers"):
        pytest.importorskip(module)
    from flashmtp.convert import convert, mtp_path
    from flashmtp.testing.tiny_deepseek4 import TinyDeepseek4, make_tiny_deepseek4

    tiny = make_tiny_deepseek4(seed=0)
    peaked = TinyDeepseek4(tiny.config, {k: v.clone() for k, v in tiny.state.items()}, tiny.mtp)
    with torch.no_grad():
        peaked.state["lm_head.weight"][10:12] *= 12
    root = tmp_path_factory.mktemp("ds4mtp")
    main = root / "tiny-peaked.gguf"
    convert(peaked.write(root / "ckpt", "release"), main, "f32", progress=False)
    return main, mtp_path(main)


def test_mtp_drafts_keep_the_text(tiny_ds4: tuple[Path, Path]) -> None:
    """With a draft head the server drafts (usage.flashmtp and /metrics count it) and, greedy in the coupled
    mode, replies exactly what the model says without MTP (oracle: Model.generate(mtp=False))."""
    main, head = tiny_ds4
    model = Model(main, threads=1, mtp=head)
    with serve(model, "ds4", n_slots=2, n_ctx=256, draft=2) as server:
        drafted = accepted = 0
        for prompt in ["the quick brown fox", "def convert(hf_dir, out):", "jumps over", "dog dog dog"]:
            r = server.client.completions.create(model="ds4", prompt=prompt, max_tokens=40, temperature=0)
            assert r.choices[0].text == model.generate(prompt, max_tokens=40, temperature=0, mtp=False)
            drafted += r.usage.flashmtp["drafted_tokens"]
            accepted += r.usage.flashmtp["accepted_tokens"]
        assert 0 < accepted < drafted
        assert server.metric("flashmtp_mtp_drafted_tokens_total") == drafted
        assert server.metric("flashmtp_mtp_acceptance_ratio") == pytest.approx(accepted / drafted, rel=1e-5)


# --- flashmtp bench serve ---------------------------------------------------------------------------------

def bench_serve(tmp_path: Path, model: str, *extra: str) -> list[dict[str, str]]:
    from flashmtp.bench.serve import add_arguments, run_bench_serve

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "bench.csv"
    args = parser.parse_args(["-m", model, "--clients", "1,2", "--duration", "0.5", "--max-tokens", "4",
                              "--ctx", "256", "--csv", str(out), *extra])
    assert run_bench_serve(args) == 0
    with open(out) as f:
        return list(csv.DictReader(f))


def test_bench_serve_smoke(tmp_path: Path) -> None:
    rows = bench_serve(tmp_path, str(TINY), "--no-llama-cpp")  # llama.cpp refuses the tiny random file
    assert [(r["engine"], r["clients"]) for r in rows] == \
        [("flashmtp", "1"), ("flashmtp (Python API)", "1"), ("flashmtp", "2")]
    assert all(int(r["requests"]) > 0 and float(r["tok/s"]) > 0 for r in rows)


@pytest.mark.slow  # starts both servers on a 94 MB model: about 15 s
def test_bench_serve_with_llama_cpp(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="llama.cpp's server comes with llama-cpp-python")
    from flashmtp.bench.serve import llama_cpp_server_unavailable

    if reason := llama_cpp_server_unavailable():
        pytest.skip(reason)
    rows = bench_serve(tmp_path, str(fetch_or_skip("smollm2-135m-q4_1")))
    assert [(r["engine"], r["clients"]) for r in rows][-2:] == [("llama.cpp", "1"), ("llama.cpp", "2")]
    assert all(int(r["requests"]) > 0 for r in rows)
