"""End-to-end decode speed of a real model: ``flashmtp bench decode -m MODEL``.

pp<N>: one decode of N tokens (prefill). tg<N>: N single-token decodes with n_logits=1 (generation). Each is
the median of --repeats runs on a fresh position 0 (rewind), so every run does the same work. Generation reads
every weight once per token, so its roofline is read bandwidth / weight bytes per token; the table shows both.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from flashmtp import _core, gguf
from flashmtp.model import Model


def weight_bytes_per_token(path: str) -> int:
    """Bytes of weights one generated token reads: every matrix once, plus one embedding row."""
    with gguf.open(path) as f:
        tensors = {t.name: t for t in f.tensors}
    total = sum(t.n_bytes for name, t in tensors.items() if name != "token_embd.weight")
    embd = tensors["token_embd.weight"]
    tied = "output.weight" not in tensors  # the output projection reads the whole embedding matrix
    return total + (embd.n_bytes if tied else embd.n_bytes // embd.shape[0])


def measure(model: Model, n_pp: int, n_tg: int, repeats: int) -> tuple[float, float]:
    """Median seconds of pp (one batch of n_pp tokens) and of tg (n_tg single-token decodes after it)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, model.n_vocab, size=n_pp + n_tg, dtype=np.int32)
    session = model.session(n_ctx=n_pp + n_tg)
    pp_times, tg_times = [], []
    for _ in range(repeats + 1):  # the first run warms caches and pages in the weights
        session.rewind(0)
        start = time.perf_counter()
        session.decode(tokens[:n_pp], n_logits=1)
        pp_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        for t in tokens[n_pp:]:
            session.decode(np.array([t], dtype=np.int32), n_logits=1)
        tg_times.append(time.perf_counter() - start)
    return statistics.median(pp_times[1:]), statistics.median(tg_times[1:])


def run_bench_decode(args: argparse.Namespace) -> int:
    threads = [int(t) for t in str(args.threads).split(",")]
    per_token = weight_bytes_per_token(args.model)
    probe_bytes = int(args.bandwidth_mb * 1e6)
    bandwidth = {n: _core.read_bandwidth(probe_bytes, _core.ThreadPool(n), 3) for n in threads}
    print(f"model {args.model}: {per_token / 1e6:.1f} MB of weights per generated token")
    print(f"{'threads':>7} {'pp' + str(args.pp) + ' t/s':>11} {'tg' + str(args.tg) + ' t/s':>11} "
          f"{'read GB/s':>9} {'roofline t/s':>12} {'tg/roofline':>11}")
    for n in threads:
        model = Model(args.model, threads=n)
        pp_s, tg_s = measure(model, args.pp, args.tg, args.repeats)
        tg_rate = args.tg / tg_s
        roofline = bandwidth[n] * 1e9 / per_token
        print(f"{n:>7} {args.pp / pp_s:>11.1f} {tg_rate:>11.1f} {bandwidth[n]:>9.1f} {roofline:>12.1f} "
              f"{tg_rate / roofline:>11.2f}", flush=True)
    return 0
