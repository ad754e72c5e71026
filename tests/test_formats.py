"""The recipes of docs/FORMATS.md, run on a dataset written by the real prepare and perturb
jobs: the documented card, index, rejects and per-sample JSON fields are there, plain
`webdataset` reads the shards, and HF `datasets` does too (where it is installed: the HF
tests run under a venv that has it, e.g. /work/hfvenv/bin/python -m pytest ...)."""

from __future__ import annotations

import glob
import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

TONES = {"low": 220.0, "mid": 440.0, "high": 880.0}
CARD_FIELDS = {
    "format", "features", "vocabulary", "splits", "mel_stats", "decoder", "manifest",
    "counts", "job", "identity", "code_version", "deformation",
}  # fmt: skip
SAMPLE_FIELDS = {
    "key", "track_id", "dataset", "split", "tags", "labels", "duration", "sample_rate",
    "frames", "source_path", "artist_id", "album_id", "decoder", "source_sample_rate",
    "source_channels", "source_seconds", "cropped", "deformation",
}  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """12 tone tracks -> folder manifest -> prepare (mel, pcm) -> perturb (pitch, noise)."""
    root = tmp_path_factory.mktemp("formats")
    audio = root / "audio"
    audio.mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for i in range(12):
        tag = list(TONES)[i % 3]
        t = np.arange(3 * 16000) / 16000
        wave = 0.3 * np.sin(2 * np.pi * TONES[tag] * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(audio / f"t{i:02d}.wav", wave.astype(np.float32), 16000, subtype="PCM_16")
        lines.append(f"t{i:02d}.wav\t{tag}")
    (audio / "broken.wav").write_bytes(b"RIFF not really a wave file")
    (root / "tags.tsv").write_text("\n".join(lines) + "\n")
    steps = [
        ("manifests", "folder", "--root", str(audio), "--out", str(root / "m.parquet"),
         "--tags", str(root / "tags.tsv"), "--split-by", "track", "--ratios", "0.5,0.2,0.3"),
        ("beam_runner.py", "prepare", "--manifest", str(root / "m.parquet"), "--audio-root",
         str(audio), "--out", str(root / "data"), "--features", "mel,pcm",
         "--max-reject-fraction", "0.2", "--direct_num_workers=1"),
    ]  # fmt: skip
    (root / "defs.yaml").write_text("- {type: pitch, semitones: 1}\n- {type: noise, a: 0.1}\n")
    steps.append(
        ("beam_runner.py", "perturb", "--data", str(root / "data"), "--deformations",
         str(root / "defs.yaml"), "--direct_num_workers=1")
    )  # fmt: skip
    for step in steps:
        result = run_cli(*step)
        assert result.returncode == 0, (step[:3], result.stderr[-2000:])
    return root / "data"


def perturbed_dirs(data: Path) -> list[Path]:
    return sorted(p for p in (data / "perturbed").iterdir() if p.is_dir())


def test_card_index_rejects_and_sample_json_have_the_documented_fields(dataset):
    card = json.loads((dataset / "dataset.json").read_text())
    assert CARD_FIELDS <= set(card)
    assert card["format"] == "tagging-shards/1" and card["deformation"] is None
    assert card["counts"]["inputs"] == card["counts"]["samples"] + card["counts"]["rejects"]
    index = pq.read_table(dataset / "index.parquet")
    assert {"key", "split", "shard", "tags", "duration", "bytes"} <= set(index.column_names)
    rejects = pq.read_table(dataset / "rejects.parquet").to_pylist()
    assert [r["path"] for r in rejects] == ["broken.wav"]
    assert set(rejects[0]) == {"key", "track_id", "split", "path", "stage", "reason", "message"}
    for split, entry in card["splits"].items():
        for shard in entry["shards"]:
            data = (dataset / shard["name"]).read_bytes()
            # `bytes` and `sha256` are the whole tar file's; the samples' tar bytes
            # (headers + padded data) add up to it less the end-of-archive blocks.
            rows = [r for r in index.to_pylist() if r["shard"] == shard["name"]]
            assert (
                shard["bytes"] == len(data) and shard["sha256"] == hashlib.sha256(data).hexdigest()
            )
            assert (
                sum(r["bytes"] for r in rows) < len(data) <= sum(r["bytes"] for r in rows) + 10240
            )
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                names = tar.getnames()
            assert len(names) == 3 * shard["samples"]  # json, mel.npy, pcm.npy
            assert all(n.split(".", 1)[1] in ("json", "mel.npy", "pcm.npy") for n in names)
        assert entry["samples"] == sum(1 for s in index.column("split").to_pylist() if s == split)
    for pert in perturbed_dirs(dataset):
        pcard = json.loads((pert / "dataset.json").read_text())
        assert pcard["deformation"]["name"] == pert.name
        assert pcard["source"]["split"] == "test"


def test_members_offsets_point_at_the_member_data(dataset):
    index = pq.read_table(dataset / "index.parquet").to_pylist()
    for row in index:
        data = (dataset / row["shard"]).read_bytes()
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in row["members"]:
                info = tar.getmember(member["name"])
                assert member["name"].startswith(row["key"] + ".")
                assert (info.offset_data, info.size) == (member["offset"], member["size"])


# ---- recipe 1: plain webdataset (FORMATS.md, "Reading with webdataset") ----


def read_with_webdataset(urls: list[str]) -> list[dict]:
    import webdataset as wds

    def decode(sample: dict) -> dict:
        # Only .json and .npy; np.load with allow_pickle=False: nothing is ever unpickled.
        meta = json.loads(sample["json"])
        mel = np.load(io.BytesIO(sample["mel.npy"]), allow_pickle=False)
        pcm = np.load(io.BytesIO(sample["pcm.npy"]), allow_pickle=False)
        return {"key": sample["__key__"], "meta": meta, "mel": mel, "pcm": pcm}

    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).map(decode))


def test_plain_webdataset_reads_every_sample_as_documented(dataset):
    card = json.loads((dataset / "dataset.json").read_text())
    index = pq.read_table(dataset / "index.parquet").to_pylist()
    urls = sorted(glob.glob(str(dataset / "*-*.tar")))
    samples = read_with_webdataset(urls)
    assert sorted(s["key"] for s in samples) == sorted(r["key"] for r in index)
    n_mels, hop = card["features"]["n_mels"], card["features"]["hop"]
    for s in samples:
        meta = s["meta"]
        assert SAMPLE_FIELDS <= set(meta)
        assert meta["key"] == s["key"] and meta["deformation"] == "null"
        assert s["mel"].dtype == np.float16 and s["mel"].shape == (n_mels, meta["frames"])
        assert s["pcm"].dtype == np.int16 and len(s["pcm"]) // hop + 1 == meta["frames"]
        assert [card["vocabulary"][i] for i in meta["labels"]] == meta["tags"]
        # Real audio: the tagged tone is the loudest band of the spectrum.
        spectrum = np.abs(np.fft.rfft(s["pcm"].astype(np.float64)))
        peak_hz = np.argmax(spectrum) * card["features"]["sample_rate"] / len(s["pcm"])
        assert abs(peak_hz - TONES[meta["tags"][0]]) < 5
    test_keys = sorted(s["key"] for s in samples if s["meta"]["split"] == "test")
    for pert in perturbed_dirs(dataset):
        deformed = read_with_webdataset(sorted(glob.glob(str(pert / "test-*.tar"))))
        assert sorted(s["key"] for s in deformed) == test_keys
        for s in deformed:
            provenance = json.loads(s["meta"]["deformation"])
            assert provenance["name"] == pert.name and provenance["source_key"] == s["key"]


# ---- recipe 2: HF datasets (FORMATS.md, "Reading with HF datasets") ----


def hf_load(files: dict[str, str], cache: Path):
    datasets = pytest.importorskip("datasets")
    return datasets.load_dataset("webdataset", data_files=files, cache_dir=str(cache))


def test_hf_datasets_reads_the_shards(dataset, tmp_path):
    loaded = hf_load({"train": str(dataset / "train-*.tar")}, tmp_path)["train"]
    index = [
        r for r in pq.read_table(dataset / "index.parquet").to_pylist() if r["split"] == "train"
    ]
    assert sorted(loaded["__key__"]) == sorted(r["key"] for r in index)
    numpy_rows = loaded.with_format("numpy")
    card = json.loads((dataset / "dataset.json").read_text())
    for i in range(len(loaded)):
        row = loaded[i]
        mel = np.asarray(numpy_rows[i]["mel.npy"])
        assert mel.shape == (card["features"]["n_mels"], row["json"]["frames"])
        assert row["json"]["key"] == row["__key__"]


def test_hf_clean_and_perturbed_sets_load_separately_and_concatenate(dataset, tmp_path):
    datasets = pytest.importorskip("datasets")
    clean = hf_load({"test": str(dataset / "test-*.tar")}, tmp_path / "a")["test"]
    parts = [clean]
    for pert in perturbed_dirs(dataset):
        parts.append(hf_load({"test": str(pert / "test-*.tar")}, tmp_path / pert.name)["test"])
    for part in parts:
        assert part.features["json"]["deformation"] == datasets.Value("string")
    both = datasets.concatenate_datasets(parts)
    names = sorted((json.loads(r["deformation"]) or {}).get("name", "clean") for r in both["json"])
    expected = ["clean", *(p.name for p in perturbed_dirs(dataset))] * len(clean)
    assert names == sorted(expected)
