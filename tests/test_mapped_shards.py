"""Local shards are read through memory maps (tagtrain/loader/mapped.py): a member is a
view of the page cache. A mapped page past a file's end faults with SIGBUS, which would
end the trainer where a short read was a counted failure, so these tests run the loader
in a child process and require it to survive a shard truncated in place: after it was
mapped, and between the read of a batch's members and their decoding. Also: a fetcher
keeps a bounded number of files open and reads evicted ones again correctly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap

import pytest

from tagtrain.loader import ranged
from tagtrain.loader.ranged import RangeFailure, RangeFetcher
from tests import shardkit


def run_child(script: str, *args) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != -signal.SIGBUS, "the loader touched a truncated shard (SIGBUS)"
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_tar(path, members: dict[str, bytes]) -> dict[str, tuple[int, int]]:
    """A tar of `members`; {name: (data offset, size)}."""
    import io

    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers()}


def test_a_shard_truncated_after_it_was_mapped_fails_as_a_short_read(tmp_path):
    path = tmp_path / "shard.tar"
    where = write_tar(path, {f"k{i}.bin": bytes([i]) * 300_000 for i in range(4)})
    out = run_child(
        """
        import json, os, sys
        from tagtrain.loader.ranged import RangeFailure, RangeFetcher
        path, members = sys.argv[1], json.loads(sys.argv[2])
        fetcher = RangeFetcher([path], {}, retries=0, backoff=0.0)
        first = fetcher.fetch_members(0, [("k0.bin", *members["k0.bin"])])
        ok = bytes(first[0]) == bytes([0]) * 300_000
        os.truncate(path, members["k2.bin"][0])  # k2 and k3 are gone
        later = fetcher.fetch_members_many({0: [("k3.bin", *members["k3.bin"])]})[0]
        print(json.dumps({"first": ok, "later": repr(later), "failed": fetcher.failed}))
        """,
        path, json.dumps(where),
    )  # fmt: skip
    assert out["first"]
    assert out["later"].startswith("RangeFailure") and "ShortRead" in out["later"]
    assert list(out["failed"]) == ["0"]


def test_a_shard_truncated_between_reading_and_decoding_is_given_up(tmp_path):
    """The loader's fetch reads a batch's members (views) and then decodes them; the
    shard is cut short in between: its samples are counted as read errors, the others
    are trained on, and the process lives."""
    shardkit.make_dataset(tmp_path, {"train": [8, 8, 8, 8]}, seed=3)
    out = run_child(
        """
        import json, os, sys
        from tagtrain import loader as data
        from tagtrain.loader import ranged
        from tagtrain.models.registry import get_entry

        where = sys.argv[1]
        card = data.load_card(where, {})
        plan = data.plan_input(card, get_entry("short_chunk_cnn").input_spec)
        shards = data.split_shards(card, where, "train")
        cfg = data.LoaderConfig(batch_size=4, workers=0, seed=0, max_bad_fraction=1.0)
        stream = data.ShardStream(shards, plan, card["vocabulary"], cfg, 0)
        victim = shards[1].url
        real = ranged.RangeFetcher.fetch_members_many

        def fetch_then_truncate(self, jobs):
            got = real(self, jobs)
            if any(self.urls[s] == victim for s in jobs) and os.path.getsize(victim) > 1024:
                os.truncate(victim, 1024)  # only its first header is left
            return got

        ranged.RangeFetcher.fetch_members_many = fetch_then_truncate
        reader = data.EpochReader(stream)
        trained = sum(len(batch.keys) for batch in reader)
        stats = reader.stats
        print(json.dumps({"trained": trained, "failed": stats.failed_shards,
                          "bad": stats.bad_by_reason, "samples": stats.samples}))
        """,
        tmp_path,
    )  # fmt: skip
    assert out["failed"] == ["train-000001.tar"]
    assert out["bad"] == {"read_error": 8}
    assert out["samples"] == 24
    assert 16 <= out["trained"] <= 24  # full batches of the 24 good samples


def test_cached_member_ranges_are_mapped_and_guarded_too(tmp_path):
    """The range cache's local copies (a remote shard's member ranges, `rangecache`) are
    read through a map as well: the views it gives are guarded by the same check."""
    out = run_child(
        """
        import json, os, sys
        from tagtrain.loader.cache import ShardCache
        from tagtrain.loader.rangecache import RangeCache
        from tagtrain.loader.ranged import HEADER, RangeFetcher

        cache_dir = sys.argv[1]
        url = "s3://bucket/shard.tar"
        header = bytearray(HEADER)
        header[:9], header[124:136], header[156:157] = b"k0.member", b"00000002000 ", b"0"
        ranges = [(1024, HEADER + 1024)]
        cache = RangeCache(ShardCache(cache_dir, retries=0, backoff=0.0))
        cache.write(url, ranges, [bytes(header) + b"m" * 1024])
        options = {"s3": {"endpoint_url": "http://127.0.0.1:9", "key": "k", "secret": "s"}}
        fetcher = RangeFetcher([url], options, retries=0, backoff=0.0, range_cache=cache)
        (member,) = fetcher.fetch_members(0, [("k0.member", 1024 + HEADER, 1024)])
        first = bytes(member) == b"m" * 1024
        held = fetcher.holds(0, 2048 + HEADER)
        part = next(p for p in os.listdir(cache_dir) if p.endswith(".part"))
        os.truncate(os.path.join(cache_dir, part), 1024)
        print(json.dumps({"first": first, "held": held, "after": fetcher.holds(0, 2048 + HEADER),
                          "mapped": cache.mapped(url, ranges) is not None}))
        """,
        tmp_path,
    )  # fmt: skip
    assert out == {"first": True, "held": True, "after": False, "mapped": False}


def test_a_fetcher_keeps_a_bounded_number_of_files_open(tmp_path, monkeypatch):
    monkeypatch.setattr(ranged, "_OPEN_FILES", 2)
    paths, where = [], []
    for s in range(5):
        paths.append(tmp_path / f"s{s}.tar")
        where.append(write_tar(paths[-1], {"a.bin": bytes([s]) * 1000}))
    fetcher = RangeFetcher([str(p) for p in paths], {}, retries=0, backoff=0.0)
    for _ in range(2):  # the second round reopens the files evicted in the first
        for s in range(5):
            (data,) = fetcher.fetch_members(s, [("a.bin", *where[s]["a.bin"])])
            assert bytes(data) == bytes([s]) * 1000
            assert len(fetcher.files) <= 2
    assert not fetcher.failed
    fetcher.close()
    assert not fetcher.files


@pytest.mark.parametrize("size", [0, 100])
def test_an_empty_or_tiny_local_shard_is_a_short_read(tmp_path, size):
    path = tmp_path / "s.tar"
    path.write_bytes(b"x" * size)
    fetcher = RangeFetcher([str(path)], {}, retries=0, backoff=0.0)
    failure = fetcher.fetch_members_many({0: [("a.bin", 512, 1000)]})[0]
    assert isinstance(failure, RangeFailure) and "ShortRead" in str(failure)
    assert os.path.getsize(path) == size  # nothing written
