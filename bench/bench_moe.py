"""DeepSeek-V4 MoE FFN layer time per call, on V4-Flash-like shapes scaled down (default D=1024, I=512,
64 experts, 6 per token, one shared expert, Q4_K experts, float32 router as llama.cpp stores ffn_gate_inp):

    python bench/bench_moe.py --threads 1,2 --tokens 1,2,4,16,64 --layers 8 --repeats 30

Several layers are run in turn, as a model does, so that their weights (19 MB each at the default shapes)
come from memory rather than from the 32 MB L3. Prints the median time per layer call; for one token, the
bandwidth that gives on the weight bytes a decode call reads (router + k experts + shared expert) and the
time of one plain GEMV over the same expert bytes (the kernels' limit, without the layer's routing, grouping,
extra hand-offs and float32 router); and the bandwidth of a plain read of those bytes by the same threads
(_core.read_seconds: the memory roofline). Times include the Python call (a few microseconds). The GEMV's
matrices are numpy arrays, which numpy backs with huge pages; the layer's weights are copies in plain 4 KB
pages (as a memory-mapped GGUF file's are), so the GEMV column is a slightly optimistic bound.
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

Q4_K = 12


def quantized(
    rng: np.random.Generator, n_expert: int, n_rows: int, n_cols: int, weight_type: int
) -> np.ndarray:
    """uint8 [n_expert, n_rows, row bytes]: four experts of N(0, 1 / n_cols) values tiled (quantizing all of
    them with the scalar reference would take minutes; the bytes read are the same)."""
    distinct = min(4, n_expert)
    values = rng.standard_normal(distinct * n_rows * n_cols, dtype=np.float32) / np.sqrt(n_cols)
    raw = _core.quantize(weight_type, values).reshape(distinct, n_rows, -1)
    return np.ascontiguousarray(np.tile(raw, (n_expert // distinct + 1, 1, 1))[:n_expert])


def make_layer(args: argparse.Namespace, n_threads: int, seed: int) -> tuple[_core.MoeLayer, int]:
    """A routed layer and the weight bytes one decode call reads."""
    rng = np.random.default_rng(seed)
    d, ff, n_expert, k, t = args.dim, args.ff, args.experts, args.used, args.type
    gate_inp = (rng.standard_normal((n_expert, d)) / np.sqrt(d)).astype(np.float32)
    experts = [
        quantized(rng, n_expert, ff, d, t),
        quantized(rng, n_expert, ff, d, t),
        quantized(rng, n_expert, d, ff, t),
    ]
    shared = [quantized(rng, 1, ff, d, t)[0], quantized(rng, 1, ff, d, t)[0], quantized(rng, 1, d, ff, t)[0]]
    bias = (rng.standard_normal(n_expert) * 0.1).astype(np.float32)
    layer = _core.MoeLayer(
        gate_inp,
        t,
        *experts,
        *shared,
        n_expert_used=k,
        weights_scale=1.5,
        selection_bias=bias,
        swiglu_limit_exp=10.0,
        swiglu_limit_shexp=10.0,
        n_threads=n_threads,
    )
    decode_bytes = gate_inp.nbytes + k * sum(e[0].nbytes for e in experts) + sum(s.nbytes for s in shared)
    return layer, decode_bytes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--ff", type=int, default=512)
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--used", type=int, default=6)
    parser.add_argument("--type", type=int, default=Q4_K, help="expert weight type id (default 12 = Q4_K)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--tokens", default="1,2,4,16,64")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    print(f"D={args.dim} I={args.ff} E={args.experts} k={args.used} type={args.type} layers={args.layers}")
    print("threads tokens  us/layer  us/token   GB/s  GEMV us read GB/s")
    for n_threads in (int(n) for n in args.threads.split(",")):
        layers = [make_layer(args, n_threads, seed) for seed in range(args.layers)]
        decode_bytes = layers[0][1]
        pool = _core.ThreadPool(n_threads)
        # One matrix per layer holding the decode's expert and shared-expert bytes (3 (k + 1) matrices of
        # I x D), multiplied alone: what the layer would cost if it were a single GEMV.
        one = quantized(rng, 1, args.ff, args.dim, args.type)[0]
        stacked = [np.tile(one, (3 * (args.used + 1), 1)) for _ in layers]
        plain = np.ones(decode_bytes * args.layers // 8, np.float64)
        read_gbps = (
            decode_bytes * args.layers / statistics.median(_core.read_seconds(plain, pool) for _ in range(9))
        )
        for n_tokens in (int(n) for n in args.tokens.split(",")):
            sweeps, gemv = [], []
            for _ in range(args.repeats):
                x = rng.standard_normal((n_tokens, args.dim)).astype(np.float32)
                start = time.perf_counter()
                for layer, _ in layers:
                    layer.forward(x)
                sweeps.append((time.perf_counter() - start) / args.layers)
                if n_tokens == 1:
                    start = time.perf_counter()
                    for w in stacked:
                        _core.matmul(args.type, w, x, pool)
                    gemv.append((time.perf_counter() - start) / args.layers)
            us = statistics.median(sweeps) * 1e6
            row = f"{n_threads:7d} {n_tokens:6d} {us:9.1f} {us / n_tokens:9.1f}"
            if n_tokens == 1:
                row += f" {decode_bytes / us / 1e3:6.1f} {statistics.median(gemv) * 1e6:8.1f}"
            print(f"{row:<42} {read_gbps / 1e9:9.1f}")


if __name__ == "__main__":
    main()
