"""Hostile and broken shards and cards (issue 20): every crafted input is skipped and
counted by reason, or refused with one line; nothing crashes, allocates what a header
claims, poisons a batch with NaN, or hangs (each test runs under an alarm)."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import tarfile

import numpy as np
import pytest
from numpy.lib import format as npy_format

from pipelines.core.card import CardError
from pipelines.core.errors import UserError
from pipelines.core.shards import json_bytes, npy_bytes
from tagtrain import loader
from tagtrain.loader import samples
from tagtrain.models.registry import get_entry
from tests import shardkit

SPEC = get_entry("short_chunk_cnn").input_spec
VICTIM = "train_00001"


@pytest.fixture(autouse=True)
def alarm():
    """Fail (never hang) when a case takes more than 30 s."""

    def expire(*_):
        raise TimeoutError("the loader hung on a hostile input")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    card = shardkit.make_dataset(out, {"train": [4]}, seconds=(1.0, 1.5), stored=("mel",), seed=3)
    return out, card


@pytest.fixture(params=["shards", "samples"])
def partition(request):
    """Both reading paths: whole shards in order, and samples by the index's byte ranges
    (the index rewritten for the crafted shard, as prepare would have written it)."""
    return request.param


def read_all(data_dir, card, **cfg):
    shards = loader.split_shards(card, str(data_dir), "train")
    plan = loader.plan_input(card, SPEC)
    config = loader.LoaderConfig(**{"batch_size": 1, "shuffle_buffer": 0, **cfg})
    reader = loader.EpochReader(loader.ShardStream(shards, plan, card["vocabulary"], config))
    batches = list(reader)
    reader.close()
    return batches, reader.stats


def with_members(dataset, tmp_path, change, reindex=False):
    """A copy of the dataset whose one shard's members went through `change(list)`."""
    out, card = dataset
    copy = tmp_path / "data"
    shutil.copytree(out, copy)
    members = shardkit.read_members(out / "train-000000.tar")
    shardkit.write_raw_tar(copy / "train-000000.tar", change(members))
    if reindex:
        shardkit.reindex(copy)
    return copy, card


def replaced(dataset, tmp_path, ext, data, reindex=False):
    name = f"{VICTIM}.{ext}"
    return with_members(
        dataset, tmp_path, lambda ms: [(n, data if n == name else d) for n, d in ms], reindex
    )


def victim_meta(dataset):
    members = dict(shardkit.read_members(dataset[0] / "train-000000.tar"))
    return json.loads(members[f"{VICTIM}.json"])


def assert_only_victim_skipped(copy, card, reason, partition="shards"):
    batches, stats = read_all(copy, card, partition=partition)
    keys = [k for b in batches for k in b.keys]
    assert sorted(keys) == [k for k in shardkit.split_keys(card, "train") if k != VICTIM]
    assert stats.bad_by_reason == {reason: 1}, stats.errors
    assert stats.bad_samples == 1 and stats.samples == 3
    for batch in batches:
        assert bool(batch.x.float().isfinite().all())


def npy_with_header(shape, descr="<f2", payload=b"\0" * 64) -> bytes:
    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    npy_format.write_array_header_1_0(buf, header)
    return buf.getvalue() + payload


def one_bad_value(dtype: str, value: float) -> bytes:
    """A mel of plausible dB values, one of which is `value`."""
    mel = np.linspace(-80.0, 0.0, 128 * 50).reshape(128, 50).astype(dtype)
    mel[77, 33] = value
    return npy_bytes(mel)


def test_the_finite_check_agrees_with_numpy_on_every_half():
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    for order in ("<", ">"):
        values = halves.astype(f"{order}f2")
        got = [samples.all_finite(values[i : i + 1]) for i in range(len(values))]
        assert got == np.isfinite(values).tolist()
    assert samples.all_finite(np.zeros((128, 0), np.float16))


@pytest.mark.parametrize(
    "data, reason",
    [
        (npy_with_header((128, 10**13)), "shape"),  # would be a 2.5 PB allocation
        (npy_with_header((96, 100)), "shape"),  # the card says 128 bands
        (npy_with_header((128, 100)), "shape"),  # claims more bytes than it holds
        (npy_with_header((128, 2), descr="<i8", payload=b"\0" * 2048), "dtype"),
        (b"\x93NUMPY\x01\x00\x10\x00{'descr': 1}   \n", "npy_header"),
        (b"not an npy", "npy_header"),
        (npy_bytes(np.full((128, 50), np.nan, dtype=np.float16)), "non_finite"),
        (npy_bytes(np.full((128, 50), np.inf, dtype=np.float32)), "non_finite"),
        (one_bad_value("<f2", -np.inf), "non_finite"),
        (one_bad_value(">f2", np.nan), "non_finite"),
    ],
    ids=[
        "huge-shape",
        "wrong-bands",
        "short-data",
        "int64",
        "bad-header",
        "garbage",
        "nan",
        "inf",
        "one-inf",
        "one-nan-big-endian",
    ],  # fmt: skip
)
def test_bad_mel_members_are_skipped_and_counted(dataset, tmp_path, data, reason, partition):
    copy, card = replaced(dataset, tmp_path, "mel.npy", data, partition == "samples")
    assert_only_victim_skipped(copy, card, reason, partition)


def _deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    "meta, reason",
    [
        ([1, 2], "json"),
        ({"labels": [1e30]}, "labels"),
        ({"labels": [1e308]}, "labels"),
        ({"labels": [-1]}, "labels"),
        ({"labels": [5]}, "labels"),  # the vocabulary has 5 tags: 0..4
        ({"labels": [1.9, True]}, "labels"),
        ({"labels": "0"}, "labels"),
        ({"tags": "tone_a"}, "labels"),
        ({"tags": [1]}, "labels"),
    ],
)
def test_bad_json_members_are_skipped_and_counted(dataset, tmp_path, meta, reason, partition):
    copy, card = replaced(dataset, tmp_path, "json", json_bytes(meta), partition == "samples")
    assert_only_victim_skipped(copy, card, reason, partition)


@pytest.mark.parametrize(
    "data", [_deep_json(200_000), b"{" + b" " * (2 << 20) + b"}", b"\xff\xfe", b"1e999999"]
)
def test_unparseable_json_is_skipped_and_counted(dataset, tmp_path, data, partition):
    copy, card = replaced(dataset, tmp_path, "json", data, partition == "samples")
    assert_only_victim_skipped(copy, card, "json", partition)


def test_missing_member_is_skipped_and_counted(dataset, tmp_path, partition):
    copy, card = with_members(
        dataset,
        tmp_path,
        lambda ms: [(n, d) for n, d in ms if n != f"{VICTIM}.mel.npy"],
        partition == "samples",
    )
    assert_only_victim_skipped(copy, card, "missing_member", partition)


def test_a_stale_index_fails_its_shard_instead_of_reading_other_bytes(dataset, tmp_path):
    copy, card = replaced(dataset, tmp_path, "json", json_bytes({"labels": [0], "pad": "x" * 900}))
    batches, stats = read_all(copy, card, partition="samples")
    # The victim's json grew: every later member moved, the index no longer fits.
    assert stats.shard_errors == 1 and "IndexMismatch" in stats.errors[0]
    assert set(stats.bad_by_reason) == {"read_error"}
    assert len([k for b in batches for k in b.keys]) + stats.bad_samples == 4


def test_tags_by_name_still_work(dataset, tmp_path):
    meta = {k: v for k, v in victim_meta(dataset).items() if k != "labels"}
    new = json_bytes({**meta, "tags": ["tone_b"]})
    copy, card = replaced(dataset, tmp_path, "json", new, reindex=True)
    batches, stats = read_all(copy, card)
    assert stats.bad_samples == 0
    (victim,) = [b for b in batches if b.keys == [VICTIM]]
    assert victim.y[0].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]


def test_non_adjacent_duplicate_keys_are_counted_not_read_twice(dataset, tmp_path):
    def duplicate(members):
        again = [(n, d) for n, d in members if n.startswith(VICTIM)]
        return members + again

    copy, card = with_members(dataset, tmp_path, duplicate)
    batches, stats = read_all(copy, card, partition="shards")
    keys = [k for b in batches for k in b.keys]
    assert sorted(keys) == shardkit.split_keys(card, "train")  # 4 samples, as the card says
    assert stats.duplicate_keys == 1 and stats.bad_by_reason == {"duplicate_key": 1}


def test_a_member_claiming_gigabytes_is_never_read(dataset, tmp_path):
    out, card = dataset
    copy = tmp_path / "data"
    shutil.copytree(out, copy)
    info = tarfile.TarInfo(f"{VICTIM}.mel.npy")
    info.size = 8 * 2**30 - 1  # the USTAR maximum
    (copy / "train-000000.tar").write_bytes(info.tobuf(tarfile.USTAR_FORMAT) + b"\0" * 4096)
    batches, stats = read_all(copy, card, partition="shards")
    assert batches == [] and stats.shard_errors == 1
    assert "8589934591" in stats.errors[0]


def test_a_fifo_named_as_a_shard_is_refused_without_hanging(dataset, tmp_path, partition):
    out, card = dataset
    copy = tmp_path / "data"
    shutil.copytree(out, copy)
    (copy / "train-000000.tar").unlink()
    os.mkfifo(copy / "train-000000.tar")
    batches, stats = read_all(copy, card, workers=1, partition=partition)
    assert batches == [] and stats.shard_errors == 1
    assert "not a regular file" in stats.errors[0]


def test_too_many_bad_samples_fail_loudly_with_one_line(dataset, tmp_path):
    copy, card = replaced(dataset, tmp_path, "json", b"[]")
    read_all(copy, card, max_bad_fraction=0.5, partition="shards")  # 1 of 4: allowed
    with pytest.raises(loader.LoaderError) as info:
        read_all(copy, card, max_bad_fraction=0.2, partition="shards")
    assert isinstance(info.value, UserError)
    message = str(info.value)
    assert "\n" not in message and "1 of 4 samples were bad (json 1)" in message


def write_card(tmp_path, card) -> str:
    (tmp_path / "dataset.json").write_bytes(json_bytes(card) if isinstance(card, dict) else card)
    return str(tmp_path)


def _with_shard(card, **fields):
    shard = {**card["splits"]["train"]["shards"][0], **fields}
    return {**card, "splits": {"train": {**card["splits"]["train"], "shards": [shard]}}}


@pytest.mark.parametrize(
    "change, words",
    [
        (
            lambda c: {**c, "splits": {"train": {**c["splits"]["train"], "samples": "many"}}},
            "splits.train.samples",
        ),
        (
            lambda c: {**c, "splits": {"train": {"shards": ["train-000000.tar"]}}},
            "splits.train.shards[0]",
        ),
        (lambda c: _with_shard(c, samples=True), "splits.train.shards[0].samples"),
        (lambda c: _with_shard(c, samples=-1), "splits.train.shards[0].samples"),
        (lambda c: _with_shard(c, bytes=1e300), "splits.train.shards[0].bytes"),
        (lambda c: _with_shard(c, sha256="xyz"), "splits.train.shards[0].sha256"),
        (lambda c: _with_shard(c, name=7), "splits.train.shards[0].name"),
        (lambda c: {**c, "vocabulary": "tone_a"}, "vocabulary"),
        (lambda c: {**c, "vocabulary": ["a", "a"]}, "vocabulary"),
        (lambda c: {**c, "features": {**c["features"], "stored": "mel"}}, "features.stored"),
        (lambda c: {**c, "mel_stats": {"mean": ["x"]}}, "mel_stats.mean"),
        (lambda c: {**c, "splits": []}, "splits"),
        (lambda c: {**c, "features": {**c["features"], "n_mels": "128"}}, "features.n_mels"),
        (lambda c: {**c, "features": {**c["features"], "hop": 0}}, "features.hop"),
        (lambda c: {**c, "features": {**c["features"], "f_max": 1e9}}, "features"),
    ],
)
def test_card_schema_errors_are_one_line(dataset, tmp_path, change, words):
    with pytest.raises(CardError) as info:
        loader.load_card(write_card(tmp_path, change(dataset[1])))
    assert isinstance(info.value, UserError)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_a_card_nested_too_deep_or_too_large_is_one_line(tmp_path):
    with pytest.raises(CardError, match="nests too deeply|not valid JSON"):
        loader.load_card(write_card(tmp_path, _deep_json(200_000)))
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dataset.json").unlink()
    os.symlink(tmp_path / "fifo", tmp_path / "dataset.json")
    with pytest.raises(CardError, match="not a regular file"):
        loader.load_card(str(tmp_path))


def test_verify_checks_shard_checksums_from_the_card(dataset, tmp_path):
    import hashlib

    out, card = dataset
    copy = tmp_path / "data"
    shutil.copytree(out, copy)
    digest = hashlib.sha256((copy / "train-000000.tar").read_bytes()).hexdigest()
    good = _with_shard(card, sha256=digest)
    shards = loader.split_shards(good, str(copy), "train")
    assert loader.verify_shards(shards, {}) == 1
    data = bytearray((copy / "train-000000.tar").read_bytes())
    data[5000] ^= 1  # one flipped bit
    (copy / "train-000000.tar").write_bytes(bytes(data))
    with pytest.raises(loader.LoaderError, match="1 of 1 shards differ.*train-000000.tar"):
        loader.verify_shards(shards, {})
    unlisted = _with_shard(card, sha256=None)  # a card without checksums: nothing to check
    assert loader.verify_shards(loader.split_shards(unlisted, str(copy), "train"), {}) == 0


def _rewrite_index(directory, members):
    import pyarrow.parquet as pq

    table = pq.read_table(directory / "index.parquet").drop_columns(["members"])
    column = members(table.num_rows)
    pq.write_table(table.append_column("members", column), directory / "index.parquet")


@pytest.mark.parametrize(
    "members, words",
    [
        (lambda n: __import__("pyarrow").array([["x"]] * n), "must be {name, offset, size}"),
        (
            lambda n: __import__("pyarrow").array(
                [[{"name": "other.json", "offset": 512, "size": 3}]] * n
            ),
            "out of range",
        ),
        (
            lambda n: __import__("pyarrow").array(
                [[{"name": "k.json", "offset": 7, "size": 3}]] * n
            ),
            "out of range",
        ),
        (  # a longer key's member: the row's key is a prefix of its name, without the dot
            lambda n: __import__("pyarrow").array(
                [[{"name": "train_000000.json", "offset": 512, "size": 3}]] * n
            ),
            "out of range",
        ),
    ],
    ids=["strings", "foreign-name", "offset-in-header", "longer-key"],
)
def test_index_schema_errors_are_one_line(dataset, tmp_path, members, words):
    out, card = dataset
    copy = tmp_path / "data"
    shutil.copytree(out, copy)
    _rewrite_index(copy, members)
    with pytest.raises(CardError) as info:
        read_all(copy, card, partition="samples")
    assert words in str(info.value) and "\n" not in str(info.value)
    assert isinstance(info.value, UserError)


def test_an_index_that_disagrees_with_the_card_is_one_line(dataset, tmp_path):
    import pyarrow.parquet as pq

    out, card = dataset
    copy = tmp_path / "data"
    shutil.copytree(out, copy)
    table = pq.read_table(copy / "index.parquet")
    pq.write_table(table.slice(0, 3), copy / "index.parquet")
    with pytest.raises(CardError, match="lists 3 samples of train-000000.tar, the card 4"):
        read_all(copy, card, partition="samples")


@pytest.mark.parametrize("inside", [True, False], ids=["in-the-crop", "outside-the-crop"])
def test_only_the_crop_a_model_receives_must_be_finite(dataset, tmp_path, inside):
    """A NaN in the crop rejects the sample; one the crop does not reach is never read
    (the loader checks the crop, not the whole member: issue 31, CPU per chunk)."""
    frames = 4 * SPEC.frames
    plan = loader.plan_input(dataset[1], SPEC)
    start = samples.crop_offsets(frames - plan.length, VICTIM, plan, True, 0, 0, 1)[0]
    mel = np.linspace(-80.0, 0.0, 128 * frames).reshape(128, frames).astype(np.float16)
    where = start + plan.length // 2 if inside else (start + plan.length + frames // 2) % frames
    assert (start <= where < start + plan.length) == inside
    mel[5, where] = np.nan
    copy, card = replaced(dataset, tmp_path, "mel.npy", npy_bytes(mel), reindex=True)
    if inside:
        assert_only_victim_skipped(copy, card, "non_finite")
    else:
        batches, stats = read_all(copy, card)
        assert stats.bad_samples == 0 and sum(len(b.keys) for b in batches) == 4
        assert all(bool(b.x.float().isfinite().all()) for b in batches)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((128, 1818), "<f2"),
        np.zeros((128, 7), ">f4"),
        np.zeros(5, "<i2"),
        np.zeros((6, 128, 30), "<f8"),
        np.zeros((0,), "|u1"),
        np.zeros((3, 4), np.bool_),
        np.zeros((2, 3), "<f2", order="F"),
        np.zeros((1, 70000), "<f2"),
    ],
    ids=lambda a: f"{a.dtype.str}{a.shape}{'F' if a.flags.f_contiguous else ''}",
)
def test_the_fast_npy_header_reads_what_numpy_reads(array, monkeypatch):
    data = npy_bytes(array)
    stream = io.BytesIO(data)
    npy_format.read_magic(stream)
    shape, fortran, dtype = npy_format.read_array_header_1_0(stream)
    if fortran and array.ndim > 1:
        with pytest.raises(samples.SampleRejected, match="Fortran"):
            samples.read_npy_header(data)
        return
    with monkeypatch.context() as m:  # what numpy.save writes never reaches numpy's parser
        m.setattr(npy_format, "read_array_header_1_0", None)
        assert samples.read_npy_header(data) == (dtype, tuple(shape), stream.tell())
    # A header written another way (no trailing comma, other spacing) is numpy's to parse.
    other = data.replace(b", }", b"}  ", 1)
    got = samples.read_npy_header(other)
    assert got[:2] == (dtype, tuple(shape))
