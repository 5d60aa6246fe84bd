"""``flashmtp bench kernels``: how close each weight type's GEMV gets to the memory roofline.

Decoding one token reads every weight once, so a GEMV's speed limit is the machine's read bandwidth, which
this run measures itself (summing a 1 GiB buffer on the same threads, before and after the kernels). For
each weight type it times ``_core.matmul`` on a 4096-column matrix of >= 64 MB, alternating between two such
matrices so nothing is served from the last-level cache, for 1, 2, 4 and 8 tokens: the 1-token time gives
the effective bandwidth (weight bytes / time), the others show what verifying drafted tokens costs relative
to decoding one. numpy's float32 matvec on the same shape is printed for scale. Times are medians of
``--repeats``.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import numpy as np

N_COLS = 4096
BATCH_SIZES = (1, 2, 4, 8)
ALL_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "mxfp4",
             "q2_K", "q3_K", "q4_K", "q5_K", "q6_K")
SEED_ROWS = 64  # distinct quantized rows, tiled to the full matrix: quantizing 64 MB would take minutes


@dataclass
class KernelResult:
    type: str
    bits_per_weight: float
    matrix_mb: float
    gemv_ms: float
    gemv_gbps: float
    fraction_of_bandwidth: float
    time_2_over_1: float
    time_4_over_1: float
    time_8_over_1: float
    note: str = ""


def _type_ids() -> dict[str, int]:
    from gguf import GGMLQuantizationType

    return {name: int(GGMLQuantizationType[name.upper()]) for name in ALL_TYPES}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: page faults, scratch growth, thread wake-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _weight_matrices(core, type_id: int, n_bytes: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Two uint8 [n_rows, row_bytes] matrices of at least n_bytes each, rows quantized from N(0, 1) data."""
    matrices = []
    for _ in range(2):
        seed = core.quantize(type_id, rng.standard_normal(SEED_ROWS * N_COLS, dtype=np.float32))
        seed = seed.reshape(SEED_ROWS, -1)
        n_rows = -(-n_bytes // seed.shape[1])
        matrices.append(np.ascontiguousarray(np.tile(seed, (-(-n_rows // SEED_ROWS), 1))[:n_rows]))
    return matrices


def _batch_seconds(run: Callable[[np.ndarray, np.ndarray], object], matrices: list[np.ndarray],
                   rng: np.random.Generator, repeats: int) -> dict[int, float]:
    """Median seconds per matrix product for each batch size (each timed call covers both matrices)."""
    seconds = {}
    for n_tokens in BATCH_SIZES:
        x = rng.standard_normal((n_tokens, N_COLS), dtype=np.float32)
        both = _median_seconds(lambda x=x: [run(w, x) for w in matrices], repeats)
        seconds[n_tokens] = both / len(matrices)
    return seconds


@dataclass
class Measurement:
    type: str
    bits_per_weight: float
    matrix_bytes: int
    seconds: dict[int, float]  # batch size -> median seconds per matrix product; empty if not measured
    note: str = ""

    def result(self, bandwidth: float) -> KernelResult:
        if not self.seconds:
            nan = float("nan")
            return KernelResult(self.type, nan, nan, nan, nan, nan, nan, nan, nan, self.note)
        t = self.seconds
        gbps = self.matrix_bytes / t[1] * 1e-9
        return KernelResult(self.type, self.bits_per_weight, self.matrix_bytes / 2**20, t[1] * 1e3, gbps,
                            gbps / bandwidth, t[2] / t[1], t[4] / t[1], t[8] / t[1], self.note)


def _format_table(results: list[KernelResult]) -> str:
    header = (f"{'type':<14}{'bits/w':>7}{'MB':>7}{'GEMV ms':>9}{'GB/s':>8}{'% BW':>7}"
              f"{'2 tok':>8}{'4 tok':>7}{'8 tok':>7}  note")
    lines = [header, "-" * len(header)]
    for r in results:
        if np.isnan(r.gemv_ms):
            lines.append(f"{r.type:<14}{'':>60}  {r.note}")
            continue
        lines.append(f"{r.type:<14}{r.bits_per_weight:>7.2f}{r.matrix_mb:>7.0f}{r.gemv_ms:>9.2f}"
                     f"{r.gemv_gbps:>8.1f}{100 * r.fraction_of_bandwidth:>6.0f}%"
                     f"{r.time_2_over_1:>7.2f}x{r.time_4_over_1:>6.2f}x{r.time_8_over_1:>6.2f}x  {r.note}")
    return "\n".join(lines)


def run_bench_kernels(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from flashmtp import _core

    type_ids = _type_ids()
    names = [t.strip() for t in args.types.split(",") if t.strip()] or list(ALL_TYPES)
    unknown = [n for n in names if n not in type_ids]
    if unknown:
        print(f"unknown weight type(s) {', '.join(unknown)}; choose from {', '.join(ALL_TYPES)}")
        return 2
    if args.threads < 1 or args.repeats < 1:
        print("--threads and --repeats must be >= 1")
        return 2
    matrix_bytes = int(args.size_mb * 2**20)
    bandwidth_bytes = 16 * matrix_bytes  # 1 GiB for the default 64 MB matrices: 32x the 32 MB L3
    pool = _core.ThreadPool(args.threads)
    rng = np.random.default_rng(0)

    # Measured before and after the kernels: other processes only ever lower it, so the higher is the roofline
    # and a large gap between the two says the run was disturbed.
    bandwidth_before = _core.read_bandwidth(bandwidth_bytes, pool, args.repeats)
    supported = set(_core.matmul_types())
    measurements = []
    for name in tqdm(names, desc="weight types", leave=False):
        type_id = type_ids[name]
        if type_id not in supported:
            measurements.append(Measurement(name, 0.0, 0, {}, "no dot kernel in this build"))
            continue
        info = _core.dtype_info(type_id)
        matrices = _weight_matrices(_core, type_id, matrix_bytes, rng)
        seconds = _batch_seconds(lambda w, x, t=type_id: _core.matmul(t, w, x, pool), matrices, rng,
                                 args.repeats)
        bits = 8 * info["type_size"] / info["block_size"]
        measurements.append(Measurement(name, bits, matrices[0].nbytes, seconds))
        del matrices

    f32_rows = -(-matrix_bytes // (4 * N_COLS))
    numpy_matrices = [rng.standard_normal((f32_rows, N_COLS), dtype=np.float32) for _ in range(2)]
    seconds = _batch_seconds(lambda w, x: w @ x.T, numpy_matrices, rng, args.repeats)
    measurements.append(Measurement("numpy f32 @", 32.0, numpy_matrices[0].nbytes, seconds,
                                    "numpy/BLAS, its own threads"))
    del numpy_matrices
    bandwidth_after = _core.read_bandwidth(bandwidth_bytes, pool, args.repeats)
    bandwidth = max(bandwidth_before, bandwidth_after)

    results = [m.result(bandwidth) for m in measurements]
    print(f"flashmtp bench kernels: {_cpu_name()}, ISA {_core.isa()}, {args.threads} thread(s), "
          f"median of {args.repeats}")
    print(f"read bandwidth {bandwidth:.1f} GB/s (before {bandwidth_before:.1f}, after {bandwidth_after:.1f}; "
          f"{bandwidth_bytes / 2**30:.2f} GiB buffer, {args.threads} thread(s))")
    print(f"matrices: {N_COLS} columns x >= {args.size_mb:g} MB, two alternated; '% BW' = GEMV GB/s / read "
          f"bandwidth; 'N tok' = time for N tokens / time for 1")
    print(_format_table(results))
    with open(args.csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*(field.name for field in fields(KernelResult)),
                         "isa", "threads", "read_bandwidth_gbps", "cpu"])
        for r in results:
            writer.writerow([*asdict(r).values(), _core.isa(), args.threads, f"{bandwidth:.3f}", _cpu_name()])
    print(f"wrote {os.path.abspath(args.csv)}")
    return 0
