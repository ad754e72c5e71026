"""`tag --run`: tag audio files with a trained run.

Each file is decoded, downmixed and resampled with the pipeline's own `load_audio`, rounded
to int16 like the shards' PCM, and cut into the model's input window: consecutive
windows, the last one aligned with the end of the file so the whole file is covered
(`TrackWindows`). Each window becomes the model's input exactly as in training from PCM
(the run's feature configuration and normalisation, through `pcm_input`); the sigmoid
outputs are averaged over the windows (`WindowPredictor`). A file shorter than one window
is zero-padded to one window, and the output says so.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.core.audio import AudioRejected
from pipelines.core.flags import setting
from pipelines.core.formats import audio_files
from tagtrain.inference.predict import WindowPredictor, decode_windows
from tagtrain.inference.trained_run import CHECKPOINTS, RunError, TrainedRun, load_run_from_args


@dataclass
class TagOptions:
    paths: list[str] = setting(
        [], "audio files or folders", positional=True, metavar="FILE_OR_DIR"
    )  # fmt: skip
    run: str | None = setting(None, "run directory (config.json, best.pt, ...)")
    top: int = setting(10, "tags shown per file")
    json: bool = setting(False, "print JSON instead of text")
    checkpoint: str = setting("best", "checkpoint of the run", choices=tuple(CHECKPOINTS))
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    batch_size: int = setting(16, "windows per forward pass")
    s3_endpoint_url: str = setting(
        "", "S3-compatible endpoint for an s3:// run (or AWS_ENDPOINT_URL)"
    )

    def check(self) -> None:
        if self.top < 1:
            raise RunError("--top must be at least 1")
        if self.batch_size < 1:
            raise RunError("--batch-size must be at least 1")


@dataclass
class TagResult:
    file: str
    seconds: float
    windows: int
    padded: bool
    probabilities: np.ndarray  # [tags], averaged over windows

    def top(self, vocabulary: list[str], n: int) -> list[tuple[str, float]]:
        order = np.argsort(-self.probabilities, kind="stable")[:n]
        return [(vocabulary[i], float(self.probabilities[i])) for i in order]


def tag_file(run: TrainedRun, path: Path, predictor: WindowPredictor) -> TagResult:
    windows, seconds = decode_windows(path, run.plan.feature_config.sample_rate, run.spec.samples)
    prediction = predictor.predict(windows)
    return TagResult(
        str(path), seconds, prediction.windows, windows.padded, prediction.probabilities
    )


def padding_note(result: TagResult, run: TrainedRun) -> str:
    window = run.spec.samples / run.spec.sample_rate
    return (
        f"note: {result.file} is {result.seconds:.2f} s, shorter than the model's "
        f"{window:.2f} s window: zero-padded to one window"
    )


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:04.1f}"


def print_result(result: TagResult, run: TrainedRun, top: int) -> None:
    window = run.spec.samples / run.spec.sample_rate
    plural = "s" if result.windows != 1 else ""
    print(
        f"{result.file}  ({_clock(result.seconds)}, {result.windows} window{plural} of {window:.2f} s)"
    )
    if result.padded:
        print(f"  {padding_note(result, run)}")
    width = max(len(t) for t in run.vocabulary)
    for tag, p in result.top(run.vocabulary, top):
        print(f"  {tag:<{width}}  {p:.3f}")


def result_json(result: TagResult, run: TrainedRun, top: int) -> dict:
    return {
        "file": result.file,
        "seconds": round(result.seconds, 3),
        "windows": result.windows,
        "window_seconds": round(run.spec.samples / run.spec.sample_rate, 4),
        "padded": result.padded,
        "tags": [
            {"tag": t, "probability": round(p, 6)} for t, p in result.top(run.vocabulary, top)
        ],
    }


def tag_with_run(options: TagOptions) -> int:
    """Tag `options.paths` with the run `options.run`: text (or JSON) on stdout, a file that
    cannot be decoded one `error:` line on stderr (exit status 1)."""
    if not options.run:
        raise RunError("give --run RUN_DIR or --pretrained NAME")
    options.check()
    files = audio_files(options.paths)
    trained = load_run_from_args(options)
    predictor = WindowPredictor.for_run(trained, options.batch_size)
    results, failed = [], 0
    for path in files:
        try:
            result = tag_file(trained, path, predictor)
        except (AudioRejected, OSError) as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        if options.json:
            results.append(result_json(result, trained, options.top))
            if result.padded:
                print(padding_note(result, trained), file=sys.stderr)
        else:
            print_result(result, trained, options.top)
    if options.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0
