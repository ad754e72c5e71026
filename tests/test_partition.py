"""Sample-level partitioning (issue 18): any world size, worker count and batch size gets
equal batches per rank with at most one partial global batch dropped, and a resumed epoch
(same or other world size / worker count) sees every remaining sample exactly once."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tagtrain import loader
from tagtrain.loader.index import SampleRef
from tagtrain.loader.partition import epoch_order, rank_batches, steps_per_epoch
from tagtrain.models.registry import get_entry
from tests import shardkit
from tests.test_loader import read_epoch

SPEC = get_entry("short_chunk_cnn").input_spec


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return shardkit.uneven_train_shards(tmp_path_factory.mktemp("shards"))


def read(out, card, cfg, epoch=1, resume=None, limit=None):
    """test_loader's epoch reader, on the sample-level path (the index has member offsets)."""
    batches, reader = read_epoch(out, card, cfg, epoch, resume, limit=limit)
    assert reader.stream.sample_level
    return batches, reader


def keys(batches):
    return [k for b in batches for k in b.keys]


@pytest.mark.parametrize("world, batch", [(1, 4), (8, 4), (4, 64), (8, 1), (3, 7)])
def test_every_layout_gets_equal_full_batches(world, batch):
    """The partition itself, at cluster sizes (8 GPUs x 16 workers on 83 MTAT-like
    shards raised LoaderError or dropped up to 17.7% of the samples before)."""
    refs = [
        [SampleRef(s, f"s{s}_{i}", (("json", 512, 10),)) for i in range(300 + s)] for s in range(83)
    ]
    order = epoch_order(refs, [f"shard{s}" for s in range(83)], seed=0, epoch=3, block=256)
    total = len(order)
    assert sorted(r.key for r in order) == sorted(r.key for rs in refs for r in rs)
    per_rank = [rank_batches(total, 0, batch, world, rank) for rank in range(world)]
    assert {len(b) for b in per_rank} == {steps_per_epoch(total, batch, world)}
    used = [i for b in per_rank for start, stop in b for i in range(start, stop)]
    assert len(used) == len(set(used))
    assert total - len(used) < batch * world  # at most one partial global batch dropped
    for workers in (1, 16):  # workers take turns: any count splits a rank's batches
        shares = [per_rank[0][w::workers] for w in range(workers)]
        assert sum(len(s) for s in shares) == len(per_rank[0])


def test_two_ranks_with_two_workers_read_disjoint_equal_batches(dataset):
    out, card = dataset
    cfg = loader.LoaderConfig(batch_size=3, workers=2, shuffle_buffer=8, seed=4, world=2)
    ranks = [read(out, card, dataclasses.replace(cfg, rank=r))[0] for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 23 // 6
    assert all(len(b.keys) == 3 for r in ranks for b in r)
    seen = keys(ranks[0]) + keys(ranks[1])
    assert len(seen) == len(set(seen)) == 18


@pytest.mark.parametrize("kill_after", [3, 4])
def test_resume_with_the_same_layout_continues_in_order(dataset, kill_after):
    out, card = dataset
    cfg = loader.LoaderConfig(batch_size=2, workers=2, shuffle_buffer=8, seed=1)
    full, _ = read(out, card, cfg)
    first, reader = read(out, card, cfg, limit=kill_after)
    resume = loader.decode_positions(reader.encoded_positions())
    rest, _ = read(out, card, cfg, resume=resume)
    assert keys(first) + keys(rest) == keys(full)
    crops = {k: x for b in full for k, x in zip(b.keys, b.x)}
    for batch in rest:
        for k, x in zip(batch.keys, batch.x):
            assert torch.equal(x, crops[k])


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_resume_with_other_worker_counts_sees_each_sample_once(dataset, workers):
    out, card = dataset
    cfg = loader.LoaderConfig(batch_size=2, workers=2, shuffle_buffer=8, seed=1)
    full, _ = read(out, card, cfg)
    first, reader = read(out, card, cfg, limit=5)
    resume = loader.decode_positions(reader.encoded_positions())
    rest, _ = read(out, card, dataclasses.replace(cfg, workers=workers), resume=resume)
    assert keys(first) + keys(rest) == keys(full)  # the same global order, continued


def test_resume_with_another_world_size_sees_each_sample_once(dataset):
    out, card = dataset
    cfg = loader.LoaderConfig(batch_size=2, workers=2, shuffle_buffer=8, seed=1, world=2)
    done, states = [], []
    for rank in range(2):
        batches, reader = read(out, card, dataclasses.replace(cfg, rank=rank), limit=3)
        done += keys(batches)
        states.append(reader.encoded_positions())
    # Every rank's state names the same global count; rank 0's is enough.
    assert torch.equal(states[0][:, :2].amax(0), states[1][:, :2].amax(0))
    single = dataclasses.replace(cfg, world=1, rank=0, workers=3)
    rest, _ = read(out, card, single, resume=loader.decode_positions(states[0]))
    seen = done + keys(rest)
    assert len(seen) == len(set(seen))
    assert len(seen) == 12 + (23 - 12) // 2 * 2  # nothing replayed, nothing skipped


def test_resume_rows_take_any_rank_of_a_sample_level_state(dataset):
    out, card = dataset
    cfg = loader.LoaderConfig(batch_size=2, workers=2, shuffle_buffer=8, seed=1, world=2)
    tables = [
        read(out, card, dataclasses.replace(cfg, rank=r), limit=2)[1].encoded_positions()
        for r in range(2)
    ]
    table = torch.stack(tables)  # what the trainer gathers: [world, workers, width]
    assert loader.is_sample_state(table)
    rows = loader.resume_rows(table, rank=2)  # a rank the old run did not have
    assert loader.decode_positions(rows)[0].next_index == 8  # 2 steps x 2 ranks x 2
    shard_level = torch.zeros(2, 2, 5, dtype=torch.int64)
    assert not loader.is_sample_state(shard_level)
    assert torch.equal(loader.resume_rows(shard_level, 1), shard_level[1])


def test_a_mel_model_fetches_only_the_mel_of_a_mel_and_pcm_dataset(tmp_path):
    card = shardkit.make_dataset(
        tmp_path, {"train": [4, 4]}, seconds=(3.0, 3.5), stored=("mel", "pcm"), seed=1
    )
    ratios = {}
    for partition in ("samples", "shards"):
        cfg = loader.LoaderConfig(batch_size=2, workers=0, partition=partition)
        shards = loader.split_shards(card, str(tmp_path), "train")
        plan = loader.plan_input(card, SPEC)
        reader = loader.EpochReader(loader.ShardStream(shards, plan, card["vocabulary"], cfg))
        assert sum(len(b.keys) for b in reader) == 8
        ratios[partition] = reader.stats.bytes_read / reader.stats.bytes_used
    assert ratios["samples"] <= 1.1  # the PCM members are never fetched
    assert ratios["shards"] > 2  # a whole-shard stream passes over them


def test_a_split_index_holds_columns_not_an_object_per_sample(tmp_path):
    """Issue 31: at a million tracks, one Python object per sample (key string, member
    tuples) was 1.3 kB each, 1.3 GB in the trainer and again in every loader worker
    that touched it. The index is held as arrays: well under 100 bytes of Python heap
    per sample (Arrow's keys are outside the Python heap)."""
    import tracemalloc

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tagtrain.loader.index import load_sample_refs

    n, per = 20000, 500
    keys = [f"train_{i:07d}" for i in range(n)]
    members = [
        [{"name": f"{k}.json", "offset": 512 + 2048 * (i % per), "size": 90},
         {"name": f"{k}.mel.npy", "offset": 1536 + 2048 * (i % per), "size": 200}]
        for i, k in enumerate(keys)
    ]  # fmt: skip
    names = [f"train-{i // per:06d}.tar" for i in range(n)]
    table = pa.table({"key": keys, "shard": names, "members": members})
    pq.write_table(table, tmp_path / "index.parquet")
    shards = [
        loader.ShardInfo(f"train-{s:06d}.tar", str(tmp_path / f"train-{s:06d}.tar"), per)
        for s in range(n // per)
    ]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        index = load_sample_refs(shards)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(index) == n and index.ref(per + 1).key == keys[per + 1]
    assert index.ref(per + 1).member("mel.npy") == (1536 + 2048, 200)
    assert kept < 100 * n


@pytest.mark.parametrize("dictionary", [True, False])
def test_index_rows_of_other_shards_or_of_none_are_left_out(dictionary):
    """The index holds every split: rows of other shards, or with no shard, are not the
    split's (as the per-row reader skipped them), however Parquet hands the column back."""
    import pyarrow as pa

    from tagtrain.loader.index import _split_index

    shard = pa.array(["s1", None, "other", "s2"])
    table = pa.table({
        "key": ["a", "b", "x", "c"],
        "shard": shard.dictionary_encode() if dictionary else shard,
        "members": [[{"name": f"{k}.json", "offset": 512, "size": 1}] for k in "abxc"],
    })  # fmt: skip
    shards = [loader.ShardInfo("s1", "u/s1", 1), loader.ShardInfo("s2", "u/s2", 1)]
    index = _split_index("u", table, shards)
    assert index.key_list() == ["a", "c"] and index.shard.tolist() == [0, 1]
    assert index.ref(1).member("json") == (512, 1)


def test_an_interleaved_index_is_grouped_by_shard_in_tar_order():
    """Prepare's index is sorted by key, its shards interleaved: each shard's rows come
    out together, in tar order (also when an index lists a shard's rows out of it)."""
    import pyarrow as pa

    from tagtrain.loader.index import _split_index

    rows = [("k0", "s1", 1024), ("k1", "s0", 512), ("k2", "s1", 512), ("k3", "s0", 2048),
            ("k4", "s0", 1536)]  # fmt: skip
    table = pa.table({
        "key": [k for k, _, _ in rows],
        "shard": [s for _, s, _ in rows],
        "members": [[{"name": f"{k}.json", "offset": o, "size": 1}] for k, _, o in rows],
    })  # fmt: skip
    shards = [loader.ShardInfo("s0", "u/s0", 3), loader.ShardInfo("s1", "u/s1", 2)]
    index = _split_index("u", table, shards)
    assert index.key_list() == ["k1", "k4", "k3", "k2", "k0"]
    assert index.starts.tolist() == [0, 3, 5] and index.shard.tolist() == [0, 0, 0, 1, 1]
    in_tar_order = table.take([2, 1, 0, 4, 3])  # each shard's rows in tar order
    assert _split_index("u", in_tar_order, shards).key_list() == ["k1", "k4", "k3", "k2", "k0"]


@pytest.mark.parametrize("block", [1, 3, 16, 1000])
def test_the_epoch_order_permutes_each_block_by_the_keys_hash(block):
    """Blocks sorted one by one (the last one partial) give the order of one sort on
    (block, hash of the key), which is what earlier checkpoints resume against."""
    import numpy as np

    from tagtrain.loader.index import SplitIndex
    from tagtrain.loader.partition import epoch_rows
    from tagtrain.loader.shuffle import stable_int

    refs = [
        [SampleRef(s, f"s{s}_{i}", (("json", 512, 10),)) for i in range(37 + s)] for s in range(5)
    ]
    names = [f"shard{s}" for s in range(5)]
    index = SplitIndex.from_refs(refs)
    rows = epoch_rows(index, names, seed=2, epoch=1, block=block)
    shard_order = sorted(range(5), key=lambda s: stable_int("shards", 2, 1, names[s]))
    flat = [ref.key for s in shard_order for ref in refs[s]]
    expected = []
    for start in range(0, len(flat), max(1, block)):
        chunk = flat[start : start + max(1, block)]
        expected += (
            sorted(chunk, key=lambda k: stable_int("order", 2, 1, k)) if block > 1 else chunk
        )
    assert [index.key(r) for r in rows] == expected and isinstance(rows, np.ndarray)
