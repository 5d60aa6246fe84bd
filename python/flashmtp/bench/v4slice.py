"""``flashmtp bench v4slice``: decode speed of a DeepSeek-V4-Flash-shaped slice, projected to the full model.

The slice is a random-weight ``deepseek4`` GGUF with V4-Flash's real dimensions (hidden 4096, 64 heads x 512,
q_lora 1024, 8 output groups x 1024, 256 experts x 2048 with top-6 and one shared expert, hc 4, window 128,
indexer 64 x 128 top-512, vocab 129280) but two layers: one CSA (compress ratio 4, with the indexer) and one
HCA (ratio 128), both learned-routed. Every weight a token reads has V4-Flash's size and type, so the time
of a layer here is the time of a layer there, and the 43-layer model's decode speed follows from the per-layer
and head times.

The file is built once per setting and cached (~/.cache/flashmtp/v4slice/). Quantized tensors are random
block bytes, not quantized floats (quantizing ~7 GB of floats with the reference quantizers would take an
hour): codes are uniform, and the block scales are overwritten with a fixed value that makes each weight's
spread about 1/sqrt(row length), so activations stay finite through the layers. F32 tensors are normal
noise of the same spread, norm gains are one.

Measured (flashmtp through Engine/Session; llama.cpp through llama-cpp-python in a separate process, which
may refuse the file): after a prompt (so the CSA/HCA caches hold compressed entries), the median time of one
decode of n = 1..6 tokens from the same position, with the logits of every token (what verifying n - 1
drafted tokens needs); for flashmtp also without the head (``n_logits=0``), which gives the head's time and
the per-layer time. Bytes per token are the weights one token reads: every attention, compressor, indexer,
hyper-connection, norm and router tensor, the shared expert and 6 of the 256 routed experts per layer; the
output head and one embedding row.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from flashmtp.bench import run_in_process
from flashmtp.convert import deepseek4, write_gguf
from flashmtp.convert.deepseek4 import Deepseek4Params, TensorSpec
from flashmtp.convert.recipes import TensorClass, find_recipe, tensor_type

__all__ = ["FLASH", "TINY", "build_slice", "run_bench_v4slice", "slice_path"]

FULL_MODEL_LAYERS = 43  # V4-Flash's main blocks
EXPERT_TYPES = ("q4_k", "mxfp4")
CACHE_DIR = Path.home() / ".cache" / "flashmtp" / "v4slice"

# DeepSeek's release config.json of V4-Flash, with two layers: CSA (ratio 4) then HCA (ratio 128).
FLASH: dict[str, Any] = {
    "vocab_size": 129280, "hidden_size": 4096, "num_hidden_layers": 2, "num_attention_heads": 64,
    "head_dim": 512, "qk_rope_head_dim": 64, "q_lora_rank": 1024, "o_groups": 8, "o_lora_rank": 1024,
    "n_routed_experts": 256, "num_experts_per_tok": 6, "n_shared_experts": 1, "moe_intermediate_size": 2048,
    "scoring_func": "sqrtsoftplus", "norm_topk_prob": True, "routed_scaling_factor": 1.5,
    "swiglu_limit": 10.0, "compress_ratios": [4, 128], "num_hash_layers": 0, "sliding_window": 128,
    "index_n_heads": 64, "index_head_dim": 128, "index_topk": 512, "hc_mult": 4, "hc_sinkhorn_iters": 20,
    "hc_eps": 1e-6, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "compress_rope_theta": 160000.0,
    "max_position_embeddings": 65536, "num_nextn_predict_layers": 0,
}
# The same structure at toy size (the smoke test's): every row length a multiple of 256 (Q4_K's block).
TINY: dict[str, Any] = {**FLASH, "vocab_size": 512, "hidden_size": 256, "num_attention_heads": 4,
                        "head_dim": 256, "qk_rope_head_dim": 64, "q_lora_rank": 256, "o_groups": 2,
                        "o_lora_rank": 256, "n_routed_experts": 16, "moe_intermediate_size": 256,
                        "index_n_heads": 4, "index_head_dim": 128, "index_topk": 8, "sliding_window": 16}
DIMS = {"flash": FLASH, "tiny": TINY}


def slice_path(dims: str, experts: str, cache_dir: Path = CACHE_DIR) -> Path:
    """The cached file of a setting (dimensions, expert type); the name holds every setting."""
    return cache_dir / f"v4slice-{dims}-{experts}.gguf"


# -- the random-weight file ------------------------------------------------------------------------------

_CHUNK_BYTES = 64 << 20  # generated and written this much at a time: memory stays bounded


def _random_blocks(qtype: T, n_blocks: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    """[n_blocks * block_bytes] uint8: uniform codes, scales chosen so the weights' spread is ``spread``."""
    block_bytes = GGML_QUANT_SIZES[qtype][1]
    data = np.frombuffer(rng.bytes(n_blocks * block_bytes), np.uint8).reshape(n_blocks, block_bytes).copy()
    if qtype is T.Q8_0:  # d * q, q uniform int8 (std ~74)
        data[:, 0:2] = np.frombuffer(np.float16(spread / 74).tobytes(), np.uint8)
    elif qtype is T.Q4_K:  # d * sc * q - dmin * m; sc, m uniform 6-bit, q 4-bit: d*sc*q std ~150 d
        d = np.float16(spread / 150)
        data[:, 0:4] = np.frombuffer(np.array([d, d * 4], np.float16).tobytes(), np.uint8)
    elif qtype is T.MXFP4:  # E8M0 exponent e: 2^(e - 128) * code, codes (int8 table, up to 12) std ~5
        data[:, 0] = np.uint8(127 + round(np.log2(spread / 5)) + 1)
    else:
        raise ValueError(f"no random-block recipe for {qtype.name}")
    return data.reshape(-1)


def _float_tensor(spec: TensorSpec, n_expert: int, rng: np.random.Generator) -> np.ndarray:
    if spec.name.endswith("norm.weight"):
        return np.ones(spec.shape, np.float32)
    if spec.cls is TensorClass.INDEX:  # hash routing table: expert ids
        return rng.integers(0, n_expert, spec.shape, dtype=np.int32)
    return (rng.standard_normal(spec.shape, dtype=np.float32) / np.sqrt(spec.shape[-1])).astype(np.float32)


@dataclass(frozen=True)
class _Planned:
    spec: TensorSpec
    qtype: T
    n_bytes: int


class _RandomTensor:
    """What GGUFWriter.write_tensor_data needs (``nbytes``, ``tofile``), generating data chunk by chunk."""

    def __init__(self, t: _Planned, n_expert: int, rng: np.random.Generator, bar: Any) -> None:
        self.t, self.n_expert, self.rng, self.bar = t, n_expert, rng, bar
        self.nbytes = t.n_bytes

    def tofile(self, fp: Any) -> None:
        t = self.t
        if t.qtype in (T.F32, T.I32):
            data = _float_tensor(t.spec, self.n_expert, self.rng)
            data.tofile(fp)
            self.bar.update(data.nbytes)
            return
        block_bytes = GGML_QUANT_SIZES[t.qtype][1]
        n_blocks = t.n_bytes // block_bytes
        spread = 1 / np.sqrt(t.spec.shape[-1])
        step = max(1, _CHUNK_BYTES // block_bytes)
        for b0 in range(0, n_blocks, step):
            data = _random_blocks(t.qtype, min(step, n_blocks - b0), spread, self.rng)
            data.tofile(fp)
            self.bar.update(data.nbytes)


def _plan(p: Deepseek4Params, experts: str) -> list[_Planned]:
    recipe = find_recipe(experts)
    plan = []
    for spec in deepseek4.main_tensor_specs(p):
        qtype, _ = tensor_type(recipe, spec.cls, spec.shape[-1])
        block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
        plan.append(_Planned(spec, qtype, int(np.prod(spec.shape)) // block_elems * block_bytes))
    return plan


def _vocab(directory: Path, vocab_size: int) -> Any:
    """A small byte-level BPE tokenizer padded to the model's vocabulary (the Engine loads one)."""
    from flashmtp.convert.vocab import Vocab
    from flashmtp.testing.tiny_deepseek4 import _write_tokenizer

    _write_tokenizer(directory, min(vocab_size, 300))
    return Vocab.load(directory, vocab_size)


def build_slice(dims: str, experts: str, cache_dir: Path = CACHE_DIR, progress: bool = True,
                seed: int = 0) -> Path:
    """The cached slice file of this setting, built first if absent (to ``.partial``, then renamed)."""
    path = slice_path(dims, experts, cache_dir)
    if path.is_file():
        return path
    if experts not in EXPERT_TYPES:
        raise ValueError(f"--experts {experts!r}: expected one of {', '.join(EXPERT_TYPES)}")
    p = Deepseek4Params.from_config(DIMS[dims])
    plan = _plan(p, experts)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        write_gguf(path, f"v4slice-{dims}", find_recipe(experts).file_type, deepseek4.metadata(p, p.n_layer),
                   _vocab(Path(tmp), p.vocab_size), plan,
                   lambda t, bar: _RandomTensor(t, p.n_expert, rng, bar), progress)
    return path


# -- bytes one token reads -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenBytes:
    layer: float  # mean over the slice's layers
    head: int  # output head, its norm and hc-head, one embedding row
    layers: int  # the slice's layers together


def token_bytes(p: Deepseek4Params, experts: str) -> TokenBytes:
    layers, head = 0.0, 0
    for t in _plan(p, experts):
        if t.spec.name.startswith("blk."):
            share = p.n_expert_used / p.n_expert if t.spec.cls is TensorClass.EXPERTS else 1.0
            if t.spec.cls is TensorClass.INDEX:  # hash routing reads one row of the table
                share = 1 / p.vocab_size
            layers += t.n_bytes * share
        elif t.spec.name == "token_embd.weight":
            head += t.n_bytes // p.vocab_size
        else:
            head += t.n_bytes
    return TokenBytes(layers / p.n_layer, head, int(layers))


# -- measurement -----------------------------------------------------------------------------------------

FLASHMTP, LLAMA_CPP = "flashmtp", "llama.cpp"


@dataclass(frozen=True)
class Workload:
    prompt: int
    max_batch: int
    repeats: int
    warmup: int


class _Flashmtp:
    def __init__(self, path: str, threads: int, n_ctx: int) -> None:
        from flashmtp import _core

        self.engine = _core.Engine(path, threads)
        self.session = self.engine.session(n_ctx)

    def rewind(self, n_past: int) -> None:
        self.session.rewind(n_past)

    def decode(self, tokens: np.ndarray, head: bool = True) -> None:
        self.session.decode(tokens, n_logits=len(tokens) if head else 0)


class _LlamaCpp:
    """llama.cpp's context through the C API (as flashmtp.bench.decode drives it), flash attention on. Its
    batches (``llama_batch_get_one``) output the last token's logits only, so its verify times lack n - 1
    head products that flashmtp's include."""

    def __init__(self, path: str, threads: int, n_ctx: int) -> None:
        import llama_cpp

        self.lib = llama_cpp
        self.llm = llama_cpp.Llama(path, n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                                   n_batch=n_ctx, n_ubatch=n_ctx, logits_all=False, flash_attn=True,
                                   verbose=True)  # its log goes to a file: _worker reports the error line
        self.memory = llama_cpp.llama_get_memory(self.llm.ctx)
        self.n_past = 0

    def rewind(self, n_past: int) -> None:
        self.lib.llama_memory_seq_rm(self.memory, 0, n_past, -1)
        self.n_past = n_past

    def decode(self, tokens: np.ndarray, head: bool = True) -> None:
        ids = tokens.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        status = self.lib.llama_decode(self.llm.ctx, self.lib.llama_batch_get_one(ids, len(tokens)))
        if status != 0:
            raise RuntimeError(f"llama_decode of {len(tokens)} tokens returned {status}")
        self.n_past += len(tokens)


def measure(engine: str, path: str, threads: int, w: Workload, n_vocab: int) -> dict[str, float]:
    """Median seconds of one decode of n = 1..max_batch tokens after the prompt (``t{n}``), and for flashmtp
    the same without the head (``body{n}``). The figures are timed in turns, one decode of each per round,
    so that a slow spell of a shared machine falls on all of them alike rather than on one."""
    runner = (_Flashmtp if engine == FLASHMTP else _LlamaCpp)(path, threads, w.prompt + w.max_batch + 8)
    ids = np.random.default_rng(1).integers(0, n_vocab, w.prompt + w.max_batch).astype(np.int32)
    runner.decode(ids[:w.prompt], head=False)
    figures = [(f"t{n}", n, True) for n in range(1, w.max_batch + 1)]
    if engine == FLASHMTP:
        figures += [(f"body{n}", n, False) for n in range(1, w.max_batch + 1)]
    times: dict[str, list[float]] = {name: [] for name, _, _ in figures}
    # Untimed rounds first: a new batch size builds its buffers (llama.cpp: its graph).
    for round_ in range(w.warmup + w.repeats):
        for name, n, head in figures:
            runner.rewind(w.prompt)
            start = time.perf_counter()
            runner.decode(ids[w.prompt:w.prompt + n], head)
            if round_ >= w.warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def measure_in_process(engine: str, path: str, threads: int, w: Workload, n_vocab: int,
                       timeout_s: float = 1800) -> dict[str, float] | str:
    """``measure`` in a fresh interpreter (llama.cpp may abort on a file it refuses); a string: why not."""
    ok, value = run_in_process(measure, engine, path, threads, w, n_vocab, timeout_s=timeout_s)
    return value if ok else str(value)


# -- the table -------------------------------------------------------------------------------------------


def _rows(p: Deepseek4Params, tb: TokenBytes, bandwidth_gbs: float, results: dict[str, dict[str, float]],
          max_batch: int) -> list[tuple[str, str, str]]:
    """(figure, engine, value) rows."""
    full_bytes = FULL_MODEL_LAYERS * tb.layer + tb.head
    roofline_tps = bandwidth_gbs * 1e9 / full_bytes
    rows = [("read bandwidth (GB/s)", "", f"{bandwidth_gbs:.1f}"),
            ("bytes/token: one layer (MB)", "", f"{tb.layer / 1e6:.1f}"),
            ("bytes/token: head (MB)", "", f"{tb.head / 1e6:.1f}"),
            (f"bytes/token: {FULL_MODEL_LAYERS}-layer model (GB)", "", f"{full_bytes / 1e9:.2f}"),
            (f"roofline {FULL_MODEL_LAYERS}-layer decode (tok/s)", "", f"{roofline_tps:.2f}")]
    for engine, s in results.items():
        t1 = s["t1"]
        rows.append((f"slice decode, {p.n_layer} layers + head (ms/token)", engine, f"{t1 * 1e3:.2f}"))
        if "body1" in s:
            head, layer = t1 - s["body1"], s["body1"] / p.n_layer
            rows += [("head (ms)", engine, f"{head * 1e3:.2f}"),
                     ("one layer (ms)", engine, f"{layer * 1e3:.2f}"),
                     ("one layer: share of roofline", engine,
                      f"{tb.layer / layer / (bandwidth_gbs * 1e9):.0%}"),
                     ("head: share of roofline", engine, f"{tb.head / head / (bandwidth_gbs * 1e9):.0%}")]
            full = FULL_MODEL_LAYERS * layer + head
        else:  # no head-free decode: scale the whole slice's time by its bytes
            full = t1 * full_bytes / (tb.layers + tb.head)
        rows += [(f"projected {FULL_MODEL_LAYERS}-layer decode (tok/s)", engine, f"{1 / full:.2f}"),
                 ("projected: share of roofline", engine, f"{1 / full / roofline_tps:.0%}")]
        for n in range(2, max_batch + 1):
            rows.append((f"verify {n} tokens / 1 token", engine, f"{s[f't{n}'] / t1:.2f}x"))
            if f"body{n}" in s:
                rows.append((f"verify {n} / 1, layers only", engine, f"{s[f'body{n}'] / s['body1']:.2f}x"))
    return rows


def run_bench_v4slice(args: argparse.Namespace) -> int:
    from flashmtp import _core

    cache = Path(args.cache_dir) if args.cache_dir else CACHE_DIR
    existed = slice_path(args.dims, args.experts, cache).is_file()
    start = time.perf_counter()
    path = build_slice(args.dims, args.experts, cache, progress=not args.quiet)
    size = path.stat().st_size
    print(f"slice: {path} ({size / 1e9:.2f} GB, "
          + ("cached" if existed else f"built in {time.perf_counter() - start:.0f} s") + ")")
    p = Deepseek4Params.from_config(DIMS[args.dims])
    tb = token_bytes(p, args.experts)
    # The roofline's bandwidth: the median of probes before, between and after the engines' runs. A shared
    # machine's bandwidth drifts (single probes of one run read 28 to 54 GB/s while decode times held steady).
    pool = _core.ThreadPool(args.threads)
    probes = [_core.read_bandwidth(int(args.bandwidth_mb * (1 << 20)), pool)]
    w = Workload(args.prompt, args.max_batch, args.repeats, args.warmup)
    results: dict[str, dict[str, float]] = {}
    for engine in ([FLASHMTP] if args.no_llama_cpp else [FLASHMTP, LLAMA_CPP]):
        got = measure_in_process(engine, str(path), args.threads, w, p.vocab_size)
        probes.append(_core.read_bandwidth(int(args.bandwidth_mb * (1 << 20)), pool))
        if isinstance(got, str):
            if engine == FLASHMTP:
                raise RuntimeError(f"flashmtp could not run the slice: {got}")
            print(f"{engine}: not measured: {got.splitlines()[0] if got else 'no reason given'}")
        else:
            results[engine] = got
    bandwidth = statistics.median(probes)
    rows = _rows(p, tb, bandwidth, results, args.max_batch)
    print(f"v4slice {args.dims}, experts {args.experts}, {args.threads} threads, prompt {args.prompt}, "
          f"median of {args.repeats}; read bandwidth probes {', '.join(f'{b:.1f}' for b in probes)} GB/s")
    width = max(len(r[0]) for r in rows)
    for figure, engine, value in rows:
        print(f"{figure:<{width}}  {engine:<9}  {value:>9}")
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["figure", "engine", "value"])
            out.writerows(rows)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experts", choices=EXPERT_TYPES, default="q4_k", help="routed experts' type")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=256, help="tokens decoded before the timed decodes")
    parser.add_argument("--max-batch", type=int, default=6, help="verify batches of 1..this many tokens")
    parser.add_argument("--repeats", type=int, default=9, help="timed decodes per figure (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds of every figure first")
    parser.add_argument("--no-llama-cpp", action="store_true", help="measure flashmtp only")
    parser.add_argument("--csv", default="", help="also write the table here as CSV")
    parser.add_argument("--cache-dir", default="", help=f"where slices are cached (default {CACHE_DIR})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar while building")
    # The smoke test's toy dimensions and small bandwidth probe.
    parser.add_argument("--dims", choices=sorted(DIMS), default="flash", help=argparse.SUPPRESS)
    parser.add_argument("--bandwidth-mb", type=float, default=1024.0, help=argparse.SUPPRESS)
