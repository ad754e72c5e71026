"""The dataset index (`index.parquet`) as the loader reads it: for each sample of each
shard, the byte range of each tar member (the `members` column, interface 1 of the
shard contract). With it any worker can read any sample by byte range; without it (older
datasets) the loader reads shards sequentially. The index is checked against a schema
and against the card (same shards, same sample counts); a mismatch is one line.

A split's samples are held as columns (`SplitIndex`: Arrow keys, numpy shard numbers and
member ranges), not one Python object per sample: a million-track split is then tens of
megabytes that loader workers share after the fork, and is read and checked with
vectorised operations (per-row Python cost ~10 us would be 10 s at a million)."""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.core.card import INDEX_NAME, CardError
from pipelines.core.errors import first_line
from tagtrain.loader.card_reader import ShardInfo
from tagtrain.loader.openers import OpenerError, join_url, read_bytes

MAX_INDEX_BYTES = 1 << 30
# The members a shard holds by its contract (pipelines.core.shards); a member of any
# other extension is checked, counted in its shard's bytes, and never read.
CONTRACT_MEMBERS = ("json", "mel.npy", "harm.npy", "pcm.npy")
TAR_HEADER = 512


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


@dataclass(frozen=True, eq=False)
class SplitIndex:
    """Every sample of a split's shards: shards in the card's order, each one's samples in
    tar order (rows starts[s]:starts[s + 1]), as columns."""

    keys: object  # pyarrow string array [N]
    shard: np.ndarray  # int32 [N]: the shard's position in the split's shard list
    starts: np.ndarray  # int64 [S + 1]
    offsets: dict  # contract extension -> int64 [N] data offset, -1 where absent
    sizes: dict  # contract extension -> int64 [N]
    shard_bytes: np.ndarray  # int64 [S]: every member's bytes, tar headers included

    def __len__(self) -> int:
        return len(self.shard)

    @property
    def shards(self) -> int:
        return len(self.starts) - 1

    def key(self, row: int) -> str:
        return self.keys[int(row)].as_py()

    def key_list(self) -> list[str]:
        return self.keys.to_pylist()

    def key_chunks(self, chunk: int = 1 << 14):
        """Lists of the keys as UTF-8 bytes, a chunk at a time (hashing needs no list of
        a million strings at once; 16k keys stay in cache: 20% less per key than 64k)."""
        import pyarrow as pa

        for start in range(0, len(self.keys), chunk):
            yield self.keys.slice(start, chunk).cast(pa.binary()).to_pylist()

    def ref(self, row: int) -> SampleRef:
        row = int(row)
        members = tuple(
            (ext, int(self.offsets[ext][row]), int(self.sizes[ext][row]))
            for ext in self.offsets
            if self.offsets[ext][row] >= 0
        )
        return SampleRef(int(self.shard[row]), self.key(row), members)

    def shard_refs(self, shard: int) -> list[SampleRef]:
        return [self.ref(r) for r in range(self.starts[shard], self.starts[shard + 1])]

    def read_bytes(self, needed: Sequence[str]) -> np.ndarray:
        """Per sample: the bytes (tar headers included) that reading `needed` fetches."""
        out = np.zeros(len(self), dtype=np.int64)
        for ext in needed:
            if ext in self.offsets:
                out += np.where(self.offsets[ext] >= 0, self.sizes[ext] + TAR_HEADER, 0)
        return out

    @classmethod
    def from_refs(cls, refs: Sequence[Sequence[SampleRef]]) -> SplitIndex:
        """The columns of per-shard SampleRef lists (small tests and tools)."""
        import pyarrow as pa

        flat = [ref for shard in refs for ref in shard]
        n = len(flat)
        offsets = {ext: np.full(n, -1, dtype=np.int64) for ext in CONTRACT_MEMBERS}
        sizes = {ext: np.zeros(n, dtype=np.int64) for ext in CONTRACT_MEMBERS}
        shard_bytes = np.zeros(len(refs), dtype=np.int64)
        for row, ref in enumerate(flat):
            for ext, offset, size in reversed(ref.members):  # the first of a name wins
                if ext in offsets:
                    offsets[ext][row], sizes[ext][row] = offset, size
                shard_bytes[ref.shard] += size + TAR_HEADER
        present = [e for e in CONTRACT_MEMBERS if (offsets[e] >= 0).any()]
        offsets = {e: offsets[e] for e in present}
        sizes = {e: sizes[e] for e in present}
        counts = np.array([len(shard) for shard in refs], dtype=np.int64)
        return cls(
            pa.array([r.key for r in flat], pa.string()),
            np.array([r.shard for r in flat], dtype=np.int32),
            np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            offsets, sizes, shard_bytes,
        )  # fmt: skip


def index_url(shards: Sequence[ShardInfo]) -> str | None:
    """The index next to the shards (they all sit under one prefix)."""
    if not shards:
        return None
    first = shards[0]
    return first.url[: len(first.url) - len(first.name)] + INDEX_NAME


def _read_table(url: str, options: Mapping):
    """The index's key, shard and members columns; None when there is no index or no
    members column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        data = read_bytes(url, options, limit=MAX_INDEX_BYTES)
    except (FileNotFoundError, OpenerError):
        return None
    except OSError as exc:
        if "not found" in str(exc).lower() or "no such" in str(exc).lower():
            return None
        raise
    try:
        # ParquetFile, not read_table: that imports pyarrow.dataset (and pandas), ~1 s.
        # The shard column as a dictionary: a few thousand names, not one string per row.
        file = pq.ParquetFile(pa.BufferReader(data), read_dictionary=["shard"])
        names = file.schema_arrow.names
        if "members" not in names:
            return None
        for column in ("key", "shard"):
            if column not in names:
                raise CardError(f"{url} has no column {column!r}")
        # Only the columns the loader uses: tags and the rest are never decoded.
        return file.read(columns=["key", "shard", "members"])
    except CardError:
        raise
    except Exception as exc:  # noqa: BLE001  (any parquet failure: one line)
        raise CardError(f"{url} is not a readable index: {first_line(exc, 200)}") from None


def _no_members(url: str, key) -> CardError:
    return CardError(f"{url}: row {key!r:.60} has no list of members")


def _member_columns(url: str, keys, members):
    """(parent row, name, offset, size) of every member, as arrays; one-line errors for
    an index that breaks the schema."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type)):
        raise _no_members(url, keys[0].as_py() if len(keys) else None)
    if keys.null_count or members.null_count:
        row = int(np.flatnonzero(~(keys.is_valid().to_numpy(zero_copy_only=False)
                                   & members.is_valid().to_numpy(zero_copy_only=False)))[0])  # fmt: skip
        raise _no_members(url, keys[row].as_py())
    if not (pa.types.is_list(members.type) or pa.types.is_large_list(members.type)):
        raise _no_members(url, keys[0].as_py() if len(keys) else None)
    parent = np.asarray(members.value_parent_indices()).astype(np.int32)
    values = members.flatten()
    item = values.type
    fields = {"name": (pa.types.is_string, pa.types.is_large_string),
              "offset": (pa.types.is_integer,), "size": (pa.types.is_integer,)}  # fmt: skip
    shape_ok = pa.types.is_struct(item) and all(
        item.get_field_index(f) >= 0 and any(t(item.field(f).type) for t in checks)
        for f, checks in fields.items()
    )
    if shape_ok:
        columns = dict(zip([item.field(i).name for i in range(item.num_fields)], values.flatten()))
        name, offset, size = columns["name"], columns["offset"], columns["size"]
        nulls = name.null_count + offset.null_count + size.null_count
    if not shape_ok or nulls:
        first = 0
        if shape_ok:
            valid = pc.and_(pc.and_(name.is_valid(), offset.is_valid()), size.is_valid())
            first = int(np.flatnonzero(~valid.to_numpy(zero_copy_only=False))[0])
        row = int(parent[first]) if len(parent) else 0
        raise CardError(
            f"{url}: member of {keys[row].as_py()!r:.60} must be {{name, offset, size}}"
        )
    return parent, name, offset.to_numpy().astype(np.int64), size.to_numpy().astype(np.int64)


def _name_parts(keys, parent: np.ndarray, name) -> tuple[np.ndarray, dict]:
    """Whether each member's name is `{its row's key}.{something}`, and, per contract
    extension, which members are `{key}.{ext}`: Arrow compute over the whole column (the
    expected name of each member, compared at once); names outside the contract, rare,
    are checked one by one."""
    import pyarrow as pa
    import pyarrow.compute as pc

    exts = pa.array(CONTRACT_MEMBERS, pa.string())
    ext_id = np.full(len(parent), -1, dtype=np.int64)
    for i, ext in enumerate(CONTRACT_MEMBERS):  # at most one: no contract name ends another
        ext_id[pc.ends_with(name, f".{ext}").to_numpy(zero_copy_only=False)] = i
    member_keys = keys.take(pa.array(parent))
    suffix = exts.take(pa.array(np.maximum(ext_id, 0)))
    expected = pc.binary_join_element_wise(member_keys, suffix, ".")
    prefixed = pc.equal(name, expected).to_numpy(zero_copy_only=False) & (ext_id >= 0)
    matches = {
        ext: np.flatnonzero(prefixed & (ext_id == i)) for i, ext in enumerate(CONTRACT_MEMBERS)
    }
    for i in np.flatnonzero(~prefixed):
        prefixed[i] = name[int(i)].as_py().startswith(f"{member_keys[int(i)].as_py()}.")
    return prefixed, matches


def _split_index(url: str, table, shards: Sequence[ShardInfo]) -> SplitIndex:
    import pyarrow as pa
    import pyarrow.compute as pc

    names = pa.array([s.name for s in shards], pa.string())
    shard = table.column("shard").combine_chunks()
    # Each row's shard position, NaN for a shard of another split (or none).
    if pa.types.is_dictionary(shard.type):  # look up each distinct name once
        known = pc.index_in(shard.dictionary.cast(pa.string()), value_set=names)
        known = np.append(known.to_numpy(zero_copy_only=False).astype(np.float64), np.nan)
        indices = shard.indices.fill_null(len(known) - 1).to_numpy(zero_copy_only=False)
        position = known[indices]
    else:
        position = pc.index_in(shard.cast(pa.string()), value_set=names)
        position = position.to_numpy(zero_copy_only=False).astype(np.float64)
    kept = ~np.isnan(position)
    keys = table.column("key").combine_chunks()
    members = table.column("members").combine_chunks()
    if not kept.all():  # rows of other splits' shards: never read, never checked
        rows = np.flatnonzero(kept)
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows):  # one run (prepare's order)
            keys, members = keys.slice(rows[0], len(rows)), members.slice(rows[0], len(rows))
        else:
            keys, members = keys.filter(kept), members.filter(kept)
    position = position[kept].astype(np.int32)
    parent, name, offset, size = _member_columns(url, keys, members)
    prefixed, matches = _name_parts(keys, parent, name)
    n = len(keys)
    bad = (offset < TAR_HEADER) | (size < 0) | ~prefixed
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CardError(
            f"{url}: member {name[i].as_py()!r:.80} of {keys[int(parent[i])].as_py()!r:.60} "
            "is out of range"
        )
    offsets, sizes = {}, {}
    for ext, at in matches.items():
        if len(at):  # e.g. no harmonic tensors stored: no column of -1s
            at = at[::-1]  # written last to first: the first member of a name wins
            offsets[ext] = np.full(n, -1, dtype=np.int64)
            sizes[ext] = np.zeros(n, dtype=np.int64)
            offsets[ext][parent[at]], sizes[ext][parent[at]] = offset[at], size[at]
    # Tar order inside each shard: by the sample's first member (rows with none first).
    first = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, parent, offset)
    first[first == np.iinfo(np.int64).max] = 0
    order = _tar_order(position, first, len(shards))
    counts = np.bincount(position, minlength=len(shards))
    for i, shard in enumerate(shards):
        if counts[i] != shard.samples:
            raise CardError(
                f"{url} lists {counts[i]} samples of {shard.name}, the card {shard.samples}"
            )
    shard_bytes = np.bincount(position[parent], weights=size + TAR_HEADER, minlength=len(shards))
    if order is not None:
        keys, position = keys.take(order), position[order]
        offsets = {e: a[order] for e, a in offsets.items()}
        sizes = {e: a[order] for e, a in sizes.items()}
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return SplitIndex(keys, position, starts, offsets, sizes, shard_bytes.astype(np.int64))


def _in_order(position: np.ndarray, first: np.ndarray) -> bool:
    step, same = position[1:] - position[:-1], position[1:] == position[:-1]
    return bool(np.all((step > 0) | (same & (first[1:] >= first[:-1]))))


def _tar_order(position: np.ndarray, first: np.ndarray, shards: int) -> np.ndarray | None:
    """The rows in shard order, each shard's in tar order (None: as they are). Prepare's
    index is sorted by key, its shards interleaved, each shard's rows in tar order: a
    stable radix sort of the shard numbers (linear, where a comparison sort grows as
    n log n) gives it; anything else is sorted on both."""
    if _in_order(position, first):
        return None
    small = position.astype(np.int16) if shards < 2**15 else position
    grouped = np.argsort(small, kind="stable")  # numpy: radix sort for 16-bit integers
    if _in_order(position[grouped], first[grouped]):
        return grouped
    return np.lexsort((first, position))


@functools.lru_cache(maxsize=4)
def _cached_index(url: str, options_key: str, shards: tuple) -> SplitIndex | None:
    table = _read_table(url, json.loads(options_key))
    return None if table is None else _split_index(url, table, shards)


def load_sample_refs(
    shards: Sequence[ShardInfo], options: Mapping | None = None
) -> SplitIndex | None:
    """The split's samples in tar order per shard, or None when the index has no members."""
    url = index_url(shards)
    if url is None:
        return None
    # Keyed by the card's shards (their checksums too): a dataset prepared again at the
    # same URL has a new index, which this process must read again.
    options_key = json.dumps(dict(options or {}), sort_keys=True)
    return _cached_index(url, options_key, tuple(shards))


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
