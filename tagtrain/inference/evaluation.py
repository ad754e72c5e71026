"""`evaluate`: the registered metrics (tagtrain.inference.metrics: macro ROC-AUC
and PR-AUC) with bootstrap 95% intervals, and a per-tag table, for a run.

Every model averages its sigmoid outputs over `--chunks` evenly spaced chunks of each
track, song-level models (FCN, CRNN) included, as the reference code evaluates them
(tagtrain.inference.predict, as in validation). Tags with no positives or no negatives in the split have no AUC: they are
left out of the macro averages and listed, never averaged in as NaN. The intervals come
from `--bootstrap` resamples of the tracks (percentile method).

How many chunks: `--chunks`, else the run's protocol (RunConfig: `eval_chunks`, else
`val_chunks`); with `eval_window: moving` (seed 002: "several predictions are computed
for a song (by a moving window of 15s) and then averaged") the chunks are consecutive
windows of the model's input length: K = floor(the split's mean track length / the
window), evenly spaced from the start to the end of each track, so a track K windows long
is cut into K back-to-back windows (MSD's 30 s clips: 2 of 15 s, 10 of 3 s).

Writes, in the run directory, `metrics.json`, `per_tag.csv` and `predictions.parquet`
(key, true tags, one probability per tag; the vocabulary in the file's metadata) for the
test split of the run's own dataset; other splits get `metrics-{split}.json`, other
datasets `metrics-{dataset}-{hash}-{split}.json` (and the same for the others, see
tagtrain.run.directory), so nothing is overwritten by a different evaluation.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.core.flags import setting
from tagtrain.inference.metrics import METRICS, TagScores, bootstrap_macro, tag_scores
from tagtrain.inference.predict import predict_split
from tagtrain.inference.trained_run import (
    EvalOptions,
    EvalSet,
    RunError,
    TrainedRun,
    check_run_arguments,
    check_whole_split,
    load_run_from_args,
    loader_config,
    open_split,
    same_data,
)
from tagtrain.loader import LoaderStats, load_card
from tagtrain.run.directory import RunDir
from tagtrain.run.runtime import DistEnv

PER_TAG_FIELDS = ("tag", "positives", *METRICS)


@dataclass
class Bootstrap:
    bootstrap: int = setting(
        1000, "resamples of the tracks for 95%% intervals of the macro scores (0 = off)"
    )


@dataclass
class _Evaluated:
    """What is evaluated on what (first in --help)."""

    run: str | None = setting(None, "run directory (config.json, best.pt, ...)")
    pretrained: str | None = None  # a published model instead of --run (no flag here)
    data: str | None = setting(
        None, "dataset directory or URL (default: the run's own dataset)"
    )  # fmt: skip
    split: str = setting("test", "split to evaluate")
    out: str | None = setting(
        None, "--pretrained: directory of its results, a run directory for `report "
        "--compare` (default: runs/NAME)",
    )  # fmt: skip


@dataclass
class EvaluateOptions(EvalOptions, Bootstrap, _Evaluated):
    """`evaluate`'s settings (`--pretrained`'s flag is added by tagtrain.pretrained.cli)."""

    chunks: int | None = setting(
        None, "evenly spaced chunks averaged per track (default: the run's eval_chunks, a "
        "recipe's protocol, else its val_chunks, 16)",
    )  # fmt: skip


@dataclass
class Evaluation:
    run: TrainedRun
    data: str
    split: str
    chunks: int  # chunks averaged per track
    labels: np.ndarray  # [tracks, tags]
    probs: np.ndarray  # [tracks, tags], chunk-averaged
    scores: TagScores
    stats: LoaderStats
    keys: list[str] = field(default_factory=list)  # one per track
    intervals: dict = field(default_factory=dict)  # metric -> bootstrap 95% {low, high}
    resamples: int = 0
    card_sha256: str = ""  # of the evaluated dataset's card
    split_tracks: int = 0  # the split's tracks in the card (`tracks` were read and scored)

    @property
    def tracks(self) -> int:
        return int(self.labels.shape[0])

    @property
    def positives(self) -> list[int]:
        return self.labels.sum(axis=0).round().astype(int).tolist()

    def per_tag(self) -> list[dict]:
        """One row per tag, in vocabulary order; excluded tags have no AUCs (None)."""
        per_tag = self.scores.per_tag
        return [
            {"tag": tag, "positives": pos, **{m: _number(per_tag[m][i]) for m in METRICS}}
            for i, (tag, pos) in enumerate(zip(self.run.vocabulary, self.positives))
        ]

    def excluded(self) -> dict[str, str]:
        """The tags left out of the macro averages, and why (vocabulary order)."""
        out = {}
        for tag, pos in zip(self.run.vocabulary, self.positives):
            if pos == 0:
                out[tag] = "no positives"
            elif pos == self.tracks:
                out[tag] = "no negatives"
        return out

    def summary(self) -> dict:
        excluded = self.excluded()
        return {
            "run": self.run.location,
            "model": self.run.model_name,
            "checkpoint": self.run.checkpoint.name,
            "checkpoint_sha256": self.run.checkpoint_sha256,
            "data": self.data,
            "data_card_sha256": self.card_sha256,
            "split": self.split,
            "chunks": self.chunks,
            "tracks": self.tracks,
            "tracks_in_split": self.split_tracks,
            "tags": len(self.run.vocabulary),
            **{m: _number(v) for m, v in self.scores.macro.items()},
            "bootstrap": {"resamples": self.resamples, **self.intervals},
            "evaluated_tags": self.scores.evaluated_tags,
            "excluded_tags": list(excluded),
            "excluded_reasons": excluded,
            # The dataset's tags a published model has no output for (never scored).
            "not_in_model_vocabulary": list(self.run.unscored_tags),
            "loader": {
                "shard_errors": self.stats.shard_errors,
                "bad_samples": self.stats.bad_samples,
                "errors": self.stats.errors,
            },
        }


def mean_track_seconds(eval_set: EvalSet) -> float:
    """The split's mean track length from the card (0 when it has no tracks)."""
    split = eval_set.card["splits"].get(eval_set.split) or {}
    tracks, seconds = split.get("samples") or 0, split.get("seconds") or 0.0
    return seconds / tracks if tracks else 0.0


def moving_windows(run: TrainedRun, eval_set: EvalSet) -> int:
    """Consecutive windows of the model's input in a track of the split's mean length."""
    window = run.spec.samples / run.spec.sample_rate
    return max(1, math.floor(mean_track_seconds(eval_set) / window + 1e-6))


def _number(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def evaluate_set(run: TrainedRun, eval_set: EvalSet, args) -> Evaluation:
    """Chunk-averaged predictions for every track of the split, scored per tag. `args`:
    the settings of `EvalOptions` and `bootstrap` (options or a command's namespace)."""
    cfg = loader_config(run, eval_set, args)
    if getattr(args, "chunks", None) is None and run.config.eval_window == "moving":
        cfg = dataclasses.replace(cfg, eval_chunks=moving_windows(run, eval_set))
    # The loader's labels follow the card; a published model keeps the columns it has.
    vocabulary = run.vocabulary if run.label_columns is None else eval_set.card["vocabulary"]
    preds = predict_split(
        run.model,
        eval_set.shards,
        eval_set.plan,
        vocabulary,
        cfg,
        eval_set.device_input,
        DistEnv(),
        run.autocast_dtype,
    )
    if run.label_columns is not None:
        preds.labels = preds.labels[:, run.label_columns]
    if preds.labels.shape[0] == 0:
        first = preds.stats.errors[0] if preds.stats.errors else "no samples"
        raise RunError(f"no track of {eval_set.data} split {eval_set.split} could be read: {first}")
    check_whole_split(eval_set, preds.labels.shape[0], preds.stats, args)
    resamples = getattr(args, "bootstrap", 0)
    intervals = bootstrap_macro(preds.labels, preds.probs, resamples) if resamples else {}
    return Evaluation(
        run, eval_set.data, eval_set.split, cfg.eval_chunks, preds.labels, preds.probs,
        tag_scores(preds.labels, preds.probs), preds.stats, preds.keys, intervals, resamples,
        eval_set.card_sha256, eval_set.tracks,
    )  # fmt: skip


# --- outputs ---------------------------------------------------------------------------


def dataset_label(data: str) -> str:
    """A file-name-safe, collision-free label for a dataset location."""
    base = re.sub(r"[^A-Za-z0-9._+-]+", "_", data.rstrip("/").rsplit("/", 1)[-1]) or "data"
    digest = hashlib.sha256(data.rstrip("/").encode()).hexdigest()[:6]
    return f"{base}-{digest}"


def result_paths(run: TrainedRun, data: str, split: str) -> tuple[Path, Path, Path]:
    """(metrics JSON, per-tag CSV, per-track predictions Parquet) in the run directory."""
    if same_data(data, run.config.data):
        suffix = "" if split == "test" else f"-{split}"
    else:
        suffix = f"-{dataset_label(data)}-{split}"
    return RunDir(run.dir).evaluation(suffix)


def write_predictions(evaluation: Evaluation, path: Path) -> Path:
    """One row per track: key, its true tags, and the probability of every tag (in the
    vocabulary order that the file's metadata records)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    vocabulary = evaluation.run.vocabulary
    # Built from flat numpy arrays and list offsets: a Python float per probability
    # (tolist) was 50 M objects, ~2.5 GB and ~20 s, for a million tracks x 50 tags.
    rows, columns = np.nonzero(evaluation.labels > 0.5)  # row-major: each track's in order
    tracks, width = evaluation.probs.shape
    tag_offsets = np.searchsorted(rows, np.arange(tracks + 1)).astype(np.int32)
    names = pa.array(vocabulary, pa.string()).take(pa.array(columns.astype(np.int64)))
    flat = pa.array(np.ascontiguousarray(evaluation.probs, dtype=np.float32).reshape(-1))
    table = pa.table(
        {
            "key": pa.array(evaluation.keys, pa.string()),
            "tags": pa.ListArray.from_arrays(pa.array(tag_offsets), names),
            "probabilities": pa.ListArray.from_arrays(
                pa.array(np.arange(tracks + 1, dtype=np.int32) * width), flat
            ),
        }
    )
    metadata = {"vocabulary": vocabulary, "run": evaluation.run.location, "data": evaluation.data}
    table = table.replace_schema_metadata({"tagtrain": json.dumps(metadata)})
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return path


def write_results(evaluation: Evaluation) -> tuple[Path, Path, Path]:
    paths = result_paths(evaluation.run, evaluation.data, evaluation.split)
    metrics_path, per_tag_path, predictions_path = paths
    metrics_path.write_text(json.dumps(evaluation.summary(), indent=2) + "\n")
    with open(per_tag_path, "w", newline="") as f:
        writer = csv.DictWriter(f, ("tag", "positives", *METRICS))
        writer.writeheader()
        for row in evaluation.per_tag():
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    if len(evaluation.keys) == evaluation.tracks:
        write_predictions(evaluation, predictions_path)
    return paths


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def print_evaluation(evaluation: Evaluation) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    table = Table(
        title=f"{evaluation.run.name}: {evaluation.split} split, {evaluation.tracks} tracks",
        title_justify="left",
    )
    table.add_column("tag")
    for name in ("positives", *(m.label for m in METRICS.values())):
        table.add_column(name, justify="right")
    for row in evaluation.per_tag():
        table.add_row(row["tag"], str(row["positives"]), *(fmt(row[m]) for m in METRICS))
    s = evaluation.summary()
    table.add_section()
    macro = (fmt(s[m]) for m in METRICS)
    table.add_row(f"macro over {s['evaluated_tags']} tags", "", *macro, style="bold")
    console.print(table)
    console.print(f"{evaluation.run.describe()}; {evaluation.chunks} chunks per track")
    for name, interval in evaluation.intervals.items():
        if interval["low"] is not None:
            console.print(
                f"{METRICS[name].label} 95% interval ({evaluation.resamples} bootstrap "
                f"resamples of the tracks): {interval['low']:.4f} - {interval['high']:.4f}"
            )
    for tag, reason in s["excluded_reasons"].items():
        console.print(f"left out of the macro averages: {tag} ({reason})")
    if evaluation.run.unscored_tags:
        console.print(
            f"not scored (not in {evaluation.run.name}'s vocabulary): "
            + ", ".join(evaluation.run.unscored_tags)
        )
    if evaluation.stats.shard_errors or evaluation.stats.bad_samples:
        first = evaluation.stats.errors[0] if evaluation.stats.errors else ""
        console.print(
            f"loader: {evaluation.stats.shard_errors} shard error(s), "
            f"{evaluation.stats.bad_samples} bad sample(s) skipped; first: {first}"
        )


# --- the whole command ---------------------------------------------------------------

# (name, data, card, device, out) -> a published model as a TrainedRun
# (tagtrain.pretrained.on_shards.pretrained_run).
PublishedRun = Callable[..., TrainedRun]


def load_evaluated(options, published: PublishedRun | None = None) -> tuple[TrainedRun, str]:
    """(the run or published model that --run / --pretrained names, the dataset)."""
    if bool(options.run) == bool(options.pretrained):
        raise RunError(  # argparse's wording, as when --run alone was required
            "the following arguments are required: --run (or --pretrained NAME with --data, "
            "not both)"
        )
    if options.run:
        if options.out:
            raise RunError("--out is for --pretrained: a run's results go into its directory")
        trained = load_run_from_args(options)
        return trained, options.data or trained.config.data
    if not options.data:
        raise RunError(f"--pretrained {options.pretrained} needs --data DATASET")
    if published is None:
        raise RunError("--pretrained: this build has no published models")
    trained = published(
        options.pretrained, options.data, load_card(options.data), options.device, options.out
    )
    trained.dir.mkdir(parents=True, exist_ok=True)
    return trained, options.data


def warn_if_changed_since_training(run: TrainedRun, eval_set: EvalSet) -> None:
    """A run evaluated on its own dataset after that was prepared again: its splits may
    now hold other tracks (some it trained on), so say so before the figures."""
    own = same_data(eval_set.data, run.config.data)
    if own and run.card_checksum and eval_set.card_sha256 != run.card_checksum:
        print(
            f"warning: {eval_set.data} has changed since {run.name} was trained on it (its "
            f"card differs): its {eval_set.split} split may hold other tracks than then",
            file=sys.stderr,
        )


def evaluate(options: EvaluateOptions, published: PublishedRun | None = None) -> int:
    """Score the run (or `published(...)`, for --pretrained) on the split; write and print
    the results."""
    check_run_arguments(options)
    if options.bootstrap < 0:
        raise RunError("--bootstrap must not be negative")
    trained, data = load_evaluated(options, published)
    eval_set = open_split(trained, data, options.split)
    warn_if_changed_since_training(trained, eval_set)
    evaluation = evaluate_set(trained, eval_set, options)
    paths = write_results(evaluation)
    trained.publish(*paths)
    print_evaluation(evaluation)
    shown = [trained.store.url(p.name) if trained.store else p for p in paths]
    print(f"wrote {shown[0]}, {shown[1]} and {shown[2]}")
    return 0
