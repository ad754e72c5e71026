"""A manifest's tag vocabulary: tag counts per split, the top tags by train frequency, and
the vocabulary stored in the manifest's Parquet metadata (`manifests vocab --write`)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

import pyarrow as pa

from manifests.schema import ManifestError

VOCABULARY_KEY = "vocabulary"


def tag_counts(table: pa.Table, split: str = "train") -> Counter:
    counts: Counter = Counter()
    splits = table.column("split").to_pylist()
    for row_split, tags in zip(splits, table.column("tags").to_pylist()):
        if row_split == split:
            counts.update(set(tags or ()))
    return counts


def top_tags(table: pa.Table, top: int | None = None) -> list[tuple[str, int]]:
    """(tag, train count), most frequent first, ties broken alphabetically."""
    ranked = sorted(tag_counts(table, "train").items(), key=lambda item: (-item[1], item[0]))
    return ranked if top is None else ranked[:top]


def vocabulary_of(table: pa.Table) -> list[str] | None:
    raw = (table.schema.metadata or {}).get(VOCABULARY_KEY.encode())
    if raw is None:
        return None
    try:
        vocabulary = json.loads(raw)
    except ValueError:
        raise ManifestError("manifest metadata 'vocabulary' is not valid JSON") from None
    if not isinstance(vocabulary, list) or not all(isinstance(t, str) for t in vocabulary):
        raise ManifestError("manifest metadata 'vocabulary' is not a JSON list of strings")
    return vocabulary


def with_vocabulary(table: pa.Table, vocabulary: Sequence[str]) -> pa.Table:
    metadata = dict(table.schema.metadata or {})
    metadata[VOCABULARY_KEY.encode()] = json.dumps(list(vocabulary)).encode()
    return table.replace_schema_metadata(metadata)
