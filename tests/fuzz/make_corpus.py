"""Writes the seed corpus for fuzz_gguf: small valid GGUF files that between them use every metadata value
type (nested and string arrays too), a custom alignment, and tensors of several types.

    python tests/fuzz/make_corpus.py build/fuzz/corpus
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np


def write(
    path: Path,
    alignment: int | None,
    tensors: dict[str, tuple[np.ndarray, gguf.GGMLQuantizationType]],
    metadata: bool,
) -> None:
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    if metadata:
        w.add_uint8("t.u8", 200)
        w.add_int8("t.i8", -5)
        w.add_uint16("t.u16", 60000)
        w.add_int16("t.i16", -30000)
        w.add_uint32("llama.block_count", 2)
        w.add_int32("t.i32", -7)
        w.add_float32("llama.rope.freq_base", 10000.0)
        w.add_bool("t.bool", True)
        w.add_string("general.name", "seed")
        w.add_uint64("t.u64", 2**40)
        w.add_int64("t.i64", -(2**40))
        w.add_float64("t.f64", 0.1)
        w.add_array("tokenizer.ggml.tokens", ["a", "b", "<s>"])
        w.add_array("t.ints", [1, 2, 3])
        w.add_array("t.floats", [0.5, 1.5])
        w.add_array("t.nested", [[1, 2], [3]])
        w.add_uint32("tokenizer.ggml.bos_token_id", 2)
        w.add_string("tokenizer.chat_template", "{{ messages }}")
    for name, (raw, qtype) in tensors.items():
        w.add_tensor(name, raw, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "build/fuzz/corpus")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Q = gguf.GGMLQuantizationType
    f32 = rng.standard_normal((2, 32)).astype(np.float32)
    q8 = gguf.quants.quantize(rng.standard_normal((2, 32)).astype(np.float32), Q.Q8_0)
    q4 = gguf.quants.quantize(rng.standard_normal((1, 64)).astype(np.float32), Q.Q4_0)
    write(out / "empty.gguf", None, {}, metadata=False)
    write(out / "metadata.gguf", None, {}, metadata=True)
    write(
        out / "tensors.gguf", None, {"a": (f32, Q.F32), "b": (f32.astype(np.float16), Q.F16)}, metadata=False
    )
    write(
        out / "mixed.gguf",
        64,
        {"w8": (q8, Q.Q8_0), "w4": (q4, Q.Q4_0), "i": (np.arange(3, dtype=np.int32), Q.I32)},
        metadata=True,
    )
    print(f"wrote {len(list(out.iterdir()))} seeds to {out}")


if __name__ == "__main__":
    main()
