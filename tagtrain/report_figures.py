"""The report's figures, each a PNG (bytes) or None when its inputs are missing, and the
per-track predictions they read. Matplotlib (Agg) only; nothing here runs a model."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

EPOCH_WIDTH = (6.4, 3.2)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return buf.getvalue()


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# --- per-track predictions -------------------------------------------------------------


def read_predictions(path: Path, vocabulary: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, probabilities) [tracks, tags] in `vocabulary` order from a predictions
    Parquet (columns key, tags: list<string>, probabilities: list<float>), or None."""
    if not path.exists():
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if not {"tags", "probabilities"} <= set(table.column_names) or table.num_rows == 0:
        return None
    meta = table.schema.metadata or {}
    order = vocabulary
    if b"vocabulary" in meta:  # the writer's own order wins over the card's
        import json

        order = json.loads(meta[b"vocabulary"])
    probs = np.asarray(table.column("probabilities").to_pylist(), dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(order):
        return None
    index = {t: i for i, t in enumerate(order)}
    labels = np.zeros_like(probs)
    for row, tags in enumerate(table.column("tags").to_pylist()):
        for tag in tags or []:
            if tag in index:
                labels[row, index[tag]] = 1.0
    keep = [index[t] for t in vocabulary if t in index]
    return labels[:, keep], probs[:, keep]


def per_tag_roc(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """ROC-AUC per tag; NaN where a tag has no positives or no negatives."""
    from sklearn.metrics import roc_auc_score

    out = np.full(labels.shape[1], math.nan)
    for t in range(labels.shape[1]):
        positives = labels[:, t].sum()
        if 0 < positives < labels.shape[0]:
            out[t] = roc_auc_score(labels[:, t], probs[:, t])
    return out


# --- figures ---------------------------------------------------------------------------


def learning_rate_curve(rows: list[dict]) -> bytes | None:
    """Learning rate per epoch (1-based), log scale, phases marked."""
    points = [(int(r["epoch"]) + 1, _float(r.get("lr")), r.get("phase", "")) for r in rows]
    points = [p for p in points if math.isfinite(p[1]) and p[1] > 0]
    if not points:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=EPOCH_WIDTH)
    for phase in dict.fromkeys(p[2] for p in points):
        xs = [p[0] for p in points if p[2] == phase]
        ys = [p[1] for p in points if p[2] == phase]
        ax.plot(xs, ys, marker="o", drawstyle="steps-post", label=phase or None)
    ax.set(xlabel="epoch", ylabel="learning rate", yscale="log", title="learning rate")
    if any(p[2] for p in points):
        ax.legend()
    return _png(fig)


def auc_vs_positives(rows: list[dict]) -> bytes | None:
    """Per-tag test ROC-AUC against the tag's number of positive tracks."""
    points = [(_float(r.get("positives")), _float(r.get("roc_auc")), r["tag"]) for r in rows]
    points = [p for p in points if math.isfinite(p[0]) and math.isfinite(p[1]) and p[0] > 0]
    if not points:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=EPOCH_WIDTH)
    ax.scatter([p[0] for p in points], [p[1] for p in points], s=18, alpha=0.8)
    for x, y, tag in sorted(points, key=lambda p: p[1])[:3]:
        ax.annotate(tag, (x, y), fontsize=8, xytext=(3, -8), textcoords="offset points")
    ax.set(xlabel="positive tracks in the test split", ylabel="ROC-AUC", title="per-tag AUC")
    if max(p[0] for p in points) > 20 * min(p[0] for p in points):
        ax.set_xscale("log")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    return _png(fig)


def pr_curves(
    labels: np.ndarray, probs: np.ndarray, vocabulary: list[str], n: int = 3
) -> bytes | None:
    """Precision-recall curves of the `n` best and `n` worst tags by ROC-AUC."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    roc = per_tag_roc(labels, probs)
    ranked = [int(t) for t in np.argsort(-np.nan_to_num(roc, nan=-1.0)) if math.isfinite(roc[t])]
    if not ranked:
        return None
    best, worst = ranked[:n], ranked[-n:][::-1] if len(ranked) > n else []
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, tags, title in ((axes[0], best, "best tags"), (axes[1], worst, "worst tags")):
        for t in tags:
            precision, recall, _ = precision_recall_curve(labels[:, t], probs[:, t])
            ap = average_precision_score(labels[:, t], probs[:, t])
            ax.plot(recall, precision, label=f"{vocabulary[t]} (AP {ap:.2f}, ROC {roc[t]:.2f})")
        ax.set(xlabel="recall", title=f"precision-recall: {title}", xlim=(0, 1), ylim=(0, 1.02))
        if tags:
            ax.legend(fontsize=8, loc="lower left")
    axes[0].set_ylabel("precision")
    return _png(fig)


def deformation_heatmap(
    tags: list[str], sets: list[str], values: np.ndarray, title: str
) -> bytes | None:
    """Per-tag ROC-AUC change from the clean set (deformed - clean) [tags, sets]; red is
    worse than clean. The caller orders the tags."""
    if values.size == 0 or not np.isfinite(values).any():
        return None
    plt = _plt()
    height = min(16.0, 1.6 + 0.22 * len(tags))
    fig, ax = plt.subplots(figsize=(min(10.0, 2.5 + 0.9 * len(sets)), height))
    limit = max(0.05, float(np.nanmax(np.abs(values))))
    image = ax.imshow(values, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(sets)), sets, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(tags)), tags, fontsize=8)
    ax.set_title(title, fontsize=10)
    bar = fig.colorbar(image, ax=ax, fraction=0.04)
    bar.set_label("ROC-AUC change from clean")
    return _png(fig)
