"""Mismatch normalised by a gallery of other listings: does it rank wrong listings better?

    python bench/gallery_mismatch_study.py [--data ../shared/data] [--model-dir models/...]

The card's mismatch is a function of one cosine, cos(photo, listing image), so one threshold has to
serve every photo, though some products photograph closer to their catalog image than others.
This study subtracts a per-photo term taken from the other listings a platform holds:
s = cos(p, L) - a * mean of the k highest cos(p, L') over listing images L' != L. Per photo it keeps
the order of the listings (retrieval is unchanged); it only moves photos against each other.

The held-out phone photos of the validation and test products are scored by the shipped ONNX file,
rendered as the card's evaluation renders them (`training.evaluate.listing_pairs`: each photo
against its own listing image and a listing image of the same coarse class); the gallery is every
listing image in the data (61). Two galleries for every figure:

- open: every other listing, so for a wrong-listing pair the photo's own product's listing is in
  it (the item received is sold on the platform too);
- conservative: the photo's own product's listing left out as well (the item received is not).

Run on purpose, not in CI (about half a minute on 2 cores). Session 11's decision rule and figures:
docs/model.md, "Session 11".
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from service.engine import DEFAULT_MODEL_DIR
from training.config import TrainConfig
from training.data import make_splits
from training.evaluate import listing_pairs
from training.metrics import auroc
from training.pipeline import onnx_predictor, predict_samples
from training.samples import KIND_CATALOG, KIND_PHOTO, heldout_samples

VARIANTS = ((0.5, 1), (0.5, 3), (1.0, 1), (1.0, 3))


def gallery_term(similarities: np.ndarray, left_out: list[np.ndarray], k: int) -> np.ndarray:
    """Per photo (row), the mean of its k highest similarities, leaving out the listed columns."""
    masked = similarities.copy()
    rows = np.arange(len(masked))
    for columns in left_out:
        masked[rows, columns] = -np.inf
    return -np.sort(-masked, axis=1)[:, :k].mean(axis=1)


def figures(pairs: dict[str, np.ndarray]) -> dict[str, float]:
    """Mismatch AUROC of the raw cosine and of each (a, k) variant, both galleries."""
    similarities, own = pairs["all_similarities"], pairs["true_listing"]
    positive, negative = pairs["positive"], pairs["negative"]
    rows = np.arange(len(own))
    # The hard-negative listing's column: the one holding its similarity.
    wrong = np.abs(similarities - negative[:, None]).argmin(axis=1)
    labels = np.r_[np.zeros(len(own)), np.ones(len(own))]
    result = {"raw cosine": auroc(labels, -np.r_[positive, negative])}
    for a, k in VARIANTS:
        for gallery, wrong_left_out in (("open", [wrong]), ("conservative", [wrong, own])):
            own_pair = positive - a * gallery_term(similarities, [own], k)
            wrong_pair = negative - a * gallery_term(similarities, wrong_left_out, k)
            result[f"{gallery}, a={a}, k={k}"] = auroc(labels, -np.r_[own_pair, wrong_pair])
    result["photos whose own listing beats the wrong one"] = float((positive > negative).mean())
    assert np.allclose(similarities[rows, wrong], negative, atol=1e-5)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    args = parser.parse_args()
    config = TrainConfig(data_root=str(args.data))
    splits = make_splits(args.data, config.val_fraction, config.test_fraction, config.seed)
    predict = onnx_predictor(args.model_dir / "model.onnx", config.threads)
    table = {}
    for split in ("val", "test"):
        samples = [
            sample
            for sample in heldout_samples(config, splits, split)
            if (sample.kind == KIND_PHOTO and not sample.synthesise) or sample.kind == KIND_CATALOG
        ]
        table[split] = figures(listing_pairs(samples, splits, predict_samples(predict, samples)))
    print(f"mismatch AUROC, {args.model_dir.name}")
    print(f"{'score':46s} {'validation':>10s} {'test':>6s}")
    for name in table["val"]:
        print(f"{name:46s} {table['val'][name]:10.3f} {table['test'][name]:6.3f}")


if __name__ == "__main__":
    main()
