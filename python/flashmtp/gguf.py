"""Reading GGUF model files: metadata, tensor infos, zero-copy tensor views and a printable summary.

The parsing and validation are the C++ reader's (``flashmtp._core.GGUFFile``); a malformed file raises
:class:`flashmtp.GGUFError` naming the file, key or tensor and what was expected.

    with flashmtp.gguf.open("model.gguf") as f:
        f.metadata["general.architecture"]     # 'llama'
        f.tensor("token_embd.weight")           # numpy view into the mapped file, no copy
        f.dequantize("blk.0.attn_q.weight")     # float32 copy, shaped like the tensor
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from flashmtp import _core
from flashmtp._core import GGUFError

__all__ = ["GGUFError", "GGUFFile", "TensorInfo", "open"]

# numpy element types of the plain tensor types (ggml ids); BF16 has none: viewed as its raw uint16 bits.
_PLAIN_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),  # F32
    1: np.dtype("<f2"),  # F16
    24: np.dtype("i1"),  # I8
    25: np.dtype("<i2"),  # I16
    26: np.dtype("<i4"),  # I32
    27: np.dtype("<i8"),  # I64
    28: np.dtype("<f8"),  # F64
    30: np.dtype("<u2"),  # BF16 (raw bits)
}
_CAST_TYPES = {24, 25, 26, 27, 28}  # i8, i16, i32, i64, f64: plain numpy casts to float32


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the file. ``shape`` is numpy order; ``dims`` is ggml order (``dims[0]`` is the
    contiguous dimension), so ``shape == tuple(reversed(dims))``."""

    name: str
    shape: tuple[int, ...]
    dims: tuple[int, ...]
    type: int
    type_name: str
    n_elements: int
    n_bytes: int
    offset: int  # from the start of its part's data section
    part: int  # which file of a split model holds the data


class GGUFFile:
    """A validated GGUF file, mapped read-only. Opening the first part of a split model
    (``NAME-00001-of-0000N.gguf``) opens every part.

    Tensor views keep the mapping alive on their own, so they stay valid after :meth:`close` or the end of a
    ``with`` block; the file is unmapped when the last of them is gone.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._file: _core.GGUFFile | None = _core.GGUFFile.open(os.fspath(path))

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "<memory>") -> GGUFFile:
        """Parse a copy of an in-memory GGUF image (one unsplit file)."""
        self = cls.__new__(cls)
        self._file = _core.GGUFFile.from_bytes(bytes(data), name)
        return self

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop this object's hold on the mapping (views already taken keep it alive)."""
        self._file = None

    @property
    def _core_file(self) -> _core.GGUFFile:
        if self._file is None:
            raise ValueError("GGUF file is closed")
        return self._file

    @property
    def path(self) -> str:
        """The path this file was opened from (the first part of a split model)."""
        return self._core_file.path

    @property
    def part_paths(self) -> list[str]:
        return self._core_file.part_paths

    @property
    def version(self) -> int:
        return self._core_file.version

    @property
    def alignment(self) -> int:
        return self._core_file.alignment

    @property
    def file_size(self) -> int:
        """Bytes of all parts together."""
        return self._core_file.file_size

    @cached_property
    def metadata(self) -> dict[str, Any]:
        """Keys in file order. Scalars are int, float, bool or str; arrays of numbers or bools are numpy
        arrays, arrays of strings are lists of str, nested arrays are lists. Strings that are not valid UTF-8
        keep their bytes as surrogate escapes."""
        return dict(self._core_file.metadata_items())

    @cached_property
    def tensors(self) -> list[TensorInfo]:
        out = []
        for name, dims, type_id, offset, n_elements, n_bytes, part in self._core_file.tensor_infos():
            out.append(
                TensorInfo(
                    name=name,
                    shape=tuple(reversed(dims)),
                    dims=tuple(dims),
                    type=type_id,
                    type_name=_core.dtype_info(type_id)["name"],
                    n_elements=n_elements,
                    n_bytes=n_bytes,
                    offset=offset,
                    part=part,
                )
            )
        return out

    @cached_property
    def _tensors_by_name(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}

    def tensor_info(self, name: str) -> TensorInfo:
        try:
            return self._tensors_by_name[name]
        except KeyError:
            raise GGUFError(f"{self.path}: no tensor named '{name}'") from None

    def tensor(self, name: str) -> np.ndarray:
        """A read-only numpy view of the tensor's bytes in the mapped file (no copy).

        Plain types are typed and shaped like the tensor (BF16 as its raw uint16 bits); quantized types are
        uint8 of shape ``shape[:-1] + (row bytes,)``, as gguf's own reader returns them.
        """
        info = self.tensor_info(name)
        raw = np.frombuffer(self._core_file.tensor_buffer(name.encode("utf-8", "surrogateescape")), np.uint8)
        dtype = _PLAIN_DTYPES.get(info.type)
        if dtype is not None:
            return raw.view(dtype).reshape(info.shape)
        rows = info.n_elements // info.dims[0]
        return raw.reshape(*info.shape[:-1], info.n_bytes // rows)

    def dequantize(self, name: str) -> np.ndarray:
        """The tensor as a new float32 array shaped like it, decoded by the kernel table's dequantize_row
        (integer types are converted by numpy)."""
        info = self.tensor_info(name)
        if info.type in _CAST_TYPES:
            return self.tensor(name).astype(np.float32)
        raw = np.frombuffer(self._core_file.tensor_buffer(name.encode("utf-8", "surrogateescape")), np.uint8)
        try:
            values = _core.dequantize(info.type, raw, info.n_elements)
        except ValueError as e:
            raise ValueError(
                f"{self.path}: tensor '{name}': cannot dequantize {info.type_name}: {e}"
            ) from None
        return values.reshape(info.shape)

    def summary(self) -> str:
        """The text ``flashmtp info`` prints (the same C++ code as ``flashmtp-cli info``)."""
        return self._core_file.summary()


def open(path: str | os.PathLike[str]) -> GGUFFile:  # like tarfile.open: shadows the builtin here only
    """Map and validate a GGUF file (see :class:`GGUFFile`)."""
    return GGUFFile(path)
