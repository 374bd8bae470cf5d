"""Refit a released model's calibration and thresholds from reviewer labels, without retraining.

The shipped calibration was fitted on held-out grocery products and package photos. On another
photo population it can be off (1.3.0's mismatch ECE on the unseen test products is 0.10), and
the fix is to refit it where the model is used: from the label corrections reviewers export
(`triage labels export`). The ONNX file is copied unchanged; the new card carries the refitted
calibration and lane thresholds, and what the refit measured, out of sample.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from service.preprocess import batch_inputs
from training.calibrate import HIGH_PRECISION, LOW_MISS_RATE
from training.card import read_card, write_card
from training.data import LabelledPhoto, load_labelled_photos, load_photo
from training.evaluate import Calibration, damage_probability, mismatch_probability
from training.export import onnx_session, run_onnx
from training.metrics import (
    calibrated_ece_spread,
    expected_calibration_error,
    fit_logistic,
    fit_temperature_and_bias,
    high_threshold,
    low_threshold,
)
from training.pipeline import joined_outputs

# Fewer labels than this in either class leave that score's calibration as it was: a fit on a
# handful of examples would move the lanes on noise.
MIN_PER_CLASS = 20
FOLDS = 5
BATCH = 16


@dataclass(frozen=True)
class LabelledScores:
    """The shipped file's raw outputs on reviewer-labelled photos."""

    damage_labels: np.ndarray  # 1 = damaged
    damage_logits: np.ndarray
    mismatch_labels: np.ndarray  # 1 = not the listed item
    similarities: np.ndarray  # best cosine similarity to the listing's images
    listings: np.ndarray  # the listing each mismatch label was given against (its fold group)


def _has_match_label(photo: LabelledPhoto) -> bool:
    return photo.matches_listing is not None and bool(photo.listing_images)


def card_calibration(card: dict[str, Any]) -> Calibration:
    """A card's calibration as the training code applies it."""
    damage, mismatch = card["calibration"]["damage"], card["calibration"]["mismatch"]
    return Calibration(
        temperature=damage["temperature"],
        mismatch_slope=mismatch["slope"],
        mismatch_intercept=mismatch["intercept"],
        damage_bias=damage["bias"],
    )


def score_labelled_photos(
    model_path: Path, photos: Sequence[LabelledPhoto], threads: int = 2
) -> LabelledScores:
    """Run the file on each photo, and on each listing image once, through the service's
    decoding and preprocessing; the mismatch score uses the best match over a listing's images,
    as the service does."""
    photos = [photo for photo in photos if photo.damage is not None or _has_match_label(photo)]
    if not photos:
        raise ValueError("no labelled photo: each row needs a damage or a matches_listing label")
    session = onnx_session(model_path, threads)

    def decoded(path: Path) -> Image.Image:
        try:
            return load_photo(path)
        except (OSError, ValueError) as error:  # a missing or unreadable file: say which one
            raise ValueError(f"{path}: {error}") from error

    def outputs(paths: Sequence[Path]) -> dict[str, np.ndarray]:
        return joined_outputs(
            [
                run_onnx(session, batch_inputs([decoded(p) for p in paths[i : i + BATCH]]))
                for i in range(0, len(paths), BATCH)
            ]
        )

    photo_outputs = outputs([photo.path for photo in photos])
    listing_paths = sorted({path for photo in photos for path in photo.listing_images})
    listing_embedding = (
        dict(zip(listing_paths, outputs(listing_paths)["embedding"], strict=True))
        if listing_paths
        else {}
    )
    damage_labels, damage_logits, mismatch_labels, similarities, listings = [], [], [], [], []
    for row, photo in enumerate(photos):
        if photo.damage is not None:
            damage_labels.append(int(photo.damage))
            damage_logits.append(float(photo_outputs["damage_logit"][row]))
        if _has_match_label(photo):
            listing = np.stack([listing_embedding[path] for path in photo.listing_images])
            mismatch_labels.append(int(not photo.matches_listing))
            similarities.append(float((listing @ photo_outputs["embedding"][row]).max()))
            listings.append(";".join(str(path) for path in photo.listing_images))
    return LabelledScores(
        np.array(damage_labels, dtype=int),
        np.array(damage_logits),
        np.array(mismatch_labels, dtype=int),
        np.array(similarities),
        np.array(listings, dtype=str),
    )


def group_folds(groups: np.ndarray, folds: int = FOLDS, seed: int = 0) -> np.ndarray:
    """A fold number per row; all rows of one group share a fold, so the out-of-fold figure
    says how a fit carries to listings it has not seen, not to more photos of the same ones."""
    names, inverse = np.unique(groups, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(names))
    return (order % min(folds, len(names)))[inverse]


def _enough(labels: np.ndarray) -> bool:
    return min(int((labels == 1).sum()), int((labels == 0).sum())) >= MIN_PER_CLASS


@dataclass(frozen=True)
class _Score:
    """One calibrated score: its two parameters' names in the card, how they are fitted, and
    the probability they give (the formula `Calibration` applies)."""

    name: str
    parameters: tuple[str, str]
    fit: Callable[[np.ndarray, np.ndarray], tuple[float, float]]
    probability: Callable[[np.ndarray, float, float], np.ndarray]


_DAMAGE = _Score("damage", ("temperature", "bias"), fit_temperature_and_bias, damage_probability)
_MISMATCH = _Score("mismatch", ("slope", "intercept"), fit_logistic, mismatch_probability)


def _refit_score(
    score: _Score,
    labels: np.ndarray,
    x: np.ndarray,
    groups: np.ndarray,
    calibration: dict[str, Any],
    thresholds: dict[str, float],
) -> dict[str, Any]:
    """Refit one score in place in `calibration` and `thresholds` if there are enough labels;
    the report on it either way."""
    entry = calibration[score.name]
    before = score.probability(x, entry[score.parameters[0]], entry[score.parameters[1]])
    if not _enough(labels):
        return {
            "refitted": False,
            "why": f"fewer than {MIN_PER_CLASS} labels in a class",
            **(_ece_report(labels, before, None) if len(labels) else {"labels": 0}),
        }
    folds = group_folds(groups)
    out_of_fold: np.ndarray | None = None
    if folds.max() > 0 and all(len(np.unique(labels[folds != f])) == 2 for f in np.unique(folds)):
        out_of_fold = np.empty(len(labels))
        for fold in np.unique(folds):
            held_out = folds == fold
            fitted_elsewhere = score.fit(labels[~held_out], x[~held_out])
            out_of_fold[held_out] = score.probability(x[held_out], *fitted_elsewhere)
    parameters = score.fit(labels, x)
    entry.update(
        {key: round(value, 4) for key, value in zip(score.parameters, parameters, strict=True)}
    )
    fitted = score.probability(x, *parameters)
    thresholds[f"{score.name}_high"] = high_threshold(labels, fitted, HIGH_PRECISION)
    thresholds[f"{score.name}_low"] = low_threshold(labels, fitted, LOW_MISS_RATE)
    return {"refitted": True, **_ece_report(labels, before, out_of_fold)}


def _ece_report(labels: np.ndarray, before: np.ndarray, after: np.ndarray | None) -> dict[str, Any]:
    median, p95 = calibrated_ece_spread(before if after is None else after)
    report: dict[str, Any] = {
        "labels": len(labels),
        "positives": int(labels.sum()),
        "ece_with_card_calibration": round(expected_calibration_error(labels, before), 4),
        "ece_if_perfectly_calibrated": {"median": round(median, 4), "p95": round(p95, 4)},
    }
    if after is not None:
        report["ece_refitted_out_of_fold"] = round(expected_calibration_error(labels, after), 4)
    return report


def refit(scores: LabelledScores, card: dict[str, Any]) -> dict[str, Any]:
    """The card's calibration and thresholds refitted where there are enough labels, and what
    the refit measured: ECE with the card's calibration, and with the refit in `FOLDS`-fold
    cross-validation (mismatch folds by listing), so that figure is not the fit's own training
    error."""
    calibration = {name: dict(entry) for name, entry in card["calibration"].items()}
    thresholds = dict(card["thresholds"])
    damage_groups = np.arange(len(scores.damage_labels))  # one photo, one damage label
    report = {
        "damage": _refit_score(
            _DAMAGE,
            scores.damage_labels,
            scores.damage_logits,
            damage_groups,
            calibration,
            thresholds,
        ),
        "mismatch": _refit_score(
            _MISMATCH,
            scores.mismatch_labels,
            scores.similarities,
            scores.listings,
            calibration,
            thresholds,
        ),
    }
    return {"calibration": calibration, "thresholds": thresholds, "report": report}


def recalibrate(model_dir: Path, labels: Path, out_dir: Path, version: str) -> Path:
    """Write `out_dir` with the same ONNX file and a card refitted from `labels`."""
    if out_dir.resolve() == model_dir.resolve():
        raise ValueError(
            "write the recalibrated model to a new folder; the card it came from stays"
        )
    card = read_card(model_dir)
    scores = score_labelled_photos(model_dir / card["file"], load_labelled_photos(labels))
    refitted = refit(scores, card)
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_dir / card["file"], out_dir / card["file"])
    write_card(
        {
            **card,
            "version": version,
            "calibration": refitted["calibration"],
            "thresholds": refitted["thresholds"],
            "recalibration": {
                "from": f"{card['name']}-{card['version']}",
                "labels": str(labels),
                "at": time.strftime("%Y-%m-%d", time.gmtime()),
                "rules": {
                    "high": f"lowest probability whose flagged set is >= {HIGH_PRECISION:.0%} "
                    "positive",
                    "low": f"highest probability below which <= {LOW_MISS_RATE:.0%} are positive",
                    "min_labels_per_class": MIN_PER_CLASS,
                },
                "note": "`metrics` were measured with the calibration of the model this came "
                "from; the figures on the reviewer labels are here. listing_reuse_similarity is "
                "unchanged.",
                **refitted["report"],
            },
        },
        out_dir,
    )
    return out_dir
