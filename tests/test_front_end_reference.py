"""Our mel front end against torchaudio's, with torchaudio's own numbers.

tests/fixtures/sota/front_end.npz holds the front-end buffers that torchaudio wrote into
published minzwon/sota-music-tagging-models checkpoints (`models/mtat/fcn` and
`models/jamendo/musicnn` of the dinizvt fork: `MelSpectrogram(sample_rate=16000,
n_fft=512, f_min=0, f_max=8000, n_mels=96)`, torchaudio's defaults otherwise), extracted
by scripts/golden/extract_sota_front_end.py (no 128-band checkpoint is published there).
torchaudio is not installed here; these are its outputs, not a re-implementation.

Measured: our `mel_filterbank(..., "htk", "none")` differs from torchaudio's by at most
1.08e-5 (torchaudio builds it in float32, librosa in float64; the filters' peak is
0.9994); the window is identical. Every Slaney variant differs by more than 0.98.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.core.features import MEL_NORMS, MEL_SCALES, mel_filterbank
from tagtrain.models.registry import get_entry
from tagtrain.pretrained.importers import WeightsImportError
from tagtrain.pretrained.importers.common import check_filterbank, check_window

REAL = np.load(Path(__file__).parent / "fixtures" / "sota" / "front_end.npz")
FB = torch.from_numpy(REAL["fb_96"])  # [257, 96], torchaudio's layout
WINDOW = torch.from_numpy(REAL["window"])


def ours(mel_scale: str, mel_norm: str) -> torch.Tensor:
    return mel_filterbank(16000, 512, 96, 0.0, 8000.0, mel_scale, mel_norm).T


def test_the_fixture_is_torchaudios_published_filterbank():
    assert FB.shape == (257, 96) and FB.dtype == torch.float32 and WINDOW.shape == (512,)
    assert len(REAL["sources"]) == 2  # two checkpoints, identical buffers
    # Triangles on the HTK scale peaking near 1 (no norm): a real filterbank, not zeros.
    assert 0.99 < float(FB.max()) <= 1.0 and int((FB.sum(0) > 0).sum()) == 96


def test_our_htk_filterbank_is_torchaudios():
    difference = float((ours("htk", "none") - FB).abs().max())
    assert difference < 2e-5, difference  # measured 1.08e-5


@pytest.mark.parametrize(
    ("mel_scale", "mel_norm"),
    [(s, n) for s in MEL_SCALES for n in MEL_NORMS if (s, n) != ("htk", "none")],
)
def test_slaney_filterbanks_are_not_torchaudios_default(mel_scale, mel_norm):
    assert float((ours(mel_scale, mel_norm) - FB).abs().max()) > 0.5


def test_the_window_is_torchs_periodic_hann():
    assert torch.equal(WINDOW, torch.hann_window(512))
    assert float((WINDOW - torch.hann_window(512, periodic=False)).abs().max()) > 1e-3


def test_the_importer_check_accepts_the_real_buffers_for_the_seed000_models():
    for model in ("fcn", "crnn", "musicnn", "musicnn_big"):
        spec = get_entry(model).input_spec
        check_filterbank(FB, spec, "spec.mel_scale.fb", model)
        check_window(WINDOW, spec.n_fft, "spec.spectrogram.window", model)


def test_the_importer_check_names_the_setting_that_differs():
    maest = get_entry("maest_10s").input_spec  # 16 kHz, 512, 96 bands, but Slaney
    with pytest.raises(WeightsImportError, match="mel_scale htk, mel_norm none") as caught:
        check_filterbank(FB, maest, "melspectrogram.mel_scale.fb", "maest")
    assert "another front end" in str(caught.value) and "\n" not in str(caught.value)
    symmetric = torch.hann_window(512, periodic=False)
    with pytest.raises(WeightsImportError, match="symmetric Hann"):
        check_window(symmetric, 512, "spec.spectrogram.window", "fcn")
