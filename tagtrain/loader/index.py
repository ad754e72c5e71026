"""The dataset index (`index.parquet`) as the loader reads it: for each sample of each
shard, the byte range of each tar member (the `members` column, interface 1 of the
shard contract). With it any worker can read any sample by byte range; without it (older
datasets) the loader reads shards sequentially. The index is checked against a schema
and against the card (same shards, same sample counts); a mismatch is one line."""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.core.card import INDEX_NAME, CardError
from pipelines.core.errors import first_line
from tagtrain.loader.card_reader import ShardInfo
from tagtrain.loader.openers import OpenerError, join_url, read_bytes

MAX_INDEX_BYTES = 1 << 30
_MEMBER_FIELDS = {"name": str, "offset": int, "size": int}


@dataclass(frozen=True)
class SampleRef:
    """One sample of a shard: its key and {extension: (data offset, size)}."""

    shard: int  # position of the shard in the split's shard list
    key: str
    members: tuple[tuple[str, int, int], ...]

    def member(self, ext: str) -> tuple[int, int] | None:
        for name, offset, size in self.members:
            if name == ext:
                return offset, size
        return None


def index_url(shards: Sequence[ShardInfo]) -> str | None:
    """The index next to the shards (they all sit under one prefix)."""
    if not shards:
        return None
    first = shards[0]
    return first.url[: len(first.url) - len(first.name)] + INDEX_NAME


@functools.lru_cache(maxsize=4)
def _index_rows(url: str, options_key: str, shard_sha256s: tuple) -> tuple | None:
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        data = read_bytes(url, json.loads(options_key), limit=MAX_INDEX_BYTES)
    except (FileNotFoundError, OpenerError):
        return None
    except OSError as exc:
        if "not found" in str(exc).lower() or "no such" in str(exc).lower():
            return None
        raise
    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as exc:  # noqa: BLE001  (any parquet failure: one line)
        raise CardError(f"{url} is not a readable index: {first_line(exc, 200)}") from None
    if "members" not in table.column_names:
        return None
    for column in ("key", "shard"):
        if column not in table.column_names:
            raise CardError(f"{url} has no column {column!r}")
    columns = table.select(["key", "shard", "members"]).to_pydict()
    return tuple(zip(columns["key"], columns["shard"], columns["members"]))


def _member_entries(url: str, key, members) -> tuple[tuple[str, int, int], ...]:
    if not isinstance(key, str) or not isinstance(members, list):
        raise CardError(f"{url}: row {key!r:.60} has no list of members")
    out = []
    for entry in members:
        if not isinstance(entry, dict) or any(
            type(entry.get(f)) is not t for f, t in _MEMBER_FIELDS.items()
        ):
            raise CardError(f"{url}: member of {key!r:.60} must be {{name, offset, size}}")
        name, offset, size = entry["name"], entry["offset"], entry["size"]
        if offset < 512 or size < 0 or not name.startswith(f"{key}."):
            raise CardError(f"{url}: member {name!r:.80} of {key!r:.60} is out of range")
        out.append((name[len(key) + 1 :], offset, size))
    return tuple(out)


def load_sample_refs(
    shards: Sequence[ShardInfo], options: Mapping | None = None
) -> list[list[SampleRef]] | None:
    """[shard] -> its samples in tar order, or None when the index has no members."""
    import json

    url = index_url(shards)
    if url is None:
        return None
    # Keyed by the card's shard checksums too: a dataset prepared again at the same URL
    # has a new index, which this process must read again.
    options_key = json.dumps(dict(options or {}), sort_keys=True)
    rows = _index_rows(url, options_key, tuple(s.sha256 for s in shards))
    if rows is None:
        return None
    position = {s.name: i for i, s in enumerate(shards)}
    per_shard: list[list[SampleRef]] = [[] for _ in shards]
    for key, shard, members in rows:
        i = position.get(shard)
        if i is not None:
            entries = _member_entries(url, key, members)
            per_shard[i].append(SampleRef(i, key, entries))
    for i, refs in enumerate(per_shard):
        refs.sort(key=lambda r: min((o for _, o, _ in r.members), default=0))
        if len(refs) != shards[i].samples:
            raise CardError(
                f"{url} lists {len(refs)} samples of {shards[i].name}, the card {shards[i].samples}"
            )
    return per_shard


def read_index(data: str, options: dict | None = None):
    """The dataset's index.parquet (key, split, tags, ...) as a pyarrow Table."""
    import pyarrow.parquet as pq

    url = join_url(data, INDEX_NAME)
    try:
        return pq.read_table(io.BytesIO(read_bytes(url, options)))
    except Exception as exc:  # noqa: BLE001  (any storage or Parquet failure: one line)
        raise OpenerError(f"cannot read {url}: {first_line(exc, 200)}") from None


def multi_hot(tag_lists: list[list[str]], vocabulary: list[str]) -> np.ndarray:
    index = {t: i for i, t in enumerate(vocabulary)}
    y = np.zeros((len(tag_lists), len(vocabulary)), dtype=np.float32)
    for row, tags in enumerate(tag_lists):
        for t in tags:
            if t in index:
                y[row, index[t]] = 1.0
    return y
