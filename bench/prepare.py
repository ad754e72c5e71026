#!/usr/bin/env python
"""Throughput of the Beam prepare job vs the bare chain vs an essentia-only chain.

Same files, one run, side by side:
  bare       decode (soundfile) + downmix + soxr resample + torch log-mel, plain loop, 1 process
  essentia   essentia MonoLoader (decode + resample) + essentia mel bands, plain loop, 1 process
  beam       `beam_runner.py prepare` (mel only), FnApiRunner multi-processing, 1 and 2 workers

The Beam job has a fixed start-up cost (worker processes, grpc); it is separated from the
per-track cost by running the job on N and on 2N tracks: marginal s/track =
(t(2N) - t(N)) / N. Both the marginal and the whole-job rates are reported.

    .venv/bin/python bench/prepare.py [--corpus DIR] [--n 48]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from manifests.schema import read_manifest, write_manifest  # noqa: E402
from pipelines.audio import load_audio  # noqa: E402
from pipelines.features import FeatureConfig, log_mel  # noqa: E402

CFG = FeatureConfig()


def bare_chain(paths: list[Path]) -> float:
    torch.set_num_threads(1)
    start = time.perf_counter()
    for p in paths:
        decoded = load_audio(p.read_bytes(), CFG.sample_rate, decoder="soundfile", suffix=".mp3")
        log_mel(decoded.pcm, CFG).numpy().astype(np.float16)
    return time.perf_counter() - start


def essentia_chain(paths: list[Path]) -> float:
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
    start = time.perf_counter()
    for p in paths:
        audio = es.MonoLoader(filename=str(p), sampleRate=CFG.sample_rate)()
        bands = [
            mel(spectrum(window(frame)))
            for frame in es.FrameGenerator(
                audio, frameSize=CFG.n_fft, hopSize=CFG.hop, startFromZero=True
            )
        ]
        (10 * np.log10(np.maximum(np.array(bands), 1e-10))).astype(np.float16)
    return time.perf_counter() - start


def beam_job(manifest: Path, audio_root: Path, workers: int) -> float:
    out = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    cmd = [
        sys.executable, str(ROOT / "beam_runner.py"), "prepare", "--manifest", str(manifest),
        "--audio-root", str(audio_root), "--output", str(out / "data"), "--features", "mel",
        "--decoder", "soundfile", f"--direct_num_workers={workers}",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    elapsed = time.perf_counter() - start
    shutil.rmtree(out)
    return elapsed


def subset_manifest(corpus: Path, n: int, dest: Path) -> Path:
    table = read_manifest(corpus / "manifest.parquet")
    write_manifest(table.slice(0, n), dest)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, help="a demo corpus dir (rendered if absent)")
    parser.add_argument("--n", type=int, default=48, help="N tracks (the job also runs 2N)")
    args = parser.parse_args()
    corpus = args.corpus or Path(tempfile.gettempdir()) / "bench-demo-corpus"
    if (
        not (corpus / "manifest.parquet").exists()
        or len(read_manifest(corpus / "manifest.parquet")) < 2 * args.n
    ):
        from manifests.demo import render_corpus

        render_corpus(corpus, n=max(2 * args.n, 96), seed=0)
    table = read_manifest(corpus / "manifest.parquet")
    paths = [corpus / p for p in table.column("audio_path").to_pylist()[: args.n]]
    tmp = Path(tempfile.mkdtemp(prefix="bench-manifests-"))
    m1 = subset_manifest(corpus, args.n, tmp / "n.parquet")
    m2 = subset_manifest(corpus, 2 * args.n, tmp / "2n.parquet")

    bare_chain(paths[:2])  # warm caches and imports
    rows = {}
    rows["bare"] = args.n / bare_chain(paths)
    rows["essentia"] = args.n / essentia_chain(paths)
    for workers in (1, 2):
        t1 = beam_job(m1, corpus, workers)
        t2 = beam_job(m2, corpus, workers)
        rows[f"beam_{workers}w_marginal_per_core"] = args.n / max(t2 - t1, 1e-9) / workers
        rows[f"beam_{workers}w_whole_job"] = 2 * args.n / t2
    shutil.rmtree(tmp)

    print(
        f"{args.n} demo tracks (30 s MP3s, half MTAT-like, half MSD-like), {os.cpu_count()} cores"
    )
    print(f"{'chain':36s} tracks/s")
    for name, rate in rows.items():
        print(f"{name:36s} {rate:8.2f}")
    ratios = {
        "beam_1w_marginal / bare": rows["beam_1w_marginal_per_core"] / rows["bare"],
        "beam_2w_marginal_per_core / bare": rows["beam_2w_marginal_per_core"] / rows["bare"],
        "beam_1w_marginal / essentia": rows["beam_1w_marginal_per_core"] / rows["essentia"],
        "bare / essentia": rows["bare"] / rows["essentia"],
        "beam 2 workers / 1 worker (whole job)": rows["beam_2w_whole_job"]
        / rows["beam_1w_whole_job"],
    }
    for name, ratio in ratios.items():
        print(f"{name:36s} {ratio:8.2f}x")
    print(json.dumps({"rates": rows, "ratios": ratios}))


if __name__ == "__main__":
    main()
