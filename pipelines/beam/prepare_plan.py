"""Which shards a prepare job must build, decided in the driver before the pipeline runs.

The driver groups the manifest rows by shard (the stable hash the workers use), computes
each shard's fingerprint (progress.py) and reads its completion record: small JSON files,
read through Beam's FileSystems, so on gs:// and s3:// as locally. A shard whose record
matches and whose tar is intact is reused as it stands; only the others go to the
pipeline, so a resumed or updated job starts no worker for finished work, and a job with
nothing to build runs no pipeline at all (prepare_finish.py rewrites the card from the
records).

A tar is intact when it has its recorded size and, on a local disk, its recorded sha256
(read again only when the tar's `stat` changed since it was last verified:
verified_tars.py). On an object store an object exists only once its upload completed, so the driver
compares sizes from one listing rather than downloading the dataset; the card's sha256s
are checked by `train --verify` (and by a worker, for a shard it is given).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pipelines.beam import beam_io, progress
from pipelines.beam.verified_tars import VerifiedTars
from pipelines.core import storage
from pipelines.core.shards import shard_index

# Records and tars checked at once: object-store reads wait on the network, and sha256
# releases the GIL on large buffers.
CHECK_THREADS = 8

ShardKey = tuple[str, int]  # (split, shard index)


@dataclass
class ShardWork:
    """The plan of one job: every non-empty shard's fingerprint and row count, the
    records of the shards reused as they stand, the shards to build and how many of
    their tracks must be decoded (an update keeps unchanged tracks of a rebuilt shard),
    and, for a local output, the stat cache of its verified tars."""

    fingerprints: dict[ShardKey, str] = field(default_factory=dict)
    rows: dict[ShardKey, int] = field(default_factory=dict)
    reused: dict[ShardKey, dict] = field(default_factory=dict)
    build: list[ShardKey] = field(default_factory=list)
    to_decode: int = 0
    verified: VerifiedTars | None = None

    @property
    def tracks_reused(self) -> int:
        return sum(self.rows[key] for key in self.reused)


def rows_by_shard(rows: list[dict], num_shards: dict[str, int]) -> dict[ShardKey, list[dict]]:
    """Manifest rows grouped as the pipeline groups them, each shard's in key order."""
    shards: dict[ShardKey, list[dict]] = {}
    for row in rows:
        split = row["split"]
        shards.setdefault((split, shard_index(row["key"], num_shards[split])), []).append(row)
    return {key: sorted(group, key=lambda r: r["key"]) for key, group in sorted(shards.items())}


def plan_work(cfg, rows: list[dict]) -> ShardWork:
    """`cfg` is the job's PrepareConfig; `rows` the manifest's rows."""
    num_shards = dict(cfg.num_shards)
    groups = rows_by_shard(rows, num_shards)
    work = ShardWork()
    for (split, index), group in groups.items():
        fp = progress.shard_fingerprint(cfg.identity_sha, split, num_shards[split], group)
        work.fingerprints[(split, index)] = fp
        work.rows[(split, index)] = len(group)
    remote = storage.is_remote(cfg.output)
    sizes = listed_sizes(cfg.output) if remote else None
    work.verified = None if remote else VerifiedTars(cfg.output)

    def check(key: ShardKey):
        return key, shard_state(cfg, key, work, groups[key], sizes)

    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        for key, (record, to_decode) in pool.map(check, groups):
            if record is not None:
                work.reused[key] = record
            else:
                work.build.append(key)
                work.to_decode += to_decode
    return work


def shard_state(cfg, key: ShardKey, work: ShardWork, rows, sizes) -> tuple[dict | None, int]:
    """(the record, if the shard is finished and intact; else None) and, for a shard to
    build, how many of its tracks an earlier record of it does not hold unchanged (an
    estimate for sizing the workers: that old tar is checked by the worker that reuses
    its tracks, which decodes them all if it is damaged)."""
    split, index = key
    record = progress.read_record(cfg.output, split, index)
    if record is not None and record.get("fingerprint") == work.fingerprints[key]:
        if tar_intact(cfg.output, record.get("shard"), sizes, work.verified):
            return progress.for_finish(record), 0
    kept = {}
    if record is not None and record.get("identity") == cfg.identity_sha:
        kept = record.get("rows") or {}
    return None, sum(1 for r in rows if kept.get(r["key"]) != progress.row_sha(r))


def tar_intact(output: str, shard: dict | None, sizes: dict[str, int] | None, verified) -> bool:
    """A record without a tar (every track rejected) needs none; else the tar must have
    the recorded size and, locally, the recorded sha256 (`verified`: the stat cache)."""
    if shard is None:
        return True
    if sizes is not None:
        return sizes.get(shard["name"]) == shard["bytes"]
    name, sha256, size = shard["name"], shard["sha256"], shard["bytes"]
    if verified.known(name, sha256):
        return True
    try:
        digest = storage.file_sha256(beam_io.join(output, name), size)
    except OSError:  # unreadable: built again
        digest = None
    if digest != sha256:
        return False
    verified.add(name, sha256, size)
    return True


def listed_sizes(output: str) -> dict[str, int]:
    """{tar name: size} of the tars under `output`, from one listing."""
    from apache_beam.io.filesystems import FileSystems

    try:
        found = FileSystems.match([beam_io.join(output, "*.tar")])[0].metadata_list
    except Exception:  # nothing there yet (object stores may raise on an empty prefix)
        return {}
    return {m.path.rstrip("/").rsplit("/", 1)[-1]: m.size_in_bytes for m in found}
