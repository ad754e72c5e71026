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

import hashlib
import json
from collections.abc import Mapping

from pipelines.core.errors import UserError
from pipelines.core.features import LEGACY_FRONT_END, FeatureConfig

FORMAT = "tagging-shards/1"
CARD_NAME = "dataset.json"
INDEX_NAME = "index.parquet"
REJECTS_NAME = "rejects.parquet"
FEATURES = ("mel", "harm", "pcm")


class CardError(UserError, ValueError):
    """The card is missing, malformed, or does not match what a consumer expects."""


def card_checksum(card: Mapping) -> str:
    return hashlib.sha256(json.dumps(card, sort_keys=True).encode()).hexdigest()


def feature_config(card: Mapping) -> FeatureConfig:
    return FeatureConfig.from_dict(card["features"])


def stored_features(card: Mapping) -> tuple[str, ...]:
    return tuple(card["features"].get("stored", ()))


def parse_card(text: str | bytes, source: str = "dataset.json") -> dict:
    try:
        card = json.loads(text)
    except ValueError as exc:
        raise CardError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise CardError(f"{source} is not a dataset card of format {FORMAT}")
    for field in ("features", "vocabulary", "splits"):
        if field not in card:
            raise CardError(f"{source} has no {field!r}")
    return card


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
