"""musicnn's published weights scored on prepared shards (tagtrain/pretrained/on_shards.py):
the official front end computed from the stored PCM, the same inference path as our
runs, tags scored on the intersection of the two vocabularies."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from musicnn_clips import write_clips

from pipelines.core.audio import load_audio
from tagtrain.pretrained import frontend
from tagtrain.pretrained.musicnn import load_pretrained, musicnn_labels
from tagtrain.pretrained.on_shards import (
    CONTEXT,
    CROP_SAMPLES,
    PublishedOnPCM,
    published_log_mel,
    shared_tags,
)
from tests.test_evaluate import cli, one_line_error
from tests.test_pretrained import golden

# The crops' frames are the official ones: what differs is our decode/STFT (the tagger's
# E2E_ATOL, test_pretrained.py) and the int16 rounding of the stored PCM.
CROP_ATOL = 1e-4


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return write_clips(tmp_path_factory.mktemp("clips"))


@pytest.fixture(scope="module")
def mtt():
    return load_pretrained("musicnn-mtt")


@pytest.mark.parametrize("compression", frontend.COMPRESSIONS)
def test_torch_front_end_is_the_official_one(clips, compression):
    pcm = load_audio(clips["chords"].read_bytes(), frontend.SAMPLE_RATE).pcm
    official = frontend.official_log_mel(pcm, compression)  # [frames, 96]
    ours = published_log_mel(torch.from_numpy(pcm)[None], compression)[0].T.numpy()
    finite = np.isfinite(official)
    assert (np.isfinite(ours) == finite).all()
    error = np.abs(ours[finite] - official[finite].astype(np.float32))
    if compression == "numpy1":
        assert error.max() < 1e-5
    else:  # a float16 log10: torch's and numpy's float32 log10 round apart on rare bins
        assert (error > 0).mean() < 1e-3 and error.max() <= 2**-8  # one float16 step


def test_a_pcm_crop_is_tagged_as_the_official_window(clips, mtt):
    model, labels = mtt
    published = PublishedOnPCM(model, list(range(len(labels)))).eval()
    for clip, path in clips.items():
        pcm = load_audio(path.read_bytes(), frontend.SAMPLE_RATE).pcm
        quantised = np.round(pcm * 32767).clip(-32768, 32767) / 32767  # as stored
        reference = golden(clip)["MTT_musicnn.taggram"]
        padded = np.pad(quantised, CONTEXT)  # the official frames' zero padding at the ends
        starts = frontend.window_starts(len(frontend.official_log_mel(pcm)))
        for shift, close in ((0, True), (1, False)):  # one frame off fails the comparison
            crops = np.stack([padded[(s + shift) * frontend.HOP :][:CROP_SAMPLES] for s in starts])
            with torch.no_grad():
                ours = torch.sigmoid(published(torch.from_numpy(crops).float())).numpy()
            assert ours.shape == reference.shape
            assert (np.abs(ours - reference).max() < CROP_ATOL) == close, (clip, shift)


def test_shared_tags_keep_the_datasets_order():
    tags, label_cols, model_cols = shared_tags(["a", "b", "c"], ["c", "x", "a"])
    assert tags == ["c", "a"] and label_cols == [0, 2] and model_cols == [2, 0]


def test_evaluate_pretrained_on_the_demo_shards(demo_dataset, tmp_path):
    out = tmp_path / "musicnn-mtt"
    status, stdout, err = cli(
        "evaluate", "--pretrained", "musicnn-mtt", "--data", str(demo_dataset), "--out",
        str(out), "--chunks", "4", "--bootstrap", "0", "--workers", "0", "--device", "cpu",
    )  # fmt: skip
    assert status == 0, err
    card = json.loads((demo_dataset / "dataset.json").read_text())
    published = musicnn_labels("MTT_LABELS")
    shared = [t for t in card["vocabulary"] if t in published]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["not_in_model_vocabulary"] == [
        t for t in card["vocabulary"] if t not in published
    ]
    assert metrics["tags"] == len(shared) and metrics["model"] == "musicnn_tf"
    assert metrics["tracks"] == card["splits"]["test"]["samples"]
    rows = list(csv.DictReader(open(out / "per_tag.csv")))
    assert [r["tag"] for r in rows] == shared
    # Zero-shot on rendered MIDI: the published model hears drums, piano, loud/quiet ...
    assert metrics["roc_auc"] > 0.8, metrics
    by_tag = {r["tag"]: float(r["roc_auc"]) for r in rows if r["roc_auc"]}
    assert by_tag["drums"] > 0.9 and by_tag["piano"] > 0.8, by_tag
    predictions = pq.read_table(out / "predictions.parquet")
    assert predictions.num_rows == metrics["tracks"]
    assert json.loads(predictions.schema.metadata[b"tagtrain"])["vocabulary"] == shared
    assert "not scored (not in musicnn-mtt's vocabulary): " in stdout


def test_pretrained_on_shards_without_pcm_is_one_line(demo_dataset, tmp_path):
    data = tmp_path / "mel_only"
    data.mkdir()
    card = json.loads((demo_dataset / "dataset.json").read_text())
    card["features"]["stored"] = ["mel"]
    (data / "dataset.json").write_text(json.dumps(card))
    for entry in demo_dataset.glob("*.tar"):
        (data / entry.name).symlink_to(entry)
    status, _, err = cli(
        "evaluate", "--pretrained", "musicnn-mtt", "--data", str(data), "--out", str(tmp_path)
    )
    assert "computes its own front end from PCM" in one_line_error(status, err)
    status, _, err = cli("evaluate", "--pretrained", "musicnn-mtt")
    assert "needs --data" in one_line_error(status, err)
    shutil.rmtree(data)
