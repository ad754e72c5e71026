"""`tag --pretrained NAME` and `embed --pretrained NAME`: the published musicnn models on
audio files (the commands' `--run` paths stay in tagtrain/commands/tag.py and tagtrain/commands/embed.py,
which call in here when `--pretrained` is given).

tag: one JSON line per file (path, model, vocabulary, probabilities, taggram,
windows_s, top), to `--out` or stdout; a file that cannot be tagged is a JSON line
{"path", "error"} and the exit status is 1. embed: one Parquet row per file (path,
windows, embedding = the named layer averaged over windows, and over time for the
[time, channels] layers).
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from pipelines.core.errors import USAGE_ERROR, UserError, first_line
from pipelines.core.formats import audio_files
from tagtrain.pretrained.frontend import COMPRESSIONS
from tagtrain.pretrained.musicnn import PRETRAINED, pretrained_spec

MUSICNN_LAYERS = ("timbral", "temporal", "cnn1", "cnn2", "cnn3", "mean_pool", "max_pool")
MUSICNN_LAYERS += ("penultimate", "taggram")
VGG_LAYERS = ("pool1", "pool2", "pool3", "pool4", "pool5", "taggram")


def add_pretrained_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pretrained",
        default=None,
        metavar="NAME",
        help=f"a published musicnn model instead of --run: {', '.join(sorted(PRETRAINED))}",
    )
    parser.add_argument(
        "--musicnn-log",
        default="numpy1",
        help="--pretrained front end: numpy1 (as published, default) or numpy2 (float16 "
        "overflow of musicnn 0.1.0 under numpy>=2; see tagtrain/pretrained/frontend.py)",
    )
    parser.add_argument(
        "--conv-algorithm",
        default="fast",
        help="--pretrained convolutions: fast (default; fewer multiply-adds, equal up to "
        "rounding) or direct (the graph's literal convolutions; docs/FIDELITY.md)",
    )


def _progress(items, enabled: bool, total: int | None = None):
    from tqdm import tqdm

    return tqdm(items, total=total, unit="file", file=sys.stderr, disable=not enabled, leave=False)


def _tagger(args):
    from tagtrain.pretrained.tagger import Tagger

    pretrained_spec(args.pretrained)  # an unknown name is a one-line error
    if args.musicnn_log not in COMPRESSIONS:
        raise UserError(f"--musicnn-log must be one of {', '.join(COMPRESSIONS)}")
    device = "cpu" if getattr(args, "device", "auto") in ("auto", None) else args.device
    return Tagger.from_pretrained(
        args.pretrained,
        device=device,
        compression=args.musicnn_log,
        conv_algorithm=args.conv_algorithm,
    )


# --- tag -------------------------------------------------------------------------------------


def tag_records(tagger, files: list[Path], top: int):
    """One record per file, in order (Tagger.predict_many: decoding overlaps the model)."""
    for path, record in tagger.predict_many(files):
        if isinstance(record, Exception):
            yield {"path": str(path), "model": tagger.name, "error": str(record)}
            continue
        order = np.argsort(-np.asarray(record["probabilities"]), kind="stable")[:top]
        record["top"] = [[record["vocabulary"][i], record["probabilities"][i]] for i in order]
        yield record


def _one_line_errors(command: str):
    """A user error is one line on stderr and exit status 2 (as pipelines.core.errors)."""

    def wrap(fn):
        def run(args):
            try:
                return fn(args)
            except (UserError, OSError) as exc:
                print(f"{command}: error: {first_line(exc)}", file=sys.stderr)
                return USAGE_ERROR

        return run

    return wrap


@_one_line_errors("tag")
def run_tag(args: argparse.Namespace) -> int:
    """Tag args.paths with args.pretrained; JSON lines to args.out (or stdout)."""
    if args.top < 1:
        raise UserError("--top must be at least 1")
    files = audio_files(args.paths)
    tagger = _tagger(args)
    out = getattr(args, "out", None)
    failed = 0
    records = tag_records(tagger, files, args.top)
    progress = not getattr(args, "no_progress", False)
    with open(out, "w") if out else nullcontext(sys.stdout) as sink:
        for record in _progress(records, enabled=progress, total=len(files)):
            failed += "error" in record
            sink.write(json.dumps(record) + "\n")
            sink.flush()
    if failed:
        print(f"tag: {failed} of {len(files)} files could not be tagged", file=sys.stderr)
    return 1 if failed else 0


# --- embed -----------------------------------------------------------------------------------


def layer_vector(features: dict[str, np.ndarray], layer: str) -> np.ndarray:
    """One vector per file: the layer averaged over windows (and over every axis between
    the window and the channels, e.g. time for `timbral` [windows, T, C])."""
    value = features[layer]
    return value.reshape(len(value), -1, value.shape[-1]).mean(axis=(0, 1))


@_one_line_errors("embed")
def run_embed(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    layers = VGG_LAYERS if args.pretrained.startswith("vgg") else MUSICNN_LAYERS
    layer = args.layer or ("pool5" if args.pretrained.startswith("vgg") else "penultimate")
    if layer not in layers:
        raise UserError(f"--layer {layer!r}: {args.pretrained} has {', '.join(layers)}")
    if not str(args.out).lower().endswith(".parquet"):
        raise UserError(f"--out must name a .parquet file, got {args.out}")
    tagger = _tagger(args)
    rows = {"path": [], "windows": [], "embedding": []}
    for path in _progress(audio_files(args.paths), enabled=True):
        batch, _ = tagger.windows(path)
        rows["path"].append(str(path))
        rows["windows"].append(len(batch))
        rows["embedding"].append(layer_vector(tagger.features(batch), layer).astype(np.float32))
    table = pa.table(
        {
            "path": rows["path"],
            "windows": pa.array(rows["windows"], pa.int32()),
            "embedding": pa.array([e.tolist() for e in rows["embedding"]], pa.list_(pa.float32())),
        }
    )
    meta = {"pretrained": args.pretrained, "layer": layer}
    table = table.replace_schema_metadata({k: json.dumps(v) for k, v in meta.items()})
    pq.write_table(table, args.out)
    dim = len(rows["embedding"][0])
    print(f"wrote {len(rows['path'])} files x {dim}-d embeddings ({layer}) to {args.out}")
    return 0
