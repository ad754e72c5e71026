"""The report's evaluation section: the macro scores of every registered metric, runs
given with `--compare` beside the run (on their own tags and on the tags all of them
scored), per-tag figures (scores against positives, PR curves of the best and worst tags,
the embedding map) and the per-tag table ranked by the primary metric."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from tagtrain.inference.metrics import METRICS, primary_metric
from tagtrain.inference.robustness_tables import read_predictions, written_tags
from tagtrain.reporting import figures
from tagtrain.reporting.html import (
    esc,
    image,
    note,
    number,
    read_csv,
    read_json,
    stale_banner,
    table,
)
from tagtrain.run.stale import stale_checkpoint, stale_data

EMBEDDINGS = "embeddings-test.parquet"


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def interval(metrics: dict, name: str) -> str:
    """' (95% CI 0.951-0.972)' from metrics.json's bootstrap intervals, or ''."""
    found = (metrics.get("bootstrap") or {}).get(name)
    if not isinstance(found, dict) or not (
        _finite(found.get("low")) and _finite(found.get("high"))
    ):
        return ""
    resamples = (metrics.get("bootstrap") or {}).get("resamples")
    how = (
        f"{esc(resamples)} bootstrap resamples of the tracks" if _finite(resamples) else "bootstrap"
    )
    return (f' <span class="ci" title="95% interval, {how}">95% CI '
            f"{found['low']:.3f}\u2013{found['high']:.3f}</span>")  # fmt: skip


def kpis(metrics: dict) -> str:
    """The headline: every metric's macro score and its bootstrap 95% interval."""
    return "".join(
        f'<div class="kpi">{esc(m.label)} <b>{metrics[m.name]:.3f}</b>{interval(metrics, m.name)}</div>'
        for m in METRICS.values()
        if _finite(metrics.get(m.name))
    )


def per_tag_scores(path: Path) -> dict[str, dict]:
    """per_tag.csv's rows of the tags the primary metric scored, by tag."""
    primary = primary_metric().name
    return {r["tag"]: r for r in read_csv(path / "per_tag.csv") if r.get(primary)}


def comparison_table(run: Path, others: list[Path]) -> str:
    """Each run's macro scores on its own tags, and on the tags every one of them scored
    (a published model has only some of the dataset's tags), so the figures compare."""
    scored = {path: per_tag_scores(path) for path in [run, *others]}
    shared = set.intersection(*(set(tags) for tags in scored.values()))
    rows, stale = [], []
    for path in [run, *others]:
        m = read_json(path / "metrics.json")
        on_shared = [
            np.mean([number(scored[path][t].get(name)) for t in shared]) if shared else None
            for name in METRICS
        ]
        rows.append([path.name, m.get("model", "?"), m.get("tracks"), m.get("chunks"),
                     len(scored[path]), *(m.get(name) for name in METRICS), *on_shared])  # fmt: skip
        if path != run and (why := stale_checkpoint(path, m)):
            stale.append(stale_banner(f"{path.name}: {why}"))
    labels = [m.label for m in METRICS.values()]
    header = ["run", "model", "tracks", "chunks", "tags scored", *labels,
              *(f"{label} ({len(shared)} shared tags)" for label in labels)]  # fmt: skip
    unscored = {p.name: read_json(p / "metrics.json").get("not_in_model_vocabulary")
                for p in others}  # fmt: skip
    listed = "; ".join(f"{name}: {', '.join(map(str, tags))}"
                       for name, tags in unscored.items() if isinstance(tags, list) and tags)  # fmt: skip
    text = note(f"Not in the model's vocabulary (not scored): {esc(listed)}") if (
        listed) else ""  # fmt: skip
    return "<h3>Beside other runs</h3>" + "".join(stale) + table(header, rows, "compare") + text


def per_tag_table(rows: list[dict]) -> str:
    """Ranked by the primary metric (best first, unscored tags last), every registered
    metric a column, split into page columns."""
    primary = primary_metric()

    def rank(row):
        value = number(row.get(primary.name))
        return -primary.goodness(value) if math.isfinite(value) else math.inf

    body = [[r["tag"], r.get("positives"), *(r.get(m) for m in METRICS)]
            for r in sorted(rows, key=rank)]  # fmt: skip
    header = ["tag", "positives", *(m.label for m in METRICS.values())]
    size = max(1, math.ceil(len(body) / 3)) if len(body) > 15 else len(body)
    chunks = [body[i : i + size] for i in range(0, len(body), size)] or [[]]
    return '<div class="columns">' + "".join(table(header, c, "per-tag") for c in chunks) + "</div>"


def embedding_figure(path: Path, run: Path, data: Path) -> bytes | None:
    """The embedding map of the tracks in `path` (embed's Parquet: key, tags, embedding),
    coloured by tags chosen on the whole dataset's index."""
    if not path.exists():
        return None
    import pyarrow.parquet as pq

    tracks = pq.read_table(path, columns=["tags", "embedding"])
    if tracks.num_rows < 3:
        return None
    embeddings = np.asarray(tracks.column("embedding").to_pylist(), dtype=np.float64)
    index = data / "index.parquet"
    reference = pq.read_table(index, columns=["tags"]).column("tags").to_pylist() if (
        index.exists()) else None  # fmt: skip
    meta = json.loads((tracks.schema.metadata or {}).get(b"tagtrain", b"{}"))
    title = f"{run.name}: {meta.get('layer', 'embedding')} of {tracks.num_rows} tracks, PCA"
    tags = tracks.column("tags").to_pylist()
    return figures.embedding_map(embeddings, tags, title, reference)


def prediction_tags(path: Path, vocabulary: list[str]) -> list[str]:
    """The tags of read_predictions' columns: the vocabulary's, where the file has them."""
    written = set(written_tags(path) or vocabulary)
    return [t for t in vocabulary if t in written]


def csv_scores(rows: list[dict], tags: list[str]) -> dict[str, np.ndarray] | None:
    """per_tag.csv's figures of `tags`, per registered metric; None unless it has every
    tag and metric (the figure then scores the predictions itself)."""
    by_tag = {r.get("tag"): r for r in rows}
    if not rows or any(t not in by_tag for t in tags) or any(m not in rows[0] for m in METRICS):
        return None
    return {m: np.array([number(by_tag[t].get(m)) for t in tags]) for m in METRICS}


def evaluation_section(
    run: Path, card: dict, compare: list[Path], embedding_map: bytes | None = None
) -> str:
    vocabulary = [str(t) for t in card["vocabulary"]]
    parts = ['<h2 id="evaluation">Evaluation (test split)</h2>']
    metrics = run / "metrics.json"
    if metrics.exists():
        m = read_json(metrics)
        parts.append(stale_banner(stale_checkpoint(run, m)))
        parts.append(stale_banner(stale_data(m, card)))
        parts.append(kpis(m))
        excluded = m.get("excluded_tags") or []
        excluded = excluded if isinstance(excluded, list) else [excluded]
        if excluded:
            parts.append(note("Left out of the macro averages (no positives or no negatives): "
                              + esc(", ".join(map(str, excluded)))))  # fmt: skip
    else:
        parts.append('<p class="missing">(metrics.json not found: run evaluate)</p>')
    if compare:
        parts.append(comparison_table(run, compare))
    rows = read_csv(run / "per_tag.csv")
    predictions = read_predictions(run / "predictions.parquet", vocabulary)
    pr = None
    if predictions is not None:
        scores = csv_scores(rows, prediction_tags(run / "predictions.parquet", vocabulary))
        pr = figures.pr_curves(*predictions, vocabulary, scores=scores)
    parts.append('<div class="figures">')
    parts.append(image(figures.auc_vs_positives(rows), "per-tag AUC against positives"))
    parts.append(image(pr, "PR curves of the best and worst tags"))
    parts.append(image(embedding_map, "embedding map"))
    parts.append("</div>")
    if predictions is None:
        parts.append(note("PR curves need per-track predictions (predictions.parquet from "
                          "evaluate)."))  # fmt: skip
    if embedding_map is None:
        parts.append(note("The embedding map needs the test split's embeddings: python -m "
                          f"tagtrain embed --run RUN --split test --out RUN/{EMBEDDINGS}"))  # fmt: skip
    if rows:
        parts.append(per_tag_table(rows))
    return "\n".join(parts)
