"""The commands that take `--pretrained NAME` (a published musicnn model instead of a run):
each one's options are the inference room's (tagtrain.inference: tagging, embeddings,
evaluation, onnx_export) plus the `--pretrained` flags here, and its one entry point here
sends `--pretrained` to the published model and `--run` to the inference room.
`tag --pretrained` and `embed --pretrained` run the published models on audio files;
`evaluate --pretrained` scores one on prepared shards (on_shards.py); `export
--pretrained` writes its network as ONNX.

tag: the published model's `Tagged` per file, printed or written by
tagtrain.inference.tagging.write_tagged exactly as `tag --run`'s. embed: one Parquet row
per file (path, windows, embedding = the named layer averaged over windows, and over time
for the [time, channels] layers).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.core.errors import UserError
from pipelines.core.flags import add_flags, setting
from pipelines.core.formats import audio_files
from tagtrain.inference.embeddings import EmbedOptions, embed_run
from tagtrain.inference.evaluation import EvaluateOptions
from tagtrain.inference.evaluation import evaluate as evaluate_run
from tagtrain.inference.onnx_export import ExportOptions, WindowModel, export_run, write_onnx
from tagtrain.inference.tagging import TagOptions, tag_with_run, write_tagged
from tagtrain.inference.trained_run import RunError
from tagtrain.pretrained.frontend import COMPRESSIONS
from tagtrain.pretrained.musicnn import PRETRAINED, pretrained_spec

MUSICNN_LAYERS = ("timbral", "temporal", "cnn1", "cnn2", "cnn3", "mean_pool", "max_pool")
MUSICNN_LAYERS += ("penultimate", "taggram")
VGG_LAYERS = ("pool1", "pool2", "pool3", "pool4", "pool5", "taggram")
NAMES = ", ".join(sorted(PRETRAINED))


# --- the flags -------------------------------------------------------------------------------


@dataclass
class Published:
    """`--pretrained NAME` on audio files, and its front end's settings."""

    pretrained: str | None = setting(
        None, f"a published musicnn model instead of --run: {NAMES}", metavar="NAME"
    )
    musicnn_log: str = setting(
        "numpy1", "--pretrained front end: numpy1 (as published) or numpy2 (float16 "
        "overflow of musicnn 0.1.0 under numpy>=2; see tagtrain/pretrained/frontend.py)",
    )  # fmt: skip
    conv_algorithm: str = setting(
        "fast", "--pretrained convolutions: fast (fewer multiply-adds, equal up to "
        "rounding) or direct (the graph's literal convolutions; docs/FIDELITY.md)",
    )  # fmt: skip


@dataclass
class TagFlags(Published, TagOptions):
    pass


@dataclass
class EmbedFlags(Published, EmbedOptions):
    pass


ON_SHARDS = f"a published model scored on the dataset's stored 16 kHz PCM: {NAMES}"


@dataclass
class PublishedOnShards:
    pretrained: str | None = setting(None, ON_SHARDS, metavar="NAME")


@dataclass
class PublishedOnShardsRepeated:
    pretrained: list[str] = setting([], f"{ON_SHARDS}; repeatable", metavar="NAME", repeat=True)


@dataclass
class EvaluateFlags(EvaluateOptions):
    pretrained: str | None = setting(None, ON_SHARDS, metavar="NAME")


@dataclass
class ExportFlags(ExportOptions):
    pretrained: str | None = setting(
        None, "a published model instead (e.g. musicnn-mtt)", metavar="NAME"
    )


def add_pretrained_arguments(parser, repeat: bool = False) -> None:
    """`--pretrained NAME` of a published model scored on prepared shards (`evaluate`;
    repeatable: `robustness`)."""
    add_flags(
        parser, PublishedOnShardsRepeated if repeat else PublishedOnShards, with_defaults=True
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


# --- the commands' entry points -------------------------------------------------------------


def tag(options: TagFlags) -> int:
    """`tag`: a published model's tags, or a run's (inference.tagging)."""
    return run_tag(options) if options.pretrained else tag_with_run(options)


def embed(options: EmbedFlags) -> int:
    """`embed`: a published model's layer per audio file, or a run's embeddings of a
    dataset (inference.embeddings)."""
    return run_embed(options) if options.pretrained else embed_run(options)


def evaluate(options: EvaluateFlags) -> int:
    """`evaluate`: a run, or a published model on prepared shards (on_shards.py)."""
    from tagtrain.pretrained.on_shards import pretrained_run

    return evaluate_run(options, published=pretrained_run)


def export(options: ExportFlags) -> int:
    """`export`: a run's whole `tag` path, or a published model's network, as ONNX."""
    if bool(options.run) == bool(options.pretrained):
        raise RunError(
            "one of the arguments --run --pretrained is required"
            if not options.run
            else "argument --pretrained: not allowed with argument --run"
        )
    if not options.pretrained:
        return export_run(options)
    options.check()
    out, vocabulary = export_pretrained_onnx(options.pretrained, options.out)
    print(f"wrote {out}: {options.pretrained}, {len(vocabulary)} tags, log-mel windows in")
    return 0


def export_pretrained_onnx(name: str, out: Path, batch: int = 2) -> tuple[Path, list[str]]:
    """Write `out` for a published model's network: input `log_mel` [batch, 96, 187], the
    official front end's windows (its float16 rounding and window cutting stay outside the
    graph, so the graph's numbers are the published model's exactly)."""
    import torch

    from tagtrain.pretrained import frontend
    from tagtrain.pretrained.musicnn import load_pretrained

    model, vocabulary = load_pretrained(name)
    example = torch.zeros(batch, frontend.N_MELS, frontend.WINDOW_FRAMES)
    meta = {
        "vocabulary": json.dumps(list(vocabulary)),
        "sample_rate": str(frontend.SAMPLE_RATE),
        "model": name,
        "input": f"log_mel: float32 [batch, {frontend.N_MELS}, {frontend.WINDOW_FRAMES}], "
        "windows of tagtrain.pretrained.frontend.official_log_mel",
        "output": "probabilities: float32 [batch, len(vocabulary)], sigmoid of the logits",
    }
    return write_onnx(WindowModel(model.to("cpu")), example, "log_mel", out, meta), vocabulary


# --- tag -------------------------------------------------------------------------------------


def run_tag(args: TagFlags) -> int:
    """Tag args.paths with args.pretrained (inference.tagging.write_tagged)."""
    args.check()
    files = audio_files(args.paths)
    tagger = _tagger(args)
    return write_tagged(tagger.tagged_many(files), len(files), tagger.name, args)


# --- embed -----------------------------------------------------------------------------------


def layer_vector(features: dict[str, np.ndarray], layer: str) -> np.ndarray:
    """One vector per file: the layer averaged over windows (and over every axis between
    the window and the channels, e.g. time for `timbral` [windows, T, C])."""
    value = features[layer]
    return value.reshape(len(value), -1, value.shape[-1]).mean(axis=(0, 1))


def run_embed(args) -> int:
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
    for path in _progress(audio_files(args.paths), enabled=sys.stderr.isatty()):
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
