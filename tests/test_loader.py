"""The streaming loader on real shards written with the pipeline's own functions."""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
import pickletools
import shutil

import numpy as np
import pytest
import torch

from pipelines.core.card import CardError
from pipelines.core.features import FeatureConfig
from pipelines.core.shards import json_bytes
from tagtrain import loader as data
from tagtrain.loader.openers import OpenerError, join_url
from tagtrain.models.registry import get_entry
from tests import shardkit

SPEC = get_entry("short_chunk_cnn").input_spec


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    card = shardkit.make_dataset(out, {"train": [8, 8, 8, 8], "valid": [6]}, seed=1)
    return out, card


def read_epoch(data_url, card, cfg, epoch=0, resume=None, split="train", limit=None):
    """(batches, reader) of one epoch; commits every batch it returns."""
    shards = data.split_shards(card, str(data_url), split)
    plan = data.plan_input(card, SPEC)
    stream = data.ShardStream(shards, plan, card["vocabulary"], cfg, epoch, resume)
    return drain(data.EpochReader(stream), limit)


def drain(reader, limit=None):
    """(batches, reader): up to `limit` batches of the reader's epoch, each committed."""
    batches = []
    for batch in reader:
        if limit is not None and len(batches) == limit:
            break
        reader.commit(batch)
        batches.append(batch)
    reader.close()
    return batches, reader


def keys_of(batches):
    return [k for b in batches for k in b.keys]


def test_local_http_and_s3_shards_give_the_same_samples(dataset):
    out, card = dataset
    cfg = data.LoaderConfig(batch_size=4, workers=0, shuffle_buffer=8, seed=3)
    local, reader = read_epoch(out, card, cfg)
    assert sorted(keys_of(local)) == shardkit.split_keys(card, "train")
    assert reader.stats.shards_opened == 4 and reader.stats.shard_errors == 0
    assert local[0].x.shape == (4, 128, SPEC.frames) and local[0].x.dtype == torch.float16
    # Labels come from the card's vocabulary, in its order.
    assert local[0].y.shape == (4, len(card["vocabulary"]))
    with shardkit.serve_http(out) as url:
        remote_card = data.load_card(url)
        http, _ = read_epoch(url, remote_card, cfg)
    with shardkit.serve_s3(out) as (url, endpoint):
        options = {"s3": {"endpoint_url": endpoint}}
        remote_card = data.load_card(url, options)
        s3, s3_reader = read_epoch(
            url, remote_card, dataclasses.replace(cfg, storage_options=options)
        )
    assert s3_reader.stats.shard_errors == 0
    for other in (http, s3):
        assert keys_of(other) == keys_of(local)
        for a, b in zip(local, other):
            assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_shard_order_and_crops_depend_on_seed_and_epoch(dataset):
    out, card = dataset
    cfg = data.LoaderConfig(batch_size=4, workers=0, shuffle_buffer=8, seed=3)
    first = keys_of(read_epoch(out, card, cfg, epoch=0)[0])
    assert keys_of(read_epoch(out, card, cfg, epoch=0)[0]) == first
    assert keys_of(read_epoch(out, card, cfg, epoch=1)[0]) != first
    other_seed = dataclasses.replace(cfg, seed=4)
    assert keys_of(read_epoch(out, card, other_seed, epoch=0)[0]) != first


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_sees_each_remaining_sample_once(dataset, workers):
    """Shard-level streams (datasets whose index has no member byte ranges)."""
    out, card = dataset
    cfg = data.LoaderConfig(
        batch_size=3, workers=workers, shuffle_buffer=6, seed=5, partition="shards"
    )
    full, _ = read_epoch(out, card, cfg, epoch=2)
    first, reader = read_epoch(out, card, cfg, epoch=2, limit=4)
    # What a checkpoint stores, through its tensor encoding.
    positions = data.decode_positions(reader.encoded_positions())
    assert any(p.buffer for p in positions.values())  # resumes with a non-empty buffer
    rest, _ = read_epoch(out, card, cfg, epoch=2, resume=positions)
    seen_first, seen_rest = keys_of(first), keys_of(rest)
    assert not set(seen_first) & set(seen_rest)
    assert sorted(seen_first + seen_rest) == sorted(keys_of(full))
    # Same crops as the uninterrupted epoch.
    crops = {k: x for b in full for k, x in zip(b.keys, b.x)}
    for b in rest:
        for k, x in zip(b.keys, b.x):
            assert torch.equal(x, crops[k])


class _CreatesFile:
    """A pickle that creates a file when unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _opens_file(payload: bytes) -> bool:
    """Whether a pickle calls open() (inspected with pickletools, never executed)."""
    args = [arg for _, arg, _ in pickletools.genops(payload)]
    return "open" in args and bool({"io", "builtins"} & set(args))


def test_foreign_and_pickled_members_are_never_unpickled(dataset, tmp_path):
    out, card = dataset
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_CreatesFile(marker))
    assert _opens_file(payload)
    evil_array = io.BytesIO()
    np.save(evil_array, np.array([_CreatesFile(marker)], dtype=object), allow_pickle=True)
    assert _opens_file(evil_array.getvalue()[evil_array.getvalue().index(b"\x80") :])
    members = shardkit.read_members(out / "train-000000.tar")
    first_key = members[0][0].split(".")[0]
    bad_key = "train_99999"
    meta = json.loads(dict(members)[f"{first_key}.json"])
    members += [
        (f"{first_key}.pyd", payload),
        (f"{first_key}.pth", payload),
        (f"{bad_key}.json", json_bytes({**meta, "key": bad_key})),
        (f"{bad_key}.mel.npy", evil_array.getvalue()),
    ]
    copy = tmp_path / "data"
    shutil.copytree(out, copy)
    shardkit.write_raw_tar(copy / "train-000000.tar", members)
    cfg = data.LoaderConfig(batch_size=1, workers=0, shuffle_buffer=0, partition="shards")
    batches, reader = read_epoch(copy, card, cfg)
    assert not marker.exists()
    assert reader.stats.foreign_members == 2
    assert reader.stats.bad_samples == 1  # the object-array .npy refused by allow_pickle=False
    assert sorted(keys_of(batches)) == shardkit.split_keys(card, "train")
    # By byte ranges (the index rewritten to list them): the pickles are never fetched.
    shardkit.reindex(copy)
    batches, reader = read_epoch(copy, card, dataclasses.replace(cfg, partition="samples"))
    assert not marker.exists()
    assert sorted(keys_of(batches)) == shardkit.split_keys(card, "train")


def test_truncated_and_missing_shards_are_skipped_and_counted(dataset, tmp_path):
    out, card = dataset
    copy = tmp_path / "data"
    shutil.copytree(out, copy)
    whole = (copy / "train-000001.tar").read_bytes()
    (copy / "train-000001.tar").write_bytes(whole[: len(whole) // 2 + 700])  # mid-member
    (copy / "train-000002.tar").unlink()
    cfg = data.LoaderConfig(batch_size=1, workers=2, shuffle_buffer=4)
    batches, reader = read_epoch(copy, card, cfg)
    stats = reader.stats
    assert stats.shard_errors == 2
    assert len(stats.errors) == 2
    seen = set(keys_of(batches))
    by_shard = [set(shardkit.split_keys(card, "train")[8 * i : 8 * i + 8]) for i in range(4)]
    assert by_shard[0] | by_shard[3] <= seen
    assert not seen & by_shard[2]
    assert 0 < len(seen & by_shard[1]) < 8  # the readable part of the truncated shard


def test_mismatched_card_is_refused_with_one_line(tmp_path):
    card = shardkit.make_dataset(
        tmp_path, {"train": [2]}, stored=("mel",), features=FeatureConfig(n_mels=96), seed=0
    )
    with pytest.raises(CardError) as err:
        data.plan_input(card, SPEC, source="demo")
    message = str(err.value)
    assert "\n" not in message and "n_mels 96 != 128" in message


def test_mel_is_computed_from_pcm_when_the_stored_mel_does_not_fit(tmp_path):
    card = shardkit.make_dataset(
        tmp_path, {"train": [4]}, features=FeatureConfig(n_mels=96), seed=0
    )
    plan = data.plan_input(card, SPEC)
    assert (plan.member, plan.device_feature, plan.length) == ("pcm.npy", "mel", SPEC.samples)
    assert plan.mean is None  # the card's statistics are for its 96-band mel
    cfg = data.LoaderConfig(batch_size=4, workers=0, shuffle_buffer=0)
    shards = data.split_shards(card, str(tmp_path), "train")
    batch = next(iter(data.EpochReader(data.ShardStream(shards, plan, card["vocabulary"], cfg))))
    assert batch.x.dtype == torch.int16 and batch.x.shape == (4, SPEC.samples)
    mel = data.DeviceInput(plan, torch.device("cpu"))(batch.x)
    assert mel.shape == (4, 128, SPEC.frames)
    # A tone's band stands out: the mel really is of this audio, in dB.
    assert mel.max() - mel.median() > 30


def test_card_stats_normalise_each_band(dataset):
    out, card = dataset
    # Per-band standardisation is an explicit option now (the SOTA models use none).
    plan = data.plan_input(card, dataclasses.replace(SPEC, standardize="band"))
    assert plan.mean is not None and len(plan.mean) == 128
    cfg = data.LoaderConfig(batch_size=8, workers=0, shuffle_buffer=0)
    batches, _ = read_epoch(out, card, cfg)
    x = data.DeviceInput(plan, torch.device("cpu"))(torch.cat([b.x for b in batches]))
    per_band = x.permute(1, 0, 2).reshape(128, -1)
    assert per_band.mean(dim=1).abs().max() < 0.5
    assert ((per_band.std(dim=1) - 1).abs() < 0.5).float().mean() > 0.9


def test_standardize_none_band_and_global(dataset):
    out, card = dataset
    cfg = data.LoaderConfig(batch_size=8, workers=0, shuffle_buffer=0)
    x = torch.cat([b.x for b in read_epoch(out, card, cfg)[0]])
    cpu = torch.device("cpu")

    def fed(**changes):
        plan = data.plan_input(card, dataclasses.replace(SPEC, **changes))
        return data.DeviceInput(plan, cpu)(x)

    assert torch.equal(fed(standardize="none"), x.float())
    band = fed(standardize="band")
    assert band.permute(1, 0, 2).reshape(128, -1).mean(dim=1).abs().max() < 0.5
    assert torch.allclose(
        fed(standardize="global", global_stats=(-40.0, 20.0)), (x.float() + 40) / 20
    )
    with pytest.raises(CardError, match="global_stats"):
        data.plan_input(card, dataclasses.replace(SPEC, standardize="global"))


def test_too_few_shards_for_ranks_times_workers_is_a_clear_error(dataset):
    out, card = dataset
    shards = data.split_shards(card, str(out), "train")
    cfg = data.LoaderConfig(batch_size=4, workers=4, world=2, partition="shards")
    with pytest.raises(data.LoaderError, match=r"4 shard\(s\), fewer than .* 2 x 4 = 8"):
        data.check_enough_shards(shards, cfg, "train")
    # Sample-level partitioning (the index gives member byte ranges) needs no more shards.
    data.check_enough_shards(shards, dataclasses.replace(cfg, partition="auto"), "train")


def test_ranks_get_equal_planned_batches_from_uneven_shards():
    shards = [data.ShardInfo(f"s{i}", f"s{i}", n) for i, n in enumerate([3, 5, 7, 9, 11, 2])]
    for epoch in range(4):
        assignment = data.assign_shards(shards, 2, 2, seed=0, epoch=epoch, shuffle=True)
        assert sorted(s.name for r in assignment for w in r for s in w) == sorted(
            s.name for s in shards
        )
        per_rank = [sum(s.samples for w in r for s in w) for r in assignment]
        assert abs(per_rank[0] - per_rank[1]) <= 11
        steps = data.planned_steps(assignment, 2)
        for slots in assignment:
            assert sum(sum(s.samples for s in w) // 2 for w in slots) >= steps


def test_shard_names_and_schemes_are_checked():
    with pytest.raises(OpenerError):
        join_url("/data", "../etc/passwd")
    with pytest.raises(OpenerError):
        join_url("pipe:cat /etc", "train-000000.tar")
    with pytest.raises(CardError, match="cannot read the dataset card"):
        data.load_card("/nonexistent/dataset")


def test_remote_schemes_go_through_fsspec_in_webdataset_and_pipes_are_gone():
    import webdataset as wds

    from tagtrain.loader.openers import filesystem, register_with_webdataset

    register_with_webdataset({})
    for scheme in ("http", "https", "s3", "gs"):
        assert wds.gopen_schemes[scheme].func.__module__ == "tagtrain.loader.openers"
    assert "pipe" not in wds.gopen_schemes
    with pytest.raises(ValueError, match="no gopen handler"):
        wds.gopen("pipe:echo hello")
    assert "gcs" in filesystem("gs://bucket/data", {"gcs": {"token": "anon"}}).protocol


def test_song_level_models_get_random_training_crops_and_chunked_evaluation(dataset):
    from tagtrain.loader.samples import crop_offsets

    _, card = dataset
    plan = dataclasses.replace(data.plan_input(card, SPEC), chunk_level=False)
    train = [crop_offsets(1000, "k1", plan, True, 0, e, 1)[0] for e in range(6)]
    assert len(set(train)) > 1 and all(0 <= o <= 1000 for o in train)  # per epoch
    assert crop_offsets(1000, "k2", plan, True, 0, 0, 1) != crop_offsets(
        1000, "k1", plan, True, 0, 0, 1
    )
    assert (
        crop_offsets(1000, "k1", plan, False, 0, 0, 16)
        == np.linspace(0, 1000, 16).round().astype(int).tolist()
    )
    assert crop_offsets(1000, "k1", plan, False, 0, 0, 1) == [0]


@pytest.mark.parametrize("kill_after", [3, 4])
def test_shard_level_resume_with_two_workers_keeps_the_batch_order(dataset, kill_after):
    """The DataLoader takes batches from its workers in turn from worker 0; a resumed
    epoch must continue the turns where they stopped (issue 18: steps swapped after a kill
    at an odd batch position)."""
    out, card = dataset
    cfg = data.LoaderConfig(batch_size=2, workers=2, shuffle_buffer=4, seed=5, partition="shards")
    full, _ = read_epoch(out, card, cfg, epoch=1)
    first, reader = read_epoch(out, card, cfg, epoch=1, limit=kill_after)
    positions = data.decode_positions(reader.encoded_positions())
    rest, _ = read_epoch(out, card, cfg, epoch=1, resume=positions)
    assert [b.keys for b in first + rest] == [b.keys for b in full]
