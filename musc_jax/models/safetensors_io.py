"""Lazy, per-tensor safetensors reading and streaming writing (bfloat16 included).

Reading memory-maps one tensor at a time, so a loader touches only the bytes of the tensor (or
the slice of it) that it is placing, and frees them before the next one. Writing streams tensors
to disk one by one. The format: 8-byte little-endian header size, a JSON header
{name: {dtype, shape, data_offsets}}, then the raw little-endian data.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterable, Mapping

import ml_dtypes
import numpy as np

from musc_jax.errors import MissingFileError, UserError

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class SafetensorsError(UserError):
    """A safetensors file we cannot read (truncated, corrupt, unsupported); names the file."""


class TensorIndex:
    """Where each tensor of one or more safetensors files lives; `get` memory-maps one lazily."""

    def __init__(self, files: Iterable[Path]):
        self.entries: dict[str, tuple[Path, int, np.dtype, tuple[int, ...]]] = {}
        for path in files:
            self._read_header(Path(path))

    def _read_header(self, path: Path) -> None:
        if not path.is_file():
            raise MissingFileError(f"{path}: weights file not found")
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise SafetensorsError(f"{path}: too short to be a safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", raw)
            if 8 + n > size:
                raise SafetensorsError(f"{path}: header of {n} bytes runs past the end of the "
                                       f"{size}-byte file: truncated or not a safetensors file; "
                                       "copy or download it again")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise SafetensorsError(f"{path}: unreadable safetensors header ({e})") from e
        if not isinstance(header, dict):
            raise SafetensorsError(f"{path}: the header is not a JSON object")
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in _DTYPES:
                raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
            begin, end = info["data_offsets"]
            dtype, shape = _DTYPES[info["dtype"]], tuple(info["shape"])
            if end - begin != int(np.prod(shape)) * dtype.itemsize:
                raise SafetensorsError(f"{path}: tensor {name!r} has {end - begin} bytes for shape "
                                       f"{list(shape)} of {info['dtype']}: a corrupt header")
            if 8 + n + end > size:
                raise SafetensorsError(f"{path}: truncated: tensor {name!r} ends at byte "
                                       f"{8 + n + end} but the file has {size} bytes; copy or "
                                       "download it again")
            self.entries[name] = (path, 8 + n + begin, dtype, shape)

    def names(self) -> set[str]:
        return set(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name][3]

    def get(self, name: str) -> np.ndarray:
        """A read-only memory map of tensor `name`: no bytes are read until indexed."""
        path, offset, dtype, shape = self.entries[name]
        if int(np.prod(shape)) == 0:
            return np.zeros(shape, dtype)
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def write_safetensors(path: Path, tensors: Mapping[str, np.ndarray],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write `tensors` (numpy, any supported dtype) to `path`, one tensor at a time."""
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, arr in tensors.items():
        dtype = np.dtype(arr.dtype)
        if dtype not in _NAMES:
            raise SafetensorsError(f"tensor {name!r}: dtype {dtype} cannot be written to safetensors")
        nbytes = int(np.prod(arr.shape)) * dtype.itemsize
        header[name] = {"dtype": _NAMES[dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in tensors.values():
            f.write(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    tmp.replace(path)
