"""A Hugging Face checkpoint directory, read one tensor (or a few rows of one) at a time.

Owns: config.json, finding each tensor's safetensors shard (through model.safetensors.index.json when there is
one, else every *.safetensors file), and turning stored values into float32 rows. It does not know any model's
names; deepseek4.py maps them.

Reads go through ``safetensors.safe_open`` slices, so only the requested rows leave the disk: a tensor is
never loaded whole unless it is asked for whole. Besides plain F32 / F16 / BF16 / integer tensors it decodes
the two block-scaled formats of DeepSeek's own releases, recognised by a companion ``NAME.scale`` tensor:
- FP8: ``NAME.weight`` F8_E4M3 [out, in] with ``NAME.scale`` [ceil(out/128), ceil(in/128)] (E8M0 or float):
  one scale per 128 x 128 tile (config.json's quantization_config.weight_block_size, when given).
- FP4 (routed experts): ``NAME.weight`` I8 [out, in/2], two E2M1 codes per byte (element 2j in the low nibble,
  2j+1 in the high one), with ``NAME.scale`` [out, in/32]: one scale per 32 consecutive elements of a row.
The ``.scale`` tensors are consumed here and never listed as tensors of their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Checkpoint", "ConvertError", "TensorInfo"]

# E2M1 code -> value (bit 3 is the sign).
_FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                        -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=np.float32)
_FP4_BLOCK = 32  # FP4 elements per scale


class ConvertError(ValueError):
    """A checkpoint cannot be converted; the message names the file, key or tensor and what was expected."""


@dataclass(frozen=True)
class TensorInfo:
    """One checkpoint tensor as it decodes: ``shape`` is the logical (unpacked) shape, outermost first."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype name of the stored values (F32, BF16, F8_E4M3, I8, I64, ...)
    encoding: str  # "plain", "fp8" or "fp4"

    @property
    def is_integer(self) -> bool:
        """Stored integers that are values (tid2eid), not packed FP4 codes."""
        return self.encoding == "plain" and self.dtype[0] in "IU"


class Checkpoint:
    """The tensors of one checkpoint directory, addressed by their stored names."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise ConvertError(f"{self.directory}: not a directory")
        config_path = self.directory / "config.json"
        if not config_path.is_file():
            raise ConvertError(f"{self.directory}: no config.json (every Hugging Face checkpoint has one)")
        try:
            self.config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConvertError(f"{config_path}: not valid JSON: {e}") from e
        self._fp8_tile = _fp8_tile(self.config)  # (rows, cols) of the weight one FP8 scale covers
        self._handles: dict[Path, Any] = {}  # open safe_open objects, one per shard
        self._keys: dict[Path, dict[str, None]] = {}  # the names each shard holds, in stored order
        self._shard_of = self._find_shards()
        self._infos = self._read_infos()

    # -- discovery -----------------------------------------------------------------------------------------

    def _find_shards(self) -> dict[str, Path]:
        index_path = self.directory / "model.safetensors.index.json"
        if index_path.is_file():
            try:
                weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ConvertError(f"{index_path}: expected a JSON object with a 'weight_map'") from e
            shards = {name: self.directory / file for name, file in weight_map.items()}
            for path in sorted(set(shards.values())):
                if not path.is_file():
                    raise ConvertError(f"{index_path}: lists {path.name}, which is missing")
            return shards
        files = sorted(self.directory.glob("*.safetensors"))
        if not files:
            raise ConvertError(f"{self.directory}: no *.safetensors files (only safetensors converts)")
        shards: dict[str, Path] = {}
        for path in files:
            for name in self._shard_keys(path):
                if name in shards:
                    raise ConvertError(f"{self.directory}: tensor {name} is in both {shards[name].name} "
                                       f"and {path.name}")
                shards[name] = path
        return shards

    def _handle(self, path: Path) -> Any:
        handle = self._handles.get(path)
        if handle is None:
            from safetensors import safe_open  # imported here: only the converter needs safetensors and torch

            try:
                handle = safe_open(str(path), framework="pt")
            except Exception as e:  # safetensors raises its own error types for malformed headers
                raise ConvertError(f"{path}: not a readable safetensors file: {e}") from e
            self._handles[path] = handle
        return handle

    def _shard_keys(self, path: Path) -> dict[str, None]:
        keys = self._keys.get(path)
        if keys is None:
            keys = self._keys[path] = dict.fromkeys(self._handle(path).keys())
        return keys

    def _stored(self, name: str) -> tuple[list[int], str]:
        path = self._shard_of[name]
        if name not in self._shard_keys(path):
            raise ConvertError(f"{path}: the index places {name} here, but the file does not hold it")
        piece = self._handle(path).get_slice(name)
        return list(piece.get_shape()), piece.get_dtype()

    def _read_infos(self) -> dict[str, TensorInfo]:
        infos: dict[str, TensorInfo] = {}
        scales = {name for name in self._shard_of if name.endswith(".scale")}
        for name in self._shard_of:
            if name in scales and name[: -len(".scale")] + ".weight" in self._shard_of:
                continue  # a companion, described with its weight below
            shape, dtype = self._stored(name)
            encoding = "plain"
            scale_name = name[: -len(".weight")] + ".scale" if name.endswith(".weight") else None
            if scale_name in scales:
                scale_shape, _ = self._stored(scale_name)
                encoding, shape = self._scaled_layout(name, shape, dtype, scale_shape)
            infos[name] = TensorInfo(name, tuple(shape), dtype, encoding)
        return infos

    def _scaled_layout(self, name: str, shape: list[int], dtype: str,
                       scale_shape: list[int]) -> tuple[str, list[int]]:
        if len(shape) != 2:
            raise ConvertError(f"{name}: a block-scaled weight must be 2-D, got shape {shape}")
        rows, cols = shape
        if dtype.startswith("F8_"):
            want = [-(-rows // self._fp8_tile[0]), -(-cols // self._fp8_tile[1])]
            if scale_shape != want:
                raise ConvertError(f"{name}.scale: FP8 weight {shape} needs scales {want}, got {scale_shape}")
            return "fp8", shape
        if dtype in ("I8", "U8"):
            logical = [rows, 2 * cols]
            want = [rows, logical[1] // _FP4_BLOCK]
            if logical[1] % _FP4_BLOCK or scale_shape != want:
                raise ConvertError(f"{name}.scale: FP4 weight {logical} (packed {shape}) needs scales "
                                   f"{want}, got {scale_shape}")
            return "fp4", logical
        raise ConvertError(f"{name}: has a .scale companion but its type {dtype} is neither FP8 nor packed "
                           "FP4")

    # -- access --------------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Every tensor name (companion ``.scale`` tensors excluded), in stored order."""
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        return self._infos[name]

    def read(self, name: str, expert: int | None = None, rows: tuple[int, int] | None = None) -> np.ndarray:
        """Rows ``[rows[0], rows[1])`` of a tensor (all of it when ``rows`` is None), decoded to float32, or
        to int64 for integer tensors. ``expert`` first picks one matrix of a 3-D [n_expert, rows, cols]
        tensor."""
        import torch

        info = self._infos[name]
        piece = self._handle(self._shard_of[name]).get_slice(name)
        if expert is not None:
            if len(info.shape) != 3:
                raise ConvertError(f"{name}: expected a 3-D [expert, rows, cols] tensor, got "
                                   f"{list(info.shape)}")
            n_rows = info.shape[1]
            r0, r1 = rows if rows is not None else (0, n_rows)
            data = piece[expert : expert + 1, r0:r1][0]
        elif info.encoding == "plain":
            data = piece[rows[0] : rows[1]] if rows is not None else piece[:]
        else:
            r0, r1 = rows if rows is not None else (0, info.shape[0])
            scale = self._handle(self._shard_of[name[: -len(".weight")] + ".scale"]).get_slice(
                name[: -len(".weight")] + ".scale")
            if info.encoding == "fp8":
                return _decode_fp8(piece[r0:r1], scale, r0, r1, self._fp8_tile)
            return _decode_fp4(piece[r0:r1], scale[r0:r1])
        if data.dtype.is_floating_point:
            return data.to(torch.float32).numpy()
        return data.to(torch.int64).numpy()

    def unmap(self) -> None:
        """Drop the open shards (safe_open maps them; dropping a handle unmaps it). Later reads reopen."""
        self._handles.clear()


def _scale_to_float32(scale: Any) -> np.ndarray:
    import torch

    if scale.dtype == getattr(torch, "float8_e8m0fnu", None) or scale.dtype == torch.uint8:
        exponent = scale.view(torch.uint8).numpy().astype(np.int32)
        # E8M0: 2^(e - 127); 255 is NaN, which a checkpoint never stores.
        return np.ldexp(np.float32(1.0), exponent - 127).astype(np.float32)
    return scale.to(torch.float32).numpy()


def _fp8_tile(config: dict[str, Any]) -> tuple[int, int]:
    tile = (config.get("quantization_config") or {}).get("weight_block_size", [128, 128])
    if not (isinstance(tile, list) and len(tile) == 2 and all(isinstance(t, int) and t > 0 for t in tile)):
        raise ConvertError(f"config.json: quantization_config.weight_block_size must be [rows, cols], got "
                           f"{tile!r}")
    return tile[0], tile[1]


def _decode_fp8(weight: Any, scale_slice: Any, r0: int, r1: int, tile: tuple[int, int]) -> np.ndarray:
    import torch

    values = weight.to(torch.float32).numpy()  # [r1 - r0, cols]
    t0, t1 = r0 // tile[0], -(-r1 // tile[0])
    scale = _scale_to_float32(scale_slice[t0:t1])  # [row tiles of these rows, column tiles]
    scale = np.repeat(np.repeat(scale, tile[0], axis=0), tile[1], axis=1)
    scale = scale[r0 - t0 * tile[0] : r1 - t0 * tile[0], : values.shape[1]]
    return values * scale


def _decode_fp4(packed: Any, scale: Any) -> np.ndarray:
    import torch

    codes = packed.view(torch.uint8).numpy()  # [rows, cols / 2]
    values = np.empty((codes.shape[0], codes.shape[1] * 2), dtype=np.float32)
    values[:, 0::2] = _FP4_VALUES[codes & 0x0F]
    values[:, 1::2] = _FP4_VALUES[codes >> 4]
    scale_f = _scale_to_float32(scale)  # [rows, cols / 32]
    return (values.reshape(values.shape[0], -1, _FP4_BLOCK) * scale_f[:, :, None]).reshape(values.shape)
