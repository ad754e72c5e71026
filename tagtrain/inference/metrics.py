"""Tagging metrics, declared once: the registry `METRICS` feeds the training rows
(metrics.csv, TensorBoard, curves.png, summary.json), evaluate (metrics.json,
per_tag.csv), robustness (its tables and figure), probe, and the report's tables and
figures; its names are the keys every output uses, its labels their titles.

A metric is a function of one tag's labels and scores; the macro figure is its mean over
the tags it is defined for. Tags without both positives and negatives in the evaluated
set have no defined AUC: metrics that need both classes skip them and count them, so a
macro figure never silently averages over NaNs. Adding a metric is one
`register_metric(Metric(...))` line: its name, label, function and direction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def _counts_at_positives(y: np.ndarray, s: np.ndarray):
    """Per column of labels y and scores s [N, C]: (the positives' scores, and for each
    how many of all scores and of the positives' lie below it and at most at it). Only
    values are sorted (numpy's vectorised sort), the positives' searched in them: no
    argsort and no gathers over a million rows, whose cache misses made scoring grow
    faster than the track count."""
    for column in range(s.shape[1]):
        scores = s[:, column]
        ordered = np.sort(scores)
        positives = np.sort(scores[y[:, column] > 0.5])
        yield (
            positives,
            np.searchsorted(ordered, positives, "left"),
            np.searchsorted(ordered, positives, "right"),
            np.searchsorted(positives, positives, "left"),
            np.searchsorted(positives, positives, "right"),
        )


def roc_auc(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Per-column area under the ROC curve of labels y and scores s [N, C]: the share of
    (positive, negative) pairs ordered right, a tie counting half (the Mann-Whitney
    statistic with average ranks: scikit-learn's roc_auc_score; tests compare the two)."""
    out = np.full(s.shape[1], np.nan)
    for column, (pos, below, at_most, pos_below, pos_at_most) in enumerate(
        _counts_at_positives(y, s)
    ):
        negatives_below = below - pos_below
        negatives_tied = (at_most - pos_at_most) - negatives_below
        pairs = len(pos) * (len(s) - len(pos))
        if pairs:
            out[column] = (negatives_below.sum() + negatives_tied.sum() / 2) / pairs
    return out


def pr_auc(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Per-column average precision (scikit-learn's: one step per distinct score): the
    mean over positives of the precision among the scores at least theirs."""
    out = np.full(s.shape[1], np.nan)
    for column, (pos, below, _, pos_below, _) in enumerate(_counts_at_positives(y, s)):
        if len(pos):
            out[column] = np.mean((len(pos) - pos_below) / (len(s) - below))
    return out


@dataclass(frozen=True)
class Metric:
    """One tagging metric: everything a table, plot or selection needs to know of it."""

    name: str  # the key in every output (metrics.csv column, metrics.json key, ...)
    label: str  # its title in tables, plots and printed lines
    per_tag: Callable[[np.ndarray, np.ndarray], np.ndarray]  # labels, scores [N, C] -> [C]
    needs_both_classes: bool = True  # undefined for a tag without positives or negatives
    higher_is_better: bool = True  # its direction: a drop is a loss when this is True

    def goodness(self, value: float) -> float:
        """`value` turned so that larger is better (for sorting and selecting)."""
        return value if self.higher_is_better else -value


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    """Add `metric` to the registry; every output picks it up from there. The first one
    registered (ROC-AUC) is the primary metric: it orders per-tag tables and names the
    most damaging deformation."""
    if metric.name in METRICS:
        raise ValueError(f"a metric named {metric.name!r} is already registered")
    METRICS[metric.name] = metric
    return metric


def unregister_metric(name: str) -> Metric:
    """Remove a metric from the registry (a throwaway metric of a test, say)."""
    return METRICS.pop(name)


def primary_metric() -> Metric:
    return next(iter(METRICS.values()))


register_metric(Metric("roc_auc", "ROC-AUC", roc_auc))
register_metric(Metric("pr_auc", "PR-AUC", pr_auc))


@dataclass(frozen=True)
class TagScores:
    macro: dict[str, float]  # metric -> mean over the evaluable tags (NaN if none)
    per_tag: dict[str, tuple[float, ...]]  # metric -> one value per tag, NaN where skipped
    evaluated_tags: int
    skipped_tags: int
    nonfinite_tracks: int = 0  # tracks left out because a score was NaN or infinite

    @property
    def roc_auc(self) -> float:
        return self.macro["roc_auc"]

    @property
    def pr_auc(self) -> float:
        return self.macro["pr_auc"]


TAGS_AT_A_TIME = 8


def evaluable_tags(y_true: np.ndarray) -> np.ndarray:
    """Boolean mask of tags that have at least one positive and one negative."""
    positives = y_true.sum(axis=0)
    return (positives > 0) & (positives < y_true.shape[0])


def tag_scores(y_true, y_score) -> TagScores:
    """Every registered metric per tag and macro, for multi-hot labels [N, C] and scores
    [N, C]. Tracks with a non-finite score are left out and counted."""
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score)
    # Float32 scores (what models and predictions.parquet give) are ranked as they are:
    # the same order, half the bytes to sort; anything else as float64.
    y_score = y_score if y_score.dtype == np.float32 else y_score.astype(np.float64)
    if y_true.shape != y_score.shape or y_true.ndim != 2:
        raise ValueError(f"labels {y_true.shape} and scores {y_score.shape} must both be [N, C]")
    finite = np.isfinite(y_score).all(axis=1)
    if not finite.all():  # else no copy of both matrices (a million tracks: 800 MB)
        y_true, y_score = y_true[finite], y_score[finite]
    n_tags = y_true.shape[1]
    mask = evaluable_tags(y_true) if len(y_true) else np.zeros(n_tags, dtype=bool)
    per_tag, macro = {}, {}
    for metric in METRICS.values():
        values = np.full(n_tags, np.nan)
        usable = mask if metric.needs_both_classes else np.full(n_tags, len(y_true) > 0)
        # A few tags at a time: a metric's temporaries (ranks, sort orders, cumulative
        # sums: ~10 [tracks, tags] arrays) then stay a few columns wide, not 50.
        columns = np.flatnonzero(usable)
        for start in range(0, len(columns), TAGS_AT_A_TIME):
            part = columns[start : start + TAGS_AT_A_TIME]
            # Column-major: each tag's column contiguous, for the sorts along it.
            y, s = np.asfortranarray(y_true[:, part]), np.asfortranarray(y_score[:, part])
            values[part] = metric.per_tag(y, s)
        per_tag[metric.name] = tuple(values.tolist())
        macro[metric.name] = float(np.nanmean(values)) if np.isfinite(values).any() else np.nan
    n = int(mask.sum())
    return TagScores(macro, per_tag, n, int(n_tags - n), int((~finite).sum()))


def bce_on_probabilities(y_true, probs, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (e.g. averaged over chunks)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(y_true, dtype=np.float64)
    if y.size == 0:
        return float("nan")
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


# --- uncertainty over tracks -------------------------------------------------------------


def bootstrap_macro(
    y_true, y_score, resamples: int = 1000, seed: int = 0, y_other=None
) -> dict[str, dict]:
    """95% percentile intervals of every macro metric over tracks resampled with
    replacement. With `y_other` (scores of the same tracks by another system, e.g. the
    clean set), also the paired difference (this minus other) and whether its interval
    excludes 0."""
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score)  # tag_scores decides its dtype
    rng = np.random.default_rng(seed)
    n = len(y_true)
    draws: dict[str, list] = {name: [] for name in METRICS}
    diffs: dict[str, list] = {name: [] for name in METRICS}
    for _ in range(resamples if n else 0):
        idx = rng.integers(0, n, n)
        here = tag_scores(y_true[idx], y_score[idx]).macro
        there = (
            tag_scores(y_true[idx], np.asarray(y_other)[idx]).macro if y_other is not None else None
        )
        for name in METRICS:
            draws[name].append(here[name])
            if there is not None:
                diffs[name].append(here[name] - there[name])
    out = {}
    for name in METRICS:
        out[name] = {"low": _percentile(draws[name], 2.5), "high": _percentile(draws[name], 97.5)}
        if y_other is not None:
            low, high = _percentile(diffs[name], 2.5), _percentile(diffs[name], 97.5)
            significant = low is not None and (low > 0 or high < 0)
            out[name].update(diff_low=low, diff_high=high, significant=bool(significant))
    return out


def _percentile(values: list, q: float) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.percentile(finite, q)) if finite else None
