"""``flashmtp bench kernels``: how close each weight type's GEMV gets to the memory roofline.

Decoding one token reads every weight once, so a GEMV's speed limit is the machine's read bandwidth. For
each weight type it times ``_core.matmul`` on a 4096-column matrix of >= 64 MB, alternating between two such
matrices so nothing is served from the last-level cache, for 1, 2, 4 and 8 tokens: the 1-token time gives
the effective bandwidth (weight bytes / time), the others show what verifying drafted tokens costs relative
to decoding one. The roofline is a plain read of the same two matrices on the same threads, timed just
before the kernels in the same round. numpy's float32 matvec on the same shape is printed for scale.

The machines this runs on are shared, and their bandwidth drifts by tens of percent within minutes. So the
run goes in ``--repeats`` rounds, each timing every type once, and each figure is the median over rounds of
a ratio measured within one round (a kernel against the read just before it): drift between rounds cancels.
A 1 GiB read probe before and after the rounds is printed as the machine-level reference.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

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
    fraction_of_read: float  # plain read of the same bytes / GEMV time, median over rounds
    time_2_over_1: float
    time_4_over_1: float
    time_8_over_1: float
    note: str = ""


@dataclass
class Subject:
    """One row of the table: a product timed over two alternated matrices, and its samples per round."""

    type: str
    bits_per_weight: float
    matrices: list[np.ndarray]
    run: Callable[[np.ndarray, np.ndarray], object]
    note: str = ""
    read_seconds: list[float] = field(default_factory=list)        # per round: a plain read of both matrices
    seconds: dict[int, list[float]] = field(default_factory=dict)  # batch size -> per round, both matrices

    def measure_round(self, core, pool, inputs: dict[int, np.ndarray]) -> None:
        self.read_seconds.append(sum(core.read_seconds(w, pool) for w in self.matrices))
        for n_tokens, x in inputs.items():
            start = time.perf_counter()
            for w in self.matrices:
                self.run(w, x)
            self.seconds.setdefault(n_tokens, []).append(time.perf_counter() - start)

    def result(self) -> KernelResult:
        if not self.seconds:
            nan = float("nan")
            return KernelResult(self.type, nan, nan, nan, nan, nan, nan, nan, nan, self.note)
        t1 = np.array(self.seconds[1])
        per_matrix = float(np.median(t1)) / len(self.matrices)

        def over_1(n_tokens: int) -> float:
            return float(np.median(np.array(self.seconds[n_tokens]) / t1))

        n_bytes = self.matrices[0].nbytes
        return KernelResult(self.type, self.bits_per_weight, n_bytes / 2**20, per_matrix * 1e3,
                            n_bytes / per_matrix * 1e-9,
                            float(np.median(np.array(self.read_seconds) / t1)),
                            over_1(2), over_1(4), over_1(8), self.note)


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


def _weight_matrices(core, type_id: int, n_bytes: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Two uint8 [n_rows, row_bytes] matrices of at least n_bytes each, rows quantized from N(0, 1) data."""
    matrices = []
    for _ in range(2):
        seed = core.quantize(type_id, rng.standard_normal(SEED_ROWS * N_COLS, dtype=np.float32))
        seed = seed.reshape(SEED_ROWS, -1)
        n_rows = -(-n_bytes // seed.shape[1])
        matrices.append(np.ascontiguousarray(np.tile(seed, (-(-n_rows // SEED_ROWS), 1))[:n_rows]))
    return matrices


def _format_table(results: list[KernelResult]) -> str:
    header = (f"{'type':<14}{'bits/w':>7}{'MB':>7}{'GEMV ms':>9}{'GB/s':>8}{'% read':>8}"
              f"{'2 tok':>8}{'4 tok':>7}{'8 tok':>7}  note")
    lines = [header, "-" * len(header)]
    for r in results:
        if np.isnan(r.gemv_ms):
            lines.append(f"{r.type:<14}{'':>61}  {r.note}")
            continue
        lines.append(f"{r.type:<14}{r.bits_per_weight:>7.2f}{r.matrix_mb:>7.0f}{r.gemv_ms:>9.2f}"
                     f"{r.gemv_gbps:>8.1f}{100 * r.fraction_of_read:>7.0f}%"
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
    probe_bytes = 16 * matrix_bytes  # 1 GiB for the default 64 MB matrices: 32x the 32 MB L3
    pool = _core.ThreadPool(args.threads)
    rng = np.random.default_rng(0)

    probe_before = _core.read_bandwidth(probe_bytes, pool, 5)
    supported = set(_core.matmul_types())
    subjects = []
    for name in tqdm(names, desc="preparing matrices", leave=False):
        type_id = type_ids[name]
        if type_id not in supported:
            subjects.append(Subject(name, 0.0, [], lambda w, x: None, "no dot kernel in this build"))
            continue
        info = _core.dtype_info(type_id)
        subjects.append(Subject(name, 8 * info["type_size"] / info["block_size"],
                                _weight_matrices(_core, type_id, matrix_bytes, rng),
                                lambda w, x, t=type_id: _core.matmul(t, w, x, pool)))
    f32_rows = -(-matrix_bytes // (4 * N_COLS))
    subjects.append(Subject("numpy f32 @", 32.0,
                            [rng.standard_normal((f32_rows, N_COLS), dtype=np.float32) for _ in range(2)],
                            lambda w, x: w @ x.T, "numpy/BLAS, its own threads"))

    inputs = {n: rng.standard_normal((n, N_COLS), dtype=np.float32) for n in BATCH_SIZES}
    timed = [s for s in subjects if s.matrices]
    for _ in range(2):  # warm-up rounds, not kept: page faults, scratch growth, clocks, thread wake-up
        for s in timed:
            s.measure_round(_core, pool, inputs)
    for s in timed:
        s.read_seconds.clear()
        s.seconds.clear()
    # Each round starts one subject later, so no type always runs first (the first ones measured slower).
    for r in tqdm(range(args.repeats), desc="rounds", leave=False):
        for i in range(len(timed)):
            timed[(r + i) % len(timed)].measure_round(_core, pool, inputs)
    probe_after = _core.read_bandwidth(probe_bytes, pool, 5)

    results = [s.result() for s in subjects]
    print(f"flashmtp bench kernels: {_cpu_name()}, ISA {_core.isa()}, {args.threads} thread(s), "
          f"median of {args.repeats} rounds")
    print(f"read probe: {probe_before:.1f} GB/s before, {probe_after:.1f} after "
          f"({probe_bytes / 2**30:.2f} GiB buffer, {args.threads} thread(s))")
    print(f"matrices: {N_COLS} columns x >= {args.size_mb:g} MB, two alternated; '% read' = time of a plain "
          f"read of the same matrices / GEMV time (same round); 'N tok' = time for N tokens / time for 1")
    print(_format_table(results))
    with open(args.csv, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow([*(f.name for f in fields(KernelResult)), "isa", "threads", "read_probe_gbps", "cpu"])
        probe = max(probe_before, probe_after)
        for r in results:
            writer.writerow([*asdict(r).values(), _core.isa(), args.threads, f"{probe:.3f}", _cpu_name()])
    print(f"wrote {os.path.abspath(args.csv)}")
    return 0
