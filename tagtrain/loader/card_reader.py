"""The dataset card as every command reads it (train, evaluate, robustness, embed, probe,
report, ...): fetched (a regular file or an object, size capped), checked against a
schema (types and ranges of every field a command relies on, one-line errors), and its
shards listed."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pipelines.core.card import CARD_NAME, FEATURES, CardError, parse_card
from pipelines.core.errors import first_line
from pipelines.core.features import FeatureConfig
from tagtrain.loader.openers import join_url, read_bytes

MAX_CARD_BYTES = 64 << 20  # a card lists shards and stats: far below this
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def load_card(data: str, options: Mapping | None = None) -> dict:
    """The dataset card at `data/dataset.json` (a directory or a URL prefix)."""
    url = join_url(data, CARD_NAME)
    try:
        text = read_bytes(url, options, limit=MAX_CARD_BYTES)
    except Exception as exc:  # noqa: BLE001  (any storage failure: one line, e.g. no credentials)
        raise CardError(f"cannot read the dataset card {url}: {first_line(exc, 200)}") from None
    try:
        card = parse_card(text, url)
    except RecursionError:
        raise CardError(f"{url} nests too deeply to be a dataset card") from None
    check_card(card, url)
    return card


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
    if "seconds" in entry and not _is_seconds(entry["seconds"]):
        _fail(
            source,
            f"{where}.seconds",
            f"must be a non-negative number, not {entry['seconds']!r:.40}",
        )
    for i, shard in enumerate(entry["shards"]):
        _check_shard(source, f"{where}.shards[{i}]", shard)


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
    if "seconds" in shard and not _is_seconds(shard["seconds"]):
        _fail(
            source,
            f"{where}.seconds",
            f"must be a non-negative number, not {shard['seconds']!r:.40}",
        )
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


@dataclass(frozen=True)
class ShardInfo:
    name: str
    url: str
    samples: int
    sha256: str | None = None


def split_shards(card: Mapping, data: str, split: str) -> list[ShardInfo]:
    if split not in card["splits"]:
        have = ", ".join(sorted(card["splits"])) or "none"
        raise CardError(f"the dataset has no split {split!r} (it has: {have})")
    return [
        ShardInfo(s["name"], join_url(data, s["name"]), int(s["samples"]), s.get("sha256"))
        for s in card["splits"][split]["shards"]
    ]
