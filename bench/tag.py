"""Files/s tagging 30 s MP3s on one CPU core: our musicnn port (`Tagger.from_pretrained`)
against the official musicnn (TensorFlow) on the same files, in one run.

    PYTHONPATH=. .venv/bin/python bench/tag.py --n 6 --official-python /work/tfvenv-np1/bin/python

The official side runs `musicnn.extractor.extractor(file, model, extract_features=False)`
per file, as `python -m musicnn.tagger` does (it rebuilds its graph per file), in the
dev-only TensorFlow environment of scripts/golden/ (a subprocess of the interpreter given
by --official-python, with TF_USE_LEGACY_KERAS=1). Both sides are pinned to one core
(taskset) with one thread, decode the same MP3s with libsndfile and resample with soxr;
the taggrams are compared (max abs difference) as well as timed. Ours is timed file by
file (`predict`) and as `predict_many` (decoding the next file on a thread while the
model runs; on one core that overlap buys nothing, so it is there for the ratio of the
batched path). Rates are given per wall second and per CPU-second of the process (all
its threads): on a shared machine the CPU-seconds are the steadier measure. Without
--official-python only our side is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from common import Timer  # noqa: E402

TF_NAMES = {"musicnn-mtt": "MTT_musicnn", "musicnn-msd": "MSD_musicnn"}
TF_NAMES |= {"vgg-mtt": "MTT_vgg", "vgg-msd": "MSD_vgg"}

OFFICIAL = r"""
import contextlib, io, json, sys, time
import numpy as np
from musicnn.extractor import extractor
model, files = sys.argv[1], sys.argv[2:]
with contextlib.redirect_stdout(io.StringIO()):
    extractor(files[0], model=model, extract_features=False)  # import/JIT warm-up
out = {}
start, cpu = time.perf_counter(), time.process_time()
for f in files:
    with contextlib.redirect_stdout(io.StringIO()):
        taggram, _ = extractor(f, model=model, extract_features=False)
    out[f] = np.asarray(taggram).tolist()
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"seconds": seconds, "cpu": cpu, "taggrams": out}))
"""


def make_mp3s(folder: Path, n: int) -> list[Path]:
    """n 30 s stereo 44.1 kHz MP3s built from the test clips (varied per file)."""
    from musicnn_clips import beat, chords, melody

    sources = [
        np.tile(melody(44100, 10.0), 3),
        np.tile(beat(44100, 10.0), 3),
        np.tile(chords(44100, 10.0).mean(axis=1), 3),
    ]
    files = []
    for i in range(n):
        mono = sources[i % 3] * (0.3 + 0.1 * (i % 4))
        stereo = np.stack([mono, np.roll(mono, 100 * (i + 1))], axis=1).astype(np.float32)
        path = folder / f"track{i:02d}.mp3"
        sf.write(path, stereo, 44100, format="MP3")
        files.append(path)
    return files


def time_ours(
    name: str, files: list[Path], many: bool, conv_algorithm: str = "fast"
) -> tuple[Timer, dict]:
    """`predict` file by file, or `predict_many` (decode of the next files on a thread,
    windows of consecutive files in shared forwards)."""
    import torch

    from tagtrain.pretrained.tagger import Tagger

    torch.set_num_threads(1)
    tagger = Tagger.from_pretrained(name, conv_algorithm=conv_algorithm)
    tagger.predict(files[0])  # warm-up
    with Timer() as timing:
        if many:
            taggrams = {str(p): r["taggram"] for p, r in tagger.predict_many(files)}
        else:
            taggrams = {str(f): tagger.predict(f)["taggram"] for f in files}
    return timing, taggrams


def time_official(python: str, name: str, files: list[Path]) -> tuple[Timer, dict]:
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env |= {"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
    cmd = ["taskset", "-c", "0", python, "-c", OFFICIAL, TF_NAMES[name], *map(str, files)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    timing = Timer()
    timing.wall, timing.cpu = result["seconds"], result["cpu"]
    return timing, result["taggrams"]


def max_difference(a: dict, b: dict) -> float:
    return max(float(np.abs(np.asarray(a[f]) - np.asarray(b[f])).max()) for f in a)


def report(label: str, n: int, t: Timer) -> None:
    print(
        f"{label:18s} {n / t.wall:6.2f} files/s wall ({t.wall:.1f} s), "
        f"{n / t.cpu:6.2f} files per CPU-s ({t.cpu:.1f} CPU-s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6, help="30 s MP3s (default 6)")
    parser.add_argument("--model", default="musicnn-mtt", choices=sorted(TF_NAMES))
    parser.add_argument("--official-python", default=None, help="python of the TF venv")
    parser.add_argument(
        "--conv-algorithm", default="fast", help="ours: fast (default) or direct (FIDELITY.md)"
    )
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})
    with tempfile.TemporaryDirectory() as tmp:
        files = make_mp3s(Path(tmp), args.n)
        ours_one, ours = time_ours(args.model, files, False, args.conv_algorithm)
        ours_many, batched = time_ours(args.model, files, True, args.conv_algorithm)
        report("ours, predict", args.n, ours_one)
        report("ours, predict_many", args.n, ours_many)
        print(f"taggram max |predict_many - predict| = {max_difference(batched, ours):.2e}")
        if args.official_python:
            official_t, official = time_official(args.official_python, args.model, files)
            report("official", args.n, official_t)
            for label, t in (("predict", ours_one), ("predict_many", ours_many)):
                print(
                    f"speed-up ({label}): {official_t.wall / t.wall:.1f}x wall, "
                    f"{official_t.cpu / t.cpu:.1f}x per CPU-s"
                )
            print(f"taggram max |ours - official| = {max_difference(ours, official):.2e}")
    load = os.getloadavg()
    print(f"one core each (taskset -c 0), load average {load[0]:.1f} {load[1]:.1f}")


if __name__ == "__main__":
    main()
