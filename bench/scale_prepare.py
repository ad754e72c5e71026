"""The manifest and prepare rows of `bench/scale.py`: building a manifest from a folder
listing and from a benchmark's split tables, prepare's plan on a finished dataset
(nothing to build) and with 2% of the rows changed (`--update`), and writing the card +
index. Each runs what the command runs, called in-process (no Beam pipeline: the plan is
what the driver decides before one would start)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path

from scale_corpus import Corpus, Row, prepare_config


@contextlib.contextmanager
def _scratch():
    path = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _manifests_cli(*argv: str) -> None:
    from manifests.__main__ import main

    status = main(list(argv))
    if status:
        raise RuntimeError(f"python -m manifests {' '.join(argv)}: exit {status}")


def folder_manifest(corpus: Corpus) -> dict:
    """`python -m manifests folder --root AUDIO --tags TSV --no-durations`: the listing,
    the tags file, the split, the manifest. Without reading each file's header (the
    default), which is audio I/O, not bookkeeping: on these empty files libsndfile's
    failed open alone took 65 µs a file on busy cores (6 min at 1M)."""
    with _scratch() as tmp:
        _manifests_cli("folder", "--root", str(corpus.audio_dir), "--tags",
                       str(corpus.folder_tags), "--out", str(tmp / "m.parquet"),
                       "--no-durations")  # fmt: skip
        return {"bytes": (tmp / "m.parquet").stat().st_size}


def benchmark_manifest(corpus: Corpus) -> dict:
    """`python -m manifests build mtat --audio-root AUDIO` on the corpus's split tables:
    the MTAT builder reads its tables through `manifests.tables.read_split_table`, which
    resolves them under `SPLITS_DIR`; pointing that at the corpus's copy is the only
    change (the missing-audio check lists the audio folders as the command does)."""
    from manifests import tables

    tables.SPLITS_DIR = corpus.split_tables
    with _scratch() as tmp:
        _manifests_cli("build", "mtat", "--audio-root", str(corpus.audio_dir),
                       "--out", str(tmp / "m.parquet"))  # fmt: skip
        return {"bytes": (tmp / "m.parquet").stat().st_size}


def plan(corpus: Corpus, manifest: Path, *extra: str):
    """What `beam_runner.py prepare` does before its pipeline: read and check the
    manifest, build the config (layout, vocabulary, checksum), check the output, plan
    which shards to build (their records and, locally, their tars' stat cache)."""
    from manifests.schema import validate_table
    from pipelines.beam.prepare_cli import check_existing_output
    from pipelines.beam.prepare_plan import plan_work

    cfg, table = prepare_config(corpus, manifest, *extra)
    validate_table(table, audio_root=cfg.audio_root, allow_outside_root=True)
    check_existing_output(cfg, False, "--update" in extra)
    return cfg, plan_work(cfg, table.to_pylist())


def plan_finished(corpus: Corpus) -> dict:
    _, work = plan(corpus, corpus.manifest)
    if work.build:
        raise RuntimeError(f"{len(work.build)} shards to build on a finished dataset")
    return {"shards": len(work.reused)}


def plan_update(corpus: Corpus) -> dict:
    _, work = plan(corpus, corpus.changed_manifest, "--update")
    return {"shards": len(work.fingerprints), "to_build": len(work.build),
            **progress_bytes(corpus)}  # fmt: skip


def progress_bytes(corpus: Corpus) -> dict:
    """Bytes of `_progress/`: the completion records (what the driver reads to plan) and
    everything there (the mel-sums sidecars, read by an update's workers, included)."""
    entries = [e for e in os.scandir(corpus.dataset / "_progress") if e.is_file()]
    return {
        "record_bytes": sum(e.stat().st_size for e in entries if e.name.endswith(".json")),
        "progress_bytes": sum(e.stat().st_size for e in entries),
    }


def card_and_index(corpus: Corpus) -> dict:
    """prepare's finish step (index, rejects, card) from the completion records of every
    shard, into a scratch output; the time is the writers' alone (reading the records is
    the plan's), the peak RSS that of the records as the driver holds them and the
    writers together."""
    from pipelines.beam import progress
    from pipelines.beam.prepare_finish import finish

    cfg, _ = prepare_config(corpus)
    records = {}
    for split, count in cfg.num_shards:
        for index in range(count):
            record = progress.read_record(cfg.output, split, index)
            if record is not None:  # kept as the driver keeps them (prepare_plan.py)
                records[(split, index)] = progress.for_finish(record)
    with _scratch() as tmp:
        start = time.perf_counter()
        finish(dataclasses.replace(cfg, output=str(tmp)), records)
        seconds = time.perf_counter() - start
        written = sum(os.path.getsize(tmp / name) for name in os.listdir(tmp))
    return {"seconds": seconds, "bytes": written}


_MANIFESTS = ("manifests.__main__",)
# essentia: prepare's config records its version (job_versions), a fixed import cost.
_PREPARE = ("pipelines.beam.prepare_cli", "pipelines.beam.prepare_plan", "essentia")
ROWS = [
    Row("manifest: folder listing", folder_manifest, _MANIFESTS),
    Row("manifest: benchmark split tables", benchmark_manifest, _MANIFESTS),
    Row("prepare plan: nothing to build", plan_finished, _PREPARE),
    Row("prepare plan: --update, 2% changed", plan_update, _PREPARE),
    Row("prepare finish: card + index", card_and_index, _PREPARE),
]
