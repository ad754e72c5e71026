"""Completion records: how a killed or updated prepare job resumes.

Each finished shard leaves `_progress/{split}-{NNNNNN}.json` next to the output, written
after its tar: the shard's fingerprint (the job identity, the split's shard count and the
exact manifest rows of the shard), the tar's name, sha256 and size, its index rows,
rejects and per-band mel sums. A re-run with the same fingerprint whose tar is present
with that sha256 emits the recorded rows instead of decoding, so the final index, rejects,
stats and card are the ones an uninterrupted run writes, byte for byte. Anything else
(no record, another fingerprint, a tar missing or changed) rebuilds the shard.

Records are part of the output (a later --update reads them) and deterministic: no times,
no paths of the machine that wrote them.
"""

from __future__ import annotations

import hashlib
import json

from pipelines.beam import beam_io
from pipelines.core.shards import shard_name

PROGRESS_DIR = "_progress"


def record_path(output: str, split: str, index: int) -> str:
    return beam_io.join(output, PROGRESS_DIR, shard_name(split, index).replace(".tar", ".json"))


def shard_fingerprint(identity_sha: str, split: str, num_shards: int, rows: list[dict]) -> str:
    """What a shard's bytes depend on: the job identity, its place in the layout and its
    manifest rows (every field: a changed tag or path rebuilds it)."""
    text = json.dumps([identity_sha, split, num_shards, rows], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def tar_sha256(path: str) -> str | None:
    data = beam_io.read_bytes(path)
    return None if data is None else hashlib.sha256(data).hexdigest()


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
    if shard is not None and tar_sha256(beam_io.join(output, shard["name"])) != shard["sha256"]:
        return None
    return record


def write_record(output: str, split: str, index: int, record: dict) -> None:
    text = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    beam_io.write_atomic(record_path(output, split, index), text.encode())
