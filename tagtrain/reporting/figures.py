"""The report's figures, each a PNG (bytes) or None when its inputs are missing.
Matplotlib (Agg) and numpy only; nothing here runs a model."""

from __future__ import annotations

import io
import math

import numpy as np

from tagtrain.inference.metrics import METRICS, Metric, primary_metric, tag_scores

EPOCH_WIDTH = (6.4, 3.2)
PR_LIMITS = (-0.03, 1.05)


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


def _text(value) -> str:
    """A tag or run name as plain text in a figure: matplotlib reads `$...$` as math (a
    tag `$\\frac$` would stop the report), so its dollars are escaped."""
    return str(value).replace("$", r"\$")


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# --- per-tag scores ----------------------------------------------------------------------


def per_tag_scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """Every registered metric per tag (tagtrain.inference.metrics); NaN where a metric
    is undefined for a tag (no positives or no negatives)."""
    return {name: np.array(values) for name, values in tag_scores(labels, probs).per_tag.items()}


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
    """Every registered metric per tag (per_tag.csv's rows) against the tag's number of
    positive tracks; the three worst tags by the primary metric are named."""
    series = {}
    for metric in METRICS.values():
        points = [(_float(r.get("positives")), _float(r.get(metric.name)), r["tag"]) for r in rows]
        points = [p for p in points if math.isfinite(p[0]) and math.isfinite(p[1]) and p[0] > 0]
        if points:
            series[metric] = points
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=EPOCH_WIDTH)
    for metric, points in series.items():
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=18, alpha=0.8,
                   label=metric.label)  # fmt: skip
    first, points = next(iter(series.items()))
    for x, y, tag in sorted(points, key=lambda p: first.goodness(p[1]))[:3]:
        ax.annotate(_text(tag), (x, y), fontsize=8, xytext=(3, -8), textcoords="offset points")
    ax.set(xlabel="positive tracks in the test split", ylabel="score", title="per-tag scores")
    xs = [p[0] for points in series.values() for p in points]
    if max(xs) > 20 * min(xs):
        ax.set_xscale("log")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=8)
    return _png(fig)


def pr_curves(
    labels: np.ndarray, probs: np.ndarray, vocabulary: list[str], n: int = 3,
    scores: dict[str, np.ndarray] | None = None,
) -> bytes | None:  # fmt: skip
    """Precision-recall curves of the `n` best and `n` worst tags by the primary metric
    (ROC-AUC), each labelled with every registered metric's score of the tag. `scores`:
    those per tag (metric -> one per column) when known, e.g. from evaluate's
    per_tag.csv: scoring a million tracks again is the report's costliest step."""
    from sklearn.metrics import precision_recall_curve

    scores = scores if scores is not None else per_tag_scores(labels, probs)
    primary = primary_metric()
    ranked = rank_tags(scores[primary.name], primary)
    if not ranked:
        return None
    best, worst = ranked[:n], ranked[-n:][::-1] if len(ranked) > n else []
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, tags, title in ((axes[0], best, "best tags"), (axes[1], worst, "worst tags")):
        for t in tags:
            precision, recall, _ = precision_recall_curve(labels[:, t], probs[:, t])
            shown = ", ".join(f"{m.label} {scores[m.name][t]:.2f}" for m in METRICS.values())
            ax.plot(recall, precision, label=f"{_text(vocabulary[t])} ({shown})")
        # Curves run along recall 0 and 1 and precision 1: a margin keeps them off the axes.
        ax.set(xlabel="recall", title=f"precision-recall: {title}", xlim=PR_LIMITS,
               ylim=PR_LIMITS)  # fmt: skip
        if tags:
            ax.legend(fontsize=8, loc="lower left")
    axes[0].set_ylabel("precision")
    return _png(fig)


def rank_tags(values: np.ndarray, metric: Metric) -> list[int]:
    """Indices of the tags scored by `metric`, best first."""
    keys = [-metric.goodness(v) if math.isfinite(v) else math.inf for v in values]
    order = np.argsort(keys, kind="stable")
    return [int(t) for t in order if math.isfinite(values[t])]


def deformation_heatmap(
    tags: list[str], sets: list[str], values: np.ndarray, title: str,
    metric: Metric | None = None, limit: float | None = None,
) -> bytes | None:  # fmt: skip
    """Per-tag change of `metric` (default: the primary one) from the clean set (deformed
    - clean) [tags, sets]; red is worse than clean, grey is not scored. The caller orders
    the tags; `limit` (default: the largest change) is the symmetric colour range, shared
    by maps meant to be compared. The size depends only on the numbers of tags and sets."""
    metric = metric or primary_metric()
    if values.size == 0 or not np.isfinite(values).any():
        return None
    plt = _plt()
    height = min(16.0, 1.6 + 0.22 * len(tags))
    fig, ax = plt.subplots(figsize=(min(10.0, 2.5 + 0.9 * len(sets)), height))
    limit = limit or max(0.05, float(np.nanmax(np.abs(values))))
    colours = plt.get_cmap("RdBu" if metric.higher_is_better else "RdBu_r")
    colours = colours.with_extremes(bad="#dddddd")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=colours, vmin=-limit, vmax=limit,
                      aspect="auto")  # fmt: skip
    ax.set_xticks(range(len(sets)), [_text(s) for s in sets], rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(tags)), [_text(t) for t in tags], fontsize=8)
    ax.set_title(_text(title), fontsize=10)
    bar = fig.colorbar(image, ax=ax, fraction=0.04)
    bar.set_label(f"{metric.label} change from clean")
    return _png(fig)


# --- embedding map ---------------------------------------------------------------------

MAX_COLOURS = 8
CANDIDATE_TAGS = 20  # the most frequent tags searched for a colouring


def _exclusive_sets(tags: list[str], together: set[frozenset]):
    """Every maximal set of `tags` no two of which share a track (Bron-Kerbosch with a
    pivot on the graph 'never together')."""
    apart = {t: {u for u in tags if u != t and frozenset((t, u)) not in together} for t in tags}

    def grow(chosen: set, candidates: set, excluded: set):
        if not candidates and not excluded:
            yield chosen
            return
        pivot = max(candidates | excluded, key=lambda t: len(apart[t] & candidates))
        for t in list(candidates - apart[pivot]):
            yield from grow(chosen | {t}, candidates & apart[t], excluded & apart[t])
            candidates = candidates - {t}
            excluded = excluded | {t}

    yield from grow(set(), set(tags), set())


def colour_tags(
    track_tags: list[list[str]], reference: list[list[str]] | None = None
) -> tuple[list[str], list[str]]:
    """(one colour label per track, the legend's tags). Colours are a set of tags no track
    of `reference` (default: the tracks themselves; the whole dataset is a better judge
    than a small test split) has two of, e.g. the genres: among the most frequent tags,
    the set covering the most tracks (then the most tags), at most MAX_COLOURS of them
    (the most frequent). A track with none of them is 'other'."""
    reference = reference or track_tags
    counts: dict[str, int] = {}
    for tags in reference:
        for t in tags:
            counts[t] = counts.get(t, 0) + 1
    frequent = sorted((t for t in counts if counts[t] >= 2), key=lambda t: (-counts[t], t))
    frequent = frequent[:CANDIDATE_TAGS]
    together = {frozenset((a, b)) for tags in reference for a in tags for b in tags if a != b}

    def rank(legend: list[str]):  # ties go to the alphabetically first set: deterministic
        return (-sum(counts[t] for t in legend), -len(legend), sorted(legend))

    found = [
        sorted(chosen, key=lambda t: (-counts[t], t))[:MAX_COLOURS]
        for chosen in _exclusive_sets(frequent, together)
    ]
    legend = min(found, key=rank) if found else []
    labels = [next((t for t in legend if t in tags), "other") for tags in track_tags]
    return labels, legend


def project_2d(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(points [N, 2], share of the variance each axis explains): PCA by SVD of the
    centred embeddings."""
    centred = embeddings - embeddings.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2]
    points = centred @ axes.T
    if points.shape[1] < 2:
        points = np.pad(points, ((0, 0), (0, 2 - points.shape[1])))
    variance = singular**2
    share = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(2)
    return points, np.pad(share, (0, 2 - len(share)))


def embedding_map(
    embeddings: np.ndarray, track_tags: list[list[str]], title: str,
    reference: list[list[str]] | None = None,
) -> bytes | None:  # fmt: skip
    """The tracks' embeddings projected to 2-D (PCA), coloured by tag (colour_tags)."""
    if len(embeddings) < 3 or not np.isfinite(embeddings).all():
        return None
    points, share = project_2d(np.asarray(embeddings, dtype=np.float64))
    labels, legend = colour_tags(track_tags, reference)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9.0, 4.5))  # wide: it may fill a row of the page
    colours = plt.get_cmap("tab10").colors
    for i, tag in enumerate([*legend, "other"]):
        mine = [j for j, label in enumerate(labels) if label == tag]
        if mine:
            colour = "#bbbbbb" if tag == "other" else colours[i % len(colours)]
            ax.scatter(points[mine, 0], points[mine, 1], s=30, color=colour, alpha=0.85,
                       edgecolors="white", linewidths=0.5, label=f"{_text(tag)} ({len(mine)})")  # fmt: skip
    ax.set(xlabel=f"PC 1 ({share[0]:.0%} of variance)", ylabel=f"PC 2 ({share[1]:.0%})")
    ax.set_title(_text(title), fontsize=10)
    ax.legend(fontsize=8, title="tag", title_fontsize=8, loc="center left",
              bbox_to_anchor=(1.01, 0.5))  # fmt: skip
    return _png(fig)
