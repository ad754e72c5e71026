"""`export --onnx`: the exported graph, run by ONNX Runtime, gives the probabilities that
`tag`'s torch path gives on the same windows of real (generated) audio."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.core.audio import to_int16
from pipelines.core.features import FeatureConfig, power_spectrogram
from tagtrain.inference.onnx_export import dft_power_spectrogram, export_onnx
from tagtrain.inference.predict import pcm_input
from tagtrain.inference.trained_run import TrainedRun
from tagtrain.loader import InputPlan
from tagtrain.models.registry import create_model
from tagtrain.run.config import RunConfig
from tests import shardkit
from tests.conftest import ROOT

ort = pytest.importorskip("onnxruntime")

VOCABULARY = ["low", "mid", "high", "noise", "quiet"]


def random_run(name: str, width: float, tmp_path: Path) -> TrainedRun:
    """A run as `load_run` returns it, with a randomly initialised model and per-band
    statistics that are not 0/1, so the normalisation is part of what is compared."""
    model = create_model(name, len(VOCABULARY), seed=1, width=width).eval()
    spec = model.input_spec
    fields = set(FeatureConfig.__dataclass_fields__)
    features = {k: v for k, v in spec.to_dict().items() if k in fields}
    rng = np.random.default_rng(0)
    mean = std = None
    if spec.kind == "mel":
        mean = (-40 + 5 * rng.standard_normal(spec.n_mels)).tolist()
        std = (8 + rng.random(spec.n_mels)).tolist()
    kind = spec.kind
    plan = InputPlan(
        kind, "pcm.npy", spec.samples, spec.chunk_level, None if kind == "pcm" else kind,
        features, mean, std,
    )  # fmt: skip
    run = TrainedRun(
        dir=tmp_path / name, config=RunConfig(model=name, width=width),
        checkpoint=tmp_path / "best.pt", model=model, vocabulary=VOCABULARY, plan=plan,
        mean=mean, std=std, card_checksum="", device=torch.device("cpu"), autocast_dtype=None,
    )  # fmt: skip
    # Batch-norm statistics of real inputs (as training leaves them): with the initial
    # ones, a deep random network gives nearly the same output for every input.
    pcm = torch.from_numpy(np.round(windows_of_tones(spec.samples, spec.sample_rate, 5) * 32767))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(pcm_input(run)(pcm.to(torch.int16)))
    model.eval()
    return run


def windows_of_tones(samples: int, sample_rate: int, count: int = 3) -> np.ndarray:
    rng = np.random.default_rng(5)
    waves = [
        shardkit.track_audio([i % 5], samples / sample_rate + 0.01, sample_rate, rng)[:samples]
        for i in range(count)
    ]
    # Rounded to int16 as `tag` does, back in [-1, 1] for the graph's input.
    return np.stack([to_int16(np.asarray(w)) for w in waves]).astype(np.float32) / 32767.0


def torch_probabilities(run: TrainedRun, waveform: np.ndarray) -> np.ndarray:
    """`tag`'s path (tag_file's loop body), unpatched: int16 PCM -> DeviceInput -> model."""
    pcm = torch.from_numpy(np.round(waveform * 32767.0).astype(np.int16))
    with torch.inference_mode():
        return torch.sigmoid(run.model(pcm_input(run)(pcm)).float()).numpy()


def test_the_dft_convolution_is_the_stft():
    pcm = torch.from_numpy(windows_of_tones(16000, 16000, 2))
    for n_fft, hop in ((512, 256), (1024, 512)):
        expected = power_spectrogram(pcm, n_fft, hop)
        got = dft_power_spectrogram(pcm, n_fft, hop)
        assert got.shape == expected.shape
        scale = expected.max()
        assert torch.allclose(got, expected, atol=1e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize(
    "name,width",
    [
        ("short_chunk_cnn", 0.125),  # 128-band mel, 16 kHz
        ("musicnn", 0.25),  # 96-band mel
        ("music_tagging_transformer_small", 0.25),  # 22.05 kHz, n_fft 1024
        ("samplecnn", 0.125),  # raw waveform
        ("crnn", 0.25),  # recurrent, song-level (29 s)
    ],
)
def test_onnx_runtime_matches_torch(name, width, tmp_path):
    run = random_run(name, width, tmp_path)
    out = export_onnx(run, tmp_path / f"{name}.onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, outp.name) == ("waveform", "probabilities")
    waveform = windows_of_tones(run.spec.samples, run.spec.sample_rate)
    (got,) = session.run(None, {"waveform": waveform})
    expected = torch_probabilities(run, waveform)
    assert got.shape == expected.shape == (3, len(VOCABULARY))
    np.testing.assert_allclose(got, expected, atol=2e-4, rtol=1e-3)
    # The batch axis is dynamic, and the windows differ (not a constant graph).
    (one,) = session.run(None, {"waveform": waveform[:1]})
    np.testing.assert_allclose(one, got[:1], atol=1e-5)
    # Not a constant graph: the windows' outputs differ by far more than ONNX and torch do.
    assert np.abs(got[0] - got[1]).max() > 10 * np.abs(got - expected).max()
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["vocabulary"]) == VOCABULARY
    assert int(meta["sample_rate"]) == run.spec.sample_rate
    assert int(meta["window_samples"]) == run.spec.samples


@pytest.mark.slow
def test_export_command_on_a_trained_run(tmp_path):
    data = tmp_path / "data"
    shardkit.make_dataset(data, {"train": [4, 4], "valid": [4]}, seed=3)
    env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "tagtrain", *args], cwd=tmp_path, capture_output=True,
            text=True, timeout=600, env={**__import__("os").environ, **env},
        )  # fmt: skip

    trained = cli(
        "train", "--data", str(data), "--out", str(tmp_path / "run"), "--model",
        "short_chunk_cnn", "--width", "0.125", "--epochs", "1", "--batch-size", "4",
        "--workers", "1", "--shuffle-buffer", "4", "--val-chunks", "1", "--no-progress",
        "--device", "cpu",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
    out = tmp_path / "served" / "tagger.onnx"
    result = cli("export", "--run", str(tmp_path / "run"), "--onnx", str(out))
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    from tagtrain.inference.trained_run import load_run

    run = load_run(tmp_path / "run", device="cpu")
    waveform = windows_of_tones(run.spec.samples, run.spec.sample_rate)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"waveform": waveform})
    np.testing.assert_allclose(got, torch_probabilities(run, waveform), atol=2e-4, rtol=1e-3)
    assert json.loads(session.get_modelmeta().custom_metadata_map["vocabulary"]) == list(
        shardkit.VOCABULARY
    )

    bad = cli("export", "--run", str(tmp_path / "nope"), "--onnx", str(out))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_pretrained_export_matches_the_published_model(tmp_path):
    tagger_module = pytest.importorskip("tagtrain.pretrained.tagger")
    import soundfile as sf

    from tagtrain.pretrained.cli import export_pretrained_onnx

    tagger = tagger_module.Tagger.from_pretrained("musicnn-mtt")
    rng = np.random.default_rng(2)
    sf.write(tmp_path / "a.wav", shardkit.track_audio([0, 3], 10.0, 16000, rng), 16000)
    windows, _ = tagger.windows(tmp_path / "a.wav")
    expected = tagger.features(windows)["taggram"]
    out, vocabulary = export_pretrained_onnx("musicnn-mtt", tmp_path / "musicnn.onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"log_mel": windows.astype(np.float32)})
    assert got.shape == expected.shape == (len(windows), len(vocabulary))
    np.testing.assert_allclose(got, expected, atol=2e-4, rtol=1e-3)
    assert np.abs(got[0] - got[-1]).max() > 10 * np.abs(got - expected).max()
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["vocabulary"]) == list(tagger.vocabulary)
