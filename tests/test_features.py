"""The shared DSP functions: decode, resample, log-mel, harmonic tensor."""

import dataclasses
import warnings

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from pipelines.beam.prepare_flags import PrepareFlags, PrepareJobFlags, feature_config
from pipelines.core.audio import AudioRejected, load_audio, resample
from pipelines.core.errors import OneLineParser
from pipelines.core.features import (
    FeatureConfig,
    harmonic_center_frequencies,
    harmonic_tensor,
    log_mel,
)
from pipelines.core.flags import add_flags, flag_name
from tests.conftest import encode_mp3, tone


@pytest.mark.parametrize("scale", ["htk", "slaney"])
@pytest.mark.parametrize("freq", [300.0, 1000.0, 4000.0])
def test_sine_energy_lands_in_its_mel_band(freq, scale):
    cfg = FeatureConfig(mel_scale=scale)
    mel = log_mel(tone(freq, 2.0, 16000, noise=0.0), cfg)
    assert mel.shape == (128, cfg.num_frames(32000))
    band = int(mel.mean(dim=1).argmax())
    # Mel band centres of the config's scale for 128 bands over 0..8 kHz.
    centres = librosa.mel_frequencies(n_mels=130, fmin=0, fmax=8000, htk=scale == "htk")[1:-1]
    assert abs(centres[band] - freq) <= 0.06 * freq + 40
    assert centres[band - 1] < freq < centres[band + 1]


def _librosa_db(y, n_mels, **front_end):
    mel = librosa.feature.melspectrogram(
        y=y, sr=16000, n_fft=512, hop_length=256, n_mels=n_mels, fmax=8000, **front_end
    )
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)


# Each front end against librosa with the same settings. librosa with htk=True, norm=None
# and reflect padding computes what torchaudio's MelSpectrogram + AmplitudeToDB compute
# by default (the seed-000/003 references), without torchaudio installed.
@pytest.mark.parametrize(
    "ours, theirs",
    [
        ({}, {"htk": True, "norm": None, "pad_mode": "reflect"}),
        (
            {"mel_scale": "slaney", "mel_norm": "slaney", "pad_mode": "constant"},
            {"htk": False, "norm": "slaney", "pad_mode": "constant"},
        ),
        (
            {"mel_scale": "slaney", "mel_norm": "slaney", "pad_mode": "reflect"},
            {"htk": False, "norm": "slaney", "pad_mode": "reflect"},
        ),
    ],
)
def test_log_mel_matches_librosa_power_to_db(ours, theirs):
    cfg = FeatureConfig(n_mels=96, **ours)
    y = tone(440, 1.0, 16000) + tone(2500, 1.0, 16000, amplitude=0.1, seed=1)
    mel = log_mel(y, cfg).numpy()
    ref = _librosa_db(y, 96, **theirs)
    assert np.abs(mel - ref).max() < 0.1
    # ...and the settings matter: the other scale or padding is far from it.
    other = _librosa_db(y, 96, htk=not theirs["htk"], norm=theirs["norm"], pad_mode="reflect")
    assert np.abs(mel - other).max() > 1.0


@pytest.mark.parametrize("htk", [True, False])
@pytest.mark.parametrize("norm", [None, "slaney"])
def test_mel_filters_are_librosas_to_the_bit(htk, norm):
    """The numpy filterbank (no librosa import in a Beam worker) is librosa's, exactly,
    over sample rates, FFT sizes, band counts and edges where bands are empty too."""
    from pipelines.core.melscale import mel_filters

    grid = [(16000, 512, 128, 0.0, 8000.0), (22050, 1024, 96, 20.0, 11025.0),
            (44100, 2048, 40, 300.0, 4000.0), (8000, 256, 64, 0.0, 4000.0)]  # fmt: skip
    for sr, n_fft, n_mels, f_min, f_max in grid:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa warns about empty bands
            want = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=f_min,
                                       fmax=f_max, htk=htk, norm=norm)  # fmt: skip
        got = mel_filters(sr, n_fft, n_mels, f_min, f_max, htk=htk, slaney_norm=bool(norm))
        assert got.dtype == want.dtype and np.array_equal(got, want), (sr, n_fft, n_mels)


def test_front_end_defaults_are_torchaudios_and_old_cards_read_as_written():
    cfg = FeatureConfig()
    assert (cfg.mel_scale, cfg.mel_norm, cfg.pad_mode) == ("htk", "none", "reflect")
    # A card from before the three fields were recorded was computed with librosa's
    # defaults: reading it must not switch it to today's defaults.
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("mel_scale", "mel_norm", "pad_mode")}
    legacy = FeatureConfig.from_dict(old)
    assert (legacy.mel_scale, legacy.mel_norm, legacy.pad_mode) == ("slaney", "slaney", "constant")
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="mel_scale"):
        FeatureConfig(mel_scale="bark")


def test_log_mel_is_batched_and_device_agnostic():
    cfg = FeatureConfig()
    batch = torch.from_numpy(np.stack([tone(440, 1, 16000), tone(880, 1, 16000)]))
    single = log_mel(batch[1], cfg)
    assert torch.allclose(log_mel(batch, cfg)[1], single, atol=1e-4)


def test_log10_1p_compression_variant():
    cfg = FeatureConfig(n_mels=96, log_scale="log10_1p")
    mel = log_mel(tone(440, 1, 16000), cfg)
    assert float(mel.min()) >= 0.0  # log10(1 + 10000 x) of a power is never negative


def test_harmonic_tensor_puts_a_tone_at_each_harmonic():
    cfg = FeatureConfig()
    centres = harmonic_center_frequencies(16000, 6, 128)
    assert np.allclose(centres[2], 3 * centres[0])
    f0 = float(centres[0, 60])
    h = harmonic_tensor(tone(f0, 1.0, 16000, noise=0.0), cfg)
    assert h.shape == (6, 128, cfg.num_frames(16000))
    # In the first harmonic plane, the band centred on f0 is the loudest.
    assert int(h[0].mean(dim=1).argmax()) == 60


def test_invalid_feature_config_is_rejected():
    with pytest.raises(ValueError, match="f_max"):
        FeatureConfig(f_max=9000.0)
    with pytest.raises(ValueError, match="log_scale"):
        FeatureConfig(log_scale="ln")


def test_f_max_defaults_to_8_khz_or_the_nyquist_and_fields_are_checked_by_name():
    assert FeatureConfig().f_max == 8000.0 and FeatureConfig(sample_rate=11025).f_max == 5512.5
    assert FeatureConfig.from_dict(FeatureConfig(sample_rate=8000).to_dict()).f_max == 4000.0
    assert FeatureConfig.from_fields({"n_mels": 96}) == FeatureConfig(n_mels=96)
    with pytest.raises(ValueError, match="unknown feature field.s. nmels"):
        FeatureConfig.from_fields({"nmels": 96}, "recipe")
    with pytest.raises(ValueError, match="positive"):
        FeatureConfig(harmonics=0)


def test_every_feature_setting_is_declared_once_in_feature_config():
    """prepare's feature flags are FeatureConfig's fields (same names, defaults, help and
    converters), not declared a second time in prepare_flags.py; their defaults make
    FeatureConfig's defaults."""
    job_flags = {f.name for f in dataclasses.fields(PrepareJobFlags)}
    prepare = {f.name: f for f in dataclasses.fields(PrepareFlags)}
    parser = OneLineParser(prog="prepare")
    add_flags(parser, PrepareFlags, with_defaults=True)
    usage = " ".join(parser.format_help().split())
    for f in dataclasses.fields(FeatureConfig):
        assert f.name not in job_flags, f.name
        assert f.metadata.get("help"), f"{f.name} has no help text"
        flag = prepare[f.name]
        assert (flag.default, flag.metadata) == (f.default, f.metadata), f.name
        assert flag_name(f.name) in usage and " ".join(f.metadata["help"].split()) in usage
    args = parser.parse_args(["--manifest", "m"])
    assert feature_config(args) == FeatureConfig()
    args = parser.parse_args(["--manifest", "m", "--sample-rate", "8000", "--n-mels", "64"])
    assert feature_config(args) == FeatureConfig(sample_rate=8000, n_mels=64, f_max=4000.0)


def test_resample_preserves_frequency():
    y = tone(1000, 1.0, 44100, noise=0.0)
    z = resample(y, 44100, 16000)
    assert len(z) == 16000
    spectrum = np.abs(np.fft.rfft(z))
    assert abs(np.argmax(spectrum) * 16000 / len(z) - 1000) < 2


@pytest.mark.parametrize("decoder", ["soundfile", "essentia", "ffmpeg"])
def test_decoders_agree_on_an_mp3(tmp_path, decoder):
    stereo = np.stack([tone(440, 3, 44100), tone(660, 3, 44100, seed=1)], axis=1)
    path = encode_mp3(stereo, 44100, tmp_path / "x.mp3")
    decoded = load_audio(path.read_bytes(), 16000, decoder=decoder, suffix=".mp3")
    assert decoded.decoder == decoder
    assert decoded.source_channels == 2 and decoded.source_sample_rate == 44100
    # MP3 encoder/decoder delay differs by at most a few tens of ms between decoders.
    assert abs(decoded.seconds - 3.0) < 0.1
    spectrum = np.abs(np.fft.rfft(decoded.pcm[4000:36000]))
    peaks = sorted(np.argsort(spectrum)[-2:] * 16000 / 32000)
    assert abs(peaks[0] - 440) < 3 and abs(peaks[1] - 660) < 3


def test_empty_and_garbage_bytes_are_rejected_with_reasons(tmp_path):
    with pytest.raises(AudioRejected) as exc:
        load_audio(b"", 16000)
    assert exc.value.reason == "empty"
    with pytest.raises(AudioRejected) as exc:
        load_audio(b"this is not audio" * 10, 16000, suffix=".mp3")
    assert exc.value.reason == "unreadable" and "0x" not in exc.value.message
    sf.write(tmp_path / "silent.wav", np.zeros(32000, np.float32), 16000)
    with pytest.raises(AudioRejected) as exc:
        load_audio((tmp_path / "silent.wav").read_bytes(), 16000)
    assert exc.value.reason == "silent"
