"""A GGUF file opened memory-mapped: header, metadata and tensor infos, parsed lazily where big.

gguf-py's `GGUFReader` builds a numpy view per element of every metadata array, which for a
151k-token vocabulary (tokens and merges) takes seconds. Here an array only records where it
lies; its elements are decoded when asked for, so opening a file costs one walk over the
string lengths (tens of ms) and tensor data is never touched until a tensor is read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from specdec.errors import ModelLoadError

MAGIC = b"GGUF"
VERSIONS = (2, 3)  # version 1 used 32-bit counts and is long gone
DEFAULT_ALIGNMENT = 32

# little-endian struct format of each fixed-size metadata value type
_SCALARS = {GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
            GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
            GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
            GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d"}
_NUMPY = {GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2",
          GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
          GGUFValueType.FLOAT32: "<f4", GGUFValueType.BOOL: "?", GGUFValueType.UINT64: "<u8",
          GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8"}


@dataclass(frozen=True)
class GGUFArray:
    """Where a metadata array lies in the file; `GGUFFile.array` decodes it."""

    element_type: GGUFValueType
    count: int
    offset: int  # absolute file offset of the first element
    end: int  # absolute file offset just past the last element


@dataclass(frozen=True)
class TensorInfo:
    """One tensor: `shape` in numpy (row-major) order, so a weight is [out, in]; GGUF stores
    the dimensions reversed (ne[0], the contiguous one, is the input dimension)."""

    name: str
    type: GGMLQuantizationType
    shape: tuple[int, ...]
    offset: int  # absolute file offset of the first block
    nbytes: int

    @property
    def row_bytes(self) -> int:
        """Bytes of one row of blocks (along the last, contiguous dimension)."""
        block, size = GGML_QUANT_SIZES[self.type]
        return self.shape[-1] // block * size


class _Cursor:
    """Reads little-endian values from a buffer, checking every read against its end."""

    def __init__(self, buffer: memoryview, path: Path):
        self.buffer, self.pos, self.path = buffer, 0, path

    def need(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > len(self.buffer):
            raise ModelLoadError(f"{self.path}: truncated or corrupt GGUF (read past the end "
                                 f"at byte {start})")
        self.pos = start + n
        return start

    def unpack(self, fmt: str) -> Any:
        return struct.unpack_from(fmt, self.buffer, self.need(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        start = self.need(n)
        return bytes(self.buffer[start:start + n]).decode("utf-8", errors="replace")

    def value(self, kind: GGUFValueType) -> Any:
        if kind == GGUFValueType.STRING:
            return self.string()
        if kind == GGUFValueType.ARRAY:
            return self.array()
        if kind not in _SCALARS:
            raise ModelLoadError(f"{self.path}: unknown GGUF value type {int(kind)}")
        return self.unpack(_SCALARS[kind])

    def array(self) -> GGUFArray:
        kind = _value_type(self.unpack("<I"), self.path)
        count = self.unpack("<Q")
        start = self.pos
        if kind == GGUFValueType.STRING:
            self._skip_strings(count)
        elif kind == GGUFValueType.ARRAY:  # nested arrays: rare, walked element by element
            for _ in range(count):
                self.array()
        else:
            self.need(count * struct.calcsize(_SCALARS[kind]))
        return GGUFArray(kind, count, start, self.pos)

    def _skip_strings(self, count: int) -> None:
        # the one loop over a whole vocabulary at open time: keep it to two calls per string
        buffer, pos, end, unpack = self.buffer, self.pos, len(self.buffer), struct.unpack_from
        for _ in range(count):
            if pos + 8 > end:
                break
            pos += 8 + unpack("<Q", buffer, pos)[0]
        else:
            if pos <= end:
                self.pos = pos
                return
        raise ModelLoadError(f"{self.path}: truncated or corrupt GGUF string array")


def _value_type(code: int, path: Path) -> GGUFValueType:
    try:
        return GGUFValueType(code)
    except ValueError:
        raise ModelLoadError(f"{path}: unknown GGUF value type {code}") from None


class GGUFFile:
    """A GGUF file, memory-mapped read-only. Metadata scalars and strings are decoded at open;
    arrays on request (`metadata`, `array`, `strings`); tensor data is a zero-copy view
    (`raw`) of the mapping."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"cannot open {self.path}: {error}") from None
        cursor = _Cursor(memoryview(self._map), self.path)
        if bytes(self._map[:4]) != MAGIC:
            raise ModelLoadError(f"{self.path} is not a GGUF file (no GGUF magic)")
        cursor.need(4)
        self.version = cursor.unpack("<I")
        if self.version not in VERSIONS:
            raise ModelLoadError(f"{self.path}: GGUF version {self.version} is not supported "
                                 f"(only {VERSIONS}; big-endian files read as huge versions)")
        n_tensors, n_values = cursor.unpack("<Q"), cursor.unpack("<Q")
        self._values: dict[str, Any] = {}
        for _ in range(n_values):
            key = cursor.string()
            self._values[key] = cursor.value(_value_type(cursor.unpack("<I"), self.path))
        infos = [self._tensor_info(cursor) for _ in range(n_tensors)]
        alignment = self._values.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0:
            raise ModelLoadError(f"{self.path}: bad general.alignment {alignment!r}")
        self.data_offset = -(-cursor.pos // alignment) * alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, kind, shape, relative in infos:
            info = self._place(name, kind, shape, relative)
            self.tensors[name] = info

    def _tensor_info(self, cursor: _Cursor) -> tuple[str, GGMLQuantizationType,
                                                       tuple[int, ...], int]:
        name = cursor.string()
        n_dims = cursor.unpack("<I")
        if n_dims > 8:
            raise ModelLoadError(f"{self.path}: tensor {name} claims {n_dims} dimensions")
        dims = [cursor.unpack("<Q") for _ in range(n_dims)]
        code = cursor.unpack("<I")
        try:
            kind = GGMLQuantizationType(code)
        except ValueError:
            raise ModelLoadError(f"{self.path}: tensor {name} has unknown type {code}") from None
        return name, kind, tuple(reversed(dims)), cursor.unpack("<Q")

    def _place(self, name: str, kind: GGMLQuantizationType, shape: tuple[int, ...],
               relative: int) -> TensorInfo:
        if kind not in GGML_QUANT_SIZES:
            raise ModelLoadError(f"{self.path}: tensor {name} has type {kind.name} of unknown "
                                 "block size")
        block, size = GGML_QUANT_SIZES[kind]
        if not shape or shape[-1] % block:
            raise ModelLoadError(f"{self.path}: tensor {name} of shape {list(shape)} does not "
                                 f"split into {kind.name} blocks of {block}")
        nbytes = int(np.prod(shape, dtype=np.int64)) // block * size
        offset = self.data_offset + relative
        if offset + nbytes > len(self._map):
            raise ModelLoadError(f"{self.path}: tensor {name} lies past the end of the file "
                                 "(truncated download?)")
        return TensorInfo(name, kind, shape, offset, nbytes)

    # metadata

    def metadata_keys(self) -> list[str]:
        return list(self._values)

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def metadata(self, key: str, default: Any = None) -> Any:
        """The value of `key` (default when absent); arrays come back as Python lists."""
        value = self._values.get(key, default)
        if isinstance(value, GGUFArray):
            if value.element_type == GGUFValueType.STRING:
                return self.strings(key)
            if value.element_type == GGUFValueType.ARRAY:
                raise ModelLoadError(f"{self.path}: nested array {key} is not supported")
            return self.array(key).tolist()
        return value

    def array(self, key: str) -> np.ndarray:
        """A numeric metadata array as a read-only numpy view of the mapping."""
        entry = self._array_entry(key)
        if entry.element_type not in _NUMPY:
            raise ModelLoadError(f"{self.path}: {key} is an array of "
                                 f"{entry.element_type.name}, not of numbers")
        return np.frombuffer(self._map, dtype=np.dtype(_NUMPY[entry.element_type]),
                             count=entry.count, offset=entry.offset)

    def strings(self, key: str) -> list[str]:
        """A string metadata array, decoded (the slow part, paid only by who asks)."""
        entry = self._array_entry(key)
        if entry.element_type != GGUFValueType.STRING:
            raise ModelLoadError(f"{self.path}: {key} is an array of "
                                 f"{entry.element_type.name}, not of strings")
        buffer = memoryview(self._map)[entry.offset:entry.end]
        out, pos = [], 0
        for _ in range(entry.count):
            n = struct.unpack_from("<Q", buffer, pos)[0]
            out.append(bytes(buffer[pos + 8:pos + 8 + n]).decode("utf-8", errors="replace"))
            pos += 8 + n
        return out

    def _array_entry(self, key: str) -> GGUFArray:
        entry = self._values.get(key)
        if not isinstance(entry, GGUFArray):
            raise ModelLoadError(f"{self.path}: {key} is not an array in this file")
        return entry

    # tensors

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view [*shape[:-1], row_bytes] (no copy)."""
        info = self.tensor(name)
        rows = info.shape[:-1]
        view = self._map[info.offset:info.offset + info.nbytes].view(np.ndarray)
        view = view.reshape(*rows, info.row_bytes)
        view.flags.writeable = False
        return view

    def tensor(self, name: str) -> TensorInfo:
        if name not in self.tensors:
            raise ModelLoadError(f"{self.path}: no tensor named {name!r}")
        return self.tensors[name]
