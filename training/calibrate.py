"""Calibration on the validation split: temperature and bias for damage, a logistic map from
best-match cosine similarity to mismatch probability, and the lane thresholds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from training.data import Splits
from training.evaluate import Calibration, Outputs, listing_pairs, mismatch_arrays
from training.metrics import fit_logistic, fit_temperature_and_bias, high_threshold, low_threshold
from training.samples import KIND_PACKAGE, KIND_PHOTO, Sample

# Precision wanted above the high threshold, and the share of positives tolerated below the low
# one: the lanes the engine builds on them (fast track / needs review / cleared) rely on these.
HIGH_PRECISION = 0.95
LOW_MISS_RATE = 0.05


def listing_reuse_threshold(genuine: np.ndarray, copies: np.ndarray) -> float:
    """Similarity above which a photo is taken to be a copy of a listing image.

    `genuine` are phone photos against their own (true) listing image, `copies` re-encoded,
    resized and cropped copies of listing images against the original. The threshold sits
    midway between the genuine photos' 99.5th percentile and the weakest copy when they are
    apart; when they overlap it stays at that percentile: the flag puts a buyer's claim in the
    suspicious lane, so at most 1 in 200 genuine photos may trip it, even if that lets the
    most altered copies through (the service's exact and perceptual duplicate checks remain)."""
    genuine_high = float(np.quantile(genuine, 0.995))
    weakest_copy = float(np.min(copies))
    threshold = (genuine_high + weakest_copy) / 2 if weakest_copy > genuine_high else genuine_high
    return round(min(threshold, 0.995), 4)


def fit_calibration(
    samples: Sequence[Sample],
    labels: np.ndarray,
    outputs: Outputs,
    splits: Splits,
    copy_similarities: np.ndarray,
) -> tuple[Calibration, dict[str, float], dict[str, Any]]:
    kinds = np.array([s.kind for s in samples])
    damage_rows = (kinds == KIND_PHOTO) | (kinds == KIND_PACKAGE)
    damage_labels, damage_logits = labels[damage_rows], outputs["damage_logit"][damage_rows]
    temperature, damage_bias = fit_temperature_and_bias(damage_labels, damage_logits)
    pairs = listing_pairs(samples, splits, outputs)
    mismatch_labels, similarity = mismatch_arrays(pairs)
    slope, intercept = fit_logistic(mismatch_labels, similarity)
    calibration = Calibration(temperature, slope, intercept, damage_bias)
    p_damage = calibration.damage(damage_logits)
    p_mismatch = calibration.mismatch(similarity)
    thresholds = {
        "damage_high": high_threshold(damage_labels, p_damage, HIGH_PRECISION),
        "damage_low": low_threshold(damage_labels, p_damage, LOW_MISS_RATE),
        "mismatch_high": high_threshold(mismatch_labels, p_mismatch, HIGH_PRECISION),
        "mismatch_low": low_threshold(mismatch_labels, p_mismatch, LOW_MISS_RATE),
        "listing_reuse_similarity": listing_reuse_threshold(pairs["positive"], copy_similarities),
    }
    details = {
        "fitted_on": "validation split: grocery products and package source_ids unseen in training",
        "damage_examples": int(damage_rows.sum()),
        "mismatch_pairs": len(mismatch_labels),
        "listing_copies": len(copy_similarities),
        "listing_copies_caught": float(
            np.mean(copy_similarities >= thresholds["listing_reuse_similarity"])
        ),
        "threshold_rules": {
            "high": f"lowest probability whose flagged set is >= {HIGH_PRECISION:.0%} positive",
            "low": f"highest probability below which <= {LOW_MISS_RATE:.0%} are positive",
            "listing_reuse_similarity": "midway between genuine photo-to-listing similarities "
            "(99.5th percentile) and the weakest re-encoded/resized/cropped copy of a listing "
            "image, or at that percentile where they overlap",
        },
    }
    return calibration, thresholds, details
