"""Where the perturb job's audio comes from: the source split's index rows (which shard
holds each track, and where its members are in it), and a target shard's source tracks
read from the source shards by byte range."""

from __future__ import annotations

import json

import numpy as np

from pipelines.beam import beam_io
from pipelines.core.card import INDEX_NAME
from pipelines.core.shards import load_npy, read_tar

# The members a deformed copy is made from: the original JSON and the stored PCM.
NEEDED = ("json", "pcm.npy")


def read_split_index(dataset: str, split: str, filesystem_args: tuple[str, ...] = ()):
    """The source index's rows of `split`: {"key", "shard", "ranges"}; ranges are
    ((ext, offset, size), ...) of the NEEDED members, or None when the index has no
    member offsets (a dataset written before it had them: its whole tars are read)."""
    import pyarrow.compute as pc

    beam_io.configure(filesystem_args)
    table = beam_io.read_parquet(beam_io.join(dataset, INDEX_NAME))
    table = table.filter(pc.equal(table["split"], split))
    has_members = "members" in table.column_names
    keys, shards = table["key"].to_pylist(), table["shard"].to_pylist()
    members = table["members"].to_pylist() if has_members else [None] * len(keys)
    for key, shard, listed in zip(keys, shards, members):
        yield {"key": key, "shard": shard, "ranges": member_ranges(key, listed)}


def member_ranges(key: str, members: list[dict] | None) -> tuple | None:
    if not members:
        return None
    found = ((m["name"][len(key) + 1 :], m["offset"], m["size"]) for m in members)
    return tuple(sorted(r for r in found if r[0] in NEEDED))


class SourceTracks:
    """Source tracks by (shard, key): (original JSON, int16 PCM or None). Members are read
    by byte range, each shard opened once; without offsets the shard's whole tar is read,
    the last one kept (callers read in shard order). The last track read is kept too, so
    K augmented copies of a track read it once."""

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.ranges = beam_io.RangeReader()
        self._tar: tuple[str, dict] = ("", {})
        self._last: tuple[tuple[str, str], tuple] | None = None

    def read(self, shard: str, key: str, ranges: tuple | None) -> tuple[dict, np.ndarray | None]:
        if self._last is not None and self._last[0] == (shard, key):
            return self._last[1]
        path = beam_io.join(self.dataset, shard)
        if ranges is None:
            members = self._whole_tar(path).get(key, {})
        else:
            members = {ext: self.ranges.read(path, offset, size) for ext, offset, size in ranges}
        if "json" not in members:
            raise ValueError(f"{path} has no {key}.json although the source index lists it")
        meta = json.loads(members["json"])
        pcm = load_npy(members["pcm.npy"]) if "pcm.npy" in members else None
        self._last = ((shard, key), (meta, pcm))
        return meta, pcm

    def _whole_tar(self, path: str) -> dict:
        if self._tar[0] != path:
            data = beam_io.read_bytes(path)
            if data is None:
                raise FileNotFoundError(f"shard listed in the source index is missing: {path}")
            self._tar = (path, read_tar(data))
        return self._tar[1]

    def close(self) -> None:
        self.ranges.close()
        self._tar, self._last = ("", {}), None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
