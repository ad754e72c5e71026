"""The loader against a real S3 server (SeaweedFS): a server stopped and restarted in the
middle of an epoch costs time, not samples (issue 18: it used to drop the rest of each
shard and leave validation empty, `val loss nan`)."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from tagtrain import loader
from tagtrain.loader.cache import ShardCache
from tagtrain.models.registry import get_entry
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


def _read_epochs(url, card, cfg, epochs, results) -> None:
    plan = loader.plan_input(card, SPEC)
    for epoch in range(epochs):
        shards = loader.split_shards(card, url, "train")
        reader = loader.EpochReader(
            loader.ShardStream(shards, plan, card["vocabulary"], cfg, epoch)
        )
        keys = [k for batch in reader for k in batch.keys]
        reader.close()
        results.put((cfg.rank, epoch, sorted(keys), reader.stats.failed_shards))


@pytest.mark.parametrize(
    "partition, stored",
    [("samples", ("mel",)), ("shards", ("mel",)), ("samples", ("mel", "pcm"))],
    ids=["samples-whole", "shards-whole", "samples-ranges"],
)
def test_ranks_sharing_a_cache_smaller_than_their_shards_lose_no_sample(
    tmp_path, partition, stored
):
    """Two ranks of two workers each, on one machine, share a cache that holds two shards.
    Their downloads evict each other's copies all the time, yet every epoch reads every
    sample once: a copy is handed out open, so an eviction after that costs disk space
    until it is closed, never samples (it used to hand out a name, which another process
    could evict before it was opened: 8 of 10 such runs lost a shard)."""
    import multiprocessing

    out = tmp_path / "data"
    card = shardkit.make_dataset(out, {"train": [3] * 8}, seconds=(1.0, 1.5), stored=stored, seed=6)
    # Room for about two shards (disk blocks round up), fewer than the four in use at once.
    limit = 2 * max(s["bytes"] for s in card["splits"]["train"]["shards"])
    epochs, context = 4, multiprocessing.get_context("fork")
    results = context.Queue()
    with shardkit.serve_http(out) as url:
        ranks = [
            context.Process(
                target=_read_epochs,
                args=(
                    url,
                    card,
                    loader.LoaderConfig(
                        batch_size=2,
                        workers=2,
                        shuffle_buffer=4,
                        partition=partition,
                        cache_dir=str(tmp_path / "cache"),
                        cache_limit=limit,
                        read_retries=0,
                        world=2,
                        rank=rank,
                    ),
                    epochs,
                    results,
                ),
            )  # fmt: skip
            for rank in range(2)
        ]
        for process in ranks:
            process.start()
        got = [results.get(timeout=300) for _ in range(2 * epochs)]
        for process in ranks:
            process.join(timeout=60)
    assert [p.exitcode for p in ranks] == [0, 0]
    assert not [failed for *_, failed in got if failed]
    everything = shardkit.split_keys(card, "train")
    for epoch in range(epochs):
        per_rank = [keys for _, e, keys, _ in got if e == epoch]
        assert sorted(per_rank[0] + per_rank[1]) == everything
    # Nothing is left over the limit once no reader holds a copy open (measured as the
    # cache measures it: disk blocks, since a .part file of cached ranges is sparse).
    left = [p for p in (tmp_path / "cache").iterdir() if p.suffix in (".tar", ".part")]
    assert left and sum(p.stat().st_blocks * 512 for p in left) <= limit


def test_a_cached_copy_stays_whole_when_evicted_while_open(tmp_path):
    out = tmp_path / "data"
    card = shardkit.make_dataset(out, {"train": [3, 3]}, seconds=(1.0, 1.5), stored=("mel",))
    names = [s["name"] for s in card["splits"]["train"]["shards"]]
    limit = max(s["bytes"] for s in card["splits"]["train"]["shards"])
    cache = ShardCache(str(tmp_path / "cache"), limit)
    with shardkit.serve_http(out) as url:
        first = cache.open_copy(f"{url}/{names[0]}", {})
        # Another reader's download (another process in practice) evicts the first copy.
        ShardCache(str(tmp_path / "cache"), limit).open_copy(f"{url}/{names[1]}", {}).close()
        assert not cache.path_for(f"{url}/{names[0]}").exists()
        with first:
            assert first.read() == (out / names[0]).read_bytes()


def _batches_by_key(url, card, cache_dir, partition) -> dict:
    cfg = loader.LoaderConfig(
        batch_size=2, workers=0, shuffle_buffer=4, partition=partition,
        cache_dir=cache_dir, read_retries=0,
    )  # fmt: skip
    shards = loader.split_shards(card, url, "train")
    stream = loader.ShardStream(shards, loader.plan_input(card, SPEC), card["vocabulary"], cfg)
    reader = loader.EpochReader(stream)
    out = {
        key: (x.double().sum().item(), tuple(y.tolist()))
        for batch in reader
        for key, x, y in zip(batch.keys, batch.x, batch.y)
    }
    reader.close()
    assert reader.stats.shard_errors == 0
    return out


@pytest.mark.parametrize("partition", ["samples", "shards"])
@pytest.mark.parametrize("stored", [("mel",), ("mel", "pcm")], ids=["whole", "ranges"])
def test_a_dataset_prepared_again_at_the_same_url_is_not_read_from_the_cache(
    tmp_path, partition, stored
):
    """The cache and the in-process index are keyed by the shards' sha256 in the card:
    prepared again with other audio and labels under the same names, the dataset reads as
    its new self (the cached copy of the old shards used to be read instead, silently)."""
    out, cache = tmp_path / "data", str(tmp_path / "cache")
    sizes, seconds = {"train": [3, 3]}, (1.0, 1.0)  # the same member sizes both times
    card = shardkit.make_dataset(out, sizes, seconds=seconds, stored=stored, seed=1)
    with shardkit.serve_http(out) as url:
        old = _batches_by_key(url, card, cache, partition)
        card = shardkit.make_dataset(out, sizes, seconds=seconds, stored=stored, seed=2)
        new = _batches_by_key(url, card, None, partition)
        assert len(new) == 6 and all(new[k] != old[k] for k in new)
        assert _batches_by_key(url, card, cache, partition) == new


@pytest.mark.parametrize("partition", ["samples", "shards"])
def test_a_downloaded_shard_that_is_not_the_cards_is_never_cached(tmp_path, partition, monkeypatch):
    """A shard is hashed as it is downloaded into the cache: one whose bytes differ from
    the card's sha256 (the object replaced since the card was written) is counted as a
    failed shard, named, and not kept, where every later epoch would have read it."""
    out, cache = tmp_path / "data", tmp_path / "cache"
    card = shardkit.make_dataset(out, {"train": [3, 3]}, seconds=(1.0, 1.0), stored=("mel",))
    shards = card["splits"]["train"]["shards"]
    shards[1]["sha256"] = "0" * 64
    cfg = loader.LoaderConfig(
        batch_size=1, workers=0, shuffle_buffer=4, partition=partition,
        cache_dir=str(cache), read_retries=2, retry_backoff=0.01,
    )  # fmt: skip
    downloads = []
    download = ShardCache._download

    def counted(self, url, *args):
        downloads.append(url.rsplit("/", 1)[-1])
        return download(self, url, *args)

    monkeypatch.setattr(ShardCache, "_download", counted)
    with shardkit.serve_http(out) as url:
        stream = loader.ShardStream(
            loader.split_shards(card, url, "train"), loader.plan_input(card, SPEC),
            card["vocabulary"], cfg,
        )  # fmt: skip
        reader = loader.EpochReader(stream)
        keys = [k for batch in reader for k in batch.keys]
        reader.close()
    assert sorted(keys) == shardkit.split_keys(card, "train")[:3]
    assert reader.stats.failed_shards == [shards[1]["name"]]
    assert "has changed since the card was written" in " ".join(reader.stats.errors)
    # Permanent, not retried: the same object would download the same bytes.
    assert sorted(downloads) == [shards[0]["name"], shards[1]["name"]]
    kept = [p.name.split("-", 1)[1] for p in cache.iterdir() if p.suffix == ".tar"]
    assert kept == [shards[0]["name"]]
