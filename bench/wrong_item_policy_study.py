"""Wrong-item claims through the triage policy: how often each kind reaches the fast track.

    python bench/wrong_item_policy_study.py [--data ../shared/data] [--model-dir models/...]
        [--claims-per-product 200] [--photos 1,2,3,4]

A wrong-item claim is fast-tracked when its support reaches the card's `mismatch_high`. The
card chose that threshold so that at most 1 in 20 photo/listing pairs it flags are of the right
item, but a claim has several photos. This study builds claims from the held-out phone photos of
the validation and test products (never trained on), scored by the shipped ONNX file and its
calibration, and runs them through `service.policy.triage_claim` itself with the card's
thresholds:

- a false claim: N photos of the listed item itself, claimed as `wrong_item`;
- a true claim: N photos of another product of the same coarse class (the card's hard negative:
  another milk carton, another juice) against the listing's image.

Photos are drawn per product (the same number of claims for each), with the model's own damage
score. Printed: the share of each kind in the fast track, by number of photos. Run on purpose, not
in CI (about half a minute on 2 cores). Session 11's figures: docs/engine.md, "Triage policy".
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from service.engine import DEFAULT_MODEL_DIR, ModelCard
from service.policy import ClaimFacts, PhotoFacts, PolicyConfig, triage_claim
from training.config import TrainConfig
from training.data import make_splits
from training.evaluate import listing_pairs
from training.pipeline import onnx_predictor, predict_samples
from training.samples import KIND_CATALOG, KIND_PHOTO, heldout_samples

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def fast_tracked(mismatch: np.ndarray, damage: np.ndarray, config: PolicyConfig) -> bool:
    """Whether a wrong-item claim of these photos (clean, scored) reaches the fast track."""
    photos = [
        PhotoFacts(index=number, damage=float(d), mismatch=float(m))
        for number, (m, d) in enumerate(zip(mismatch, damage, strict=True), start=1)
    ]
    facts = ClaimFacts(reason="wrong_item", opened_at=NOW, photos=photos)
    return triage_claim(facts, config=config, now=NOW).lane == "fast_track"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--claims-per-product", type=int, default=200)
    parser.add_argument("--photos", default="1,2,3,4")
    args = parser.parse_args()
    card = ModelCard.read(args.model_dir)
    config = PolicyConfig().for_card(card.thresholds)
    config_train = TrainConfig(data_root=str(args.data))
    splits = make_splits(
        args.data, config_train.val_fraction, config_train.test_fraction, config_train.seed
    )
    predict = onnx_predictor(args.model_dir / "model.onnx", config_train.threads)
    counts = [int(value) for value in args.photos.split(",")]
    rng = np.random.default_rng(11)
    print(
        f"{args.model_dir.name}: wrong_item claims in the fast track "
        f"(mismatch_high {config.mismatch_high}), {args.claims_per_product} claims a product"
    )
    print(f"{'split':6s} {'photos':>6s} {'false claims (right item)':>26s} {'true claims':>12s}")
    for split in ("val", "test"):
        samples = [
            sample
            for sample in heldout_samples(config_train, splits, split)
            if (sample.kind == KIND_PHOTO and not sample.synthesise) or sample.kind == KIND_CATALOG
        ]
        outputs = predict_samples(predict, samples)
        pairs = listing_pairs(samples, splits, outputs)
        own = pairs["true_listing"]
        right = np.array([card.mismatch_probability(value) for value in pairs["positive"]])
        wrong = np.array([card.mismatch_probability(value) for value in pairs["negative"]])
        damage = card.damage_probability(outputs["damage_logit"][pairs["photo_rows"]])
        for count in counts:
            false_claims = true_claims = total = 0
            for product in np.unique(own):
                rows = np.flatnonzero(own == product)
                for _ in range(args.claims_per_product):
                    drawn = rng.choice(rows, min(count, len(rows)), replace=False)
                    total += 1
                    false_claims += fast_tracked(right[drawn], damage[drawn], config)
                    true_claims += fast_tracked(wrong[drawn], damage[drawn], config)
            print(f"{split:6s} {count:6d} {false_claims / total:26.1%} {true_claims / total:12.1%}")


if __name__ == "__main__":
    main()
