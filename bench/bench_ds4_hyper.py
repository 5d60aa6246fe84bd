"""Cost of DeepSeek-V4's hyper-connections at V4-Flash size (D 4096, hc_mult 4, 43 layers x 2 mixers + head).

Each mixer has its own fn (24 x 16384: 1.5 MB in F32), so one forward pass reads 86 of them once: the
bench cycles through 86 distinct mixers as a pass does (fn does not stay in cache) and times hc_pre + hc_post
of each, then the head, per fn type. The machine's read bandwidth over the same bytes is the roofline. Times
include the Python call overhead (a few microseconds per call). On a shared machine compare the "best" columns
(the fastest of the passes, least disturbed by other processes) measured in one run.

    python bench/bench_ds4_hyper.py --threads 2 --tokens 1,8 --types f32,f16,bf16 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

# A developer build puts the module beside the Python sources (python/flashmtp), not in site-packages.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

from flashmtp import _core  # noqa: E402

TYPES = {"f32": 0, "f16": 1, "bf16": 30}
D, N, LAYERS, ITERS, EPS = 4096, 4, 43, 20, 1e-6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", default="1,8")
    parser.add_argument("--types", default="f32,f16,bf16")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows, cols = (2 + N) * N, N * D
    base = (rng.standard_normal(rows) * 0.5).astype(np.float32)
    scale = np.array([1.0, 1.0, 1.0], np.float32)
    threads = args.threads
    pool = _core.ThreadPool(threads)
    print(f"isa {_core.isa()}, {args.threads} thread(s), D {D}, n {N}, {LAYERS} layers x 2 mixers + head")
    print(f"{'fn':5} {'tokens':>6} {'MB/pass':>8} {'ms/pass':>8} {'best':>6} {'us/mixer':>9} {'best':>6} "
          f"{'ms/token':>8} {'best GB/s':>9} {'roofline ms':>11} {'head us':>8}")
    for name in args.types.split(","):
        fn_type = TYPES[name]
        values = (rng.standard_normal(rows * cols) / np.sqrt(cols)).astype(np.float32)
        raw = _core.quantize(fn_type, values).reshape(rows, -1)
        # distinct copies: each mixer's fn lives at its own address, as 86 tensors of a file do
        mixers = [_core.HcMixer(fn_type, raw.copy(), base, scale, N, D, ITERS, EPS, EPS, n_threads=threads)
                  for _ in range(2 * LAYERS)]
        head = _core.HcHead(fn_type, raw[:N].copy(), base[:N], scale[:1], N, D, EPS, EPS, n_threads=threads)
        pass_bytes = 2 * LAYERS * raw.nbytes
        roofline = _core.read_seconds(np.concatenate([raw.ravel()] * (2 * LAYERS)), pool)
        for n_tokens in (int(t) for t in args.tokens.split(",")):
            streams = rng.standard_normal((n_tokens, N, D), dtype=np.float32)
            times, head_times = [], []
            for _ in range(args.repeats + 1):  # the first pass warms up
                s = streams
                start = time.perf_counter()
                for mixer in mixers:
                    weights, x = mixer.pre(s)
                    s = mixer.post(weights, x, s)
                middle = time.perf_counter()
                head(s)
                times.append(middle - start)
                head_times.append(time.perf_counter() - middle)
            t, best = statistics.median(times[1:]), min(times[1:])
            per_mixer, head_us = 1e6 / (2 * LAYERS), statistics.median(head_times[1:]) * 1e6
            print(f"{name:5} {n_tokens:6d} {pass_bytes / 1e6:8.1f} {t * 1e3:8.2f} {best * 1e3:6.2f} "
                  f"{t * per_mixer:9.1f} {best * per_mixer:6.1f} {t / n_tokens * 1e3:8.2f} "
                  f"{pass_bytes / best / 1e9:9.1f} {roofline * 1e3:11.2f} {head_us:8.1f}")

if __name__ == "__main__":
    main()
