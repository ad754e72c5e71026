"""Fewer, larger S3 requests (issue 18, third pass): neighbouring samples of a shard in one
fetch window become one range request, the batches stay exactly those of local reading,
and bytes fetched / bytes used stays <= 1.1 (merged gaps counted)."""

from __future__ import annotations

import pytest
import torch

from tagtrain import loader
from tagtrain.loader.ranged import merge_ranges
from tagtrain.models.registry import get_entry
from tests import shardkit

SPEC = get_entry("short_chunk_cnn").input_spec


def test_merging_joins_near_ranges_within_the_gap_budget():
    # Two members side by side (a 100-byte gap), one far away, one overlapping.
    ranges = [(0, 1000), (1100, 1000), (50_000, 1000), (1500, 100)]
    assert merge_ranges(ranges, max_gap=16 << 10, gap_fraction=0.04) == (
        [0, 50_000],
        [2100, 51_000],
    )
    # The gaps joined may not pass gap_fraction of the wanted bytes: 200 of 3000 is 6.7%.
    spaced = [(0, 1000), (1100, 1000), (2200, 1000)]
    assert merge_ranges(spaced, gap_fraction=0.04) == ([0, 2200], [2100, 3200])
    assert merge_ranges(spaced, gap_fraction=0.1) == ([0], [3200])
    # Nor may a request grow past max_request.
    assert merge_ranges(spaced, gap_fraction=0.1, max_request=2500) == ([0, 2200], [2100, 3200])
    assert merge_ranges([]) == ([], [])


def read(url, card, cfg, epoch=1):
    shards = loader.split_shards(card, url, "train")
    stream = loader.ShardStream(
        shards, loader.plan_input(card, SPEC), card["vocabulary"], cfg, epoch
    )
    assert stream.sample_level
    reader = loader.EpochReader(stream)
    batches = list(reader)
    reader.close()
    return batches, reader.stats


@pytest.mark.parametrize("workers", [0, 2])
def test_neighbouring_samples_of_a_shard_are_one_request(seaweed_s3, tmp_path, workers):
    out = tmp_path / "data"
    card = shardkit.make_dataset(
        out, {"train": [6, 6, 6, 6]}, seconds=(1.0, 1.5), stored=("mel",), seed=3
    )
    url = seaweed_s3.upload_dir(out, "shards/data")
    cfg = loader.LoaderConfig(batch_size=2, workers=workers, shuffle_buffer=8, seed=2)
    local, _ = read(str(out), card, cfg)
    remote_cfg = loader.LoaderConfig(
        batch_size=2, workers=workers, shuffle_buffer=8, seed=2,
        storage_options={"s3": seaweed_s3.storage_options()},
    )  # fmt: skip
    remote, stats = read(url, card, remote_cfg)
    assert [b.keys for b in remote] == [b.keys for b in local]
    assert all(torch.equal(a.x, b.x) and torch.equal(a.y, b.y) for a, b in zip(local, remote))
    assert stats.samples == 24 and stats.shard_errors == 0
    # One request per sample before; now runs of a shard within a window go together:
    # one worker reads whole 8-sample blocks (a block spans at most 2 shards), two
    # workers each half of a block.
    assert stats.range_requests <= (8 if workers == 0 else 16)
    assert stats.bytes_used <= stats.bytes_read <= 1.1 * stats.bytes_used
