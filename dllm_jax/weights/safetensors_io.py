"""Minimal streaming safetensors reader/writer (mmap in, one tensor at a time out).

The ``safetensors`` package's NumPy backend cannot hold bfloat16 and its writer needs every
tensor in memory at once; both matter for 8B checkpoints, so the (simple, documented) file
format is read and written here directly: ``u64 header length | JSON header | raw bytes``.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

DTYPES: dict[str, Any] = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


class SafetensorsError(ValueError):
    """A safetensors file that cannot be read as such (truncated, corrupt header, ...)."""


class SafetensorsFile:
    """Header-validated, memory-mapped view of one ``.safetensors`` file."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise SafetensorsError(f"{self.path}: truncated (no header)")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > 100_000_000:
                raise SafetensorsError(f"{self.path}: truncated or corrupt header "
                                       f"(header length {n}, file size {size})")
            try:
                header = json.loads(f.read(n))
            except json.JSONDecodeError as e:
                raise SafetensorsError(f"{self.path}: corrupt header ({e})") from None
        self.metadata = header.pop("__metadata__", {}) or {}
        self.header: dict[str, dict[str, Any]] = header
        self.data_start = 8 + n
        end = max((v["data_offsets"][1] for v in header.values()), default=0)
        if self.data_start + end > size:
            raise SafetensorsError(
                f"{self.path}: truncated (header needs {self.data_start + end} bytes, file has "
                f"{size})")
        for name, info in header.items():
            if info.get("dtype") not in DTYPES:
                raise SafetensorsError(f"{self.path}: tensor {name} has unsupported dtype "
                                       f"{info.get('dtype')!r}")
        self._mm: mmap.mmap | None = None

    def keys(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        """Zero-copy read-only view of one tensor (pages are read on demand)."""
        if self._mm is None:
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        info = self.header[name]
        begin, end = info["data_offsets"]
        dtype = np.dtype(DTYPES[info["dtype"]])
        count = (end - begin) // dtype.itemsize
        arr = np.frombuffer(self._mm, dtype=dtype, count=count, offset=self.data_start + begin)
        return arr.reshape(info["shape"])

    def release(self) -> None:
        """Drops the mapped pages from this process's resident set (they stay readable).

        Called after each tensor is consumed so importing a checkpoint keeps at most about one
        tensor of the file resident, not the whole file.
        """
        if self._mm is not None and hasattr(self._mm, "madvise"):
            self._mm.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:  # a view is still alive; the GC will close it
                pass
            self._mm = None


def write_safetensors(path: str | os.PathLike[str],
                      tensors: Iterable[tuple[str, tuple[int, ...], Any]],
                      produce: Any, metadata: dict[str, str] | None = None) -> None:
    """Writes tensors one at a time.

    Args:
      path: output file.
      tensors: ``(name, shape, numpy dtype)`` for every tensor, in file order.
      produce: ``produce(name) -> np.ndarray`` called once per tensor while writing, so only one
        tensor is in host memory at a time.
      metadata: optional string metadata (``{"format": "pt"}`` is what transformers expects).
    """
    entries = list(tensors)
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, shape, dtype in entries:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _NAMES[np.dtype(dtype)], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, dtype in entries:
            arr = np.ascontiguousarray(produce(name), dtype=dtype)
            if arr.shape != tuple(shape):
                raise ValueError(f"tensor {name}: produced shape {arr.shape}, declared {shape}")
            f.write(arr.tobytes())
        f.flush()
        os.fsync(f.fileno())
