"""The per-track mel sums of a completion record live in a binary sidecar next to it
(progress.write_sums / read_sums): exact, in the record's key order, checked against what
the record says before use; records of the earlier version (sums inline, base64) still
read; a missing or damaged sidecar makes the shard's tracks decoded again, never reused
without their sums."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from pipelines.beam import progress
from pipelines.beam.prepare import shard_mel_sums, write_shard
from pipelines.beam.track import Sample

IDENTITY = "identity-sha"
BANDS = 5


def make_samples(keys=("t2", "t0", "t1")) -> list[Sample]:
    rng = np.random.default_rng(7)
    samples = []
    for i, key in enumerate(keys):
        sample = Sample(key, "train", ["x"], 3.0, {"json": b"{}", "mel.npy": bytes([i]) * 40})
        sample.mel_sum = rng.normal(size=BANDS) * 1e3
        sample.mel_sumsq = rng.random(BANDS) * 1e6
        sample.mel_frames = 100 + i
        samples.append(sample)
    return samples


def manifest_row(key: str, split: str = "train") -> dict:
    return {"key": key, "split": split, "tags": ["x"], "audio_path": f"{key}.mp3"}


def write_finished_shard(output: str, samples: list[Sample], split: str = "train") -> dict:
    """The tar, sidecar and record of one shard, as PrepareShardFn.build_shard leaves
    them."""
    index_rows, shard = write_shard(output, split, 0, samples)
    train = split == "train"
    record = {
        "fingerprint": "fp",
        "identity": IDENTITY,
        "shard": shard,
        "index": index_rows,
        "rejects": [],
        "mel_sums": shard_mel_sums(samples) if train else None,
        "rows": {s.key: progress.row_sha(manifest_row(s.key, split)) for s in samples},
        "sums_file": progress.write_sums(output, split, 0, samples) if train else None,
    }
    progress.write_record(output, split, 0, record)
    return record


def inline_sums(sample) -> list:
    """A sample's sums as the previous version recorded them in the JSON record:
    [base64 of float64 sums, of sums of squares, frames] (what `progress.decode_sums`
    still reads)."""

    def b64(values) -> str:
        return base64.b64encode(np.asarray(values, dtype="<f8").tobytes()).decode()

    return [b64(sample.mel_sum), b64(sample.mel_sumsq), int(sample.mel_frames)]


def as_old_record(output: str, samples: list[Sample]) -> None:
    """Rewrite the shard's record as the previous version wrote it: sums inline, no
    sidecar."""
    record = progress.read_record(output, "train", 0)
    del record["sums_file"]
    record["sums"] = {s.key: inline_sums(s) for s in samples}
    progress.write_record(output, "train", 0, record)
    (progress_dir(output) / "train-000000.sums.npy").unlink()


def progress_dir(output: str) -> Path:
    return Path(output) / progress.PROGRESS_DIR


def assert_same_sums(got: dict, samples: list[Sample]) -> None:
    assert sorted(got) == sorted(s.key for s in samples)
    for s in samples:
        mel_sum, mel_sumsq, frames = got[s.key]
        assert mel_sum.tobytes() == s.mel_sum.astype("<f8").tobytes()  # bit-exact
        assert mel_sumsq.tobytes() == s.mel_sumsq.astype("<f8").tobytes()
        assert frames == s.mel_frames and isinstance(frames, int)


@pytest.fixture
def output(tmp_path) -> str:
    return str(tmp_path)


def test_the_sums_leave_the_json_record_for_a_sidecar_in_key_order(output):
    samples = make_samples()
    record = write_finished_shard(output, samples)
    on_disk = json.loads((progress_dir(output) / "train-000000.json").read_text())
    assert "sums" not in on_disk and on_disk["sums_file"] == record["sums_file"]
    assert on_disk["sums_file"]["tracks"] == 3 and on_disk["sums_file"]["bands"] == BANDS
    table = np.load(progress_dir(output) / "train-000000.sums.npy", allow_pickle=False)
    assert table.dtype == np.dtype("<f8") and table.shape == (3, 2 * BANDS + 1)
    by_key = {s.key: s for s in samples}
    for row, index_row in zip(table, on_disk["index"]):  # the record's key order
        assert row[-1] == by_key[index_row["key"]].mel_frames
    assert_same_sums(progress.read_sums(output, "train", 0, on_disk), samples)


def test_the_sidecar_is_deterministic_and_written_without_temporary_leftovers(output, tmp_path):
    samples = make_samples()
    first = progress.write_sums(output, "train", 0, samples)
    data = (progress_dir(output) / "train-000000.sums.npy").read_bytes()
    again = progress.write_sums(output, "train", 0, list(reversed(samples)))
    assert first == again
    assert (progress_dir(output) / "train-000000.sums.npy").read_bytes() == data
    assert sorted(p.name for p in progress_dir(output).iterdir()) == ["train-000000.sums.npy"]
    assert progress.write_sums(output, "train", 1, []) is None
    assert not (progress_dir(output) / "train-000001.sums.npy").exists()


def test_a_record_of_the_previous_version_with_inline_sums_still_reads(output):
    samples = make_samples()
    write_finished_shard(output, samples)
    as_old_record(output, samples)
    old = progress.read_record(output, "train", 0)
    assert_same_sums(progress.read_sums(output, "train", 0, old), samples)
    reusable = progress.ReusableTracks(output, "train", 0, IDENTITY)
    assert reusable.unreadable_sums == 0
    kept = reusable.take(manifest_row("t1"))
    assert kept is not None and kept.mel_frames == 102
    assert kept.mel_sum.tobytes() == samples[2].mel_sum.tobytes()


def test_a_reusable_track_carries_its_sums_from_the_sidecar(output):
    samples = make_samples()
    write_finished_shard(output, samples)
    reusable = progress.ReusableTracks(output, "train", 0, IDENTITY)
    kept = {s.key: reusable.take(manifest_row(s.key)) for s in samples}
    for s in samples:
        assert kept[s.key].members == s.members
        assert kept[s.key].mel_sumsq.tobytes() == s.mel_sumsq.tobytes()
        assert kept[s.key].mel_frames == s.mel_frames
    assert reusable.take({**manifest_row("t0"), "tags": ["y"]}) is None  # a changed row


def test_other_splits_have_no_sidecar_and_their_tracks_are_reused(output):
    samples = [Sample(s.key, "valid", s.tags, s.seconds, s.members) for s in make_samples()]
    record = write_finished_shard(output, samples, split="valid")
    assert record["sums_file"] is None
    assert not list(progress_dir(output).glob("*.npy"))
    reusable = progress.ReusableTracks(output, "valid", 0, IDENTITY)
    kept = reusable.take(manifest_row("t0", "valid"))
    assert kept is not None and kept.mel_sum is None and reusable.unreadable_sums == 0


def damage_missing(path):
    path.unlink()


def damage_flipped_bit(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))


def damage_cut_short(path):
    path.write_bytes(path.read_bytes()[:-8])


def damage_grown(path):
    path.write_bytes(path.read_bytes() + b"\0" * 4096)


@pytest.mark.parametrize(
    "damage", [damage_missing, damage_flipped_bit, damage_cut_short, damage_grown]
)
def test_a_missing_or_damaged_sidecar_makes_the_shards_tracks_decoded_again(output, damage, caplog):
    samples = make_samples()
    write_finished_shard(output, samples)
    damage(progress_dir(output) / "train-000000.sums.npy")
    assert progress.read_sums(output, "train", 0, progress.read_record(output, "train", 0)) is None
    with caplog.at_level(logging.WARNING, logger="pipelines.beam.progress"):
        reusable = progress.ReusableTracks(output, "train", 0, IDENTITY)
    assert reusable.unreadable_sums == 3
    assert all(reusable.take(manifest_row(s.key)) is None for s in samples)
    notes = [r.getMessage() for r in caplog.records if r.name == "pipelines.beam.progress"]
    assert len(notes) == 1 and "3 kept tracks are decoded again" in notes[0]
    assert "\n" not in notes[0]


def rewrite_sidecar(output: str, table: np.ndarray, version=None) -> None:
    """A sidecar with other content whose record vouches for it (its sha256 and size
    updated): only the header and value checks stand between it and the reader."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, table, version=version, allow_pickle=True)
    data = buffer.getvalue()
    (progress_dir(output) / "train-000000.sums.npy").write_bytes(data)
    record = progress.read_record(output, "train", 0)
    record["sums_file"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    progress.write_record(output, "train", 0, record)


@pytest.mark.parametrize(
    "table",
    [
        np.zeros((3, 2 * BANDS + 1), dtype="<f4"),  # another dtype
        np.zeros((2, 2 * BANDS + 1)),  # fewer tracks than the record's index
        np.zeros((3, 2 * BANDS + 3)),  # other bands than recorded
        np.asfortranarray(np.zeros((3, 2 * BANDS + 1))),
        np.array([[object()] * (2 * BANDS + 1)] * 3, dtype=object),  # a pickle
        np.full((3, 2 * BANDS + 1), 1.5),  # frames not a count
        np.full((3, 2 * BANDS + 1), np.nan),
    ],
    ids=["f4", "tracks", "bands", "fortran", "pickle", "frames", "nan"],
)
def test_a_sidecar_unlike_what_its_record_describes_is_not_used(output, table):
    write_finished_shard(output, make_samples())
    rewrite_sidecar(output, table)
    record = progress.read_record(output, "train", 0)
    assert progress.read_sums(output, "train", 0, record) is None
    assert progress.ReusableTracks(output, "train", 0, IDENTITY).unreadable_sums == 3


def test_a_sidecar_with_another_npy_header_version_is_not_used(output):
    samples = make_samples()
    write_finished_shard(output, samples)
    table = np.load(progress_dir(output) / "train-000000.sums.npy")
    rewrite_sidecar(output, table, version=(1, 0))
    assert progress.ReusableTracks(output, "train", 0, IDENTITY).unreadable_sums == 0
    rewrite_sidecar(output, table, version=(2, 0))
    assert progress.ReusableTracks(output, "train", 0, IDENTITY).unreadable_sums == 3


@pytest.mark.parametrize(
    "described",
    [None, "x", {"tracks": 3}, {"tracks": 3, "bytes": "9", "sha256": "ab", "bands": BANDS}],
)
def test_a_record_describing_its_sidecar_badly_makes_its_tracks_decoded_again(output, described):
    write_finished_shard(output, make_samples())
    record = progress.read_record(output, "train", 0)
    record["sums_file"] = described
    progress.write_record(output, "train", 0, record)
    assert progress.read_sums(output, "train", 0, record) is None
    assert progress.ReusableTracks(output, "train", 0, IDENTITY).unreadable_sums == 3


@pytest.mark.parametrize("sums", [None, {}, {"t0": ["!!", "", 1]}, {"t0": 5}])
def test_a_damaged_inline_record_of_the_previous_version_is_not_reused(output, sums):
    samples = make_samples()
    write_finished_shard(output, samples)
    as_old_record(output, samples)
    record = progress.read_record(output, "train", 0)
    record["sums"] = sums
    progress.write_record(output, "train", 0, record)
    assert progress.ReusableTracks(output, "train", 0, IDENTITY).unreadable_sums == 3


def test_the_driver_keeps_no_per_track_sums():
    record = {"fingerprint": "f", "index": [], "sums_file": {"tracks": 0}, "rows": {}}
    assert "sums_file" not in progress.for_finish(record)
