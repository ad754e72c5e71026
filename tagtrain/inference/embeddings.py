"""`embed --run`: per-track embeddings of a dataset for downstream use.

By default the model's penultimate representation, `model.embed(x)` (every model in the
zoo has one), averaged over the same evenly spaced chunks as evaluation. `--block N`
calls `model.embed(x, block=N)` for models whose `embed` takes a block (the patchout
transformer: the output of its N-th block). `--layer NAME` hooks the named submodule
instead and pools its output to one vector per chunk: over the token axis for Linear,
LayerNorm, attention and transformer layers (or modules holding attention), whose
features are the last axis; over every axis after the channels (axis 1) otherwise.

Writes Parquet: key, split, tags, embedding (list<float32>), one row per track, with the
run, model and layer in the file's metadata. (`embed --pretrained`, a published model on
audio files: tagtrain.pretrained.cli.)
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipelines.core.flags import setting
from tagtrain.inference.evaluation import mean_track_seconds
from tagtrain.inference.predict import chunk_outputs, evaluating
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
)
from tagtrain.loader import EpochReader, ShardStream


@dataclass
class _Embedded:
    """What is embedded, and where to (first in --help)."""

    run: str | None = setting(None, "run directory (config.json, best.pt, ...)")
    pretrained: str | None = None  # a published model instead of --run (no flag here)
    paths: list[str] = setting(
        [], "--pretrained: audio", positional=True, nargs="*", metavar="FILE_OR_DIR"
    )
    data: str | None = setting(
        None, "dataset directory or URL (default: the run's own dataset)"
    )  # fmt: skip
    out: str = setting("", "output Parquet file (.parquet)", required=True)
    split: str = setting("all", "a split name, or all")
    layer: str | None = setting(None, "named submodule to hook instead of embed()")
    block: int | None = setting(None, "embed(x, block=N) (patchout)")


@dataclass
class EmbedOptions(EvalOptions, _Embedded):
    """`embed`'s settings (`--pretrained`'s flags are added by tagtrain.pretrained.cli)."""

    chunks: int | None = setting(
        None,
        "evenly spaced chunks averaged per track (default: windows half a window apart over "
        "the split's mean track length, as MAEST's embeddings)",
    )


def half_overlapped_windows(run: TrainedRun, eval_set: EvalSet) -> int:
    """Windows of the model's input, each starting half a window after the previous, that
    fit in a track of the split's mean length (at least one). The loader places them evenly
    from the track's start to its end, so on equal-length clips they are half-overlapped."""
    mean, window = mean_track_seconds(eval_set), run.spec.samples / run.spec.sample_rate
    if mean <= window:
        return 1
    return 1 + math.floor(2 * (mean - window) / window + 1e-6)


# Modules whose outputs keep their features on the last axis ([B, tokens, D]).
_TOKEN_LAYOUT = (
    nn.Linear,
    nn.LayerNorm,
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerEncoder,
    nn.TransformerDecoderLayer,
    nn.Embedding,
)


def pool(output: torch.Tensor, features_last: bool) -> torch.Tensor:
    """[B, ...] -> [B, D]: the mean over every axis but the batch and the features."""
    if output.dim() == 2:
        return output
    if output.dim() < 2:
        raise RunError(f"the layer's output has shape {tuple(output.shape)}: no features")
    if features_last:
        return output.flatten(1, -2).mean(dim=1)
    return output.flatten(2).mean(dim=2)


class LayerOutput:
    """Runs the model and returns the pooled output of one named submodule."""

    def __init__(self, model: nn.Module, name: str):
        try:
            module = model.get_submodule(name)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            raise RunError(
                f"the model has no layer {name!r}; it has e.g. {', '.join(names[:12])}"
            ) from None
        self.model = model
        self.features_last = isinstance(module, _TOKEN_LAYOUT) or any(
            isinstance(m, nn.MultiheadAttention) for m in module.modules()
        )
        self.output: torch.Tensor | None = None
        module.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self.output = output[0] if isinstance(output, tuple) else output

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.output = None
        self.model(x)
        if not isinstance(self.output, torch.Tensor):
            raise RunError("the layer produced no tensor output in the forward pass")
        return pool(self.output, self.features_last)


def extractor(run: TrainedRun, layer: str | None, block: int | None) -> Callable:
    model = run.model
    if layer is not None and block is not None:
        raise RunError("give --layer or --block, not both")
    if layer is not None:
        return LayerOutput(model, layer)
    if block is not None:
        if "block" not in inspect.signature(model.embed).parameters:
            raise RunError(f"{run.model_name}'s embed() takes no block: --block is not available")
        n = len(getattr(model, "blocks", ()))
        if n and not -n <= block < n:
            raise RunError(f"--block must be in [{-n}, {n}) for {run.model_name}'s {n} blocks")
        return lambda x: model.embed(x, block=block)
    return model.embed


def embed_split(
    run: TrainedRun, eval_set: EvalSet, args, fn: Callable
) -> Iterator[tuple[list[str], list[list[str]], np.ndarray]]:
    """(keys, tags, chunk-averaged embeddings [B, D]) per batch of the split."""
    cfg = loader_config(run, eval_set, args)
    if getattr(args, "chunks", 1) is None:
        cfg = dataclasses.replace(cfg, eval_chunks=half_overlapped_windows(run, eval_set))
    stream = ShardStream(eval_set.shards, eval_set.plan, run.vocabulary, cfg)
    reader = EpochReader(stream, pin_memory=run.device.type == "cuda")
    read = 0
    with evaluating(run.model):
        for out in chunk_outputs(fn, reader, eval_set.device_input, run.autocast_dtype):
            tags = [[run.vocabulary[i] for i in np.flatnonzero(y)] for y in out.labels.numpy()]
            values = out.values.numpy()
            if not np.isfinite(values).all():
                raise RunError(f"non-finite embedding for one of {', '.join(out.keys[:4])}")
            read += len(out.keys)
            yield out.keys, tags, values
    check_whole_split(eval_set, read, reader.stats, args)
    if reader.stats.shard_errors or reader.stats.bad_samples:
        first = reader.stats.errors[0] if reader.stats.errors else ""
        print(
            f"  {eval_set.split}: {reader.stats.shard_errors} shard error(s), "
            f"{reader.stats.bad_samples} bad sample(s) skipped; first: {first}"
        )


def write_parquet(rows: dict, path: Path, metadata: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    embeddings = np.concatenate(rows["embedding"]).astype(np.float32)
    n, dim = embeddings.shape
    flat = pa.array(embeddings.reshape(-1), type=pa.float32())
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * dim, pa.int32())
    table = pa.table(
        {
            "key": pa.array(rows["key"], pa.string()),
            "split": pa.array(rows["split"], pa.string()),
            "tags": pa.array(rows["tags"], pa.list_(pa.string())),
            "embedding": pa.ListArray.from_arrays(offsets, flat),
        }
    )
    table = table.replace_schema_metadata({"tagtrain": json.dumps({**metadata, "dim": dim})})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # e.g. a full disk: no partial file left behind
        raise


def embed_run(args: EmbedOptions) -> int:
    """Embed the dataset's split(s) with the run; write the Parquet file."""
    if not args.run:
        raise RunError("give --run RUN_DIR or --pretrained NAME with audio files")
    check_run_arguments(args)
    out = Path(args.out)
    if out.suffix.lower() != ".parquet":
        raise RunError(f"--out must name a .parquet file, got {out}")
    if out.is_dir():
        raise RunError(f"--out {out} is a directory: name a .parquet file")
    trained = load_run_from_args(args)
    fn = extractor(trained, args.layer, args.block)
    data = args.data or trained.config.data
    sets = _splits(trained, data, args.split)
    rows = {"key": [], "split": [], "tags": [], "embedding": []}
    for eval_set in sets:
        for keys, tags, e in embed_split(trained, eval_set, args, fn):
            rows["key"] += keys
            rows["split"] += [eval_set.split] * len(keys)
            rows["tags"] += tags
            rows["embedding"].append(e)
    if not rows["key"]:
        raise RunError(f"no track of {data} could be read")
    metadata = {
        "run": trained.location,
        "model": trained.model_name,
        "checkpoint": trained.checkpoint.name,
        "data": data,
        "layer": args.layer or (f"block {args.block}" if args.block is not None else "embed"),
    }
    write_parquet(rows, out, metadata)
    dim = rows["embedding"][0].shape[1]
    print(f"wrote {len(rows['key'])} tracks x {dim}-d embeddings ({metadata['layer']}) to {out}")
    return 0


def _splits(run: TrainedRun, data: str, split: str) -> list[EvalSet]:
    from tagtrain.loader import load_card

    card = load_card(data, run.config.effective_storage_options())
    names = list(card["splits"]) if split == "all" else [split]
    return [
        open_split(run, data, name, card) for name in names if split != "all" or _has(card, name)
    ]


def _has(card: dict, split: str) -> bool:
    return bool(card["splits"][split]["shards"])
