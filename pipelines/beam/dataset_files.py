"""The files of a dataset besides its shards, shared by prepare and perturb: index.parquet,
rejects.parquet and dataset.json (written last: on an object store it is the commit)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow as pa

from pipelines.beam import beam_io
from pipelines.beam.track import Reject
from pipelines.core.card import CARD_NAME, INDEX_NAME, REJECTS_NAME, card_checksum

MEMBER = pa.struct([("name", pa.string()), ("offset", pa.int64()), ("size", pa.int64())])
INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("split", pa.string()),
        ("shard", pa.string()),
        ("tags", pa.list_(pa.string())),
        ("duration", pa.float64()),
        ("bytes", pa.int64()),
        # Where each member's data is in the shard (interface 1 of docs/FORMATS).
        ("members", pa.list_(MEMBER)),
    ]
)
REJECT_SCHEMA = pa.schema(
    [(f.name, pa.string()) for f in dataclasses.fields(Reject)]  # all text columns
)


def mel_stats_from_sums(sums) -> dict:
    """Per-mel-band mean/std over every frame, from (sum, sum of squares, frames)."""
    total, total_sq, n = (np.asarray(sums[0]), np.asarray(sums[1]), sums[2])
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    return {
        "mean": [round(float(x), 6) for x in mean],
        "std": [round(float(x), 6) for x in std],
    }


def summarize_splits(index_rows, shard_files: dict | None = None) -> dict:
    """The card's `splits`: per split and shard, samples, seconds, bytes (the tar's size)
    and the tar's sha256 (from `shard_files` {name: {"sha256", "bytes"}})."""
    splits: dict[str, dict] = {}
    for row in index_rows:
        split = splits.setdefault(row["split"], {"samples": 0, "seconds": 0.0, "shards": {}})
        shard = split["shards"].setdefault(
            row["shard"], {"name": row["shard"], "samples": 0, "seconds": 0.0, "bytes": 0}
        )
        for d in (split, shard):
            d["samples"] += 1
            d["seconds"] += row["duration"]
        shard["bytes"] += row["bytes"]
    for split in splits.values():
        split["seconds"] = round(split["seconds"], 3)
        split["shards"] = [
            {**s, "seconds": round(s["seconds"], 3), **(shard_files or {}).get(name, {})}
            for name, s in sorted(split["shards"].items())
        ]
    return dict(sorted(splits.items()))


def summarize_counts(num_inputs: int, index_rows, reject_rows) -> dict:
    """The card's `counts`: inputs = samples + rejects, and rejects by reason."""
    reasons: dict[str, int] = {}
    for r in reject_rows:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    return {
        "inputs": num_inputs,
        "samples": len(index_rows),
        "rejects": len(reject_rows),
        "rejects_by_reason": dict(sorted(reasons.items())),
    }


def write_dataset_dir(output: str, index_rows, reject_rows, card: dict) -> str:
    """index.parquet, rejects.parquet, then dataset.json last; returns the card checksum."""
    beam_io.write_parquet(
        beam_io.join(output, INDEX_NAME), pa.Table.from_pylist(index_rows, INDEX_SCHEMA)
    )
    beam_io.write_parquet(
        beam_io.join(output, REJECTS_NAME), pa.Table.from_pylist(reject_rows, REJECT_SCHEMA)
    )
    text = json.dumps(card, indent=2, sort_keys=True) + "\n"
    beam_io.write_atomic(beam_io.join(output, CARD_NAME), text.encode())
    return card_checksum(card)
