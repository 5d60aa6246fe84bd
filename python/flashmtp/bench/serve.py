"""Serving throughput and latency on loopback: ``flashmtp bench serve -m MODEL --clients 1,4``.

Each server runs in its own process on a free loopback port: ``flashmtp serve`` (with --parallel equal to
the client count) and llama.cpp's server from llama-cpp-python (``python -m llama_cpp.server``, which runs
one request at a time; --interrupt_requests False so a new request queues instead of cutting the running
one off). For each client count N, N client threads send streaming chat completions back to back for
--duration seconds (then finish the request they are in): every request a distinct prompt (client and
sequence number in it, so no server can answer from a cached prefix beyond the chat template's header),
greedy, --max-tokens tokens at most, the same sequence of prompts for both servers.

Per request: time to first token (the first chunk with content), latency (until the last chunk) and
tokens (content chunks: both servers send one per token). Per run: requests/s and tokens/s over the wall time
until the last client finished, TTFT and latency p50 / p99, and per-request decode speed (tokens after the
first over the time after the first). With one client, flashmtp's requests alternate with the same
requests through the Python API in the bench process (``Model.chat``, stream), the baseline for the
server's overhead, measured in the same minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FLASHMTP = "flashmtp"
LLAMA_CPP = "llama.cpp"
PYTHON_API = "flashmtp (Python API)"
# Coding tasks: the model answers at length, so most requests run to --max-tokens.
TASKS = ["reverses a string", "checks whether a number is prime", "merges two sorted lists",
         "counts the words in a text", "flattens a nested list", "parses a CSV line",
         "returns the n-th Fibonacci number", "removes duplicates from a list", "transposes a matrix",
         "validates an e-mail address", "converts Roman numerals to integers",
         "finds the longest common prefix of strings"]


@dataclass
class Request:
    ttft_s: float
    latency_s: float
    tokens: int


@dataclass
class Run:
    engine: str
    clients: int
    requests: list[Request]
    wall_s: float

    def row(self) -> dict[str, object]:
        reqs = self.requests
        tokens = sum(r.tokens for r in reqs)

        def pct(values: list[float], q: float) -> float:
            if len(values) < 2:
                return values[0] if values else float("nan")
            return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]

        ttft = [r.ttft_s * 1000 for r in reqs]
        latency = [r.latency_s * 1000 for r in reqs]
        decode = [(r.tokens - 1) / (r.latency_s - r.ttft_s) for r in reqs
                  if r.tokens > 1 and r.latency_s > r.ttft_s]
        return {"engine": self.engine, "clients": self.clients, "requests": len(reqs),
                "req/s": len(reqs) / self.wall_s, "tok/s": tokens / self.wall_s,
                "decode tok/s/req": statistics.median(decode) if decode else float("nan"),
                "ttft p50 ms": pct(ttft, 50), "ttft p99 ms": pct(ttft, 99),
                "latency p50 ms": pct(latency, 50), "latency p99 ms": pct(latency, 99)}


def prompt(client: int, index: int) -> list[dict[str, str]]:
    task = TASKS[(client * 7 + index) % len(TASKS)]
    return [{"role": "user", "content": f"Task {client}-{index}: write a Python function that {task}."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server_process(engine: str, model: str, threads: int, n_ctx: int, parallel: int) -> Iterator[str]:
    """A server subprocess on a free port; yields its base URL once /v1/models answers."""
    import httpx

    port = free_port()
    if engine == FLASHMTP:
        cmd = [sys.executable, "-m", "flashmtp", "serve", "-m", model, "--port", str(port), "--threads",
               str(threads), "--ctx", str(n_ctx), "--parallel", str(parallel), "--log-level", "warning"]
    else:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", model, "--port", str(port), "--host",
               "127.0.0.1", "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx",
               str(n_ctx), "--interrupt_requests", "False", "--verbose", "False"]
    # The child imports this same flashmtp, installed or a checkout's (bench/bench_serve.py).
    package_root = str(Path(__file__).resolve().parent.parent.parent)
    python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": python_path}
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                log = process.stderr.read()[-2000:]
                raise RuntimeError(f"{engine} server exited ({process.returncode}): {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/v1/models", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{engine} server did not answer within 120 s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def model_id(url: str) -> str:
    import httpx

    return httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]


def stream_request(client: object, url: str, model: str, messages: list[dict[str, str]],
                   max_tokens: int) -> Request:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    first = 0.0
    tokens = 0
    with client.stream("POST", url + "/v1/chat/completions", json=body) as r:  # type: ignore[attr-defined]
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(f"server error: {chunk['error']}")
            if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                tokens += 1
                if not first:
                    first = time.perf_counter() - t0
    return Request(first, time.perf_counter() - t0, tokens)


def drive(engine: str, url: str, clients: int, duration_s: float, max_tokens: int) -> Run:
    import httpx

    model = model_id(url)
    results: list[Request] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client_loop(c: int) -> None:
        with httpx.Client(timeout=600) as http:
            index = 0
            while time.perf_counter() < stop_at:
                try:
                    result = stream_request(http, url, model, prompt(c, index), max_tokens)
                except BaseException as e:  # reported after the run
                    with lock:
                        errors.append(e)
                    return
                with lock:
                    results.append(result)
                index += 1

    with httpx.Client(timeout=600) as http:
        stream_request(http, url, model, prompt(99, 0), 4)  # warm-up, untimed
    t0 = time.perf_counter()
    stop_at = t0 + duration_s
    threads = [threading.Thread(target=client_loop, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{engine}: {len(errors)} client(s) failed: {errors[0]!r}")
    return Run(engine, clients, results, time.perf_counter() - t0)


def drive_alternating(url: str, model_path: str, threads: int, n_ctx: int, duration_s: float,
                      max_tokens: int) -> tuple[Run, Run]:
    """One client, alternating each request between the server and the Python API in this process
    (``Model.chat``, stream) on the same prompt: drift on a shared machine hits both alike. Each run's wall
    time is the sum of its own requests'."""
    import httpx

    from flashmtp.model import Model

    model = Model(model_path, threads=threads)
    served = model_id(url)

    def local(messages: list[dict[str, str]], n: int) -> Request:
        start = time.perf_counter()
        first, tokens = 0.0, 0
        for _ in model.chat(messages, max_tokens=n, temperature=0, stream=True, n_ctx=n_ctx):
            tokens += 1
            if not first:
                first = time.perf_counter() - start
        return Request(first, time.perf_counter() - start, tokens)

    results: dict[str, list[Request]] = {FLASHMTP: [], PYTHON_API: []}
    with httpx.Client(timeout=600) as http:
        stream_request(http, url, served, prompt(99, 0), 4)  # warm-ups, untimed
        local(prompt(99, 0), 4)
        stop_at = time.perf_counter() + duration_s
        index = 0
        while time.perf_counter() < stop_at:
            # Each side idles a moment first, so the other's thread pool has stopped spinning.
            time.sleep(0.05)
            results[FLASHMTP].append(stream_request(http, url, served, prompt(0, index), max_tokens))
            time.sleep(0.05)
            results[PYTHON_API].append(local(prompt(0, index), max_tokens))
            index += 1
    return tuple(Run(engine, 1, reqs, sum(r.latency_s for r in reqs))  # type: ignore[return-value]
                 for engine, reqs in results.items())


COLUMNS = ["engine", "clients", "requests", "req/s", "tok/s", "decode tok/s/req", "ttft p50 ms",
           "ttft p99 ms", "latency p50 ms", "latency p99 ms"]


def table(rows: list[dict[str, object]]) -> str:
    def fmt(v: object) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def llama_cpp_server_unavailable() -> str | None:
    try:
        import llama_cpp.server.app  # noqa: F401
    except ImportError as e:
        return f"{e.name} is not installed (llama_cpp.server needs llama-cpp-python[server])"
    return None


def run_bench_serve(args: argparse.Namespace) -> int:
    from flashmtp.testing.models import MODELS, fetch

    try:
        import httpx  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        print(f"flashmtp bench serve: error: {e.name} is not installed (pip install 'flashmtp[serve]' httpx)",
              file=sys.stderr)
        return 1
    path = str(fetch(args.model)) if args.model in MODELS else args.model
    if not os.path.isfile(path):
        print(f"flashmtp bench serve: error: no such model file: {path}", file=sys.stderr)
        return 1
    clients = [int(c) for c in args.clients.split(",")]
    engines = [FLASHMTP]
    if not args.no_llama_cpp:
        if reason := llama_cpp_server_unavailable():
            print(f"llama.cpp rows absent: {reason}", file=sys.stderr)
        else:
            engines.append(LLAMA_CPP)
    print(f"model {path}, {args.threads} threads, {args.duration:g} s per run, max {args.max_tokens} "
          "tokens per request, greedy", flush=True)
    runs: list[Run] = []
    print(table([]), flush=True)
    for engine in engines:
        for n in clients:
            parallel = n if engine == FLASHMTP else 1
            with server_process(engine, path, args.threads, args.ctx, parallel) as url:
                if engine == FLASHMTP and n == 1:
                    new = list(drive_alternating(url, path, args.threads, args.ctx, args.duration,
                                                 args.max_tokens))
                else:
                    new = [drive(engine, url, n, args.duration, args.max_tokens)]
            runs += new
            for run in new:
                print(table([run.row()]).splitlines()[-1], flush=True)
    rows = [r.row() for r in runs]
    print()
    print(table(rows))
    by = {(r["engine"], r["clients"]): r for r in rows}
    for n in clients:
        f, ll = by.get((FLASHMTP, n)), by.get((LLAMA_CPP, n))
        if f and ll:
            print(f"{n} client(s): flashmtp / llama.cpp aggregate tok/s = {f['tok/s'] / ll['tok/s']:.2f}x")
    if (api := by.get((PYTHON_API, 1))) and (f := by.get((FLASHMTP, 1))):
        overhead = 1 - f["decode tok/s/req"] / api["decode tok/s/req"]
        print(f"1 client: server decode speed {f['decode tok/s/req']:.1f} tok/s vs Python API "
              f"{api['decode tok/s/req']:.1f} tok/s: overhead {overhead:.1%}")
    if args.csv:
        with open(args.csv, "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", required=True,
                        help="a .gguf file, or a known real model name (see flashmtp.testing.models)")
    parser.add_argument("--clients", default="1,4", help="comma-separated concurrent client counts")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds each run issues requests")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per request at most")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=1024, help="context positions per slot (both servers)")
    parser.add_argument("--no-llama-cpp", action="store_true", help="measure flashmtp only")
    parser.add_argument("--csv", default="", help="also write the figures here as CSV")
