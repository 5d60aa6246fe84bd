"""End-to-end decode speed of a real model against llama.cpp: ``flashmtp bench decode -m MODEL``.

pp<N>: one decode of N tokens from position 0 (prefill). tg<N>: N single-token decodes after a prompt of
--tg-prompt tokens (generation). Both engines run the same random token ids, keep the logits of the last
token only, and hand them to Python as a numpy row: flashmtp through ``Session.decode(tokens, n_logits=1)``,
llama.cpp (llama-cpp-python) through its C API, ``llama_decode`` on ``llama_batch_get_one`` then
``llama_get_logits_ith(ctx, -1)``, so no Python sampling or bookkeeping is timed; llama.cpp runs as its
defaults have it on the CPU (flash attention, f16 KV cache, weights repacked where it can). Every run
starts from an empty KV cache (flashmtp: rewind(0); llama.cpp: llama_memory_clear), so no run reuses an
earlier prompt.

Each engine runs in its own spawned process: their thread pools never compete while idle, and each one's
peak resident memory is its own. After one untimed warm-up run each, the parent asks the two processes in
turn for one repeat of every test (A B A B ...), so drift on a shared machine hits both alike; figures are
medians over --repeats. Other processes still hurt llama.cpp's spinning barriers more than flashmtp's
yielding pool, so the table says how much CPU they took meanwhile.

Generation reads every weight once per token plus the KV cache of the positions so far, so its roofline is
read bandwidth / bytes per token; the table shows how close each engine comes.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import multiprocessing
import os
import resource
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from flashmtp import _core, gguf

FLASHMTP = "flashmtp"
LLAMA_CPP = "llama.cpp"
LLAMA_CPP_REQUIREMENT = "llama-cpp-python==0.3.36"
LLAMA_CPP_KV_BYTES_PER_ELEMENT = 2  # its default K and V cache type, f16 (flashmtp's is fp32)


def weight_bytes_per_token(path: str) -> int:
    """Bytes of weights one generated token reads: every matrix once, plus one embedding row."""
    with gguf.open(path) as f:
        tensors = {t.name: t for t in f.tensors}
    total = sum(t.n_bytes for name, t in tensors.items() if name != "token_embd.weight")
    embd = tensors["token_embd.weight"]
    tied = "output.weight" not in tensors  # the output projection reads the whole embedding matrix
    return total + (embd.n_bytes if tied else embd.n_bytes // embd.shape[0])


@dataclass(frozen=True)
class Workload:
    """What one repeat runs: a prefill of each size in ``pp``, then ``tg`` single-token decodes after a
    prompt of ``tg_prompt`` tokens."""

    pp: tuple[int, ...]
    tg: int
    tg_prompt: int

    def __post_init__(self) -> None:
        if not self.pp or min(self.pp) < 1 or self.tg < 1 or self.tg_prompt < 0:
            raise ValueError(f"need prefill sizes >= 1, tg >= 1 and tg prompt >= 0; got pp {list(self.pp)}, "
                             f"tg {self.tg}, tg prompt {self.tg_prompt}")

    @property
    def n_ctx(self) -> int:
        return max(*self.pp, self.tg_prompt + self.tg)

    @property
    def tests(self) -> list[str]:
        return [f"pp{n}" for n in self.pp] + [f"tg{self.tg}"]

    @property
    def tg_mean_positions(self) -> float:
        """Positions of KV cache a generated token attends to, averaged over the tg run (its own included)."""
        return self.tg_prompt + (self.tg + 1) / 2

    def token_ids(self, n_vocab: int) -> np.ndarray:
        """The same random ids for every engine and repeat: speed does not depend on the text."""
        return np.random.default_rng(0).integers(0, n_vocab, size=self.n_ctx, dtype=np.int32)


class FlashmtpRunner:
    """One flashmtp session of the workload's context."""

    def __init__(self, path: str, threads: int, n_ctx: int) -> None:
        from flashmtp.model import Model

        self.model = Model(path, threads=threads)
        self.session = self.model.session(n_ctx=n_ctx)
        self.n_vocab = self.model.n_vocab
        self.kv_bytes_per_position = self.session.state_size // self.session.n_ctx

    def clear(self) -> None:
        self.session.rewind(0)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        return self.session.decode(tokens, n_logits=1)[0]


class LlamaCppRunner:
    """One llama.cpp context of the workload's size, driven through the C API (see the module docstring)."""

    def __init__(self, path: str, threads: int, n_ctx: int) -> None:
        import llama_cpp

        self.lib = llama_cpp
        # One ubatch holds the largest prefill, as flashmtp runs it in one decode too. Flash attention on:
        # llama.cpp's own default ("auto") picks it on the CPU, where it is faster; the wrapper's is off.
        n_batch = max(n_ctx, 512)
        self.llm = llama_cpp.Llama(path, n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                                   n_batch=n_batch, n_ubatch=n_batch, logits_all=False, flash_attn=True,
                                   verbose=False)
        self.ctx = self.llm.ctx
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.n_vocab = self.llm.n_vocab()
        model = self.llm.model
        head_dim = llama_cpp.llama_model_n_embd(model) // llama_cpp.llama_model_n_head(model)
        kv_heads = llama_cpp.llama_model_n_layer(model) * llama_cpp.llama_model_n_head_kv(model)
        self.kv_bytes_per_position = 2 * kv_heads * head_dim * LLAMA_CPP_KV_BYTES_PER_ELEMENT  # K and V

    def clear(self) -> None:
        self.lib.llama_memory_clear(self.memory, True)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        ids = tokens.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        # batch_get_one: positions follow the cache, logits of the last token only.
        status = self.lib.llama_decode(self.ctx, self.lib.llama_batch_get_one(ids, len(tokens)))
        if status != 0:
            raise RuntimeError(f"llama_decode of {len(tokens)} tokens returned {status}")
        row = self.lib.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(row, shape=(self.n_vocab,)).copy()


RUNNERS = {FLASHMTP: FlashmtpRunner, LLAMA_CPP: LlamaCppRunner}


def run_repeat(runner: FlashmtpRunner | LlamaCppRunner, workload: Workload,
               tokens: np.ndarray) -> dict[str, float]:
    """Seconds of each test of the workload, each from an empty cache."""
    seconds = {}
    for n in workload.pp:
        runner.clear()
        start = time.perf_counter()
        runner.decode(tokens[:n])
        seconds[f"pp{n}"] = time.perf_counter() - start
    runner.clear()
    if workload.tg_prompt:
        runner.decode(tokens[:workload.tg_prompt])
    generated = tokens[workload.tg_prompt:workload.tg_prompt + workload.tg]
    start = time.perf_counter()
    for i in range(workload.tg):
        runner.decode(generated[i:i + 1])
    seconds[f"tg{workload.tg}"] = time.perf_counter() - start
    return seconds


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: a spawned child starts with its parent's,
    as Linux carries the peak of the forked copy across exec, and the parent's bandwidth probe is 1 GB."""
    status = Path("/proc/self/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(kib) / 1024


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds used so far by every process on the machine, and by this one with its waited-for
    children: their difference over a measurement is the noise it carries."""
    # The "cpu" line: user nice system idle iowait irq softirq steal ..., in clock ticks.
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = sum(fields) - fields[3] - fields[4]
    usages = (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    own = sum(u.ru_utime + u.ru_stime for u in usages)
    return busy / os.sysconf("SC_CLK_TCK"), own


def engine_worker(conn: Connection, engine: str, path: str, threads: int, workload: Workload) -> None:
    """A spawned process's main: load, report, then run one repeat per "run" message until "stop",
    answering the peak RSS. Failures go back as ("error", traceback)."""
    try:
        rss_before_load = peak_rss_mib()
        runner = RUNNERS[engine](path, threads, workload.n_ctx)
        tokens = workload.token_ids(runner.n_vocab)
        conn.send(("ready", {"rss_before_load": rss_before_load,
                             "kv_bytes_per_position": runner.kv_bytes_per_position}))
        while conn.recv() == "run":
            conn.send(("seconds", run_repeat(runner, workload, tokens)))
        conn.send(("peak_rss", peak_rss_mib()))
    except Exception:
        conn.send(("error", traceback.format_exc()))


class EngineProcess:
    """The parent's handle on one engine_worker."""

    def __init__(self, engine: str, path: str, threads: int, workload: Workload) -> None:
        self.engine = engine
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing loaded or shared
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=engine_worker, daemon=True,
                                       args=(child_conn, engine, path, threads, workload))
        self.process.start()
        child_conn.close()

    def receive(self, expected: str) -> Any:
        try:
            kind, value = self.conn.recv()
        except EOFError:
            self.process.join()
            exit_code = self.process.exitcode
            raise RuntimeError(f"the {self.engine} process died (exit code {exit_code})") from None
        if kind == "error":
            raise RuntimeError(f"the {self.engine} process failed:\n{value}")
        assert kind == expected, (kind, expected)
        return value

    def run(self) -> dict[str, float]:
        self.conn.send("run")
        return self.receive("seconds")

    def stop(self) -> float:
        self.conn.send("stop")
        peak = self.receive("peak_rss")
        self.process.join()
        return peak


@dataclass
class EngineResult:
    tokens_per_s: dict[str, float]  # test -> median tokens/s
    kv_bytes_per_position: int
    rss_before_load_mib: float
    peak_rss_mib: float


def measure(engines: list[str], path: str, threads: int, workload: Workload,
            repeats: int) -> dict[str, EngineResult]:
    processes = {e: EngineProcess(e, path, threads, workload) for e in engines}
    try:
        ready = {e: p.receive("ready") for e, p in processes.items()}
        seconds: dict[str, list[dict[str, float]]] = {e: [] for e in engines}
        for _ in range(repeats + 1):  # the first round warms caches and pages in the weights
            for e, p in processes.items():
                seconds[e].append(p.run())
        peaks = {e: p.stop() for e, p in processes.items()}
    finally:
        for p in processes.values():
            if p.process.is_alive():
                p.process.kill()
    sizes = dict(zip(workload.tests, (*workload.pp, workload.tg), strict=True))
    return {e: EngineResult(
        tokens_per_s={t: sizes[t] / statistics.median(run[t] for run in seconds[e][1:])
                      for t in workload.tests},
        kv_bytes_per_position=ready[e]["kv_bytes_per_position"],
        rss_before_load_mib=ready[e]["rss_before_load"], peak_rss_mib=peaks[e]) for e in engines}


def llama_cpp_unavailable_reason() -> str | None:
    """None when llama_cpp imports, else why not."""
    try:
        import llama_cpp  # noqa: F401
    except (ImportError, OSError) as e:  # OSError: the package is there but its shared library is not
        return f"{type(e).__name__}: {e}"
    return None


def int_list(text: str, option: str) -> list[int]:
    try:
        return [int(t) for t in str(text).split(",")]
    except ValueError:
        raise ValueError(f"{option} takes comma-separated integers, got {text!r}") from None


def run_bench_decode(args: argparse.Namespace) -> int:
    try:
        threads = int_list(args.threads, "--threads")
        workload = Workload(pp=tuple(int_list(args.pp, "--pp")), tg=args.tg, tg_prompt=args.tg_prompt)
        if min(threads) < 1 or args.repeats < 1:
            raise ValueError(f"need threads >= 1 and repeats >= 1; got threads {threads}, "
                             f"repeats {args.repeats}")
    except ValueError as e:
        print(f"flashmtp bench decode: error: {e}", file=sys.stderr)
        return 2
    engines = [FLASHMTP]
    if args.no_llama_cpp:
        print("llama.cpp columns skipped (--no-llama-cpp)")
    elif (reason := llama_cpp_unavailable_reason()) is not None:
        print(f"llama.cpp columns absent: llama_cpp is not importable ({reason}). Install "
              f"{LLAMA_CPP_REQUIREMENT} with pip install '.[bench]' (it builds llama.cpp from source, about "
              f"20 minutes on 2 cores).")
    else:
        engines.append(LLAMA_CPP)
        print(f"llama.cpp: {LLAMA_CPP_REQUIREMENT} C API (llama_decode), flash attention on, f16 KV cache")

    weights = weight_bytes_per_token(args.model)
    probe_bytes = int(args.bandwidth_mb * 1e6)
    print(f"model {args.model}: {weights / 1e6:.1f} MB of weights per generated token; tg{workload.tg} after "
          f"a {workload.tg_prompt}-token prompt; median of {args.repeats}, engines alternating")
    csv_rows = []
    for n in threads:
        bandwidth = _core.read_bandwidth(probe_bytes, _core.ThreadPool(n), 3)  # GB/s
        start, (all_before, own_before) = time.perf_counter(), cpu_seconds()
        results = measure(engines, args.model, n, workload, args.repeats)
        all_after, own_after = cpu_seconds()
        n_cpus = os.cpu_count() or 1
        others = max(0.0, (all_after - all_before) - (own_after - own_before)) / (
            (time.perf_counter() - start) * n_cpus)
        print(f"\nthreads {n}: read bandwidth {bandwidth:.1f} GB/s; other processes used {others:.0%} of the "
              f"{n_cpus} cores meanwhile")
        if others >= 0.1:
            # Threads that spin at barriers lose whole time slices when other processes want the cores.
            print("busy machine: llama.cpp's spinning barriers suffer most from it; compare runs on a quiet "
                  "machine")
        print(f"{'test':<7}" + "".join(f"{e + ' t/s':>15}" for e in engines)
              + (f"{'ratio':>7}" if len(engines) == 2 else ""))
        for test in workload.tests:
            rates = [results[e].tokens_per_s[test] for e in engines]
            print(f"{test:<7}" + "".join(f"{r:>15.1f}" for r in rates)
                  + (f"{rates[0] / rates[1]:>7.2f}" if len(engines) == 2 else ""))
        tg_test = f"tg{workload.tg}"
        print(f"{'engine':<10} {'MB/token':>8} {'read GB/s':>9} {'of bandwidth':>12} {'peak RSS MiB':>12} "
              f"{'before load':>11}")
        for e in engines:
            r = results[e]
            per_token = weights + r.kv_bytes_per_position * workload.tg_mean_positions
            read_gbps = per_token * r.tokens_per_s[tg_test] / 1e9
            print(f"{e:<10} {per_token / 1e6:>8.1f} {read_gbps:>9.1f} {read_gbps / bandwidth:>12.2f} "
                  f"{r.peak_rss_mib:>12.1f} {r.rss_before_load_mib:>11.1f}", flush=True)
            csv_rows.append({"threads": n, "engine": e,
                             **{f"{t}_tokens_per_s": round(v, 2) for t, v in r.tokens_per_s.items()},
                             "bytes_per_token": round(per_token), "read_gbps": round(read_gbps, 2),
                             "bandwidth_gbps": round(bandwidth, 2),
                             "bandwidth_fraction": round(read_gbps / bandwidth, 3),
                             "others_cpu_share": round(others, 3),
                             "peak_rss_mib": round(r.peak_rss_mib, 1),
                             "rss_before_load_mib": round(r.rss_before_load_mib, 1)})
        if len(engines) == 2:
            print(f"{'ratio':<10} {'':>8} {'':>9} {'':>12} "
                  f"{results[FLASHMTP].peak_rss_mib / results[LLAMA_CPP].peak_rss_mib:>12.2f}")
    print("\nratio: flashmtp / llama.cpp. MB/token: weights plus the KV cache a generated token reads\n"
          "(flashmtp fp32, llama.cpp f16), averaged over the tg run. peak RSS: VmHWM of each engine's own\n"
          "process after load and all runs; it counts the Python interpreter (see 'before load') and\n"
          "the pages of the memory-mapped GGUF file that were touched, for both engines.")
    if args.csv:
        with Path(args.csv).open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(csv_rows[0]))
            writer.writeheader()
            writer.writerows(csv_rows)
        print(f"wrote {args.csv}")
    return 0
