"""Completion records: how a killed or updated prepare job resumes.

Each finished shard leaves `_progress/{split}-{NNNNNN}.json` next to the output, written
after its tar: the shard's fingerprint (the job identity, the split's shard count and the
exact manifest rows of the shard), the tar's name, sha256 and size, its index rows,
rejects and the shard's per-band mel sums. A re-run with the same fingerprint whose tar is
present with that sha256 emits the recorded rows instead of decoding, so the final index, rejects,
stats and card are the ones an uninterrupted run writes, byte for byte. Anything else
(no record, another fingerprint, a tar missing or changed) rebuilds the shard.

Records are part of the output (a later --update reads them) and deterministic: no times,
no paths of the machine that wrote them.

A train shard's per-track mel sums, which only an update's workers read (to keep a track
without recomputing its statistics), are in a binary sidecar, `{split}-{NNNNNN}.sums.npy`,
written before the record, which holds its sha256: at 1M tracks they were 2.4 GB of base64
in the JSON and half of the CPU of planning an --update in the driver, which needs none of
them. Records of earlier versions, with the sums inline (`sums`), are still read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import mmap

from pipelines.beam import beam_io
from pipelines.core import storage
from pipelines.core.errors import UserError
from pipelines.core.shards import shard_name

log = logging.getLogger(__name__)

PROGRESS_DIR = "_progress"
SUMS_SUFFIX = ".sums.npy"
SUMS_DTYPE = "<f8"


def record_path(output: str, split: str, index: int) -> str:
    return beam_io.join(output, PROGRESS_DIR, shard_name(split, index).replace(".tar", ".json"))


def sums_path(output: str, split: str, index: int) -> str:
    return beam_io.join(output, PROGRESS_DIR, shard_name(split, index).replace(".tar", SUMS_SUFFIX))


def shard_fingerprint(identity_sha: str, split: str, num_shards: int, rows: list[dict]) -> str:
    """What a shard's bytes depend on: the job identity, its place in the layout and its
    manifest rows (every field: a changed tag or path rebuilds it)."""
    text = json.dumps([identity_sha, split, num_shards, rows], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def valid_record(output: str, split: str, index: int, fingerprint: str) -> dict | None:
    """The shard's record if it matches `fingerprint` and its tar (if any) is intact."""
    data = beam_io.read_bytes(record_path(output, split, index))
    if data is None:
        return None
    try:
        record = json.loads(data)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("fingerprint") != fingerprint:
        return None
    shard = record.get("shard")
    if shard is None:
        return record
    if beam_io.read_sha256(beam_io.join(output, shard["name"])) != shard["sha256"]:
        return None
    return record


def write_record(output: str, split: str, index: int, record: dict) -> None:
    text = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    beam_io.write_atomic(record_path(output, split, index), text.encode())


# What the finish step (index, rejects, card) reads of a record. The per-track map `rows`
# (what an update's workers find reusable tracks by, read by them from the record itself;
# as were the per-track `sums` of earlier versions) is most of a record's bytes: a driver
# holding every record of a 1M-track dataset with them took 5.2 GB to plan a job with
# nothing to build.
FINISH_FIELDS = ("fingerprint", "identity", "shard", "index", "rejects", "mel_sums")


def for_finish(record: dict) -> dict:
    """The record as the driver keeps it until the finish step (FINISH_FIELDS)."""
    return {name: record[name] for name in FINISH_FIELDS if name in record}


def row_sha(row: dict) -> str:
    return hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).hexdigest()


def read_record(output: str, split: str, index: int) -> dict | None:
    """The shard's record whatever its fingerprint (None if absent or unreadable)."""
    data = beam_io.read_bytes(record_path(output, split, index))
    try:
        record = json.loads(data) if data is not None else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def decode_sums(encoded: list) -> tuple:
    """A track's sums as an earlier version recorded them inline: [base64 of float64
    sums, of sums of squares, frames]."""
    import numpy as np

    def arr(text):
        return np.frombuffer(base64.b64decode(text, validate=True), dtype="<f8").copy()

    return arr(encoded[0]), arr(encoded[1]), int(encoded[2])


def write_sums(output: str, split: str, index: int, samples) -> dict | None:
    """The samples' per-band mel sums written to the shard's sidecar, one float64 row per
    sample in key order (the order of the record's index rows): [sum | sum of squares |
    frames]. Frames share the float64 row so that one header describes the whole file;
    they are exact there (integers below 2**53). Returns what the record keeps of it
    (`sums_file`), or None without samples."""
    import numpy as np

    if not samples:
        return None
    ordered = sorted(samples, key=lambda s: s.key)
    table = np.array(
        [np.concatenate([s.mel_sum, s.mel_sumsq, [s.mel_frames]]) for s in ordered],
        dtype=SUMS_DTYPE,
    )
    buffer = io.BytesIO()
    np.save(buffer, table, allow_pickle=False)
    data = buffer.getvalue()
    beam_io.write_atomic(sums_path(output, split, index), data)
    bands = (table.shape[1] - 1) // 2
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "tracks": len(ordered), "bands": bands}  # fmt: skip


def read_sums(output: str, split: str, index: int, record: dict) -> dict[str, tuple] | None:
    """{key: (mel_sum, mel_sumsq, frames)} of the record's samples: from its sidecar, or
    inline in a record of an earlier version. None when they cannot be trusted: the
    sidecar missing, of another size or sha256 than recorded, or not the float64 table
    the record describes (a file we read is untrusted input; its header is checked
    before its data is read)."""
    keys = [row["key"] for row in record["index"]]
    if "sums_file" not in record:
        return _inline_sums(record.get("sums"), keys)
    described = record["sums_file"]
    if not isinstance(described, dict) or described.get("tracks") != len(keys):
        return None
    if not isinstance(described.get("bytes"), int):
        return None
    try:
        data = beam_io.read_bytes(sums_path(output, split, index), limit=described["bytes"])
    except (OSError, UserError):
        return None
    if data is None or hashlib.sha256(data).hexdigest() != described.get("sha256"):
        return None
    table = _sums_table(data, len(keys), described.get("bands"))
    if table is None:
        return None
    bands = described["bands"]
    return {
        key: (row[:bands].copy(), row[bands : 2 * bands].copy(), int(row[2 * bands]))
        for key, row in zip(keys, table)
    }


def _inline_sums(sums, keys: list[str]) -> dict[str, tuple] | None:
    if not isinstance(sums, dict) or not all(key in sums for key in keys):
        return None
    try:
        return {key: decode_sums(sums[key]) for key in keys}
    except (binascii.Error, ValueError, TypeError, IndexError):
        return None


def _sums_table(data: bytes, tracks: int, bands):
    """The sidecar's [tracks, 2 * bands + 1] float64 table, or None if its header says
    anything else or its frames are not counts."""
    import numpy as np
    from numpy.lib import format as npy

    if not isinstance(bands, int) or bands < 1:
        return None
    stream = io.BytesIO(data)
    try:
        if npy.read_magic(stream) != (1, 0):  # what np.save writes for such a table
            return None
        shape, fortran_order, dtype = npy.read_array_header_1_0(stream)
        if shape != (tracks, 2 * bands + 1) or fortran_order or dtype != np.dtype(SUMS_DTYPE):
            return None
        stream.seek(0)
        table = np.load(stream, allow_pickle=False)
    except ValueError:  # not an .npy, or cut short
        return None
    frames = table[:, -1]
    counts = (frames >= 0) & (frames == np.floor(frames))
    return table if np.isfinite(table).all() and counts.all() else None


def _old_tar(output: str, name: str) -> memoryview | None:
    """The old tar's bytes; a local one mapped, not read: its kept members then go into
    the new tar straight from the page cache (a 256 MB shard: 0.15 s of read syscalls
    and as much memory saved). The new tar replaces it by a rename, so the mapped inode
    stays intact while it is read."""
    path = beam_io.join(output, name)
    if storage.is_remote(output):
        data = beam_io.read_bytes(path)
        return None if data is None else memoryview(data)
    try:
        with open(path, "rb") as f:
            return memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    except (OSError, ValueError):  # absent, unreadable, or empty (nothing to map)
        return None


def _verified(output: str, name: str, sha256: str) -> bool:
    """A local tar the driver's stat cache vouches for (verified_tars.py): unchanged since
    its sha256 was checked, so it need not be hashed again."""
    if storage.is_remote(output):
        return False
    from pipelines.beam import verified_tars

    return verified_tars.saved(output).known(name, sha256)


class ReusableTracks:
    """The samples of a shard's previous record that an update can keep: same job
    identity, same manifest row, tar intact, and for a train shard its mel sums readable
    (else its tracks are decoded again: `unreadable_sums` counts them). `take(row)`
    returns such a track as a Sample (its members cut from the old tar by their recorded
    offsets), else None."""

    def __init__(self, output: str, split: str, index: int, identity_sha: str):
        self.by_key: dict[str, tuple] = {}
        self.unreadable_sums = 0
        old = read_record(output, split, index)
        if not old or old.get("identity") != identity_sha or not old.get("shard"):
            return
        name, sha256 = old["shard"]["name"], old["shard"]["sha256"]
        view = _old_tar(output, name)
        if view is None or not (
            _verified(output, name, sha256) or hashlib.sha256(view).hexdigest() == sha256
        ):
            return
        sums = {}
        if split == "train":  # only train samples carry mel sums (the card's statistics)
            sums = read_sums(output, split, index, old)
            if sums is None:
                self.unreadable_sums = len(old["index"])
                log.warning("%s: mel sums missing or damaged in %s; its %d kept tracks are "
                            "decoded again", name, PROGRESS_DIR, self.unreadable_sums)  # fmt: skip
                return
        rows = old.get("rows", {})
        for index_row in old["index"]:
            key = index_row["key"]
            members = {
                m["name"][len(key) + 1 :]: view[m["offset"] : m["offset"] + m["size"]]
                for m in index_row["members"]
            }
            self.by_key[key] = (rows.get(key), index_row, members, sums.get(key))

    def take(self, row: dict):
        from pipelines.beam.track import Sample

        found = self.by_key.get(row["key"])
        if found is None or found[0] != row_sha(row):
            return None
        _, index_row, members, sums = found
        sample = Sample(row["key"], row["split"], list(row.get("tags") or []),
                        index_row["duration"], members)  # fmt: skip
        if sums is not None:
            sample.mel_sum, sample.mel_sumsq, sample.mel_frames = sums
        return sample
