"""The chains the prepare job is measured against, in one process: the bare chain
(soundfile decode, downmix, soxr resample, torch log-mel) and an essentia-only chain
(MonoLoader and essentia's mel bands)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from common import Timer

from pipelines.core.audio import load_audio
from pipelines.core.features import FeatureConfig, log_mel

CFG = FeatureConfig()


def bare_chain(paths: list[Path]) -> Timer:
    torch.set_num_threads(1)
    with Timer() as t:
        for p in paths:
            decoded = load_audio(
                p.read_bytes(), CFG.sample_rate, decoder="soundfile", suffix=".mp3"
            )
            log_mel(decoded.pcm, CFG).numpy().astype(np.float16)
    return t


def essentia_chain(paths: list[Path]) -> Timer:
    import essentia

    essentia.log.warningActive = False
    import essentia.standard as es

    # Essentia refuses 128 triangular bands over 257 bins; zero-padding the 512-sample
    # frame to 1024 points is its documented remedy (same frames, finer bins).
    window = es.Windowing(type="hann", size=CFG.n_fft, zeroPadding=CFG.n_fft)
    spectrum = es.Spectrum(size=2 * CFG.n_fft)
    mel = es.MelBands(
        numberBands=CFG.n_mels,
        sampleRate=CFG.sample_rate,
        inputSize=CFG.n_fft + 1,
        highFrequencyBound=CFG.f_max,
        type="power",
    )
    with Timer() as t:
        for p in paths:
            audio = es.MonoLoader(filename=str(p), sampleRate=CFG.sample_rate)()
            bands = [
                mel(spectrum(window(frame)))
                for frame in es.FrameGenerator(
                    audio, frameSize=CFG.n_fft, hopSize=CFG.hop, startFromZero=True
                )
            ]
            (10 * np.log10(np.maximum(np.array(bands), 1e-10))).astype(np.float16)
    return t
