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


def _labels_and_scores(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores [N, C] as arrays, checked. Float32 scores (what models and
    predictions.parquet give) are ranked as they are: the same order, half the bytes to
    sort; anything else as float64."""
    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    y_score = y_score if y_score.dtype == np.float32 else y_score.astype(np.float64)
    if y_true.shape != y_score.shape or y_true.ndim != 2:
        raise ValueError(f"labels {y_true.shape} and scores {y_score.shape} must both be [N, C]")
    return y_true, y_score


def _macro(values: np.ndarray) -> float:
    """The mean over the tags that have a value (NaN when none has)."""
    return float(np.nanmean(values)) if np.isfinite(values).any() else np.nan


def tag_scores(y_true, y_score) -> TagScores:
    """Every registered metric per tag and macro, for multi-hot labels [N, C] and scores
    [N, C]. Tracks with a non-finite score are left out and counted."""
    y_true, y_score = _labels_and_scores(y_true, y_score)
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
        macro[metric.name] = _macro(values)
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
    excludes 0.

    Each tag's scores are sorted once; a resample is then how many times it drew each
    track (`np.bincount` of its draws), and the metrics are their weighted forms over the
    sorted order, equal to `tag_scores` of the gathered resample (the draws are the same:
    `rng.integers(0, n, n)` per resample). Gathering and sorting a million tracks again
    per resample cost seconds each, and grew faster than the track count."""
    y_true = np.asarray(y_true)
    rng = np.random.default_rng(seed)
    n = len(y_true)
    draws: dict[str, list] = {name: [] for name in METRICS}
    diffs: dict[str, list] = {name: [] for name in METRICS}
    if not (n and resamples):
        return _intervals(draws, diffs, y_other is not None)
    systems = [_ResampledSystem(y_true, y_score)]
    if y_other is not None:
        systems.append(_ResampledSystem(y_true, y_other))
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        counts = _draw_counts(idx, n)
        here, *there = (system.macro(idx, counts) for system in systems)
        for name in METRICS:
            draws[name].append(here[name])
            if there:
                diffs[name].append(here[name] - there[0][name])
    return _intervals(draws, diffs, y_other is not None)


def _intervals(draws: dict[str, list], diffs: dict[str, list], paired: bool) -> dict:
    out = {}
    for name in METRICS:
        out[name] = {"low": _percentile(draws[name], 2.5), "high": _percentile(draws[name], 97.5)}
        if paired:
            low, high = _percentile(diffs[name], 2.5), _percentile(diffs[name], 97.5)
            significant = low is not None and (low > 0 or high < 0)
            out[name].update(diff_low=low, diff_high=high, significant=bool(significant))
    return out


def _percentile(values: list, q: float) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.percentile(finite, q)) if finite else None


def _draw_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """How many times a resample drew each of the n tracks. As uint8 when it fits (a
    bootstrap's counts are Poisson(1): never near 255 in practice): every tag reads them
    in its score order, at random, and 1 MB of them stays in cache where 8 MB does not."""
    counts = np.bincount(idx, minlength=n)
    return counts.astype(np.uint8 if counts.max() < 256 else np.int64)


def _ascending(
    scores: np.ndarray, rows: np.ndarray, positive: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(`rows` ordered by ascending `scores[rows]`; their scores in that order, as
    values that compare and tie exactly as the scores do; `positive` (one flag per row of
    `rows`) in that order). Float32 scores are sorted as one int64 key per row (the
    score's bits made order-preserving, the flag, the row): a vectorised sort, 3x faster
    than argsort at a million rows, and no gather of the flags in score order."""
    if scores.dtype != np.float32 or len(scores) > 2**31:  # keys: a row in 31 bits
        by_score = np.argsort(scores[rows])
        order = rows[by_score]
        return order, scores[order], positive[by_score]
    bits = (scores[rows] + np.float32(0)).view(np.int32)  # + 0: -0.0 ties with 0.0
    ordered_bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negatives' order reversed
    keys = (ordered_bits.astype(np.int64) << 32) | (positive.astype(np.int64) << 31) | rows
    keys.sort()
    return (keys & 0x7FFFFFFF).astype(np.int32), keys >> 32, (keys >> 31) & 1 == 1


def _tie_groups(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(where each group of equal sorted `values` starts, where it ends, the group of
    each value): linear passes, where searching each positive's score in a million cost
    a cache miss per step."""
    first = np.empty(len(values), dtype=bool)
    first[:1] = True
    np.not_equal(values[1:], values[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    return starts, np.append(starts[1:], len(values)), np.cumsum(first) - 1


class _SortedTag:
    """One tag's scores sorted once, and where each positive's tie group starts and ends
    in that order, for its weighted ROC-AUC and average precision in every resample."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray, rows: np.ndarray):
        row_labels = labels[rows]
        self.order, values, positive = _ascending(scores, rows, row_labels > 0.5)
        # The positives by ascending score: their places in the order, the bounds of
        # their tie groups there, and how many positives precede each bound.
        self.positive_places = np.flatnonzero(positive)
        starts, ends, group = _tie_groups(values)
        group = group[self.positive_places]
        positives_before = np.zeros(len(positive) + 1, dtype=np.int64)
        np.cumsum(positive, out=positives_before[1:])
        self.group_start = starts[group]
        self.positives_before_start = positives_before[self.group_start]
        group_end = ends[group]
        # A positive whose score no other track has ties no negative: only the positives
        # in a tie group of two or more tracks need the group's end.
        self.tied = np.flatnonzero(group_end - self.group_start > 1)
        self.tied_end = group_end[self.tied]
        self.tied_positives_before_end = positives_before[self.tied_end]
        # The label mass (what `evaluable_tags` sums): the positives' draws where the
        # labels are 0 and 1, else the drawn nonzero labels' sum.
        self.labelled_rows = self.label_values = None
        if not ((row_labels == 0) | (row_labels == 1)).all():
            labelled = row_labels != 0
            self.labelled_rows = rows[labelled]
            self.label_values = row_labels[labelled].astype(np.float64)

    def weighted(self, counts: np.ndarray, below: np.ndarray) -> tuple[float, float, float]:
        """(label mass, ROC-AUC, average precision) of the resample that drew track i
        counts[i] times: `tag_scores`' rank formulas, each positive counted as often as
        it was drawn and each count of others as that many tracks. `below` is a buffer
        of len(order) + 1 int64: below[k] becomes the draws of the k lowest scores."""
        drawn = counts.take(self.order)
        below[0] = 0
        np.cumsum(drawn, dtype=np.int64, out=below[1 : len(drawn) + 1])
        total = int(below[len(drawn)])
        weight = drawn.take(self.positive_places).astype(np.int64)
        positives = int(weight.sum())
        mass = positives if self.label_values is None else self._label_mass(counts)
        if not positives:
            return mass, np.nan, np.nan
        positives_below = np.zeros(len(weight) + 1, dtype=np.int64)
        np.cumsum(weight, out=positives_below[1:])
        # Every positive, drawn or not (weight 0 adds nothing): selecting the drawn ones
        # copied five arrays and cost more than all the rest.
        lower = below.take(self.group_start)  # drawn tracks scored below the positive
        positive_lower = positives_below.take(self.positives_before_start)
        negatives_below = lower - positive_lower
        negatives_tied = below.take(self.tied_end)
        negatives_tied -= positives_below.take(self.tied_positives_before_end)
        negatives_tied -= negatives_below.take(self.tied)
        pairs = positives * (total - positives)
        roc = np.nan
        if pairs:
            tied_pairs = np.dot(weight.take(self.tied), negatives_tied)
            roc = (np.dot(weight, negatives_below) + tied_pairs / 2) / pairs
        # At least 1: an undrawn positive may have no drawn track at or above it.
        precision = (positives - positive_lower) / np.maximum(total - lower, 1)
        # Not np.dot: a float one calls BLAS, whose threads spun 10x its work here.
        return mass, roc, float((weight * precision).sum() / positives)

    def _label_mass(self, counts: np.ndarray) -> float:
        return float((counts.take(self.labelled_rows) * self.label_values).sum())


class _ResampledSystem:
    """One system's scores of the tracks, sorted once per tag, and each resample's
    macro figures from them (the same as `tag_scores(y_true[idx], y_score[idx]).macro`).
    A registered metric without a weighted form here takes that gathered path."""

    def __init__(self, y_true: np.ndarray, y_score):
        y_true, y_score = _labels_and_scores(y_true, y_score)
        self.y_true, self.y_score = y_true, y_score
        finite = np.isfinite(y_score).all(axis=1)  # the tracks tag_scores keeps
        rows, self.nonfinite_rows = np.flatnonzero(finite), np.flatnonzero(~finite)
        self.tags: list[_SortedTag] = []
        for start in range(0, y_true.shape[1], TAGS_AT_A_TIME):
            # A few columns at a time, column-major: one pass over the matrices for them.
            part = slice(start, start + TAGS_AT_A_TIME)
            y, s = np.asfortranarray(y_true[:, part]), np.asfortranarray(y_score[:, part])
            self.tags += [_SortedTag(y[:, j], s[:, j], rows) for j in range(y.shape[1])]
        self.below = np.empty(len(rows) + 1, dtype=np.int64)
        self.gathered = [m.name for m in METRICS.values() if m.per_tag not in _WEIGHTED]

    def macro(self, idx: np.ndarray, counts: np.ndarray) -> dict[str, float]:
        figures = np.array([tag.weighted(counts, self.below) for tag in self.tags]).reshape(-1, 3)
        mass = figures[:, 0]
        # The drawn tracks tag_scores keeps: those whose every score is finite.
        total = len(idx) - int(counts.take(self.nonfinite_rows).sum())
        both_classes = (mass > 0) & (mass < total)
        macro = {}
        for metric in METRICS.values():
            if metric.per_tag not in _WEIGHTED:
                continue
            usable = both_classes if metric.needs_both_classes else np.full(len(mass), total > 0)
            values = np.where(usable, figures[:, _WEIGHTED[metric.per_tag]], np.nan)
            macro[metric.name] = _macro(values)
        if self.gathered:
            gathered = tag_scores(self.y_true[idx], self.y_score[idx]).macro
            macro.update({name: gathered[name] for name in self.gathered})
        return {name: macro[name] for name in METRICS}


# Registered per-tag functions with a weighted form: their column in _SortedTag.weighted.
_WEIGHTED = {roc_auc: 1, pr_auc: 2}
