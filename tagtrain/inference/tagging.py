"""`tag`: tag audio files with a trained run (`--run`, here) or a published model
(`--pretrained`, tagtrain.pretrained.cli); both go through `write_tagged`, so they print the
same text, write the same JSON lines and follow the same short-file rule.

For a run, each file is decoded, downmixed and resampled with the pipeline's own
`load_audio`, rounded to int16 like the shards' PCM, and cut into the model's input window:
consecutive windows, the last one aligned with the end of the file so the whole file is
covered (`TrackWindows`). Each window becomes the model's input exactly as in training from
PCM (the run's feature configuration and normalisation, through `pcm_input`); the sigmoid
outputs are averaged over the windows (`WindowPredictor`).

Output: by default the top tags of each file as text on stdout; with `--json` (stdout) or
`--out FILE` one JSON line per file, `Tagged.record`'s schema (`RECORD_KEYS`), or
{path, model, error} for a file that cannot be tagged (exit status 1). Progress goes to
stderr, and only when it is a terminal and the results do not go to that terminal.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.core.audio import AudioRejected
from pipelines.core.errors import UserError
from pipelines.core.flags import setting
from pipelines.core.formats import audio_files
from tagtrain.inference.predict import WindowPredictor, decode_windows
from tagtrain.inference.trained_run import CHECKPOINTS, RunError, TrainedRun, load_run_from_args

# Zero-padding a short file would feed the model silence it never saw in training, and the
# published models' official extractor refuses such files: neither model pads.
SHORT_FILES = (
    "a file shorter than one model window (the run's input window; 2.98 s for the published "
    "musicnn models) is not tagged: it is an error, exit status 1"
)
RECORD_KEYS = (
    "path", "model", "seconds", "window_seconds", "windows", "top", "vocabulary",
    "probabilities", "windows_s", "taggram",
)  # fmt: skip


@dataclass
class TagOptions:
    paths: list[str] = setting(
        [], f"audio files or folders; {SHORT_FILES}", positional=True, metavar="FILE_OR_DIR"
    )  # fmt: skip
    run: str | None = setting(None, "run directory (config.json, best.pt, ...)")
    top: int = setting(10, "tags shown per file (the JSON lines' `top`)")
    json: bool = setting(False, "JSON lines on stdout instead of text (the --out schema)")
    out: str | None = setting(
        None, "write one JSON line per file here (path, model, top, vocabulary, "
        "probabilities, per-window taggram, ...) instead of text on stdout", metavar="FILE",
    )  # fmt: skip
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
        if self.out and self.json:
            raise RunError("--json prints the JSON lines that --out writes: give one of them")


class TooShort(UserError):
    pass


def too_short(path, seconds: float, window_seconds: float) -> TooShort:
    return TooShort(f"{path}: {seconds:.2f} s is shorter than one {window_seconds:.2f} s window")


@dataclass
class Tagged:
    """One file's tags, whichever model: each window's probabilities and their average."""

    path: str
    model: str
    seconds: float
    window_seconds: float
    vocabulary: list[str]
    taggram: np.ndarray  # [windows, tags]
    windows_s: list[list[float]]  # [start, end] of each window, in seconds
    probabilities: np.ndarray  # [tags], averaged over windows

    def top(self, n: int) -> list[tuple[str, float]]:
        order = np.argsort(-np.asarray(self.probabilities), kind="stable")[:n]
        return [(self.vocabulary[i], float(self.probabilities[i])) for i in order]

    def record(self, top: int) -> dict:
        record = {
            "path": self.path,
            "model": self.model,
            "seconds": round(self.seconds, 3),
            "window_seconds": round(self.window_seconds, 4),
            "windows": len(self.taggram),
            "top": [[t, round(p, 6)] for t, p in self.top(top)],
            "vocabulary": list(self.vocabulary),
            "probabilities": np.asarray(self.probabilities, dtype=float).tolist(),
            "windows_s": [[round(a, 3), round(b, 3)] for a, b in self.windows_s],
            "taggram": np.asarray(self.taggram, dtype=float).tolist(),
        }
        assert tuple(record) == RECORD_KEYS
        return record


def tag_file(run: TrainedRun, path: Path, predictor: WindowPredictor) -> Tagged:
    rate = run.plan.feature_config.sample_rate
    windows, seconds = decode_windows(path, rate, run.spec.samples)
    window_seconds = run.spec.samples / rate
    if windows.padded:
        raise too_short(path, seconds, window_seconds)
    prediction = predictor.predict(windows)
    starts = [o / rate for o in windows.offsets]
    return Tagged(
        str(path), run.name, seconds, window_seconds, list(run.vocabulary), prediction.taggram,
        [[s, s + window_seconds] for s in starts], prediction.probabilities,
    )  # fmt: skip


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:04.1f}"


def text_lines(tagged: Tagged, top: int) -> list[str]:
    windows = len(tagged.taggram)
    plural = "s" if windows != 1 else ""
    lines = [
        f"{tagged.path}  ({_clock(tagged.seconds)}, {windows} window{plural} of "
        f"{tagged.window_seconds:.2f} s, {tagged.model})"
    ]
    width = max(len(t) for t in tagged.vocabulary)
    lines += [f"  {tag:<{width}}  {p:.3f}" for tag, p in tagged.top(top)]
    return lines


def json_line(record: dict) -> str:
    # JSON has no NaN or infinity: json.dumps would write a bare NaN, which strict parsers
    # refuse, so a non-finite number (a model that overflowed) is written as null.
    return json.dumps(_finite_or_null(record), allow_nan=False) + "\n"


def _finite_or_null(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    return value


def _progress(items, total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(items, total=total, unit="file", file=sys.stderr, disable=not enabled, leave=False)


def write_tagged(
    results: Iterable[tuple[Path, Tagged | Exception]], total: int, model: str, options
) -> int:
    """Print or write each (path, Tagged or the error that stopped it) as `options` say
    (text, `--json` or `--out`); 1 when a file could not be tagged, else 0."""
    jsonl = bool(options.out or options.json)
    # A bar on the terminal the results are printed to would share their lines.
    progress = sys.stderr.isatty() and not (sys.stdout.isatty() and not options.out)
    failed = 0
    with open(options.out, "w") if options.out else nullcontext(sys.stdout) as sink:
        for path, result in _progress(results, total, progress):
            if isinstance(result, Exception):
                failed += 1
                print(f"error: {result}", file=sys.stderr)
                if jsonl:
                    sink.write(json_line({"path": str(path), "model": model, "error": str(result)}))
            elif jsonl:
                sink.write(json_line(result.record(options.top)))
            else:
                sink.write("\n".join(text_lines(result, options.top)) + "\n")
            sink.flush()
    if options.out:
        print(f"wrote {total - failed} of {total} files' tags to {options.out}")
    if failed:
        print(f"{failed} of {total} files could not be tagged", file=sys.stderr)
    return 1 if failed else 0


def tag_with_run(options: TagOptions) -> int:
    """Tag `options.paths` with the run `options.run` (write_tagged)."""
    if not options.run:
        raise RunError("give --run RUN_DIR or --pretrained NAME")
    options.check()
    files = audio_files(options.paths)
    trained = load_run_from_args(options)
    predictor = WindowPredictor.for_run(trained, options.batch_size)

    def results():
        for path in files:
            try:
                yield path, tag_file(trained, path, predictor)
            except (AudioRejected, UserError, OSError) as exc:
                yield path, exc if isinstance(exc, UserError) else UserError(f"{path}: {exc}")

    return write_tagged(results(), len(files), trained.name, options)
