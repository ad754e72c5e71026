"""`python -m tagtrain tag FILE_OR_DIR... --run RUN`: tag audio files with a trained run.

Each file is decoded, downmixed and resampled with the pipeline's own `load_audio`, rounded
to int16 like the shards' PCM, and cut into the model's input window: consecutive
windows, the last one aligned with the end of the file so the whole file is covered.
Each window becomes the model's input exactly as in training from PCM (the run's feature
configuration and normalisation, through `DeviceInput`); the sigmoid outputs are averaged
over the windows. A file shorter than one window is zero-padded to one window, and the
output says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipelines.core.audio import AudioRejected, load_audio, to_int16
from pipelines.core.flags import add_flags, setting
from pipelines.core.formats import audio_files
from tagtrain.inference.predict import predict_windows, window_offsets  # noqa: F401  (re-exported)
from tagtrain.inference.trained_run import RunError, TrainedRun, load_run_from_args
from tagtrain.loader import DeviceInput
from tagtrain.pretrained.cli import add_pretrained_argument
from tagtrain.pretrained.cli import run_tag as run_pretrained_tag

COMMAND = "tag"
HELP = "tag audio files (any length) with a trained run"


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


def pcm_input(run: TrainedRun) -> DeviceInput:
    """Model input from int16 PCM windows: the run's features and normalisation."""
    kind = run.plan.kind
    plan = dataclasses.replace(
        run.plan,
        member="pcm.npy",
        length=run.spec.samples,
        device_feature=None if kind == "pcm" else kind,
    )
    return DeviceInput(plan, run.device, run.mean, run.std)


def tag_file(run: TrainedRun, path: Path, device_input: DeviceInput, batch_size: int) -> TagResult:
    sample_rate = run.plan.feature_config.sample_rate
    decoded = load_audio(path.read_bytes(), sample_rate, suffix=path.suffix, min_seconds=0.0)
    pcm = torch.from_numpy(to_int16(decoded.pcm))
    length = run.spec.samples
    probs, windows = predict_windows(
        run.model, pcm, length, device_input, run.autocast_dtype, batch_size
    )
    return TagResult(str(path), decoded.seconds, windows, len(pcm) < length, probs)


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


# --- command line ------------------------------------------------------------------------


@dataclass
class TagOptions:
    top: int = setting(10, "tags shown per file")
    json: bool = setting(False, "print JSON instead of text")
    checkpoint: str = setting("best", "checkpoint of the run", choices=("best", "last"))
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    batch_size: int = setting(16, "windows per forward pass")
    s3_endpoint_url: str = setting(
        "", "S3-compatible endpoint for an s3:// run (or AWS_ENDPOINT_URL)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="FILE_OR_DIR", help="audio files or folders")
    parser.add_argument("--run", default=None, help="run directory (config.json, best.pt, ...)")
    add_pretrained_argument(parser)
    parser.add_argument(
        "--out", default=None, help="--pretrained: JSON lines file (default stdout)"
    )
    add_flags(parser, TagOptions, with_defaults=True)


def run(args: argparse.Namespace) -> int:
    if args.pretrained:
        return run_pretrained_tag(args)
    if not args.run:
        raise RunError("give --run RUN_DIR or --pretrained NAME")
    if args.top < 1:
        raise RunError("--top must be at least 1")
    if args.batch_size < 1:
        raise RunError("--batch-size must be at least 1")
    files = audio_files(args.paths)
    trained = load_run_from_args(args)
    device_input = pcm_input(trained)
    results, failed = [], 0
    for path in files:
        try:
            result = tag_file(trained, path, device_input, args.batch_size)
        except (AudioRejected, OSError) as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            results.append(result_json(result, trained, args.top))
            if result.padded:
                print(padding_note(result, trained), file=sys.stderr)
        else:
            print_result(result, trained, args.top)
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0
