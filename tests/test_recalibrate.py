"""`python -m training recalibrate`: calibration refitted from reviewer labels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("scipy", reason="the train extra is not installed")
pytest.importorskip("torch", reason="the train extra is not installed")

from service.engine import DEFAULT_MODEL_DIR as SHIPPED
from training.metrics import expected_calibration_error, sigmoid
from training.recalibrate import (
    MIN_PER_CLASS,
    LabelledScores,
    group_folds,
    refit,
)

CARD: dict[str, Any] = {
    "calibration": {
        "damage": {"method": "temperature", "temperature": 1.0, "bias": 0.0, "note": "..."},
        "mismatch": {"method": "logistic", "slope": -4.0, "intercept": 1.0, "note": "..."},
    },
    "thresholds": {
        "damage_high": 0.8,
        "damage_low": 0.2,
        "mismatch_high": 0.8,
        "mismatch_low": 0.2,
        "listing_reuse_similarity": 0.96,
    },
}


def _scores_from(
    slope: float, intercept: float, temperature: float, bias: float, count: int, seed: int = 0
) -> LabelledScores:
    """Labels drawn from a known calibration: what a refit should find again."""
    rng = np.random.default_rng(seed)
    similarity = rng.uniform(0.2, 1.0, count)
    logits = rng.normal(0.0, 4.0, count)
    return LabelledScores(
        damage_labels=(rng.random(count) < sigmoid(logits / temperature + bias)).astype(int),
        damage_logits=logits,
        mismatch_labels=(rng.random(count) < sigmoid(slope * similarity + intercept)).astype(int),
        similarities=similarity,
        listings=np.array([f"listing-{i % 40}" for i in range(count)]),
    )


def test_refit_finds_the_calibration_the_labels_were_drawn_from() -> None:
    scores = _scores_from(slope=-12.0, intercept=7.0, temperature=2.5, bias=-0.5, count=6000)
    refitted = refit(scores, CARD)
    mismatch, damage = refitted["calibration"]["mismatch"], refitted["calibration"]["damage"]
    assert mismatch["slope"] == pytest.approx(-12.0, abs=1.0)
    assert mismatch["intercept"] == pytest.approx(7.0, abs=0.6)
    assert damage["temperature"] == pytest.approx(2.5, abs=0.25)
    assert damage["bias"] == pytest.approx(-0.5, abs=0.15)
    assert mismatch["method"] == "logistic" and damage["note"] == "..."  # the rest is kept
    report = refitted["report"]["mismatch"]
    assert report["refitted"] and report["labels"] == 6000
    # Out of fold, the refit is far better calibrated than the card it replaces.
    assert report["ece_refitted_out_of_fold"] < report["ece_with_card_calibration"] / 3
    thresholds = refitted["thresholds"]
    assert thresholds["listing_reuse_similarity"] == 0.96  # no labels for it: unchanged
    assert 0 < thresholds["mismatch_low"] <= thresholds["mismatch_high"] < 1
    # The high threshold keeps its promise on the labels: >= 95 % of what it flags is positive.
    p_mismatch = sigmoid(mismatch["slope"] * scores.similarities + mismatch["intercept"])
    flagged = p_mismatch >= thresholds["mismatch_high"]
    assert scores.mismatch_labels[flagged].mean() >= 0.95


def test_too_few_labels_leave_the_card_as_it_was() -> None:
    scores = _scores_from(-12.0, 7.0, 2.5, -0.5, count=6000)
    few = LabelledScores(
        damage_labels=np.r_[np.ones(MIN_PER_CLASS - 1, dtype=int), np.zeros(50, dtype=int)],
        damage_logits=np.linspace(-3, 3, MIN_PER_CLASS - 1 + 50),
        mismatch_labels=np.zeros(0, dtype=int),
        similarities=np.zeros(0),
        listings=np.zeros(0, dtype=str),
    )
    for labels in (few, LabelledScores(*(field[:0] for field in vars(scores).values()))):
        refitted = refit(labels, CARD)
        assert refitted["calibration"] == CARD["calibration"]
        assert refitted["thresholds"] == CARD["thresholds"]
        assert not refitted["report"]["damage"]["refitted"]
        assert not refitted["report"]["mismatch"]["refitted"]


@pytest.mark.parametrize(("groups", "folds"), [(40, 5), (3, 3), (1, 1)])
def test_group_folds_keep_each_listing_in_one_fold(groups: int, folds: int) -> None:
    names = np.array([f"listing-{i % groups}" for i in range(200)])
    fold = group_folds(names)
    assert len(np.unique(fold)) == folds
    for name in np.unique(names):
        assert len(np.unique(fold[names == name])) == 1


@pytest.mark.shared_data
def test_recalibrate_writes_a_new_folder_the_engine_serves(
    shared_data: Path, tmp_path: Path
) -> None:
    """Real photos through the shipped file: too few labels for a refit here, so the card keeps
    its calibration, says why, and the new folder loads; the ONNX file is copied unchanged."""
    from service.engine import ScoringEngine
    from training.__main__ import main
    from training.data import LabelledPhoto, load_grocery, load_packages, write_labelled_photos

    grocery = load_grocery(shared_data)
    listing = next(item for item in grocery if item.role == "listing")
    other = next(
        item for item in grocery if item.role == "listing" and item.product != listing.product
    )
    photos = [item for item in grocery if item.role == "photo" and item.product == listing.product]
    labelled = [
        LabelledPhoto(photos[0].path, None, True, (listing.path,)),
        LabelledPhoto(photos[0].path, None, False, (other.path,)),
        *(
            LabelledPhoto(package.path, package.damaged, None, ())
            for package in load_packages(shared_data)[:4]
        ),
    ]
    labels = write_labelled_photos(tmp_path / "labels.csv", labelled)
    out = tmp_path / "recalibrated"
    argv = ["recalibrate", "--model-dir", str(SHIPPED), "--labels", str(labels), "--out"]
    main([*argv, str(out), "--version", "1.3.1-site"])

    card = json.loads((out / "model_card.json").read_text())
    shipped_card = json.loads((SHIPPED / "model_card.json").read_text())
    assert (out / "model.onnx").read_bytes() == (SHIPPED / "model.onnx").read_bytes()
    assert card["version"] == "1.3.1-site"
    assert card["calibration"] == shipped_card["calibration"]
    report = card["recalibration"]
    assert report["from"] == f"evidence-lite0-{shipped_card['version']}"
    assert report["mismatch"]["labels"] == 2 and not report["mismatch"]["refitted"]
    assert report["damage"]["labels"] == 4 and "fewer than" in report["damage"]["why"]
    assert ScoringEngine.load(out).model_version == "evidence-lite0-1.3.1-site"
    # The refusal to write over the model it came from, tried on a copy: were the guard ever
    # lost, the test must not overwrite the shipped model in the checkout.
    copy = tmp_path / "copy"
    shutil.copytree(SHIPPED, copy)
    with pytest.raises(SystemExit, match="new folder"):
        main(
            [
                "recalibrate",
                "--model-dir",
                str(copy),
                "--labels",
                str(labels),
                "--out",
                str(copy),
                "--version",
                "x",
            ]
        )
    assert (copy / "model_card.json").read_bytes() == (SHIPPED / "model_card.json").read_bytes()


def test_ece_of_the_known_calibration_is_small_on_its_own_draws() -> None:
    """Guards the test data above: labels drawn from a calibration are calibrated under it."""
    scores = _scores_from(-12.0, 7.0, 2.5, -0.5, count=6000)
    probabilities = sigmoid(-12.0 * scores.similarities + 7.0)
    assert expected_calibration_error(scores.mismatch_labels, probabilities) < 0.03


def test_labels_that_cannot_be_used_are_refused_with_the_reason(tmp_path: Path) -> None:
    from training.data import LabelledPhoto
    from training.recalibrate import score_labelled_photos

    model = SHIPPED / "model.onnx"
    unlabelled = [LabelledPhoto(tmp_path / "a.jpg", None, None, ())]
    with pytest.raises(ValueError, match="no labelled photo"):
        score_labelled_photos(model, unlabelled)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    with pytest.raises(ValueError, match=r"broken\.jpg"):
        score_labelled_photos(model, [LabelledPhoto(broken, True, None, ())])
    with pytest.raises(ValueError, match=r"missing\.jpg"):
        score_labelled_photos(model, [LabelledPhoto(tmp_path / "missing.jpg", True, None, ())])
