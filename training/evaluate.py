"""Held-out evaluation: pure functions from model outputs and labels to the reported figures.

No torch here: the same functions score the torch model during training and the exported ONNX
model in notebooks/evaluation.ipynb.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from training.data import GroceryImage, Splits, hard_negative_listing, load_tiles, product_index
from training.metrics import (
    auroc,
    average_precision,
    calibrated_ece_spread,
    confusion_at,
    expected_calibration_error,
    grouped_bootstrap_interval,
    retrieval_at_k,
    sigmoid,
)
from training.samples import KIND_CATALOG, KIND_PACKAGE, KIND_PHOTO, KIND_TILE, Rendered, Sample

Outputs = dict[str, np.ndarray]
Predictor = Callable[[np.ndarray], Outputs]  # (N, 3, 224, 224) -> damage_logit, damage_map, ...


def damage_probability(logits: np.ndarray, temperature: float, bias: float) -> np.ndarray:
    """The card's damage calibration: sigmoid(logit / temperature + bias)."""
    return sigmoid(np.asarray(logits) / temperature + bias)


def mismatch_probability(similarity: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """The card's mismatch calibration: sigmoid(slope * best similarity + intercept)."""
    return sigmoid(slope * np.asarray(similarity) + intercept)


@dataclass(frozen=True)
class Calibration:
    temperature: float
    mismatch_slope: float
    mismatch_intercept: float
    damage_bias: float = 0.0

    def damage(self, logits: np.ndarray) -> np.ndarray:
        return damage_probability(logits, self.temperature, self.damage_bias)

    def mismatch(self, similarity: np.ndarray) -> np.ndarray:
        return mismatch_probability(similarity, self.mismatch_slope, self.mismatch_intercept)


def listing_pairs(samples: Sequence[Sample], splits: Splits, outputs: Outputs) -> dict[str, Any]:
    """Cosine similarity of each intact held-out phone photo to its own listing image and to a
    hard-negative listing image (same coarse class), and to every listing image."""
    index = product_index(splits)
    listing_rows = {s.product: row for row, s in enumerate(samples) if s.kind == KIND_CATALOG}
    listing_order = sorted(listing_rows)
    column = {product: position for position, product in enumerate(listing_order)}
    listing_matrix = outputs["embedding"][[listing_rows[p] for p in listing_order]]
    photo_rows = [r for r, s in enumerate(samples) if s.kind == KIND_PHOTO and not s.synthesise]
    positives, negatives, truth = [], [], []
    for row in photo_rows:
        listing = splits.listings[samples[row].product]
        photo = GroceryImage(
            samples[row].path, listing.product, listing.coarse_class, listing.category, "photo"
        )
        negative = index[hard_negative_listing(photo, splits.listings).product]
        embedding = outputs["embedding"][row]
        positives.append(float(embedding @ listing_matrix[column[samples[row].product]]))
        negatives.append(float(embedding @ listing_matrix[column[negative]]))
        truth.append(column[samples[row].product])
    return {
        "positive": np.array(positives),
        "negative": np.array(negatives),
        "all_similarities": outputs["embedding"][photo_rows] @ listing_matrix.T,
        "true_listing": np.array(truth, dtype=int),
        "photo_rows": np.array(photo_rows, dtype=int),
    }


def mismatch_arrays(pairs: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, best-match similarity): 0 for a photo against its own listing, 1 against another."""
    labels = np.r_[np.zeros(len(pairs["positive"])), np.ones(len(pairs["negative"]))]
    return labels, np.r_[pairs["positive"], pairs["negative"]]


def sample_groups(samples: Sequence[Sample], splits: Splits) -> np.ndarray:
    """What each held-out sample belongs to, for resampling: its product (grocery photos and
    listings) or its web source (package photos)."""
    source_of = {p.path: p.source_id for photos in splits.packages.values() for p in photos}
    return np.array(
        [
            f"source:{source_of[s.path]}" if s.kind == KIND_PACKAGE else f"product:{s.product}"
            for s in samples
        ]
    )


def spread_figures(
    labels: np.ndarray, scores: np.ndarray, probabilities: np.ndarray, groups: np.ndarray
) -> dict[str, Any]:
    """How far the AUROC and the ECE could move by chance: a 95% interval of the AUROC over
    resampled groups, and the ECE a perfectly calibrated model would show on this set."""
    calibrated_median, calibrated_p95 = calibrated_ece_spread(probabilities)
    low, high = grouped_bootstrap_interval(lambda rows: auroc(labels[rows], scores[rows]), groups)
    return {
        "auroc_interval_95": [low, high],
        "resampled_groups": len(np.unique(groups)),
        "ece_if_perfectly_calibrated": {"median": calibrated_median, "p95": calibrated_p95},
    }


def damage_figures(
    labels: np.ndarray, logits: np.ndarray, calibration: Calibration, groups: np.ndarray
) -> dict[str, Any]:
    probabilities = calibration.damage(logits)
    return {
        "auroc": auroc(labels, logits),
        "average_precision": average_precision(labels, logits),
        "ece": expected_calibration_error(labels, probabilities),
        "count": len(labels),
        **spread_figures(labels, logits, probabilities, groups),
    }


def quick_figures(
    samples: Sequence[Sample], labels: np.ndarray, outputs: Outputs, splits: Splits
) -> dict[str, float]:
    """Uncalibrated held-out figures used to follow training."""
    kinds = np.array([s.kind for s in samples])
    photos, packages = kinds == KIND_PHOTO, kinds == KIND_PACKAGE
    mismatch_labels, similarity = mismatch_arrays(listing_pairs(samples, splits, outputs))
    return {
        "damage_auroc_synthetic": auroc(labels[photos], outputs["damage_logit"][photos]),
        "damage_auroc_packages": auroc(labels[packages], outputs["damage_logit"][packages]),
        "mismatch_auroc": auroc(mismatch_labels, -similarity),
    }


def heldout_figures(
    samples: Sequence[Sample],
    labels: np.ndarray,
    kinds_drawn: Sequence[tuple[str, ...]],
    outputs: Outputs,
    splits: Splits,
    calibration: Calibration,
    thresholds: dict[str, float],
) -> dict[str, Any]:
    """Every figure the model card reports for one model on one held-out split."""
    kinds = np.array([s.kind for s in samples])
    photos, packages = kinds == KIND_PHOTO, kinds == KIND_PACKAGE
    groups = sample_groups(samples, splits)
    logits = outputs["damage_logit"]
    synthetic = damage_figures(labels[photos], logits[photos], calibration, groups[photos])
    intact_photo_logits = logits[photos & (labels == 0)]
    per_kind = {}
    for kind in sorted({k for drawn in kinds_drawn for k in drawn}):
        rows = np.array([kind in drawn for drawn in kinds_drawn]) & photos
        per_kind[kind] = auroc(
            np.r_[np.zeros(len(intact_photo_logits)), np.ones(rows.sum())],
            np.r_[intact_photo_logits, logits[rows]],
        )
    synthetic["auroc_by_kind"] = per_kind
    real = damage_figures(labels[packages], logits[packages], calibration, groups[packages])
    pairs = listing_pairs(samples, splits, outputs)
    mismatch_labels, similarity = mismatch_arrays(pairs)
    p_mismatch = calibration.mismatch(similarity)
    pair_groups = np.tile(groups[pairs["photo_rows"]], 2)
    p_damage = calibration.damage(logits)
    return {
        "damage_synthetic_unseen_products": synthetic,
        "damage_real_packages": real,
        "mismatch_same_coarse_class": {
            "auroc": auroc(mismatch_labels, p_mismatch),
            "average_precision": average_precision(mismatch_labels, p_mismatch),
            "ece": expected_calibration_error(mismatch_labels, p_mismatch),
            "pairs": len(mismatch_labels),
            **spread_figures(mismatch_labels, p_mismatch, p_mismatch, pair_groups),
        },
        "retrieval_all_listings": {
            "top1": retrieval_at_k(pairs["all_similarities"], pairs["true_listing"], 1),
            "top5": retrieval_at_k(pairs["all_similarities"], pairs["true_listing"], 5),
            "listings": int(pairs["all_similarities"].shape[1]),
            "photos": len(pairs["true_listing"]),
        },
        "confusion_at_thresholds": {
            "damage_synthetic": confusion_at(
                labels[photos],
                p_damage[photos],
                thresholds["damage_low"],
                thresholds["damage_high"],
            ),
            "damage_real_packages": confusion_at(
                labels[packages],
                p_damage[packages],
                thresholds["damage_low"],
                thresholds["damage_high"],
            ),
            "mismatch": confusion_at(
                mismatch_labels, p_mismatch, thresholds["mismatch_low"], thresholds["mismatch_high"]
            ),
        },
    }


def tile_samples(data_root: Any, intact_limit: int, limit: int = 0) -> list[Sample]:
    """Every defective tile (with its mask) and an even subset of intact ones."""
    tiles = load_tiles(data_root)
    damaged = [t for t in tiles if t.damaged]
    intact = [t for t in tiles if not t.damaged]
    intact = intact[:: max(1, len(intact) // max(1, intact_limit))][:intact_limit]
    if limit > 0:
        damaged = damaged[:: max(1, len(damaged) // limit)][:limit]
        intact = intact[:limit]
    return [
        Sample(t.path, KIND_TILE, -1, False, None, False, 0, t.mask_path if t.damaged else None)
        for t in damaged + intact
    ]


def upsampled_heatmap(damage_map: np.ndarray, size: int = 224) -> np.ndarray:
    """7x7 map logits -> size x size probabilities (bilinear), aligned with the letterboxed
    input."""
    probabilities = sigmoid(damage_map)
    return ndimage.zoom(probabilities, size / probabilities.shape[0], order=1, mode="nearest")


def localisation_figures(rendered: Sequence[Rendered], outputs: Outputs) -> dict[str, float]:
    """Pixel AUROC of the heatmap against the true masks (inside the photo, not its padding),
    over defective and intact tiles together, plus the image-level AUROC on tiles."""
    truths, scores = [], []
    for item, damage_map in zip(rendered, outputs["damage_map"], strict=True):
        heatmap = upsampled_heatmap(damage_map)
        mask = item.pixel_mask if item.pixel_mask is not None else np.zeros_like(heatmap)
        # Every 4th pixel each way: the same AUROC to three decimals at 1/16 of the cost.
        keep = item.content[::4, ::4]
        truths.append(mask[::4, ::4][keep] > 0.5)
        scores.append(heatmap[::4, ::4][keep])
    labels = np.array([item.damage for item in rendered])
    return {
        "pixel_auroc": auroc(np.concatenate(truths), np.concatenate(scores)),
        "image_auroc": auroc(labels, outputs["damage_logit"]),
        "defective_tiles": int(labels.sum()),
        "intact_tiles": int((labels == 0).sum()),
    }
