"""bootstrap_macro sorts each tag once and weighs it by each resample's draw counts: its
intervals must be those of gathering every resample and scoring it with tag_scores (the
algorithm it replaced, kept here as the reference), ties, rare tags, non-finite scores
and paired scores included, and its weighted figures scikit-learn's with sample_weight."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tagtrain.inference import metrics
from tagtrain.inference.metrics import METRICS, Metric, bootstrap_macro, tag_scores

TOLERANCE = 1e-12


def reference_bootstrap(y_true, y_score, resamples=1000, seed=0, y_other=None) -> dict:
    """The gathered algorithm: every resample's rows gathered and scored by tag_scores."""
    y_true, y_score = np.asarray(y_true), np.asarray(y_score)
    rng = np.random.default_rng(seed)
    n = len(y_true)
    draws = {name: [] for name in METRICS}
    diffs = {name: [] for name in METRICS}
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


def _percentile(values, q):
    finite = [v for v in values if np.isfinite(v)]
    return float(np.percentile(finite, q)) if finite else None


def assert_same_intervals(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].keys() == want[name].keys(), name
        for key, value in want[name].items():
            if value is None or isinstance(value, bool):
                assert got[name][key] == value, (name, key)
            else:
                assert got[name][key] == pytest.approx(value, abs=TOLERANCE, rel=0), (name, key)


def tied_data(seed: int, n: int = 240, tags: int = 11):
    """Labels with a common, a rare (absent from many resamples), an all-positive and an
    all-negative tag; float32 scores of a few levels each (ties), negative and -0.0 ones
    included; other float64 scores, also tied. 11 tags: more than one block of 8."""
    rng = np.random.default_rng(seed)
    rates = np.array([0.5, 0.2, 0.01, 0.004, 0.3, 1.0, 0.0, 0.1, 0.6, 0.05, 0.4])[:tags]
    y = (rng.random((n, tags)) < rates).astype(np.float32)
    s = np.round(rng.standard_normal((n, tags)) + y, 1).astype(np.float32)
    s[rng.random((n, tags)) < 0.1] = -0.0
    other = np.round(rng.random((n, tags)) * 4) / 4 + 0.2 * y
    return y, s, other


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_intervals_equal_the_gathered_algorithm_with_ties_rare_tags_and_paired_scores(seed):
    y, s, other = tied_data(seed)
    got = bootstrap_macro(y, s, resamples=40, seed=seed + 10, y_other=other)
    assert_same_intervals(got, reference_bootstrap(y, s, 40, seed + 10, other))
    # The float64 system alone, and the float32 one alone, each sorted its own way.
    assert_same_intervals(
        bootstrap_macro(y, other, 25, seed), reference_bootstrap(y, other, 25, seed)
    )


@pytest.mark.parametrize("seed", range(12))
def test_every_single_resample_equals_tag_scores_of_the_gathered_rows(seed):
    # One resample: low == high == that resample's macro figure, compared one by one.
    y, s, other = tied_data(seed, n=60, tags=9)  # 60 tracks: rare tags often undrawn
    got = bootstrap_macro(y, s, resamples=1, seed=seed, y_other=other)
    idx = np.random.default_rng(seed).integers(0, len(y), len(y))
    here, there = tag_scores(y[idx], s[idx]).macro, tag_scores(y[idx], other[idx]).macro
    for name in METRICS:
        assert got[name]["low"] == pytest.approx(here[name], abs=TOLERANCE, rel=0)
        assert got[name]["high"] == got[name]["low"]
        assert got[name]["diff_low"] == pytest.approx(here[name] - there[name], abs=TOLERANCE)


def test_a_tag_absent_from_a_resample_is_left_out_of_its_macro_not_averaged_as_nan():
    y, s, _ = tied_data(0, n=50, tags=4)
    y[:, 3] = 0
    y[7, 3] = 1  # one positive track: the tag is evaluable only in resamples that draw it
    for seed in range(6):
        idx = np.random.default_rng(seed).integers(0, len(y), len(y))
        want = tag_scores(y[idx], s[idx])
        got = bootstrap_macro(y, s, resamples=1, seed=seed)
        assert math.isfinite(got["roc_auc"]["low"])
        assert got["roc_auc"]["low"] == pytest.approx(want.roc_auc, abs=TOLERANCE, rel=0)
        assert got["pr_auc"]["low"] == pytest.approx(want.pr_auc, abs=TOLERANCE, rel=0)


def test_tracks_with_a_non_finite_score_are_left_out_as_tag_scores_does():
    y, s, other = tied_data(4, n=120, tags=5)
    s[3, 2], s[50, 0], s[51, 4] = np.nan, np.inf, -np.inf
    other[9, 1] = np.nan
    got = bootstrap_macro(y, s, resamples=30, seed=2, y_other=other)
    assert_same_intervals(got, reference_bootstrap(y, s, 30, 2, other))


def test_weighted_figures_equal_scikit_learns_with_sample_weight():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    y, s, _ = tied_data(7, n=500, tags=8)
    seed = 3
    idx = np.random.default_rng(seed).integers(0, len(y), len(y))
    weight = np.bincount(idx, minlength=len(y))
    roc, ap = [], []
    for tag in range(y.shape[1]):
        drawn = weight > 0
        labels, scores, w = y[drawn, tag], s[drawn, tag], weight[drawn]
        positives = w[labels > 0.5].sum()
        if 0 < positives < w.sum():
            roc.append(sklearn_metrics.roc_auc_score(labels, scores, sample_weight=w))
            ap.append(sklearn_metrics.average_precision_score(labels, scores, sample_weight=w))
    got = bootstrap_macro(y, s, resamples=1, seed=seed)
    assert len(roc) >= 5  # not the all-positive, all-negative (nor an undrawn rare) tag
    assert got["roc_auc"]["low"] == pytest.approx(np.mean(roc), abs=TOLERANCE, rel=0)
    assert got["pr_auc"]["low"] == pytest.approx(np.mean(ap), abs=TOLERANCE, rel=0)


def test_a_metric_without_a_weighted_form_takes_the_gathered_path():
    def top_score(y, s):  # a throwaway metric: bootstrap_macro knows no weighted form of it
        return s.max(axis=0).astype(np.float64)

    metrics.register_metric(Metric("top_score", "Top score", top_score, needs_both_classes=False))
    try:
        y, s, other = tied_data(5, n=80, tags=6)
        got = bootstrap_macro(y, s, resamples=20, seed=1, y_other=other)
        assert "top_score" in got
        assert_same_intervals(got, reference_bootstrap(y, s, 20, 1, other))
    finally:
        metrics.unregister_metric("top_score")


def test_no_tracks_or_no_resamples_give_no_interval():
    y, s, _ = tied_data(0, n=10, tags=3)
    for got in (bootstrap_macro(y[:0], s[:0]), bootstrap_macro(y, s, resamples=0)):
        assert got == {name: {"low": None, "high": None} for name in METRICS}


def test_mismatched_shapes_are_refused():
    y, s, _ = tied_data(0, n=10, tags=3)
    with pytest.raises(ValueError, match="must both be"):
        bootstrap_macro(y, s[:, :2], resamples=1)


def test_a_track_drawn_more_than_255_times_is_counted_in_full():
    # Draw counts are narrowed to uint8 only where they fit.
    counts = metrics._draw_counts(np.zeros(300, dtype=np.int64), 300)
    assert counts[0] == 300 and counts[1:].sum() == 0
    small = metrics._draw_counts(np.arange(300) % 7, 300)
    assert small.dtype == np.uint8 and small.sum() == 300


def test_soft_labels_are_weighed_as_tag_scores_sums_and_thresholds_them():
    # evaluable_tags sums the labels; the rank formulas count labels over 0.5 positive.
    y, s, other = tied_data(6, n=90, tags=5)
    rng = np.random.default_rng(0)
    y = y * rng.choice([0.3, 0.7, 1.0], size=y.shape).astype(np.float32)
    y[:, 4] = np.where(rng.random(len(y)) < 0.2, 0.4, 0.0)  # mass, but no positive
    y[:, 3] = rng.choice([0.7, 1.0], size=len(y))  # all positive, yet mass < tracks
    got = bootstrap_macro(y, s, resamples=30, seed=4, y_other=other)
    assert_same_intervals(got, reference_bootstrap(y, s, 30, 4, other))
