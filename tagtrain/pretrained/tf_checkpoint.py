"""Read TensorFlow checkpoints (the "tensor bundle" format) without TensorFlow.

A bundle is `PREFIX.index` plus `PREFIX.data-00000-of-0000N`. The index is a LevelDB-style
SSTable (uncompressed blocks of prefix-compressed key/value entries, an index block
pointing at them, a 48-byte footer); each value is a `BundleEntryProto` protobuf giving a
tensor's dtype, shape, shard, byte offset, size and masked CRC32C. The empty key holds the
`BundleHeaderProto` (shard count, endianness). The data files hold the raw little-endian
tensors. Only what TensorFlow's own writer produces is supported: no compressed blocks,
no partitioned (sliced) variables; anything else is a `CheckpointError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.core.errors import UserError

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_BYTES = 48
_BLOCK_TRAILER_BYTES = 5  # compression type (1 byte) + crc32c (4 bytes)

# tensorflow/core/framework/types.proto
_DTYPES = {
    1: np.float32,
    2: np.float64,
    3: np.int32,
    4: np.uint8,
    5: np.int16,
    6: np.int8,
    9: np.int64,
    10: np.bool_,
    19: np.float16,
}
_DT_STRING = 7


class CheckpointError(UserError):
    """The file is not a TensorFlow checkpoint this reader understands, or is damaged."""


@dataclass(frozen=True)
class BundleEntry:
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None
    sliced: bool


# --- protobuf wire format ------------------------------------------------------------------


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the base-128 varint at `pos`."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise CheckpointError("varint longer than 64 bits")


def proto_fields(buf: bytes):
    """Yield (field number, wire type, value) of a serialized message; length-delimited
    values are bytes, fixed32/64 are ints."""
    pos = 0
    while pos < len(buf):
        key, pos = read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        elif wire == 2:
            length, pos = read_varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def _shape(buf: bytes) -> tuple[int, ...]:
    """TensorShapeProto: repeated Dim dim = 2 (Dim.size = 1); unknown_rank = 3."""
    dims = []
    for field, _, value in proto_fields(buf):
        if field == 2:
            size = 0
            for dim_field, _, dim_value in proto_fields(value):
                if dim_field == 1:
                    size = dim_value
            dims.append(size)
        elif field == 3 and value:
            raise CheckpointError("tensor of unknown rank")
    return tuple(dims)


def parse_entry(buf: bytes) -> BundleEntry:
    """BundleEntryProto: dtype 1, shape 2, shard_id 3, offset 4, size 5, crc32c 6
    (fixed32), slices 7."""
    fields = {"dtype": 0, "shape": (), "shard_id": 0, "offset": 0, "size": 0, "crc32c": None}
    sliced = False
    for field, _, value in proto_fields(buf):
        if field == 1:
            fields["dtype"] = value
        elif field == 2:
            fields["shape"] = _shape(value)
        elif field == 3:
            fields["shard_id"] = value
        elif field == 4:
            fields["offset"] = value
        elif field == 5:
            fields["size"] = value
        elif field == 6:
            fields["crc32c"] = value
        elif field == 7:
            sliced = True
    return BundleEntry(sliced=sliced, **fields)


# --- SSTable -------------------------------------------------------------------------------


def _block_handle(buf: bytes, pos: int) -> tuple[int, int, int]:
    offset, pos = read_varint(buf, pos)
    size, pos = read_varint(buf, pos)
    return offset, size, pos


def _read_block(table: bytes, offset: int, size: int) -> bytes:
    end = offset + size
    if end + _BLOCK_TRAILER_BYTES > len(table):
        raise CheckpointError("index block points past the end of the file")
    if table[end] != 0:
        raise CheckpointError(f"compressed index block (type {table[end]}) is not supported")
    return table[offset:end]


def block_entries(block: bytes):
    """Yield (key, value) of one table block (restart array at its end)."""
    if len(block) < 4:
        raise CheckpointError("table block too short")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    key = b""
    pos = 0
    while pos < limit:
        shared, pos = read_varint(block, pos)
        unshared, pos = read_varint(block, pos)
        value_len, pos = read_varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + value_len]
        pos += value_len


def table_entries(table: bytes):
    """Yield (key, value) of every entry of an SSTable, in key order."""
    if len(table) < _FOOTER_BYTES:
        raise CheckpointError("index file too short to be a TensorFlow checkpoint index")
    footer = table[-_FOOTER_BYTES:]
    if struct.unpack_from("<Q", footer, _FOOTER_BYTES - 8)[0] != _TABLE_MAGIC:
        raise CheckpointError("not a TensorFlow checkpoint index (bad table magic)")
    _, _, pos = _block_handle(footer, 0)  # metaindex: unused
    index_offset, index_size, _ = _block_handle(footer, pos)
    for _, handle in block_entries(_read_block(table, index_offset, index_size)):
        offset, size, _ = _block_handle(handle, 0)
        yield from block_entries(_read_block(table, offset, size))


# --- bundle --------------------------------------------------------------------------------


def _crc32c(data: bytes) -> int:
    import google_crc32c

    return google_crc32c.value(data)


def _unmask(masked: int) -> int:
    """Undo LevelDB's CRC masking (TensorFlow stores masked CRC32C values)."""
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


class TFCheckpoint:
    """The tensors of a TensorFlow checkpoint, read with numpy.

    `prefix` is what TensorFlow's Saver was given: `PREFIX.index` and
    `PREFIX.data-*-of-*` must exist (for musicnn's checkpoints the prefix is a folder
    followed by "/", so the files are `.index` and `.data-00000-of-00001` in that folder).
    """

    def __init__(self, prefix: str | Path):
        self.prefix = str(prefix)
        index_path = Path(self.prefix + ".index")
        if not index_path.is_file():
            raise CheckpointError(f"no checkpoint index at {index_path}")
        self.entries: dict[str, BundleEntry] = {}
        num_shards = 1
        for key, value in table_entries(index_path.read_bytes()):
            if key == b"":
                num_shards = self._header(value)
            else:
                self.entries[key.decode("utf-8")] = parse_entry(value)
        self.num_shards = num_shards

    @staticmethod
    def _header(value: bytes) -> int:
        """BundleHeaderProto: num_shards 1, endianness 2 (0 = little)."""
        num_shards = 1
        for field, _, v in proto_fields(value):
            if field == 1:
                num_shards = v
            elif field == 2 and v != 0:
                raise CheckpointError("big-endian checkpoints are not supported")
        return num_shards

    def _data_path(self, shard_id: int) -> Path:
        return Path(f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}")

    def names(self) -> list[str]:
        return sorted(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name].shape

    def read(self, name: str, verify: bool = True) -> np.ndarray:
        """The tensor `name`; `verify` checks its CRC32C against the index."""
        if name not in self.entries:
            raise CheckpointError(f"checkpoint {self.prefix} has no tensor {name!r}")
        entry = self.entries[name]
        if entry.sliced:
            raise CheckpointError(f"{name}: partitioned variables are not supported")
        if entry.dtype not in _DTYPES:
            kind = "string" if entry.dtype == _DT_STRING else f"dtype {entry.dtype}"
            raise CheckpointError(f"{name}: {kind} tensors are not supported")
        with open(self._data_path(entry.shard_id), "rb") as f:
            f.seek(entry.offset)
            data = f.read(entry.size)
        if len(data) != entry.size:
            raise CheckpointError(f"{name}: data file truncated")
        if verify and entry.crc32c is not None and _crc32c(data) != _unmask(entry.crc32c):
            raise CheckpointError(f"{name}: CRC32C mismatch (damaged checkpoint data)")
        dtype = np.dtype(_DTYPES[entry.dtype]).newbyteorder("<")
        array = np.frombuffer(data, dtype=dtype)
        if array.size != int(np.prod(entry.shape, dtype=np.int64)):
            raise CheckpointError(f"{name}: {array.size} values for shape {entry.shape}")
        return array.reshape(entry.shape).astype(dtype.newbyteorder("="))
