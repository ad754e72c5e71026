"""The dataset card (`dataset.json`): the contract between the pipeline and the trainer.

Layout (all plain JSON):
    format           "tagging-shards/1"
    features         FeatureConfig fields + "stored": which of mel/harm/pcm the shards hold
    vocabulary       tags in label order
    splits           {split: {"samples", "seconds", "shards": [{"name", "samples", "seconds",
                     "bytes" (the tar's size), "sha256" (of the whole tar)}]}}
    mel_stats        {"mean": [n_mels], "std": [n_mels]} over the train split (or null)
    decoder          {"requested", "versions": {library: version}}
    manifest         {"path", "sha256", "split_variant" (where the manifest records one,
                     e.g. MTT's clean or full split)}
    counts           {"inputs", "samples", "rejects", "rejects_by_reason"}: inputs = samples + rejects
    job              {"min_seconds", "max_seconds", "shard_size_mb", "planned_shards"}
    identity         what a re-run into the same output must match (feature config,
                     vocabulary, manifest sha256, code_version, library versions)
    code_version     the package version that wrote it
    deformation      null, or {"name", "params"} for a perturbed copy
    source           perturbed copies only: {"dataset", "split", "card_sha256"} of the source
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Mapping

from pipelines.core.errors import UserError, first_line
from pipelines.core.features import LEGACY_FRONT_END, FeatureConfig

FORMAT = "tagging-shards/1"
CARD_NAME = "dataset.json"
INDEX_NAME = "index.parquet"
REJECTS_NAME = "rejects.parquet"
FEATURES = ("mel", "harm", "pcm")


# A card lists shards and stats (a million tracks: well under a megabyte); a reader reads
# no more than this of a file it is handed.
MAX_CARD_BYTES = 64 << 20


class CardError(UserError, ValueError):
    """The card is missing, malformed, or does not match what a consumer expects."""


def card_checksum(card: Mapping) -> str:
    return hashlib.sha256(json.dumps(card, sort_keys=True).encode()).hexdigest()


def feature_config(card: Mapping) -> FeatureConfig:
    return FeatureConfig.from_dict(card["features"])


def stored_features(card: Mapping) -> tuple[str, ...]:
    return tuple(card["features"].get("stored", ()))


def parse_card(text: str | bytes, source: str = "dataset.json") -> dict:
    """The card in `text`, checked against the schema (check_card): every reader of a
    card (the loader's load_card, the Beam jobs) goes through here."""
    try:
        card = json.loads(text)
    except ValueError as exc:
        raise CardError(f"{source} is not valid JSON: {exc}") from None
    except RecursionError:
        raise CardError(f"{source} nests too deeply to be a dataset card") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise CardError(f"{source} is not a dataset card of format {FORMAT}")
    for field in ("features", "vocabulary", "splits"):
        if field not in card:
            raise CardError(f"{source} has no {field!r}")
    check_card(card, source)
    return card


# --- the schema: types and ranges of every field a reader relies on ---------------------

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fail(source: str, where: str, what: str):
    raise CardError(f"{source}: {where} {what}")


def check_card(card: Mapping, source: str = "dataset.json") -> None:
    """Refuse (one line) a card whose fields the loader uses have the wrong type or range."""
    features = card["features"]
    if not isinstance(features, dict):
        _fail(source, "features", "is not an object")
    _check_feature_types(source, features)
    stored = features.get("stored", ())
    if not isinstance(stored, list | tuple) or not all(s in FEATURES for s in stored):
        _fail(source, "features.stored", f"must be a list of {list(FEATURES)}")
    vocabulary = card["vocabulary"]
    if not isinstance(vocabulary, list) or not all(isinstance(t, str) for t in vocabulary):
        _fail(source, "vocabulary", "must be a list of strings")
    if len(set(vocabulary)) != len(vocabulary):
        _fail(source, "vocabulary", "has duplicate tags")
    splits = card["splits"]
    if not isinstance(splits, dict):
        _fail(source, "splits", "is not an object")
    for split, entry in splits.items():
        _check_split(source, str(split), entry)
    _check_stats(source, card.get("mel_stats"))
    _check_counts(source, card.get("counts"))


def _is_seconds(value) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)  # fmt: skip


def _check_counts(source: str, counts) -> None:
    """prepare's counts (optional): what the report shows and sums."""
    if counts is None:
        return
    if not isinstance(counts, dict):
        _fail(source, "counts", "must be an object")
    for name in ("inputs", "samples", "rejects"):
        if name in counts and not (_is_int(counts[name]) and counts[name] >= 0):
            _fail(
                source,
                f"counts.{name}",
                f"must be a non-negative integer, not {counts[name]!r:.40}",
            )
    reasons = counts.get("rejects_by_reason", {})
    if not isinstance(reasons, dict) or not all(
        isinstance(k, str) and _is_int(v) and v >= 0 for k, v in reasons.items()
    ):
        _fail(source, "counts.rejects_by_reason", "must map reasons to non-negative integers")


def _check_feature_types(source: str, features: Mapping) -> None:
    for spec in dataclasses.fields(FeatureConfig):
        if spec.name not in features:
            continue
        value, kind = features[spec.name], str(spec.type)
        ok = {
            "int": _is_int(value) and value > 0,
            "float": isinstance(value, int | float) and not isinstance(value, bool),
            "str": isinstance(value, str),
        }.get(kind, True)
        if not ok:
            _fail(source, f"features.{spec.name}", f"must be a positive {kind}, not {value!r:.40}")
    try:
        FeatureConfig.from_dict(dict(features))
    except (TypeError, ValueError, OverflowError) as exc:
        _fail(source, "features", first_line(exc, 200))


def _check_split(source: str, split: str, entry) -> None:
    where = f"splits.{split}"
    if not isinstance(entry, dict) or not isinstance(entry.get("shards"), list):
        _fail(source, where, "must be an object with a list of shards")
    if "samples" in entry and not (_is_int(entry["samples"]) and entry["samples"] >= 0):
        _fail(source, f"{where}.samples", "must be a non-negative integer")
    _check_seconds(source, where, entry)
    for i, shard in enumerate(entry["shards"]):
        _check_shard(source, f"{where}.shards[{i}]", shard)


def _check_seconds(source: str, where: str, entry: dict) -> None:
    if "seconds" in entry and not _is_seconds(entry["seconds"]):
        _fail(
            source,
            f"{where}.seconds",
            f"must be a non-negative number, not {entry['seconds']!r:.40}",
        )


def _check_shard(source: str, where: str, shard) -> None:
    if not isinstance(shard, dict):
        _fail(source, where, "must be an object")
    if not isinstance(shard.get("name"), str):
        _fail(source, f"{where}.name", "must be a string")
    for name in ("samples", "bytes"):
        value = shard.get(name, 0)
        if not (_is_int(value) and 0 <= value < 1 << 53):
            _fail(source, f"{where}.{name}", f"must be a non-negative integer, not {value!r:.40}")
    if "samples" not in shard:
        _fail(source, f"{where}.samples", "is missing")
    _check_seconds(source, where, shard)
    digest = shard.get("sha256")
    if digest is not None and not (isinstance(digest, str) and _SHA256.match(digest)):
        _fail(source, f"{where}.sha256", "must be 64 lowercase hex digits")


def _check_stats(source: str, stats) -> None:
    if stats is None:
        return
    if not isinstance(stats, dict):
        _fail(source, "mel_stats", "must be an object or null")
    for name in ("mean", "std"):
        values = stats.get(name)
        if values is None:
            continue
        if not isinstance(values, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        ):
            _fail(source, f"mel_stats.{name}", "must be a list of numbers")


def check_features(card: Mapping, expected: Mapping, source: str = "dataset") -> None:
    """Refuse a card whose feature settings differ from `expected` (a subset of
    FeatureConfig fields); the message names every differing field."""
    have = {**LEGACY_FRONT_END, **card["features"]}
    diffs = [
        f"{name} {have.get(name)!r} != {want!r}"
        for name, want in expected.items()
        if have.get(name) != want and not _close(have.get(name), want)
    ]
    if diffs:
        raise CardError(f"{source} features do not match the model: {'; '.join(diffs)}")


def _close(a, b) -> bool:
    try:
        return abs(float(a) - float(b)) < 1e-9
    except (TypeError, ValueError):
        return False


def manifest_split_variant(metadata: Mapping) -> str | None:
    """The split variant a manifest's Parquet metadata records (str or bytes keys), or
    None (a builder with one split)."""
    for key, value in metadata.items():
        if key in ("split_variant", b"split_variant"):
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def card_split_variant(card: Mapping) -> str | None:
    """The split variant of the manifest the dataset was prepared from, or None."""
    manifest = card.get("manifest")
    return manifest.get("split_variant") if isinstance(manifest, Mapping) else None
