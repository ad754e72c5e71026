"""The perturb job: one split of a prepared dataset -> deformed copies, each a dataset of its
own with the prepare job's layout (shards, index.parquet, rejects.parquet, dataset.json).

Two modes, one pipeline:

- robustness sets: every track of the split through every deformation of a set (the
  paper's eight by default), written to `{root}/{deformation}/{split}-NNNNNN.tar`, keys
  unchanged so that a perturbed prediction pairs with the clean one;
- offline augmentation: K random deformations per track (`deformations.augmentations`),
  keys `{key}-aug{i}`, written to one dataset `{root}/{split}-NNNNNN.tar`.

The audio comes from the PCM stored in the shards, not from re-decoding the source files:
the deformed copy then starts from exactly the waveform the clean features were computed
from (same decoder, resampler and crop), so a clean/perturbed difference is the deformation
and nothing else; no audio is decoded again (the costly step of prepare); and it works when
only the shards are at hand (a bucket of shards, the source audio gone or elsewhere). The
price: the dataset must store `pcm`, and deformations run at the dataset's sample rate on
16-bit audio, whose -96 dBFS quantisation floor is far below what any deformation changes.

Each deformed track goes through `track.make_sample` like an original, so its features are
computed one way; its JSON is the original's (new duration and frames) plus `deformation`:
name, type, parameters, the MUDA/JAMS history (plain JSON), the run seed and the source key.
The card is the source card with its own splits, counts, job, identity and `deformation`;
features, vocabulary and mel_stats stay the source's, so a trainer normalises perturbed
sets with the clean training statistics.

Per output shard, like prepare: the shard of every output key is known before any audio
is read (shard counts are planned in the driver from the source card; a key's shard is
sha256(key) mod count), so the job groups the source index's small rows by (target,
shard); one DoFn then reads that shard's tracks from the source shards by byte range
(the index gives each member's offset), deforms and featurises them and writes the tar
and its completion record. No PCM crosses the shuffle. A re-run skips every target shard
whose record matches (progress.py, as prepare), so a killed job resumes to the bytes of
an uninterrupted one.

Determinism and runners: as in prepare.py (read its docstring). Noise is seeded by (seed,
key, deformation); every GroupByKey key is made of ints (target index, shard index);
rejects travel tagged in the one main output; no side inputs. A failing deformation
becomes a reject row (stage "deform"), not a crash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from pipelines.beam import beam_io, progress
from pipelines.beam.dataset_files import summarize_counts, summarize_splits, write_dataset_dir
from pipelines.beam.perturb_source import SourceTracks, read_split_index
from pipelines.beam.prepare import TrackStageFn, set_worker_threads, write_shard
from pipelines.beam.track import Reject, TrackConfig, make_sample
from pipelines.core.audio import from_int16
from pipelines.core.card import card_checksum, stored_features
from pipelines.core.deformations import (
    AUGMENT_KINDS,
    Deformation,
    augmentations,
    deform_track,
    track_rng,
)
from pipelines.core.errors import UserError
from pipelines.core.features import FeatureConfig
from pipelines.core.shards import num_shards_for, shard_index
from pipelines.core.versions import CODE_VERSION

PERTURBED_DIR = "perturbed"
AUGMENTED_DIR = "augmented"
AUGMENT = "augment"
SAMPLE, REJECT = "sample", "reject"

# JSON fields that make_sample writes itself; every other field of the original JSON
# (decoder, source rate/channels/seconds, cropped, ...) is carried over unchanged.
MADE_FIELDS = (
    "key", "track_id", "dataset", "split", "tags", "labels", "duration", "sample_rate",
    "frames", "source_path", "artist_id", "album_id", "deformation",
)  # fmt: skip


class PerturbError(UserError, ValueError):
    """The source dataset cannot be perturbed as asked; the message is one line."""


@dataclass(frozen=True)
class Target:
    """One output dataset: a fixed deformation of the split, or (deformation None) the
    augmented copies, `copies` per track."""

    name: str
    output: str
    deformation: Deformation | None
    copies: int
    num_shards: int

    def out_key(self, key: str, copy: int) -> str:
        return augment_key(key, copy) if self.deformation is None else key

    def card_deformation(self, seed: int) -> dict:
        if self.deformation is None:
            params = {"copies": self.copies, "kinds": list(AUGMENT_KINDS)}
            return {"name": AUGMENT, "type": AUGMENT, "params": params, "seed": seed}
        d = self.deformation
        return {"name": d.name, "type": d.kind, "params": d.params(), "seed": seed}


@dataclass(frozen=True)
class PerturbConfig:
    dataset: str
    split: str
    source_card: dict = field(hash=False)
    targets: tuple[Target, ...]
    seed: int = 0
    output_root: str = ""  # where the targets are (for messages)
    progress_path: str | None = None  # local runs: workers append a byte per deformed track
    filesystem_args: tuple[str, ...] = ()

    def shard_fingerprint(self, t: int, index: int) -> str:
        """A target shard's bytes depend on the target's identity and the source dataset
        (whose card lists every source shard's sha256)."""
        target = self.targets[t]
        identity = [self.identity(target), card_checksum(self.source_card), index]
        return progress.shard_fingerprint(
            json.dumps(identity, sort_keys=True), self.split, target.num_shards, []
        )

    @property
    def track(self) -> TrackConfig:
        features = {k: v for k, v in self.source_card["features"].items() if k != "stored"}
        return TrackConfig(FeatureConfig.from_dict(features), stored_features(self.source_card))

    @property
    def shards(self) -> list[str]:
        return [s["name"] for s in self.source_card["splits"][self.split]["shards"]]

    @property
    def num_tracks(self) -> int:
        return int(self.source_card["splits"][self.split]["samples"])

    def identity(self, target: Target) -> dict:
        """What must match for a re-run into an existing output to be allowed."""
        what = (
            {"augment": target.copies}
            if target.deformation is None
            else {"deformation": target.deformation.spec()}
        )
        return {
            "source": self.source_card.get("identity"),
            "split": self.split,
            "seed": self.seed,
            **what,
        }


def check_source(card: dict, split: str, dataset: str) -> None:
    """One-line refusals for a source dataset that cannot be perturbed."""
    stored = stored_features(card)
    if "pcm" not in stored:
        raise PerturbError(
            f"{dataset} stores {list(stored)} but no pcm: perturb deforms the stored waveform; "
            "prepare the dataset again with --features mel,pcm (or add pcm to your list)"
        )
    if card.get("deformation") is not None:
        raise PerturbError(f"{dataset} is itself a deformed copy; perturb the clean dataset")
    if split not in card["splits"] or not card["splits"][split]["samples"]:
        have = ", ".join(sorted(card["splits"])) or "none"
        raise PerturbError(f"{dataset} has no samples in split {split!r} (it has: {have})")


def length_factor(deformation: Deformation | None) -> float:
    """How much longer a deformed track is (a stretch at rate r lasts 1/r as long)."""
    rate = getattr(deformation, "rate", None) if deformation is not None else None
    return 1.0 / rate if rate else 1.0


def plan_target_shards(card: dict, split: str, deformation: Deformation | None, copies: int):
    """Shards of one target, from the source card alone (the source's bytes, scaled by the
    copies and the deformation's length, at the source's shard size)."""
    info = card["splits"][split]
    source_bytes = sum(s["bytes"] for s in info["shards"])
    expected = source_bytes * copies * length_factor(deformation)
    target = float(card.get("job", {}).get("shard_size_mb") or 256.0) * 1024 * 1024
    return num_shards_for(int(expected), int(target), int(info["samples"]) * copies)


def make_targets(
    card: dict, split: str, root: str, deformations: list[Deformation], augment: int
) -> tuple[Target, ...]:
    """Robustness sets (`augment` 0): one target per deformation, under root/{name}.
    Augmentation: one target, root itself, `augment` copies per track."""
    if augment:
        n = plan_target_shards(card, split, None, augment)
        return (Target(AUGMENT, root, None, augment, n),)
    return tuple(
        Target(d.name, beam_io.join(root, d.name), d, 1, plan_target_shards(card, split, d, 1))
        for d in deformations
    )


def fan_out(row: dict, cfg: PerturbConfig):
    """One source index row -> ((target, target shard), work item) per target and copy;
    a work item (source shard, key, copy, member ranges) is small: no audio."""
    for t, target in enumerate(cfg.targets):
        for copy in range(target.copies):
            index = shard_index(target.out_key(row["key"], copy), target.num_shards)
            yield (t, index), (row["shard"], row["key"], copy, row["ranges"])


def row_and_info(meta: dict, key: str) -> tuple[dict, dict]:
    """The original JSON as make_sample's (row, info), under the output key."""
    row = {
        "key": key,
        "track_id": meta["track_id"],
        "dataset": meta["dataset"],
        "split": meta["split"],
        "audio_path": meta["source_path"],
        "tags": meta.get("tags") or [],
        "artist_id": meta.get("artist_id"),
        "album_id": meta.get("album_id"),
    }
    info = {k: v for k, v in meta.items() if k not in MADE_FIELDS}
    return row, info


def augment_key(key: str, copy: int) -> str:
    # No dots: WebDataset splits a member name at its first dot.
    return f"{key}-aug{copy}"


def deform_copy(
    target: Target, copy: int, key: str, pcm: np.ndarray, sample_rate: int, seed: int
) -> tuple[np.ndarray, dict]:
    """The deformed waveform of one work item, with its provenance. Augmentation copies
    draw their randomness like `deformations.augment_track` (tested to match)."""
    if target.deformation is not None:
        return deform_track(target.deformation, pcm, sample_rate, seed=seed, key=key)
    d = augmentations(seed, key, target.copies)[copy]
    return d.apply(pcm, sample_rate, track_rng(seed, key, f"aug{copy}:{d.name}"))


def perturb_item(item, cfg: PerturbConfig, track: TrackConfig, vocabulary: list[str]):
    """(target, copy, key, meta, pcm) -> (target, SAMPLE, Sample) or (target, REJECT, Reject)."""
    t, copy, key, meta, pcm16 = item
    target = cfg.targets[t]
    out_key = target.out_key(key, copy)

    def reject(stage, reason, message):
        return t, REJECT, Reject(
            out_key, str(meta.get("track_id", key)), cfg.split, str(meta.get("source_path", "")),
            stage, reason, message[:300],
        )  # fmt: skip

    if pcm16 is None:
        return reject("read", "no_pcm", "the source sample has no pcm.npy member")
    sample_rate = track.features.sample_rate
    try:
        pcm, provenance = deform_copy(target, copy, key, from_int16(pcm16), sample_rate, cfg.seed)
    except MemoryError:
        raise  # transient (a busy worker), not a property of the track: the runner retries
    except Exception as exc:  # one track's failure must not kill the job
        message = str(exc).splitlines()[0] if str(exc) else ""
        return reject("deform", "deform_error", f"{type(exc).__name__}: {message}")
    if len(pcm) == 0 or not np.all(np.isfinite(pcm)):
        return reject("deform", "non_finite", "the deformation returned empty or non-finite audio")
    provenance = {**provenance, "seed": cfg.seed, "source_key": key}
    if target.deformation is None:
        provenance["copy"] = copy
    row, info = row_and_info(meta, out_key)
    try:
        return t, SAMPLE, make_sample(row, pcm, track, vocabulary, info, provenance)
    except MemoryError:
        raise
    except Exception as exc:
        return reject("features", "feature_error", f"{type(exc).__name__}: {exc}")


class PerturbShardFn(TrackStageFn):
    """((target, shard index), work items) -> the target shard's tracks read from the
    source shards, deformed and featurised, its tar (none when every track is rejected)
    and completion record written; or, when a matching record exists (a resumed job),
    the record's rows without deforming anything. Yields (target, (INDEX|REJECTS|SHARDS,
    row)) in the one main output."""

    def __init__(self, cfg: PerturbConfig):
        super().__init__("perturb", "deformed", cfg.filesystem_args, cfg.progress_path)
        self.cfg = cfg
        self.shards_written = Metrics.counter("perturb", "shards_written")
        self.shards_reused = Metrics.counter("perturb", "shards_reused")

    def setup(self):
        super().setup()
        self._vocabulary = list(self.cfg.source_card["vocabulary"])
        self._track = self.cfg.track

    def process(self, element):
        (t, index), items = element
        # Source shard, then key order: each source tar is read front to back. The
        # output does not depend on it (write_shard sorts; rejects are sorted).
        items = sorted(items, key=lambda item: item[:3])
        output, split = self.cfg.targets[t].output, self.cfg.split
        fingerprint = self.cfg.shard_fingerprint(t, index)
        record = progress.valid_record(output, split, index, fingerprint)
        if record is None:
            record = self.build_shard(t, index, items, fingerprint)
        else:
            self.shards_reused.inc()
            self.tick(len(items))
        yield from emit_target_record(t, record)

    def build_shard(self, t: int, index: int, items, fingerprint: str) -> dict:
        set_worker_threads()
        samples, rejects = [], []
        with SourceTracks(self.cfg.dataset) as source:
            for shard, key, copy, ranges in items:
                meta, pcm16 = source.read(shard, key, ranges)
                item = (t, copy, key, meta, pcm16)
                _, tag, value = perturb_item(item, self.cfg, self._track, self._vocabulary)
                self.count(value)
                (samples if tag == SAMPLE else rejects).append(value)
        output, split = self.cfg.targets[t].output, self.cfg.split
        rows, shard = [], None
        if samples:
            rows, shard = write_shard(output, split, index, samples)
            self.shards_written.inc()
        record = {
            "fingerprint": fingerprint,
            "shard": shard,
            "index": rows,
            "rejects": sorted((r.to_row() for r in rejects), key=lambda r: r["key"]),
        }
        progress.write_record(output, split, index, record)
        return record


def emit_target_record(t: int, record: dict):
    for row in record["index"]:
        yield t, (INDEX, row)
    for row in record["rejects"]:
        yield t, (REJECTS, row)
    if record["shard"] is not None:
        yield t, (SHARDS, record["shard"])


INDEX, REJECTS, SHARDS = "index", "rejects", "shards"


def perturbed_card(
    cfg: PerturbConfig, target: Target, index_rows, reject_rows, shard_files=None
) -> dict:
    """The source card with this copy's splits, counts, job, identity and deformation."""
    source = cfg.source_card
    return {
        **source,
        "splits": summarize_splits(index_rows, shard_files),
        "counts": summarize_counts(cfg.num_tracks * target.copies, index_rows, reject_rows),
        "job": {**source.get("job", {}), "planned_shards": {cfg.split: target.num_shards}},
        "identity": cfg.identity(target),
        "code_version": CODE_VERSION,
        "deformation": target.card_deformation(cfg.seed),
        "source": {
            "dataset": cfg.dataset,
            "split": cfg.split,
            "card_sha256": card_checksum(source),
        },
    }


def write_target_files(element, cfg: PerturbConfig):
    """Runs once per target, after its shards: index, rejects, then the card last."""
    beam_io.configure(cfg.filesystem_args)
    t, tagged = element
    index_rows = sorted((v for k, v in tagged if k == INDEX), key=lambda r: r["key"])
    reject_rows = sorted((v for k, v in tagged if k == REJECTS), key=lambda r: r["key"])
    shard_files = {v["name"]: {"sha256": v["sha256"], "bytes": v["bytes"]}
                   for k, v in tagged if k == SHARDS}  # fmt: skip
    target = cfg.targets[t]
    card = perturbed_card(cfg, target, index_rows, reject_rows, shard_files)
    yield target.name, write_dataset_dir(target.output, index_rows, reject_rows, card)


class Perturb(beam.PTransform):
    """The whole job as one composite transform: output (target name, card checksum)."""

    def __init__(self, cfg: PerturbConfig):
        super().__init__()
        self.cfg = cfg

    def expand(self, pbegin):
        cfg = self.cfg
        # One GroupByKey per target over the tagged union, not side inputs (see prepare.py).
        return (
            pbegin
            | "SourceDataset" >> beam.Create([cfg.dataset])
            | "ReadIndex" >> beam.FlatMap(read_split_index, cfg.split, cfg.filesystem_args)
            | "FanOut" >> beam.FlatMap(fan_out, cfg=cfg)
            | "GroupShards" >> beam.GroupByKey()
            | "PerturbShards" >> beam.ParDo(PerturbShardFn(cfg))
            | "GatherPerTarget" >> beam.GroupByKey()
            | "WriteCards" >> beam.FlatMap(write_target_files, cfg=cfg)
        )
