"""Raw samples from one shard: the shard opened by `open_url` (local regular files only,
fsspec for remote URLs: never a shell pipe) and WebDataset's `group_by_keys`, over a tar
walker of our own that reads each wanted
member in one call and seeks over the others. Only `.json` and `.npy` members are ever
read (and only those the plan needs); others are skipped unread and counted. A member
larger than `MAX_MEMBER_BYTES` is never read into memory. Unreadable, truncated or missing
shards are counted and skipped, never fatal."""

from __future__ import annotations

import functools
import tarfile
from collections.abc import Iterator

from pipelines.core.errors import first_line
from tagtrain.loader.cache import open_cached
from tagtrain.loader.card_reader import ShardInfo
from tagtrain.loader.openers import open_url_at
from tagtrain.loader.retry import RetryingStream
from tagtrain.loader.stats import LoaderStats

_NPY_SUFFIX = "npy"  # with "json", the only member types a shard may hold
MAX_MEMBER_BYTES = 1 << 30  # an hour of 48 kHz stereo int16 PCM is ~0.7 GB


class MemberTooLarge(Exception):
    """A tar member whose header claims more bytes than any sample member may hold."""


def tar_members(stream, select) -> Iterator[dict]:
    """{"fname", "data"} for each regular member that `select(name)` accepts.

    tarfile's random-access mode reads each member's data in one call and seeks over
    the members not selected (remote streams allow forward seeks: tagtrain.loader.openers)."""
    tar = tarfile.open(fileobj=stream, mode="r:")
    while (info := tar.next()) is not None:
        tar.members = []  # the index of seen members would grow with every sample
        if not info.isreg() or not select(info.name):
            continue
        if info.size > MAX_MEMBER_BYTES:
            raise MemberTooLarge(f"member {info.name[:80]!r} claims {info.size} bytes")
        yield {"fname": info.name, "data": tar.extractfile(info).read()}


def member_selector(needed: set[str], stats: LoaderStats):
    """select(fname) for `tar_members`: the needed extensions; counts foreign members."""

    def select(fname: str) -> bool:
        ext = fname.rsplit("/", 1)[-1].partition(".")[2].lower()
        if ext in needed:
            return True
        if ext != "json" and ext.rpartition(".")[2] != _NPY_SUFFIX:
            stats.foreign_members += 1  # e.g. .pyd/.pth/.pickle: never read
        return False

    return select


def read_shard(
    shard: ShardInfo,
    member: str,
    stats: LoaderStats,
    options,
    retries: int = 0,
    backoff: float = 0.5,
    cfg=None,
) -> Iterator[dict]:
    """Raw samples {"__key__", "json", member} of one shard, in tar order. A key seen
    before in the same shard is counted as a duplicate and skipped."""
    import webdataset as wds

    failed: list = []

    def record(exc: BaseException) -> bool:
        if not failed:
            stats.shard_failed(shard.name, f"{type(exc).__name__}: {first_line(exc, 200)}")
        failed.append(exc)
        return True  # keep going: a bad shard is skipped, not fatal

    select = member_selector({"json", member}, stats)
    stats.shards_opened += 1
    try:
        stream = open_cached(shard.url, cfg, shard.sha256) if cfg is not None else None
        if stream is None:
            opener = functools.partial(open_url_at, shard.url, options)
            stream = RetryingStream(opener, retries, backoff)
    except Exception as exc:  # noqa: BLE001  (missing, refused or unreachable: counted, skipped)
        record(exc)
        return

    def members():
        for item in tar_members(stream, select):
            yield {**item, "__url__": shard.url}

    seen: set[str] = set()
    try:
        for sample in wds.tariterators.group_by_keys(members(), handler=record):
            if sample["__key__"] in seen:
                stats.duplicate_keys += 1
                stats.reject(sample["__key__"], "duplicate_key", f"again in {shard.name}")
                continue
            seen.add(sample["__key__"])
            stats.bytes_used += sum(len(v) for v in sample.values() if isinstance(v, bytes))
            yield sample
    except Exception as exc:  # noqa: BLE001  (truncated or corrupt tar: counted, skipped)
        record(exc)
    finally:
        stats.bytes_read += stream.tell()  # a remote stream downloads all it passes
        stream.close()
