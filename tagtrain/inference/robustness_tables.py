"""Robustness per tag: a tag x deformation table of every registered metric
(tagtrain.inference.metrics) and its drop from the clean set, from the per-track predictions that
`robustness` saves (`predictions-{run}-{set}.parquet`). One function computes it for
both readers: the `robustness` command (robustness-per-tag.csv / .json and a printed list
of the most affected tags) and the report's heat map.

A drop is clean minus deformed (positive: worse), as in the macro table. A tag is scored
on a set only when that set has both positives and negatives of it (tagtrain.inference.metrics);
its drop is None where either side is undefined.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagtrain.inference.metrics import METRICS, primary_metric, tag_scores

CLEAN = "clean"
PREFIX = "predictions-"


def per_tag_fields() -> tuple[str, ...]:
    """robustness-per-tag.csv's columns: a score and a drop per registered metric."""
    return ("run", "tag", "deformation", "positives",
            *METRICS, *(f"{m}_drop" for m in METRICS))  # fmt: skip


def read_predictions(path: Path, vocabulary: list[str] | None = None):
    """(labels, probabilities) [tracks, tags] from a predictions Parquet (key, tags:
    list<string>, probabilities: list<float>, the writer's vocabulary in its metadata),
    restricted to and ordered by `vocabulary` when given (default: the writer's); None
    when the file is missing, empty or unreadable as such."""
    if not path.exists():
        return None
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not {"tags", "probabilities"} <= set(pq.read_schema(path).names):
        return None
    table = pq.read_table(path, columns=["tags", "probabilities"])  # not the keys
    if table.num_rows == 0:
        return None
    order = _written_vocabulary(table.schema.metadata or {}) or vocabulary
    probs = _matrix(table.column("probabilities").combine_chunks())
    if order is None or probs is None or probs.shape[1] != len(order):
        return None
    index = {t: i for i, t in enumerate(order)}
    labels = np.zeros_like(probs)
    tags = table.column("tags").combine_chunks()  # flat, not a Python list per track
    names = tags.flatten().cast(pa.string())  # an all-empty column may be list<null>
    found = pc.index_in(names, value_set=pa.array(order, pa.string()))
    known = found.is_valid().to_numpy(zero_copy_only=False)
    rows = np.asarray(tags.value_parent_indices())[known]
    labels[rows, found.to_numpy(zero_copy_only=False)[known].astype(np.int64)] = 1.0
    keep = [index[t] for t in (vocabulary if vocabulary is not None else order) if t in index]
    if keep == list(range(len(order))):
        return labels, probs  # the written order: no copy of two [tracks, tags] matrices
    return labels[:, keep], probs[:, keep]


def _matrix(column) -> np.ndarray | None:
    """[tracks, tags] float64 of a list<float> column; None unless every row is a list of
    the same length (a million tracks: one flat copy, not 50 M Python floats)."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if column.null_count or len(np.unique(lengths)) != 1 or column.flatten().null_count:
        return None
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    return values.reshape(len(column), int(lengths[0]))


def _written_vocabulary(meta: dict) -> list[str] | None:
    """The writer's tag order: evaluate/robustness store it under `tagtrain`."""
    for key in (b"tagtrain", b"vocabulary"):
        if key in meta:
            value = json.loads(meta[key])
            value = value.get("vocabulary") if isinstance(value, dict) else value
            if isinstance(value, list):
                return [str(t) for t in value]
    return None


def written_tags(path: Path) -> list[str] | None:
    import pyarrow.parquet as pq

    return _written_vocabulary(pq.read_schema(path).metadata or {})


def set_predictions(directory: Path, run_label: str) -> dict[str, Path]:
    """{test set: predictions Parquet} that robustness wrote for `run_label`."""
    mine = f"{PREFIX}{run_label}-"
    found = sorted(directory.glob(f"{mine}*.parquet")) if directory.is_dir() else []
    return {p.stem.removeprefix(mine): p for p in found}


@dataclass
class TagDrops:
    """One run's per-tag scores on every test set; arrays are [tags, sets]."""

    run: str
    tags: list[str]  # by the primary metric on clean, best first; unscored there: dropped
    sets: list[str]  # the deformed sets (clean is the reference, not a column)
    positives: list[int]  # in the clean set
    clean: dict[str, np.ndarray]  # metric -> [tags]
    scores: dict[str, np.ndarray]  # metric -> [tags, sets]

    def drops(self, metric: str | None = None) -> np.ndarray:
        """Clean minus deformed [tags, sets] of `metric` (default: the primary one)."""
        metric = metric or primary_metric().name
        return self.clean[metric][:, None] - self.scores[metric]

    def rows(self) -> list[dict]:
        """Long form, one row per tag and set (clean first), for CSV/JSON."""
        out = []
        for t, tag in enumerate(self.tags):
            for s, name in enumerate([CLEAN, *self.sets]):
                row = {"run": self.run, "tag": tag, "deformation": name,
                       "positives": self.positives[t]}  # fmt: skip
                for m in METRICS:
                    value = self.clean[m][t] if s == 0 else self.scores[m][t, s - 1]
                    row[m] = _number(value)
                    row[f"{m}_drop"] = 0.0 if s == 0 else _number(self.clean[m][t] - value)
                out.append(row)
        return out

    def most_affected(self, n: int = 5, metric: str | None = None) -> list[tuple[str, str, float]]:
        """(tag, its worst deformation, that drop) for the `n` tags with the largest
        worst-case loss of `metric` (default: the primary one; a loss is a positive drop
        of a higher-is-better metric, a negative one otherwise)."""
        chosen = METRICS[metric] if metric else primary_metric()
        drops = self.drops(chosen.name)
        losses = drops if chosen.higher_is_better else -drops
        found = []
        for t, tag in enumerate(self.tags):
            if np.isfinite(losses[t]).any():
                s = int(np.nanargmax(losses[t]))
                found.append((tag, self.sets[s], float(drops[t, s]), float(losses[t, s])))
        return [f[:3] for f in sorted(found, key=lambda f: -f[3])[:n]]


def _number(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def per_tag_drops(
    directory: Path, run_label: str, order: list[str] | None = None,
    vocabulary: list[str] | None = None,
) -> TagDrops | None:  # fmt: skip
    """The per-tag table of one run from its saved predictions, or None without a clean
    set and at least one deformed one. `order`: the sets' order (others after, by name);
    `vocabulary`: restrict to these tags (default: the ones the predictions hold)."""
    files = set_predictions(directory, run_label)
    if CLEAN not in files or len(files) < 2:
        return None
    written = written_tags(files[CLEAN]) or []
    # The tags the predictions hold (a published model has only some of the dataset's).
    vocabulary = [t for t in vocabulary if t in written] if vocabulary else written
    loaded = {name: read_predictions(path, vocabulary) for name, path in files.items()}
    loaded = {name: value for name, value in loaded.items() if value is not None}
    if CLEAN not in loaded or len(loaded) < 2:
        return None
    names = [s for s in (order or []) if s in loaded and s != CLEAN]
    names += sorted(set(loaded) - set(names) - {CLEAN})
    per_set = {name: tag_scores(*loaded[name]).per_tag for name in [CLEAN, *names]}
    primary = primary_metric()
    clean_primary = np.array(per_set[CLEAN][primary.name])
    goodness = [primary.goodness(v) if np.isfinite(v) else -np.inf for v in clean_primary]
    keep = [int(t) for t in np.argsort(-np.array(goodness), kind="stable")]
    keep = [t for t in keep if np.isfinite(clean_primary[t])]
    return TagDrops(
        run=run_label,
        tags=[vocabulary[t] for t in keep],
        sets=names,
        positives=[int(v) for v in loaded[CLEAN][0].sum(axis=0)[keep]],
        clean={m: np.array(per_set[CLEAN][m])[keep] for m in METRICS},
        scores={
            m: np.array([[per_set[s][m][t] for s in names] for t in keep]).reshape(
                len(keep), len(names)
            )
            for m in METRICS
        },
    )


def write_per_tag(tables: list[TagDrops], out_dir: Path) -> tuple[Path, Path]:
    """robustness-per-tag.csv (long form) and robustness-per-tag.json (per run: tags,
    sets and the [tags, sets] drop matrices)."""
    csv_path = out_dir / "robustness-per-tag.csv"
    json_path = out_dir / "robustness-per-tag.json"
    with open(csv_path, "w", newline="") as f:
        fields = per_tag_fields()
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for table in tables:
            for row in table.rows():
                writer.writerow({k: "" if row[k] is None else row[k] for k in fields})
    document = {
        "drop": "clean minus deformed: positive is worse",
        "runs": [
            {
                "run": t.run,
                "tags": t.tags,
                "sets": t.sets,
                "positives": t.positives,
                **{f"{m}_clean": [_number(v) for v in t.clean[m]] for m in METRICS},
                **{f"{m}_drop": [[_number(v) for v in r] for r in t.drops(m)] for m in METRICS},
            }
            for t in tables
        ],
    }
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    return csv_path, json_path


def print_most_affected(tables: list[TagDrops], n: int = 5) -> None:
    """Per run, the tags with the largest worst-case drop of the primary metric."""
    metric = primary_metric()
    for table in tables:
        worst = table.most_affected(n)
        if worst:
            listed = ", ".join(f"{tag} ({where} {-drop:+.3f})" for tag, where, drop in worst)
            print(f"most affected tags of {table.run} (largest {metric.label} drop): {listed}")
