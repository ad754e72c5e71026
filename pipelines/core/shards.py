"""Deterministic WebDataset shards: the byte-level side of the shard contract.

A shard is a plain tar whose members are `{key}.{ext}`, only `.json` and `.npy`.
Everything that could make two runs differ is fixed: member order (sorted by key, then
extension), tar header fields (mtime 0, uid/gid 0, mode 0644, no user names, USTAR
format), JSON (sorted keys, compact), and `.npy` (format 1.0 headers, C order). Files are
written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Mapping

import numpy as np

ALLOWED_EXTENSIONS = ("json", "mel.npy", "harm.npy", "pcm.npy")


def shard_index(key: str, num_shards: int) -> int:
    """Stable shard assignment (never Python's salted hash)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % num_shards


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def num_shards_for(total_bytes: int, target_bytes: int, num_samples: int) -> int:
    if num_samples <= 0:
        return 0
    return max(1, min(num_samples, -(-total_bytes // max(1, target_bytes))))


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def json_bytes(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def write_tar(fileobj, samples: Iterable[tuple[str, Mapping[str, bytes]]]) -> None:
    """Write a tar of samples [(key, {ext: bytes-like})], sorted by key then extension:
    the bytes `tarfile.open(mode="w|")` writes (tested), but each member's data in one
    write instead of tarfile's 16 KiB copy loop through its 10 KiB stream buffer, which
    cost more than the sha256 of a rewritten 256 MB shard."""
    offset = 0
    for key, members in sorted(samples, key=lambda kv: kv[0]):
        for ext in sorted(members):
            if ext not in ALLOWED_EXTENSIONS:
                raise ValueError(f"member extension {ext!r} is not part of the shard contract")
            data = members[ext]
            header = _member_header(f"{key}.{ext}", len(data))
            padding = -len(data) % tarfile.BLOCKSIZE
            for part in (header, data, tarfile.NUL * padding):
                fileobj.write(part)
            offset += len(header) + len(data) + padding
    end = 2 * tarfile.BLOCKSIZE  # two zero blocks, then zeros to a whole record
    fileobj.write(tarfile.NUL * (end + -(offset + end) % tarfile.RECORDSIZE))


def _member_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")


def tar_bytes(samples: Iterable[tuple[str, Mapping[str, bytes]]]) -> bytes:
    buf = io.BytesIO()
    write_tar(buf, samples)
    return buf.getvalue()


def sample_size(members: Mapping[str, bytes]) -> int:
    """Bytes a sample takes in a tar: a 512-byte header per member plus padded data."""
    return sum(512 + -(-len(data) // 512) * 512 for data in members.values())


def read_tar(data: bytes) -> dict[str, dict[str, bytes]]:
    """{key: {ext: bytes}} from a shard's bytes, without unpickling anything."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        for info in tar:
            if not info.isfile():
                continue
            key, _, ext = info.name.partition(".")
            out.setdefault(key, {})[ext] = tar.extractfile(info).read()
    return out


def member_offsets(fileobj) -> dict[str, list[dict]]:
    """{key: [{"name", "offset", "size"}]} for each regular member of a tar stream, in
    tar order: `offset` is the byte offset of the member's data in the shard (its USTAR
    header starts 512 bytes earlier), `size` its data bytes. This is the index's
    `members` column, which lets a reader fetch one sample's members by byte range."""
    out: dict[str, list[dict]] = {}
    with tarfile.open(fileobj=fileobj, mode="r:") as tar:
        while (info := tar.next()) is not None:
            tar.members = []  # keep memory flat on large shards
            if not info.isreg():
                continue
            name = info.name.rsplit("/", 1)[-1]
            key = name.partition(".")[0]
            entry = {"name": name, "offset": info.offset_data, "size": info.size}
            out.setdefault(key, []).append(entry)
    return out


def member_layout(samples: Iterable[tuple[str, Mapping[str, bytes]]]) -> dict[str, list[dict]]:
    """{key: [{"name", "offset", "size"}]} of the tar `write_tar` makes of `samples`:
    `offset` is where a member's data starts (its 512-byte USTAR header just before it),
    so a reader can fetch one sample, or one member, with a range request."""
    layout: dict[str, list[dict]] = {}
    position = 0
    for key, members in sorted(samples, key=lambda kv: kv[0]):
        entries = []
        for ext in sorted(members):
            size = len(members[ext])
            entries.append({"name": f"{key}.{ext}", "offset": position + 512, "size": size})
            position += 512 + -(-size // 512) * 512
        layout[key] = entries
    return layout


class _HashingWriter:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, fileobj):
        self.fileobj = fileobj
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(data)
        self.fileobj.write(data)
        return len(data)

    def flush(self) -> None:
        if hasattr(self.fileobj, "flush"):
            self.fileobj.flush()


def write_tar_hashed(fileobj, samples: list[tuple[str, Mapping[str, bytes]]]) -> tuple[str, int]:
    """`write_tar` into `fileobj`; returns the sha256 (hex) and size of the whole tar."""
    writer = _HashingWriter(fileobj)
    write_tar(writer, samples)
    return writer.sha256.hexdigest(), writer.size
