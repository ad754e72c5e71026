"""The loader against a real S3 server (SeaweedFS): a server stopped and restarted in the
middle of an epoch costs time, not samples (issue 18: it used to drop the rest of each
shard and leave validation empty, `val loss nan`)."""

from __future__ import annotations

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
