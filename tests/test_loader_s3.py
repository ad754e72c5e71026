"""The loader against a real S3 server (SeaweedFS): a server stopped and restarted in the
middle of an epoch costs time, not samples (issue 18: it used to drop the rest of each
shard and leave validation empty, `val loss nan`)."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from tagtrain import loader
from tagtrain.registry import get_entry
from tests import shardkit

SPEC = get_entry("short_chunk_cnn").input_spec


def restart_soon(server, down_seconds: float = 1.0) -> threading.Thread:
    def bounce():
        server.stop()
        time.sleep(down_seconds)
        server.start()

    thread = threading.Thread(target=bounce, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("partition, train", [("samples", True), ("shards", False)])
def test_a_server_restart_mid_epoch_loses_no_sample(seaweed_s3, tmp_path, partition, train):
    out = tmp_path / "data"
    card = shardkit.make_dataset(
        out, {"train": [3, 3, 3, 3]}, seconds=(1.0, 1.5), stored=("mel",), seed=6
    )
    url = seaweed_s3.upload_dir(out, "shards/data")
    options = {"s3": seaweed_s3.storage_options()}
    assert loader.load_card(url, options) == card
    cfg = loader.LoaderConfig(
        batch_size=1, workers=0, shuffle_buffer=0, storage_options=options,
        partition=partition, train=train, read_retries=7, retry_backoff=0.5,
    )  # fmt: skip
    shards = loader.split_shards(card, url, "train")
    stream = loader.ShardStream(shards, loader.plan_input(card, SPEC), card["vocabulary"], cfg)
    assert stream.sample_level == (partition == "samples")
    reader = loader.EpochReader(stream)
    seen, bounce = [], None
    for batch in reader:
        seen += batch.keys
        if len(seen) == 4 and bounce is None:
            bounce = restart_soon(seaweed_s3)
            time.sleep(0.5)  # the server is down when the next read starts
    reader.close()
    bounce.join(timeout=120)
    assert sorted(seen) == shardkit.split_keys(card, "train")
    assert reader.stats.shard_errors == 0 and reader.stats.bad_samples == 0
    if partition == "samples":  # the ranged reads went through obstore, the default
        assert reader.stats.obstore_requests == reader.stats.range_requests > 0


@pytest.mark.parametrize("partition", ["samples", "shards"])
def test_second_epoch_reads_the_local_cache(tmp_path, partition):
    out = tmp_path / "data"
    card = shardkit.make_dataset(
        out, {"train": [3, 3, 3, 3]}, seconds=(1.0, 1.5), stored=("mel",), seed=6
    )
    cache = tmp_path / "cache"
    cfg = loader.LoaderConfig(
        batch_size=2, workers=2, shuffle_buffer=4, partition=partition,
        cache_dir=str(cache), read_retries=0,
    )  # fmt: skip
    plan = loader.plan_input(card, SPEC)

    def epoch(url, epoch_no, config=cfg):
        shards = loader.split_shards(card, url, "train")
        stream = loader.ShardStream(shards, plan, card["vocabulary"], config, epoch_no)
        reader = loader.EpochReader(stream)
        keys = [k for batch in reader for k in batch.keys]
        reader.close()
        return keys, reader.stats

    with shardkit.serve_http(out) as url:
        first, _ = epoch(url, 0)
    cached = sorted(p.name.split("-", 1)[1] for p in cache.iterdir() if p.suffix == ".tar")
    assert cached == [s["name"] for s in card["splits"]["train"]["shards"]]
    # The server is gone: the second epoch can only come from the cache.
    second, stats = epoch(url, 1)
    assert sorted(second) == sorted(first) and len(first) == 12
    assert stats.shard_errors == 0
    # A limit of two shards keeps at most two (least recently used evicted first).
    limit = 2 * max(s["bytes"] for s in card["splits"]["train"]["shards"])
    with shardkit.serve_http(out) as url:
        epoch(
            url, 2, dataclasses.replace(cfg, cache_dir=str(tmp_path / "small"), cache_limit=limit)
        )
    kept = [p for p in (tmp_path / "small").iterdir() if p.suffix == ".tar"]
    assert 1 <= len(kept) <= 2 and sum(p.stat().st_size for p in kept) <= limit


def test_a_mel_model_on_mel_and_pcm_caches_only_the_ranges_it_reads(tmp_path):
    """The cache keeps a shard's member ranges, not the whole shard, when the model reads
    a small part of it: the first epoch downloads about the bytes it uses, the second
    reads them locally, and a damaged cached range is fetched again, never used."""
    out = tmp_path / "data"
    card = shardkit.make_dataset(
        out, {"train": [3, 3, 3, 3]}, seconds=(1.0, 1.5), stored=("mel", "pcm"), seed=6
    )
    cache = tmp_path / "cache"
    cfg = loader.LoaderConfig(
        batch_size=2, workers=2, shuffle_buffer=4, partition="samples",
        cache_dir=str(cache), read_retries=0,
    )  # fmt: skip
    plan = loader.plan_input(card, SPEC)
    assert plan.member == "mel.npy"

    def epoch(url, epoch_no):
        shards = loader.split_shards(card, url, "train")
        reader = loader.EpochReader(
            loader.ShardStream(shards, plan, card["vocabulary"], cfg, epoch_no)
        )
        keys = [k for batch in reader for k in batch.keys]
        reader.close()
        return keys, reader.stats

    with shardkit.serve_http(out) as url:
        first, stats = epoch(url, 0)
    assert len(first) == 12 and stats.shard_errors == 0
    assert stats.bytes_read <= 1.1 * stats.bytes_used
    assert not [p for p in cache.iterdir() if p.suffix == ".tar"]  # no whole shard
    parts = sorted(p for p in cache.iterdir() if p.suffix == ".part")
    assert len(parts) == 4
    on_disk = sum(p.stat().st_blocks * 512 for p in parts)
    shard_bytes = sum(s["bytes"] for s in card["splits"]["train"]["shards"])
    assert on_disk < 0.6 * shard_bytes  # the PCM was never fetched nor stored
    # The server is gone: the second epoch can only come from the cache.
    second, stats = epoch(url, 1)
    assert sorted(second) == sorted(first) and stats.shard_errors == 0
    # A damaged cached copy (zeros where the ranges were) is noticed and fetched again.
    for part in parts:
        part.write_bytes(bytes(part.stat().st_size))
    with shardkit.serve_http(out) as url:
        third, stats = epoch(url, 2)
    assert sorted(third) == sorted(first) and stats.shard_errors == 0
