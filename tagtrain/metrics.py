"""Tagging metrics: macro ROC-AUC and PR-AUC over tags (scikit-learn), loss on probabilities.

Tags without both positives and negatives in the evaluated set have no defined AUC; they
are skipped and counted, so a macro figure never silently averages over NaNs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TagScores:
    roc_auc: float  # macro over the evaluable tags (NaN if none)
    pr_auc: float  # macro average precision over the same tags
    per_tag_roc: tuple[float, ...]  # NaN for skipped tags
    per_tag_pr: tuple[float, ...]
    evaluated_tags: int
    skipped_tags: int


def evaluable_tags(y_true: np.ndarray) -> np.ndarray:
    """Boolean mask of tags that have at least one positive and one negative."""
    positives = y_true.sum(axis=0)
    return (positives > 0) & (positives < y_true.shape[0])


def tag_scores(y_true, y_score) -> TagScores:
    """Per-tag and macro ROC-AUC / PR-AUC for multi-hot labels [N, C] and scores [N, C]."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.shape != y_score.shape or y_true.ndim != 2:
        raise ValueError(f"labels {y_true.shape} and scores {y_score.shape} must both be [N, C]")
    mask = evaluable_tags(y_true) if len(y_true) else np.zeros(y_true.shape[1], dtype=bool)
    roc = np.full(y_true.shape[1], np.nan)
    pr = np.full(y_true.shape[1], np.nan)
    for c in np.flatnonzero(mask):
        roc[c] = roc_auc_score(y_true[:, c], y_score[:, c])
        pr[c] = average_precision_score(y_true[:, c], y_score[:, c])
    n = int(mask.sum())
    return TagScores(
        roc_auc=float(np.nanmean(roc)) if n else float("nan"),
        pr_auc=float(np.nanmean(pr)) if n else float("nan"),
        per_tag_roc=tuple(roc.tolist()),
        per_tag_pr=tuple(pr.tolist()),
        evaluated_tags=n,
        skipped_tags=int(y_true.shape[1] - n),
    )


def macro_roc_auc(y_true, y_score) -> float:
    return tag_scores(y_true, y_score).roc_auc


def macro_pr_auc(y_true, y_score) -> float:
    return tag_scores(y_true, y_score).pr_auc


def bce_on_probabilities(y_true, probs, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (e.g. averaged over chunks)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(y_true, dtype=np.float64)
    if y.size == 0:
        return float("nan")
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
