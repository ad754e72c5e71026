"""The end of a prepare job, in the driver: index.parquet, rejects.parquet and the card
(written last: on an object store it is the commit), from the completion records of every
planned shard, those reused and those the pipeline just built.

Every piece is sorted or summed in a fixed order (shards by split and index, rows by key),
so the files are the same bytes whichever shards were rebuilt, on whichever runner.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pipelines.beam import progress
from pipelines.beam.dataset_files import (
    mel_stats_from_sums,
    summarize_counts,
    summarize_splits,
    write_dataset_dir,
)
from pipelines.beam.prepare_plan import CHECK_THREADS, ShardKey, ShardWork
from pipelines.core.card import FORMAT
from pipelines.core.versions import CODE_VERSION, library_versions


class MissingRecord(RuntimeError):
    """A shard the pipeline was to build has no matching record after it finished."""


def built_records(cfg, work: ShardWork) -> dict[ShardKey, dict]:
    """The records the pipeline wrote for `work.build`; each must carry the fingerprint
    the driver planned with (else driver and workers disagree on a shard's inputs)."""

    def read(key: ShardKey):
        record = progress.read_record(cfg.output, *key)
        if record is None or record.get("fingerprint") != work.fingerprints[key]:
            raise MissingRecord(f"shard {key[0]}-{key[1]:06d} has no matching record after the job")
        return key, progress.for_finish(record)

    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        return dict(pool.map(read, work.build))


def remember_verified(work: ShardWork, records: dict[ShardKey, dict]) -> None:
    """Local output: the tars just built enter the stat cache with the sha256 their
    workers computed while writing them (verified_tars.py)."""
    if work.verified is None:
        return
    shards = [r["shard"] for r in records.values() if r["shard"] is not None]
    for key in work.build:
        shard = records[key]["shard"]
        if shard is not None:
            work.verified.add(shard["name"], shard["sha256"], shard["bytes"])
    work.verified.save({shard["name"] for shard in shards})


def finish(cfg, records: dict[ShardKey, dict]) -> str:
    """Write the dataset's index, rejects and card from `records`; returns the card's
    checksum."""
    ordered = [records[key] for key in sorted(records)]
    index_rows = sorted(
        (row for r in ordered for row in r["index"]), key=lambda row: (row["split"], row["key"])
    )
    reject_rows = sorted((row for r in ordered for row in r["rejects"]), key=lambda r: r["key"])
    shard_files = {
        r["shard"]["name"]: {"sha256": r["shard"]["sha256"], "bytes": r["shard"]["bytes"]}
        for r in ordered
        if r["shard"] is not None
    }
    card = build_card(cfg, index_rows, reject_rows, train_mel_stats(ordered), shard_files)
    return write_dataset_dir(cfg.output, index_rows, reject_rows, card)


def train_mel_stats(records: list[dict]) -> dict | None:
    """Per-band mean/std over every frame of the train split, from the shards' sums
    (records of other splits carry none); None without train samples."""
    sums = [r["mel_sums"] for r in records if r.get("mel_sums") is not None]
    if not sums:
        return None
    total = np.sum([np.asarray(s[0]) for s in sums], axis=0)
    total_sq = np.sum([np.asarray(s[1]) for s in sums], axis=0)
    return mel_stats_from_sums((total, total_sq, sum(s[2] for s in sums)))


def build_card(cfg, index_rows, reject_rows, mel_stats, shard_files) -> dict:
    return {
        "format": FORMAT,
        "features": {**cfg.track.features.to_dict(), "stored": list(cfg.track.stored)},
        "vocabulary": list(cfg.vocabulary),
        "splits": summarize_splits(index_rows, shard_files),
        "mel_stats": mel_stats,
        "decoder": {
            "requested": cfg.track.decoder,
            "versions": dict(cfg.versions) or library_versions("apache_beam", "essentia"),
        },
        "manifest": {
            "path": cfg.manifest,
            "sha256": cfg.manifest_sha256,
            **({"split_variant": cfg.split_variant} if cfg.split_variant else {}),
        },  # fmt: skip
        "counts": summarize_counts(cfg.num_inputs, index_rows, reject_rows),
        "job": {
            "min_seconds": cfg.track.min_seconds,
            "max_seconds": cfg.track.max_seconds,
            "shard_size_mb": cfg.shard_size_mb,
            "planned_shards": dict(cfg.num_shards),
        },
        "identity": cfg.identity(),
        "code_version": CODE_VERSION,
        "deformation": None,
    }
