"""Synthetic corpora for `bench/scale.py`, and the `Row` type every scale row module shares.

For scale-B and any other row module: a module of rows exposes `ROWS: list[Row]`; each
`Row(name, fn)` has `fn(corpus: Corpus) -> dict | None`, run by `scale.py` in a fresh
spawned process (so imports and earlier rows do not pollute its peak RSS), with
`TAGKIT_CACHE_DIR` set to `corpus.cache_dir` (the stat cache of verified tars the corpus
was finished with). The harness times the call and reads the child's peak RSS; `fn` may
return extra numeric fields (`{"bytes": n}`, `{"worker_rss_mb": x}`), and `{"seconds": s}`
replaces the wall time with a figure `fn` measured itself (e.g. the time to a first
batch). Extra fields named `bytes`, `*_bytes` or `*_mb` are bytes or memory and get their
own growth exponent. `Row.imports`: modules imported before the RSS baseline is read.

A corpus of `tracks` tracks is what a user of MSD's size has after `python -m manifests`
and `beam_runner.py prepare`, with tiny members so that only the bookkeeping is measured:

- `manifest`: the Parquet manifest (`manifests.schema.write_manifest`, 30 s per track,
  MSD-like train/valid/test shares, 1-4 tags of a `tags`-tag vocabulary, Zipf-like);
- `audio_dir`: empty `.mp3` files in 256 subfolders (what the folder builder lists) and
  `folder_tags` (its `--tags` TSV);
- `split_tables`: a folder laid out like `manifests/splits/` with `mtat/{train,valid,
  test}.tsv` and `mtat/tags.txt` (the MTAT builder's tables, `tracks` rows in all);
- `changed_manifest`: the manifest with 2% of its rows (spread evenly) given another
  tag, what `prepare --update` plans against `dataset`;
- `dataset`: the prepared dataset, built with prepare's own config, layout
  (`plan_shards` at the default 256 MB: ~550 30 s tracks per shard), shard grouping,
  tar writer, completion records (`_progress/`, each train record with its mel-sums
  sidecar) and finish step (index, rejects, card), each member tiny: a `[n_mels, 1]`
  float16 mel (the loader pads it to its crop) and the JSON prepare writes. Re-running
  prepare's plan on it finds nothing to build.

Built once per (tracks, tags, seed) under `root` and reused: `build_corpus` returns the
cached one when its `complete` marker is there.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

FORMAT = 2  # bump when what a corpus holds changes: older caches are rebuilt (2: sums sidecars)
SPLIT_SHARES = (("train", 0.79), ("valid", 0.088), ("test", 0.122))  # MSD's (Won et al.)
SUBFOLDERS = 256


@dataclass(frozen=True)
class Row:
    """One measured cost: `fn(corpus)` in a fresh process (see the module docstring)."""

    name: str
    fn: Callable[..., dict | None] = field(compare=False)
    # Modules imported before the RSS baseline is read, so that "added" memory is the
    # row's data, not its code.
    imports: tuple[str, ...] = ()


@dataclass(frozen=True)
class Corpus:
    tracks: int
    tags: int
    root: Path
    manifest: Path
    audio_dir: Path
    folder_tags: Path
    split_tables: Path
    dataset: Path
    cache_dir: Path
    changed_manifest: Path  # 2% of the rows changed: what --update plans

    @classmethod
    def at(cls, root: Path, tracks: int, tags: int) -> Corpus:
        return cls(
            tracks, tags, root, root / "manifest.parquet", root / "audio",
            root / "folder_tags.tsv", root / "splits", root / "dataset", root / "cache",
            root / "changed-2pct.parquet",
        )  # fmt: skip


def corpus_dir(root: Path, tracks: int, tags: int, seed: int) -> Path:
    return Path(root) / f"v{FORMAT}-n{tracks}-t{tags}-s{seed}"


def build_corpus(root: Path, tracks: int, tags: int = 50, seed: int = 0) -> Corpus:
    """The corpus of `tracks` tracks under `root` (built on first use, then reused)."""
    if tracks < 1 or tags < 1:
        raise ValueError("a corpus needs at least one track and one tag")
    final = corpus_dir(root, tracks, tags, seed)
    if (final / "complete").is_file():
        corpus = Corpus.at(final, tracks, tags)
        if not corpus.changed_manifest.is_file():
            write_changed_manifest(corpus)
        return corpus
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    partial.mkdir(parents=True)
    table = _manifest_table(tracks, tags, seed)
    corpus = Corpus.at(partial, tracks, tags)
    _write_audio(corpus, table)
    _write_split_tables(corpus, table, tags)
    from manifests.schema import write_manifest

    audio_root = {b"audio_root": str(final / "audio").encode()}  # as `manifests build` records it
    write_manifest(table.replace_schema_metadata(audio_root), corpus.manifest)
    # The prepared dataset is written last, at its final path: the stat cache of its
    # verified tars is keyed by the output's real path (verified_tars.py).
    partial.rename(final)
    corpus = Corpus.at(final, tracks, tags)
    write_dataset(corpus)
    write_changed_manifest(corpus)
    (final / "complete").write_text(f"{tracks}\n")
    return corpus


def _tag_names(tags: int) -> list[str]:
    return [f"tag{j:03d}" for j in range(tags)]


def _manifest_table(tracks: int, tags: int, seed: int) -> pa.Table:
    from manifests.schema import SCHEMA

    rng = np.random.default_rng(seed)
    names = np.array(_tag_names(tags), dtype=object)
    weights = 1.0 / np.arange(1, tags + 1)  # a few tags common, most rare: like Last.fm's
    weights /= weights.sum()
    counts = rng.integers(1, min(4, tags) + 1, size=tracks)
    drawn = rng.choice(tags, size=(tracks, min(4, tags)), p=weights)
    tag_lists = [sorted(set(names[drawn[i, : counts[i]]])) for i in range(tracks)]
    bounds = np.cumsum([share for _, share in SPLIT_SHARES])
    picks = np.searchsorted(bounds, rng.random(tracks) * bounds[-1], side="right")
    splits = [SPLIT_SHARES[min(p, len(SPLIT_SHARES) - 1)][0] for p in picks]
    ids = [f"{i:07d}" for i in range(tracks)]
    columns = {
        "key": [f"t{i}" for i in ids],
        "track_id": ids,
        "dataset": ["synthetic"] * tracks,
        "split": splits,
        "audio_path": [f"{i % SUBFOLDERS:02x}/t{ids[i]}.mp3" for i in range(tracks)],
        "tags": tag_lists,
        "artist_id": [f"a{i // 10}" for i in range(tracks)],
        "album_id": None,
        "duration": np.full(tracks, 30.0),
        "extra": None,
    }
    columns["album_id"] = pa.nulls(tracks, pa.string())
    columns["extra"] = pa.nulls(tracks, pa.string())
    return pa.table(columns, schema=SCHEMA)


def _write_audio(corpus: Corpus, table: pa.Table) -> None:
    """Empty audio files (the folder builder lists them; nothing decodes them) and the
    folder builder's tags TSV."""
    for i in range(min(SUBFOLDERS, table.num_rows)):
        (corpus.audio_dir / f"{i:02x}").mkdir(parents=True, exist_ok=True)
    paths = table.column("audio_path").to_pylist()
    base = str(corpus.audio_dir)
    flags = os.O_CREAT | os.O_WRONLY
    for path in paths:
        os.close(os.open(f"{base}/{path}", flags, 0o644))
    tags = table.column("tags").to_pylist()
    with open(corpus.folder_tags, "w") as f:
        f.writelines(f"{p}\t{'|'.join(t)}\n" for p, t in zip(paths, tags))


def _write_split_tables(corpus: Corpus, table: pa.Table, tags: int) -> None:
    """MTAT's shipped tables' shape: `id  path  tags` (tags joined by `|`), per split."""
    folder = corpus.split_tables / "mtat"
    folder.mkdir(parents=True)
    columns = [table.column(c).to_pylist() for c in ("split", "track_id", "audio_path", "tags")]
    by_split: dict[str, list[str]] = {split: [] for split, _ in SPLIT_SHARES}
    for split, track_id, path, track_tags in zip(*columns):
        by_split[split].append(f"{track_id}\t{path}\t{'|'.join(track_tags)}\n")
    for split, lines in by_split.items():
        with open(folder / f"{split}.tsv", "w") as f:
            f.write("id\tpath\ttags\n")
            f.writelines(lines)
    (folder / "tags.txt").write_text("".join(f"{t}\n" for t in _tag_names(tags)))


def prepare_args(manifest: Path, out: Path, *extra: str) -> argparse.Namespace:
    """`beam_runner.py prepare --manifest M --out O --features mel [extra]`, parsed by
    prepare's own parser (its defaults: 256 MB shards, the default features)."""
    from pipelines.beam.prepare_cli import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    argv = ["prepare", "--manifest", str(manifest), "--out", str(out), "--features", "mel"]
    return parser.parse_args([*argv, *extra])


def prepare_config(corpus: Corpus, manifest: Path | None = None, *extra: str):
    """The PrepareConfig prepare builds for this corpus (`manifest`: another one, e.g.
    with rows changed, planned against the corpus's dataset)."""
    from pipelines.beam.plan import read_manifest_table
    from pipelines.beam.prepare_cli import build_config

    manifest = manifest or corpus.manifest
    table = read_manifest_table(str(manifest))
    return build_config(prepare_args(manifest, corpus.dataset, *extra), [], table), table


def tiny_mel(n_mels: int) -> np.ndarray:
    return np.linspace(-40.0, 0.0, n_mels, dtype=np.float16).reshape(n_mels, 1)


def write_dataset(corpus: Corpus) -> None:
    """The dataset prepare writes for the corpus's manifest, shard by shard through its
    writers, with the members a tiny mel and prepare's JSON; then the stat cache of the
    verified tars, as the driver leaves it after a job."""
    # Millions of objects and no cycles, and each of the collector's full passes rescans
    # them all. With the records held trimmed (below), a 1M-track build went from 500 s
    # to 240 s (both on busy cores).
    gc.disable()
    try:
        with cache_dir(corpus):
            _write_dataset(corpus)
    finally:
        gc.enable()


@contextlib.contextmanager
def cache_dir(corpus: Corpus):
    """Within the block the stat cache of verified tars is the corpus's own (prepare
    reads `TAGKIT_CACHE_DIR` when it needs the cache)."""
    old = os.environ.get("TAGKIT_CACHE_DIR")
    os.environ["TAGKIT_CACHE_DIR"] = str(corpus.cache_dir)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TAGKIT_CACHE_DIR", None)
        else:
            os.environ["TAGKIT_CACHE_DIR"] = old


def _write_dataset(corpus: Corpus) -> None:
    from pipelines.beam import progress
    from pipelines.beam.prepare import shard_mel_sums, write_shard
    from pipelines.beam.prepare_finish import finish, remember_verified
    from pipelines.beam.prepare_plan import ShardWork, rows_by_shard
    from pipelines.beam.track import Sample
    from pipelines.beam.verified_tars import VerifiedTars
    from pipelines.core.shards import json_bytes, npy_bytes

    cfg, table = prepare_config(corpus)
    corpus.dataset.mkdir(parents=True, exist_ok=True)
    features = cfg.track.features
    mel = tiny_mel(features.n_mels)
    mel_member = npy_bytes(mel)
    mel64 = mel.astype(np.float64)[:, 0]
    label_of = {t: i for i, t in enumerate(cfg.vocabulary)}
    num_shards = dict(cfg.num_shards)
    records = {}
    last_write = time.monotonic()
    for (split, index), rows in rows_by_shard(table.to_pylist(), num_shards).items():
        samples = []
        for row in rows:
            meta = {
                "key": row["key"], "track_id": row["track_id"], "dataset": row["dataset"],
                "split": split, "tags": row["tags"],
                "labels": sorted(label_of[t] for t in row["tags"]), "duration": 30.0,
                "sample_rate": features.sample_rate, "frames": 1,
                "source_path": row["audio_path"], "artist_id": row["artist_id"],
                "album_id": row["album_id"], "deformation": "null",
            }  # fmt: skip
            members = {"json": json_bytes(meta), "mel.npy": mel_member}
            sample = Sample(row["key"], split, list(row["tags"]), 30.0, members)
            sample.mel_sum, sample.mel_sumsq, sample.mel_frames = mel64, mel64**2, 1
            samples.append(sample)
        index_rows, shard = write_shard(str(corpus.dataset), split, index, samples)
        last_write = time.monotonic()
        train = split == "train"
        # As prepare: the train samples' mel sums in a sidecar, written before the record.
        sums_file = (
            progress.write_sums(str(corpus.dataset), split, index, samples) if train else None
        )
        fingerprint = progress.shard_fingerprint(cfg.identity_sha, split, num_shards[split], rows)
        record = {  # what PrepareShardFn.build_shard records
            "fingerprint": fingerprint,
            "identity": cfg.identity_sha,
            "shard": shard,
            "index": index_rows,
            "rejects": [],
            "mel_sums": shard_mel_sums(samples) if train else None,
            "rows": {r["key"]: progress.row_sha(r) for r in rows},
            "sums_file": sums_file,
        }
        progress.write_record(str(corpus.dataset), split, index, record)
        records[(split, index)] = progress.for_finish(record)  # as the driver holds them
    finish(cfg, records)
    # A tar written within the stat cache's racy window is not entered (verified_tars.py).
    time.sleep(max(0.0, 1.1 - (time.monotonic() - last_write)))
    work = ShardWork(build=list(records))
    work.verified = VerifiedTars(str(corpus.dataset))
    remember_verified(work, records)


def write_changed_manifest(corpus: Corpus, fraction: float = 0.02) -> None:
    """The corpus's manifest with `fraction` of its rows changed (a tag added), spread
    over the whole manifest: what `--update` plans against the finished dataset."""
    from manifests.schema import write_manifest

    table = _read(corpus.manifest)
    step = max(1, round(1 / fraction))
    tags = table.column("tags").to_pylist()
    extra = _tag_names(corpus.tags)[-1]
    for i in range(0, len(tags), step):
        tags[i] = sorted({*tags[i], extra}) if extra not in tags[i] else tags[i][:-1]
    field_ = table.schema.field("tags")
    table = table.set_column(
        table.schema.get_field_index("tags"), field_, pa.array(tags, field_.type)
    )
    write_manifest(table, corpus.changed_manifest)


def _read(path: Path) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(path)
