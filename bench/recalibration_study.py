"""Does a refit from reviewer labels fix the shipped model's calibration? A study on the test split.

Reviewer labels are simulated from the test split the way reviewers would supply them: each
intact test phone photo against its own listing image (the listed item) and against a listing of
the same coarse class (not the listed item), and every test package photo with its damage label.
The rows are cut in two halves, A and B. `python -m training recalibrate` refits the shipped card
on half A only, and half B is scored with the shipped card and with the refitted card.

Two ways to cut:
  --split product  halves by test product / package source: labels from some products, scored
                   on others (does a refit carry to products it has not seen?)
  --split photo    halves by photo: both halves hold every product (labels from the population
                   the model is scoring, which is what reviewer labels from live claims are)

Uses the test split, so it says nothing new about the shipped model's own test figures; it
measures the recalibration. Run on purpose (about 15 s):
  python bench/recalibration_study.py --split photo
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from service.engine import DEFAULT_MODEL_DIR
from training.config import DEFAULT_DATA_ROOT, TrainConfig
from training.data import (
    LabelledPhoto,
    hard_negative_listing,
    make_splits,
    write_labelled_photos,
)
from training.metrics import calibrated_ece_spread, expected_calibration_error
from training.recalibrate import (
    LabelledScores,
    card_calibration,
    recalibrate,
    score_labelled_photos,
)


def _half(key: str) -> str:
    return "A" if int(hashlib.sha1(key.encode()).hexdigest(), 16) % 2 == 0 else "B"


def label_halves(data_root: Path, split_by: str) -> dict[str, list[LabelledPhoto]]:
    config = TrainConfig(data_root=str(data_root))
    splits = make_splits(data_root, config.val_fraction, config.test_fraction, config.seed)
    listing = {item.product: item for item in splits.listings}
    halves: dict[str, list[LabelledPhoto]] = {"A": [], "B": []}
    for photo in splits.grocery_photos["test"]:
        negative = hard_negative_listing(photo, splits.listings)
        half = _half(photo.product if split_by == "product" else str(photo.path))
        halves[half] += [
            LabelledPhoto(photo.path, None, True, (listing[photo.product].path,)),
            LabelledPhoto(photo.path, None, False, (negative.path,)),
        ]
    for package in splits.packages["test"]:
        half = _half(package.source_id if split_by == "product" else str(package.path))
        halves[half].append(LabelledPhoto(package.path, package.damaged, None, ()))
    return halves


def figures(scores: LabelledScores, card: dict[str, Any]) -> dict[str, str]:
    calibration, thresholds = card_calibration(card), card["thresholds"]
    p_mismatch = calibration.mismatch(scores.similarities)
    p_damage = calibration.damage(scores.damage_logits)
    below = p_mismatch < thresholds["mismatch_low"]
    above = p_mismatch >= thresholds["mismatch_high"]
    wrong = scores.mismatch_labels.astype(bool)
    return {
        "mismatch ECE (perfect)": f"{expected_calibration_error(wrong, p_mismatch):.3f} "
        f"({calibrated_ece_spread(p_mismatch)[0]:.3f})",
        "flagged >= high: wrong / all": f"{(above & wrong).sum()} / {above.sum()}",
        "cleared < low: wrong / all": f"{(below & wrong).sum()} / {below.sum()}",
        "package ECE (perfect)": f"{expected_calibration_error(scores.damage_labels, p_damage):.3f}"
        f" ({calibrated_ece_spread(p_damage)[0]:.3f})",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("product", "photo"), default="photo")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    arguments = parser.parse_args()
    halves = label_halves(arguments.data_root, arguments.split)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        refitted_dir = recalibrate(
            arguments.model_dir,
            write_labelled_photos(work / "labels_A.csv", halves["A"]),
            work / "refitted",
            "study",
        )
        refitted = json.loads((refitted_dir / "model_card.json").read_text())
        scores_b = score_labelled_photos(arguments.model_dir / "model.onnx", halves["B"])
    shipped = json.loads((arguments.model_dir / "model_card.json").read_text())
    print(
        f"split by {arguments.split}: {len(halves['A'])} label rows in A, {len(halves['B'])} in B"
    )
    print("refit on A, its own report:", json.dumps(refitted["recalibration"]["mismatch"]))
    table = {
        "shipped card": figures(scores_b, shipped),
        "refitted on A": figures(scores_b, refitted),
    }
    columns = list(next(iter(table.values())))
    print("\n| half B scored with | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, values in table.items():
        print(f"| {name} | " + " | ".join(values[column] for column in columns) + " |")
    print(
        f"(mismatch pairs in B: {len(scores_b.mismatch_labels)}; package photos: "
        f"{len(scores_b.damage_labels)}; thresholds refitted: {json.dumps(refitted['thresholds'])})"
    )


if __name__ == "__main__":
    main()
