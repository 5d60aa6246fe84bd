"""``flashmtp convert HF_DIR -o OUT.gguf [--quant RECIPE]``: a DeepSeek-V4 Hugging Face checkpoint to GGUF.

    from flashmtp.convert import convert
    files = convert("DeepSeek-V4-Flash/", "v4-flash-q4_k.gguf", "q4_k")
    # -> v4-flash-q4_k.gguf, and v4-flash-q4_k-mtp.gguf when the checkpoint has its MTP block

Order of work: read config.json and every tensor header; map the names and check every shape against the
config (so a bad checkpoint fails before anything is written); then write each file tensor by tensor. A tensor
is read, converted and quantized in row chunks of about 16 MiB of float32 (a routed-expert tensor one expert
at a time) and written straight to the file, so memory stays bounded by a chunk, not by a tensor or the model.
Files are written under a temporary name and renamed when complete: a failed run leaves no truncated GGUF.

Names, keys and layouts: deepseek4.py. Recipes: recipes.py. Tokenizer: vocab.py. Reading: checkpoint.py.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from flashmtp.convert import deepseek4
from flashmtp.convert.checkpoint import Checkpoint, ConvertError
from flashmtp.convert.deepseek4 import Deepseek4Params, Piece, Sources, TensorSpec
from flashmtp.convert.recipes import RECIPES, Recipe, TensorClass, find_recipe, tensor_type
from flashmtp.convert.vocab import Vocab

__all__ = ["RECIPES", "ConvertError", "WrittenFile", "convert", "mtp_path", "run_convert"]

logger = logging.getLogger("flashmtp.convert")

CHUNK_BYTES = 16 << 20  # float32 bytes of one read -> quantize -> write step


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    n_tensors: int
    n_bytes: int  # tensor data
    types: dict[str, int]  # GGUF type name -> tensor count


@dataclass(frozen=True)
class _Planned:
    spec: TensorSpec
    pieces: list[Piece]
    qtype: gguf.GGMLQuantizationType
    n_bytes: int


def mtp_path(out: str | Path) -> Path:
    """Where the MTP sidecar of ``out`` goes: ``NAME.gguf`` -> ``NAME-mtp.gguf``."""
    out = Path(out)
    stem = out.name[: -len(".gguf")] if out.name.endswith(".gguf") else out.name
    return out.with_name(stem + "-mtp.gguf")


def convert(hf_dir: str | Path, out: str | Path, quant: str = "q8_0", progress: bool = True,
            threads: int = 0) -> list[WrittenFile]:
    """Convert a checkpoint directory to ``out`` (and its MTP sidecar when the checkpoint has ``mtp.*``)
    with the recipe named ``quant`` (recipes.RECIPES), quantizing on ``threads`` threads (0: one per core)."""
    r = find_recipe(quant)
    threads = threads or os.cpu_count() or 1
    ckpt = Checkpoint(hf_dir)
    try:
        params = Deepseek4Params.from_config(ckpt.config)
        main_sources, mtp_sources = deepseek4.resolve_sources(ckpt.names(), params)
        main_specs = deepseek4.main_tensor_specs(params)
        # The sidecar is written only when the checkpoint carries the MTP block (transformers drops it).
        mtp_specs = deepseek4.mtp_tensor_specs(params) if mtp_sources else []
        if params.n_nextn and not mtp_sources:
            logger.info("the checkpoint has no mtp.* tensors: no MTP sidecar")
        _check_all_used(main_sources, main_specs, params)
        _check_all_used(mtp_sources, mtp_specs, params)
        main_plan = _plan(main_specs, main_sources, ckpt, r, "the main model")
        mtp_plan = _plan(mtp_specs, mtp_sources, ckpt, r, "the MTP block") if mtp_specs else []
        vocab = Vocab.load(ckpt.directory, params.vocab_size)

        with ThreadPoolExecutor(threads) as pool:
            encode = _Encoder(params.n_expert, pool, threads)
            main_meta = deepseek4.metadata(params, params.n_layer)
            written = [_write(Path(out), main_plan, main_meta, vocab, ckpt, r, encode, progress)]
            if mtp_plan:
                mtp_meta = deepseek4.metadata(params, params.n_layer + 1)
                written.append(_write(mtp_path(out), mtp_plan, mtp_meta, vocab, ckpt, r, encode, progress))
        return written
    finally:
        ckpt.unmap()


# -- planning: every check happens here, before the first byte is written -----------------------------------


def _check_all_used(sources: Sources, specs: list[TensorSpec], p: Deepseek4Params) -> None:
    known = {s.name for s in specs}
    extra = [name for name in sources if name not in known]
    if extra:
        first = next(iter(sources[extra[0]].values())).tensor
        also = f"; also {', '.join(extra[1:6])}" if extra[1:] else ""
        raise ConvertError(f"checkpoint tensor {first} would become {extra[0]}, which a deepseek4 file with "
                           f"this config.json does not have (compress ratios {list(p.compress_ratios)}, "
                           f"{p.n_hash_layer} hash layers){also}")


def _piece_shape(ckpt: Checkpoint, piece: Piece) -> tuple[int, ...]:
    shape = ckpt.info(piece.tensor).shape
    if piece.expert is not None:
        if len(shape) != 3 or piece.expert >= shape[0]:
            raise ConvertError(f"{piece.tensor}: expected a [n_expert, rows, cols] tensor with expert "
                               f"{piece.expert}, got shape {list(shape)}")
        shape = shape[1:]
    if piece.rows is not None:
        if piece.rows[1] > shape[0]:
            raise ConvertError(f"{piece.tensor}: needs rows up to {piece.rows[1]}, has {shape[0]}")
        shape = (piece.rows[1] - piece.rows[0],) + shape[1:]
    return shape


def _plan(specs: list[TensorSpec], sources: Sources, ckpt: Checkpoint, r: Recipe,
          what: str) -> list[_Planned]:
    missing = [s.name for s in specs if s.name not in sources]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ConvertError(f"the checkpoint lacks {len(missing)} tensor(s) of {what}: {shown}")
    plan = []
    for spec in specs:
        have = sources[spec.name]
        absent = sorted(set(range(spec.pieces)) - set(have))
        if absent or len(have) != spec.pieces:
            raise ConvertError(f"{spec.name}: needs {spec.pieces} checkpoint piece(s) (experts, or e/h "
                               f"projections), missing {absent}")
        pieces = [have[i] for i in range(spec.pieces)]
        shapes = [_piece_shape(ckpt, piece) for piece in pieces]
        if spec.join_inputs:
            found = (shapes[0][0], sum(s[-1] for s in shapes)) if all(len(s) == 2 for s in shapes) else None
            consistent = all(s[0] == shapes[0][0] for s in shapes)
        elif spec.pieces > 1:
            found, consistent = (spec.pieces, *shapes[0]), all(s == shapes[0] for s in shapes)
        else:
            found, consistent = shapes[0], True
        if not consistent or found != spec.shape:
            got = ", ".join(f"{pc.tensor} {list(s)}" for pc, s in zip(pieces[:4], shapes[:4], strict=True))
            more = " ..." if len(pieces) > 4 else ""
            raise ConvertError(f"{spec.name}: config.json implies shape {list(spec.shape)}, the checkpoint "
                               f"gives {got}{more}")
        infos = [ckpt.info(piece.tensor) for piece in pieces]
        if any(info.is_integer != (spec.cls is TensorClass.INDEX) for info in infos):
            kind = "an integer table" if spec.cls is TensorClass.INDEX else "float weights"
            raise ConvertError(f"{spec.name}: {pieces[0].tensor} is stored as {infos[0].dtype}, expected "
                               f"{kind}")
        qtype, wanted = tensor_type(r, spec.cls, spec.shape[-1])
        if wanted is not None:
            logger.warning("%s: rows of %d do not split into %s blocks: %s instead", spec.name,
                           spec.shape[-1], wanted.name, qtype.name)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        plan.append(_Planned(spec, pieces, qtype, int(np.prod(spec.shape)) // block * type_size))
    return plan


# -- writing ---------------------------------------------------------------------------------------------


def _rows(piece: Piece, r0: int, r1: int) -> tuple[int, int]:
    base = piece.rows[0] if piece.rows is not None else 0
    return base + r0, base + r1


def _chunks(ckpt: Checkpoint, t: _Planned) -> Iterator[np.ndarray]:
    """The tensor's values as consecutive row blocks, each [rows, row_length] (1-D tensors: one block)."""
    spec = t.spec
    if len(spec.shape) == 1:
        yield ckpt.read(t.pieces[0].tensor).reshape(1, -1)
        return
    row_length = spec.shape[-1]
    step = max(1, CHUNK_BYTES // (4 * row_length))
    if spec.join_inputs:  # eh_proj: each row is [e_proj row | h_proj row]
        n_rows = spec.shape[0]
        for r0 in range(0, n_rows, step):
            r1 = min(n_rows, r0 + step)
            parts = [ckpt.read(pc.tensor, pc.expert, _rows(pc, r0, r1)) for pc in t.pieces]
            yield np.concatenate(parts, axis=1)
        return
    n_rows = spec.shape[-2]  # rows of one piece (an expert's matrix, or the whole 2-D tensor)
    for pc in t.pieces:
        for r0 in range(0, n_rows, step):
            yield ckpt.read(pc.tensor, pc.expert, _rows(pc, r0, min(n_rows, r0 + step)))


@dataclass(frozen=True)
class _Encoder:
    """Row chunks -> file bytes: F32 as is, I32 range-checked, other types quantized with the rows split over
    the pool's threads (quantize releases the GIL; blocks never span rows, so the bytes do not depend on the
    split)."""

    n_expert: int
    pool: ThreadPoolExecutor
    n_threads: int

    def __call__(self, chunk: np.ndarray, t: _Planned) -> np.ndarray:
        T = gguf.GGMLQuantizationType
        if t.qtype == T.F32:
            return np.ascontiguousarray(chunk, dtype=np.float32)
        if t.qtype == T.I32:  # tid2eid: expert ids
            if chunk.size and (chunk.min() < 0 or chunk.max() >= self.n_expert):
                raise ConvertError(f"{t.pieces[0].tensor}: expert id outside [0, {self.n_expert}) in the "
                                   "hash table")
            return chunk.astype(np.int32)
        from flashmtp import _core

        rows = np.ascontiguousarray(chunk, dtype=np.float32)  # [rows, row_length]
        qtype = int(t.qtype)
        if self.n_threads < 2 or len(rows) < 2:
            return _core.quantize(qtype, rows.reshape(-1))
        parts = np.array_split(rows, min(len(rows), self.n_threads))
        encoded = self.pool.map(lambda part: _core.quantize(qtype, part.reshape(-1)), parts)
        return np.concatenate(list(encoded))


class _StreamedTensor:
    """What GGUFWriter.write_tensor_data needs of a tensor (``nbytes`` and ``tofile``), producing the data a
    chunk at a time so that the tensor never exists in memory whole."""

    def __init__(self, ckpt: Checkpoint, t: _Planned, encode: _Encoder, bar: Any) -> None:
        self.ckpt, self.t, self.encode, self.bar = ckpt, t, encode, bar
        self.nbytes = t.n_bytes

    def tofile(self, fp: Any) -> None:
        written = 0
        for chunk in _chunks(self.ckpt, self.t):
            data = self.encode(chunk, self.t)
            data.tofile(fp)
            written += data.nbytes
            self.bar.update(data.nbytes)
        # The shards' pages read for this tensor stay mapped (and counted in RSS) until the handles close.
        self.ckpt.unmap()
        if written != self.nbytes:  # the plan's sizes and the chunks disagree: a bug here, not in the input
            raise AssertionError(f"{self.t.spec.name}: wrote {written} bytes, planned {self.nbytes}")


def _add_kv(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    else:
        writer.add_array(key, value)  # ints -> INT32, floats -> FLOAT32, strings -> STRING (gguf's rule)


def write_gguf(path: Path, name: str, file_type: int, meta: dict[str, Any], vocab: Vocab, plan: Sequence[Any],
               tensor_data: Callable[[Any, Any], Any], progress: bool) -> int:
    """Writes a deepseek4 GGUF tensor by tensor: general.name, the file type, ``meta``, the vocabulary and one
    tensor per ``plan`` entry (``.spec.name``, ``.spec.shape``, ``.qtype``, ``.n_bytes``), whose bytes come
    from ``tensor_data(entry, bar)`` (an object with ``nbytes`` and ``tofile``, advancing the tqdm bar).
    Written to ``NAME.partial`` and renamed, so a reader never sees half a file; the partial file is removed
    on any error. Returns the tensor bytes written."""
    from tqdm import tqdm

    partial = path.with_name(path.name + ".partial")
    writer = gguf.GGUFWriter(partial, deepseek4.ARCH)
    writer.add_name(name)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, value in meta.items():
        _add_kv(writer, key, value)
    vocab.add_to(writer)
    for t in plan:
        writer.add_tensor_info(t.spec.name, t.spec.shape, np.dtype(np.float32), t.n_bytes, raw_dtype=t.qtype)
    total = sum(t.n_bytes for t in plan)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        with tqdm(total=total, unit="B", unit_scale=True, desc=path.name, disable=not progress,
                  file=sys.stderr) as bar:
            for t in plan:
                writer.write_tensor_data(tensor_data(t, bar))
        writer.close()
        partial.replace(path)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    return total


def _write(path: Path, plan: list[_Planned], meta: dict[str, Any], vocab: Vocab, ckpt: Checkpoint, r: Recipe,
           encode: _Encoder, progress: bool) -> WrittenFile:
    total = write_gguf(path, ckpt.directory.resolve().name, r.file_type, meta, vocab, plan,
                       lambda t, bar: _StreamedTensor(ckpt, t, encode, bar), progress)
    return WrittenFile(path, len(plan), total, dict(Counter(t.qtype.name for t in plan)))


# -- command line ----------------------------------------------------------------------------------------


def run_convert(args: argparse.Namespace) -> int:
    """``flashmtp convert``: arguments hf_dir, output, quant, threads, no_progress (see flashmtp.cli)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("gguf").setLevel(logging.WARNING)  # its writer narrates every file it opens
    try:
        files = convert(args.hf_dir, args.output, args.quant, progress=not args.no_progress,
                        threads=args.threads)
    except (ConvertError, OSError) as e:
        print(f"flashmtp convert: error: {e}", file=sys.stderr)
        return 1
    for f in files:
        types = ", ".join(f"{n} {name}" for name, n in sorted(f.types.items()))
        print(f"wrote {f.path}: {f.n_tensors} tensors, {f.n_bytes / 2**20:.1f} MiB ({types})")
    return 0
