"""Streaming safetensors reader/writer (mmap in, one tensor at a time out).

Headers are validated by the ``safetensors`` package and by checks here that name the file and
tensor in every error. Tensor bytes are then read through a memory map: the package's NumPy
backend cannot hold bfloat16 and its writer needs every tensor in memory at once, both of
which matter for 8B checkpoints (format: ``u64 header length | JSON header | raw bytes``).
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
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


class SafetensorsError(ValueError):
    """A safetensors file that cannot be read as such (truncated, corrupt header, ...)."""


class SafetensorsFile:
    """Header-validated, memory-mapped view of one ``.safetensors`` file.

    The header is validated twice before any tensor is read: by the maintained ``safetensors``
    package (``safe_open``), and here, so that every error names the file and the tensor: the
    header is a JSON object; each entry has a known dtype, a shape of non-negative ints and
    ``data_offsets`` ``[begin, end]`` with ``0 <= begin <= end``; ``end - begin`` equals the
    shape's element count times the dtype's size; the tensors tile the data section without
    gaps or overlaps; and the file holds exactly the bytes the header promises.
    """

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
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise SafetensorsError(f"{self.path}: corrupt header ({e})") from None
        if not isinstance(header, dict):
            raise SafetensorsError(f"{self.path}: corrupt header (a JSON "
                                   f"{type(header).__name__}, not an object)")
        meta = header.pop("__metadata__", {}) or {}
        self.metadata = meta if isinstance(meta, dict) else {}
        self.header: dict[str, dict[str, Any]] = header
        self.data_start = 8 + n
        _validate_entries(self.path, header, size - self.data_start)
        _validate_with_package(self.path)
        self._mm: mmap.mmap | None = None

    def keys(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def dtype_name(self, name: str) -> str:
        """The stored dtype's safetensors name (``F32``, ``BF16``, ...)."""
        return self.header[name]["dtype"]

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


def _validate_entries(path: Path, header: dict[str, Any], data_size: int) -> None:
    spans = []
    for name, info in header.items():
        where = f"{path}: tensor {name}"
        if not isinstance(info, dict):
            raise SafetensorsError(f"{where}: header entry is not an object")
        if info.get("dtype") not in DTYPES:
            raise SafetensorsError(f"{where} has unsupported dtype {info.get('dtype')!r}")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise SafetensorsError(f"{where}: shape {shape!r} is not a list of non-negative ints")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise SafetensorsError(f"{where}: data_offsets {offsets!r} are not [begin, end] "
                                   f"with 0 <= begin <= end")
        want = int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPES[info["dtype"]]).itemsize
        if offsets[1] - offsets[0] != want:
            raise SafetensorsError(f"{where}: data_offsets {offsets} span "
                                   f"{offsets[1] - offsets[0]} bytes, but shape {shape} of "
                                   f"{info['dtype']} needs {want}")
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            kind = "overlaps the previous tensor" if begin < end else "leaves a gap before it"
            raise SafetensorsError(f"{path}: tensor {name}: data_offsets [{begin}, {stop}] "
                                   f"{kind}")
        end = stop
    if end != data_size:
        state = "truncated" if end > data_size else "has trailing bytes"
        raise SafetensorsError(f"{path}: {state} (header needs {end} data bytes, file has "
                               f"{data_size})")


def _validate_with_package(path: Path) -> None:
    """The maintained parser's own validation (a second gate; its message names the file)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except (SafetensorError, OSError) as e:
        raise SafetensorsError(f"{path}: {str(e).splitlines()[0]}") from None


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
