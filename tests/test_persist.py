"""Persistent loader workers (issue 18, third pass): a `LoaderPool` keeps the same worker
processes for every epoch, and each epoch's batches are exactly those of workers forked
for that epoch, including an epoch the trainer left early and a resumed epoch."""

from __future__ import annotations

import pytest
import torch

from tagtrain import loader
from tagtrain.models.registry import get_entry
from tests import shardkit
from tests.test_loader import drain, read_epoch

SPEC = get_entry("short_chunk_cnn").input_spec


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return shardkit.uneven_train_shards(tmp_path_factory.mktemp("shards"))


def pooled_epoch(pool, epoch, resume=None, limit=None):
    return drain(loader.EpochReader(pool.stream(epoch, resume), pool=pool), limit)


def same_batches(a, b) -> bool:
    return [x.keys for x in a] == [x.keys for x in b] and all(
        torch.equal(x.x, y.x) and torch.equal(x.y, y.y) for x, y in zip(a, b)
    )


def worker_pids(pool) -> list[int]:
    return [w.pid for w in pool.loader._iterator._workers]


@pytest.mark.parametrize("partition", ["samples", "shards"])
def test_a_pool_keeps_its_workers_and_gives_each_epoch_the_same_batches(dataset, partition):
    out, card = dataset
    cfg = loader.LoaderConfig(
        batch_size=2, workers=2, shuffle_buffer=4, seed=1, partition=partition
    )
    shards = loader.split_shards(card, str(out), "train")
    plan = loader.plan_input(card, SPEC)
    pool = loader.LoaderPool(loader.ShardStream(shards, plan, card["vocabulary"], cfg, 0))
    try:
        left_early, _ = pooled_epoch(pool, 0, limit=3)  # prefetched batches stay behind
        pids = worker_pids(pool)
        assert same_batches(left_early, read_epoch(out, card, cfg, 0, limit=3)[0])
        first, reader = pooled_epoch(pool, 1, limit=5)
        resume = loader.decode_positions(reader.encoded_positions())
        rest, _ = pooled_epoch(pool, 1, resume)
        whole, _ = pooled_epoch(pool, 2)
        assert worker_pids(pool) == pids  # the same processes served every epoch
    finally:
        pool.close()
    assert same_batches(first + rest, read_epoch(out, card, cfg, 1)[0])
    assert same_batches(whole, read_epoch(out, card, cfg, 2)[0])
    assert [b.keys for b in whole] != [b.keys for b in first + rest]  # epochs differ


def test_a_pool_refuses_zero_workers(dataset):
    out, card = dataset
    cfg = loader.LoaderConfig(batch_size=2, workers=0)
    shards = loader.split_shards(card, str(out), "train")
    stream = loader.ShardStream(shards, loader.plan_input(card, SPEC), card["vocabulary"], cfg)
    with pytest.raises(ValueError, match="workers"):
        loader.LoaderPool(stream)


def test_the_control_table_round_trips_positions():
    control = loader.persist.EpochControl(rows=3, width=loader.position_width(2))
    positions = {
        0: loader.WorkerPosition(1, 2, 3, [(0, 1), (1, 0)], 4),
        2: loader.WorkerPosition(-2, 40),
    }
    control.write(7, positions)
    assert control.read() == (7, positions)
    control.write(8, {})
    assert control.read() == (8, {})
    with pytest.raises(ValueError, match="rows"):
        control.write(9, {k: loader.WorkerPosition() for k in range(4)})


def test_a_pool_reads_s3_with_a_session_made_before_the_fork(seaweed_s3, dataset):
    from tagtrain.loader import openers

    out, card = dataset
    url = seaweed_s3.upload_dir(out, "shards/data")
    options = {"s3": seaweed_s3.storage_options()}
    cfg = loader.LoaderConfig(
        batch_size=2, workers=2, shuffle_buffer=4, seed=1, storage_options=options
    )
    shards = loader.split_shards(card, url, "train")
    plan = loader.plan_input(card, SPEC)
    pool = loader.LoaderPool(loader.ShardStream(shards, plan, card["vocabulary"], cfg, 0))
    try:
        key = openers.json.dumps(openers.storage_options_for(url, options), sort_keys=True)
        assert key in openers._WARM_SESSIONS  # made here, for the workers' clients
        epochs = [pooled_epoch(pool, epoch)[0] for epoch in (0, 1)]
    finally:
        pool.close()
    local_cfg = loader.LoaderConfig(batch_size=2, workers=2, shuffle_buffer=4, seed=1)
    for epoch, batches in enumerate(epochs):
        assert same_batches(batches, read_epoch(out, card, local_cfg, epoch)[0])


def test_a_stream_replanned_for_its_own_epoch_keeps_its_plan(dataset, monkeypatch):
    """Issue 31: a pool's workers re-plan the template stream for its first epoch, which
    the main process planned before they forked; ordering a million samples again cost
    each worker ~1 s before its first batch. Another epoch or resume state is planned."""
    from tagtrain.loader import stream as stream_module

    out, card = dataset
    cfg = loader.LoaderConfig(batch_size=2, workers=2, shuffle_buffer=4, seed=1)
    shards = loader.split_shards(card, str(out), "train")
    plan = loader.plan_input(card, SPEC)
    template = loader.ShardStream(shards, plan, card["vocabulary"], cfg, 3)
    calls = []
    real = stream_module.epoch_rows
    monkeypatch.setattr(stream_module, "epoch_rows", lambda *a: calls.append(a) or real(*a))
    same = template.for_epoch(3, None)
    assert calls == [] and same.order is template.order and same.epoch == 3
    resume = {0: loader.WorkerPosition(-2, 4)}  # a sample-level state: 4 consumed
    resumed = template.for_epoch(3, resume)
    other = template.for_epoch(4, None)
    assert len(calls) == 2 and resumed.consumed == 4 and other.epoch == 4
    assert list(other.order) != list(template.order)
