"""Evaluation metrics and calibration fits: pure numpy, no torch, so the notebook can use them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import minimize
from scipy.stats import rankdata


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    labels = np.asarray(labels, dtype=bool)
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64), method="average")
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    labels = np.asarray(labels, dtype=bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    hits = labels[order]
    if hits.sum() == 0:
        return float("nan")
    precision_at_hit = np.cumsum(hits)[hits] / (np.flatnonzero(hits) + 1)
    return float(precision_at_hit.mean())


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    hits = labels[order]
    tpr = np.concatenate([[0.0], np.cumsum(hits) / max(hits.sum(), 1)])
    fpr = np.concatenate([[0.0], np.cumsum(~hits) / max((~hits).sum(), 1)])
    return fpr, tpr


def precision_recall_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    hits = labels[order]
    true_positives = np.cumsum(hits)
    precision = true_positives / np.arange(1, len(hits) + 1)
    recall = true_positives / max(hits.sum(), 1)
    return recall, precision


def reliability(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin: mean confidence, observed frequency, count."""
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    index = np.minimum((probabilities * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins).astype(np.float64)
    safe = np.maximum(counts, 1)
    confidence = np.bincount(index, probabilities, minlength=bins) / safe
    frequency = np.bincount(index, labels, minlength=bins) / safe
    return confidence, frequency, counts


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, bins: int = 15
) -> float:
    confidence, frequency, counts = reliability(labels, probabilities, bins)
    return float(np.sum(counts * np.abs(confidence - frequency)) / max(counts.sum(), 1))


def calibrated_ece_spread(
    probabilities: np.ndarray, bins: int = 15, draws: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """(median, 95th percentile) of the ECE that a perfectly calibrated model giving exactly
    these probabilities would show: outcomes drawn from the probabilities themselves.

    Binned ECE is biased upwards on small sets: with 200 package photos a perfect model's ECE is
    about 0.08, so a measured 0.09 there says nothing against its calibration, and an ECE target
    below this floor cannot be checked on that set at all."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    rng = np.random.default_rng(seed)
    errors = [
        expected_calibration_error(
            rng.random(len(probabilities)) < probabilities, probabilities, bins
        )
        for _ in range(draws)
    ]
    return float(np.median(errors)), float(np.quantile(errors, 0.95))


def grouped_bootstrap_interval(
    statistic: Callable[[np.ndarray], float],
    groups: np.ndarray,
    draws: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of `statistic(rows)` over resamples of whole groups with replacement.

    Held-out photos of one product (or one web source) are not independent: resampling single
    photos would make 12 test products look like 1,500 independent trials. Resampling products
    says how much the figure would move on another draw of products. Draws where the statistic
    is undefined (NaN, e.g. one class only) are dropped."""
    groups = np.asarray(groups)
    names, inverse = np.unique(groups, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == number) for number in range(len(names))]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        chosen = rng.integers(0, len(names), len(names))
        value = statistic(np.concatenate([rows_of[number] for number in chosen]))
        if not np.isnan(value):
            values.append(value)
    tail = (1 - level) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))


def binary_nll(labels: np.ndarray, logits: np.ndarray) -> float:
    labels = np.asarray(labels, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    return float(np.mean(np.logaddexp(0.0, logits) - labels * logits))


def fit_temperature_and_bias(labels: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
    """(T, b) minimising the NLL of sigmoid(logit / T + b); T searched in log space, kept > 0.

    The bias matters as much as the temperature here: training sees damaged and intact photos in
    its own proportions (and synthetic damage that is easier than real), so the trained logit is
    shifted as well as over-confident; a temperature alone can only fix the second."""
    logits = np.asarray(logits, dtype=np.float64)
    result = minimize(
        lambda params: binary_nll(labels, logits / np.exp(params[0]) + params[1]),
        x0=np.zeros(2),
        method="L-BFGS-B",
        bounds=[(np.log(0.05), np.log(50.0)), (-10.0, 10.0)],
    )
    return float(np.exp(result.x[0])), float(result.x[1])


def fit_logistic(
    labels: np.ndarray, x: np.ndarray, l2: float = 1e-4, iterations: int = 50
) -> tuple[float, float]:
    """One-feature logistic regression by Newton's method: p = sigmoid(slope * x + intercept)."""
    y = np.asarray(labels, dtype=np.float64)
    design = np.stack([np.asarray(x, dtype=np.float64), np.ones(len(y))], axis=1)
    weights = np.zeros(2)
    for _ in range(iterations):
        p = sigmoid(design @ weights)
        gradient = design.T @ (p - y) / len(y) + l2 * weights
        hessian = (design.T * (p * (1 - p))) @ design / len(y) + l2 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-9:
            break
    return float(weights[0]), float(weights[1])


def high_threshold(labels: np.ndarray, probabilities: np.ndarray, precision: float = 0.95) -> float:
    """Lowest probability at or above which flagged items are at least `precision` positive.
    Falls back to the strictest grid value when no threshold reaches it."""
    labels = np.asarray(labels, dtype=bool)
    grid = np.round(np.arange(0.5, 0.991, 0.01), 2)
    for threshold in grid:
        flagged = probabilities >= threshold
        if flagged.sum() >= 5 and labels[flagged].mean() >= precision:
            return float(threshold)
    return float(grid[-1])


def low_threshold(labels: np.ndarray, probabilities: np.ndarray, miss_rate: float = 0.05) -> float:
    """Highest probability below which at most `miss_rate` of the cleared items are positive."""
    labels = np.asarray(labels, dtype=bool)
    grid = np.round(np.arange(0.5, 0.009, -0.01), 2)
    for threshold in grid:
        cleared = probabilities < threshold
        if cleared.sum() >= 5 and labels[cleared].mean() <= miss_rate:
            return float(threshold)
    return float(grid[-1])


def confusion_at(
    labels: np.ndarray, probabilities: np.ndarray, low: float, high: float
) -> dict[str, dict[str, int]]:
    """Counts per true label of the three lanes the thresholds make: below low, between, above."""
    labels = np.asarray(labels, dtype=bool)
    lanes = {
        "below_low": probabilities < low,
        "between": (probabilities >= low) & (probabilities < high),
        "at_or_above_high": probabilities >= high,
    }
    return {
        truth: {lane: int((mask & (labels == value)).sum()) for lane, mask in lanes.items()}
        for truth, value in (("positive", True), ("negative", False))
    }


def retrieval_at_k(similarities: np.ndarray, true_index: np.ndarray, k: int) -> float:
    """Fraction of rows whose true column is among the k most similar."""
    top = np.argsort(-similarities, axis=1)[:, :k]
    return float(np.mean([true in row for true, row in zip(true_index, top, strict=True)]))
