"""Claims of several photos through the triage policy: how often each kind reaches the fast track.

    python bench/fast_track_study.py [--data ../shared/data] [--model-dir models/...]
        [--claims-per-product 200] [--photos 1,2,3,4]

The fast track is the lane a reviewer decides quickest, on the model's word. The card's high
thresholds were chosen per photo (at most 1 in 20 flagged photos wrong), but a claim has several
photos. This study builds claims from
the held-out phone photos of the validation and test products (never trained on), scored by the
shipped ONNX file and its calibration, and runs them through `service.policy.triage_claim` itself
with the card's thresholds:

- `wrong_item`, false: N photos of the listed item itself; true: N photos of another product of
  the same coarse class (the card's hard negative: another milk carton, another juice);
- `damaged`, false: N intact photos; true: one photo with synthetic damage and N-1 intact ones.

Photos are drawn per product (the same number of claims for each), with the model's own damage
and mismatch scores. Printed: the share of each kind in the fast track, by number of photos. Run
on purpose, not in CI (about a minute on 2 cores). Session 11's figures: docs/engine.md,
"Wrong-item support is the mean over the claim's photos".
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


def fast_tracked(
    reason: str, mismatch: np.ndarray, damage: np.ndarray, config: PolicyConfig
) -> bool:
    """Whether a claim of these photos (clean, scored) reaches the fast track."""
    photos = [
        PhotoFacts(index=number, damage=float(d), mismatch=float(m))
        for number, (m, d) in enumerate(zip(mismatch, damage, strict=True), start=1)
    ]
    facts = ClaimFacts(reason=reason, opened_at=NOW, photos=photos)
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
        f"{args.model_dir.name}: claims in the fast track (damage_high {config.damage_high}, "
        f"mismatch_high {config.mismatch_high}), {args.claims_per_product} claims a product"
    )
    print(f"{'reason':11s} {'split':6s} {'photos':>6s} {'false claims':>13s} {'true claims':>12s}")
    for split in ("val", "test"):
        samples = [
            sample
            for sample in heldout_samples(config_train, splits, split)
            if sample.kind in (KIND_PHOTO, KIND_CATALOG)
        ]
        outputs = predict_samples(predict, samples)
        pairs = listing_pairs(samples, splits, outputs)
        # Wrong item: the intact photos against their own listing, and against the hard negative.
        own = pairs["true_listing"]
        right = np.array([card.mismatch_probability(value) for value in pairs["positive"]])
        wrong = np.array([card.mismatch_probability(value) for value in pairs["negative"]])
        intact_damage = card.damage_probability(outputs["damage_logit"][pairs["photo_rows"]])
        # Damaged: every held-out photo also comes with synthetic damage (its sample's twin).
        photo_rows = np.flatnonzero([sample.kind == KIND_PHOTO for sample in samples])
        damage = card.damage_probability(outputs["damage_logit"][photo_rows])
        drawn_damage = np.array([samples[row].synthesise for row in photo_rows])
        product = np.array([samples[row].product for row in photo_rows])
        on_listing = np.full(len(photo_rows), card.thresholds.mismatch_low / 2)
        for count in counts:
            shares = {"wrong_item": [0, 0], "damaged": [0, 0]}
            total = 0
            for listing in np.unique(own):
                rows = np.flatnonzero(own == listing)
                intact = np.flatnonzero((product == listing) & ~drawn_damage)
                damaged = np.flatnonzero((product == listing) & drawn_damage)
                for _ in range(args.claims_per_product):
                    total += 1
                    picked = rng.choice(rows, min(count, len(rows)), replace=False)
                    shares["wrong_item"][0] += fast_tracked(
                        "wrong_item", right[picked], intact_damage[picked], config
                    )
                    shares["wrong_item"][1] += fast_tracked(
                        "wrong_item", wrong[picked], intact_damage[picked], config
                    )
                    plain = rng.choice(intact, min(count, len(intact)), replace=False)
                    with_damage = np.r_[rng.choice(damaged, 1), plain[: count - 1]]
                    shares["damaged"][0] += fast_tracked(
                        "damaged", on_listing[plain], damage[plain], config
                    )
                    shares["damaged"][1] += fast_tracked(
                        "damaged", on_listing[with_damage], damage[with_damage], config
                    )
            for reason, (false_claims, true_claims) in shares.items():
                print(
                    f"{reason:11s} {split:6s} {count:6d} {false_claims / total:13.1%} "
                    f"{true_claims / total:12.1%}"
                )


if __name__ == "__main__":
    main()
