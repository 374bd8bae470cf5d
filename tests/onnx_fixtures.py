"""A tiny ONNX model with exactly the shipped model's interface (docs/CONTRACTS.md).

Tests of the engine, the assessment, the CLI, the batch job and the API run against this model so
that they never depend on the trained model's numbers. Its behaviour is simple enough to reason
about in a test:

- `damage_map` is, per 32x32 cell of the 224x224 input, `RED_GAIN * (mean red - mean of green and
  blue)` in normalised units, minus `RED_BIAS`: a strongly red patch is "damage" in its cell, a grey
  or natural photo is not;
- `damage_logit` is the largest cell of that map;
- `embedding` is a fixed random projection of the 7x7 cell colours, L2-normalised, so the same
  picture always embeds identically (cosine 1.0) and different pictures embed apart.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TINY_NAME = "tiny-test"
TINY_VERSION = "0.0.1"
TINY_MODEL_VERSION = f"{TINY_NAME}-{TINY_VERSION}"
TINY_EMBEDDING_DIM = 16
RED_GAIN = 4.0
RED_BIAS = 10.0
TINY_CARD = {
    "name": TINY_NAME,
    "version": TINY_VERSION,
    "file": "model.onnx",
    "input": {
        "name": "image",
        "size": 224,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "resize": "letterbox",
        "pad_value": 124,
    },
    "outputs": {
        "damage_logit": "largest cell of damage_map (test fixture)",
        "damage_map": "per-cell redness (test fixture)",
        "embedding": "random projection of cell colours (test fixture)",
    },
    "embedding_dim": TINY_EMBEDDING_DIM,
    "calibration": {
        "damage": {"method": "temperature", "temperature": 1.5, "bias": -0.25},
        "mismatch": {"method": "logistic", "slope": -12.0, "intercept": 6.0},
    },
    "thresholds": {
        "damage_high": 0.8,
        "damage_low": 0.3,
        "mismatch_high": 0.8,
        "mismatch_low": 0.3,
        "listing_reuse_similarity": 0.97,
    },
    # Shaped as the trained card's: numeric headline metrics beside a targets table and notes.
    "metrics": {
        "damage_auroc": 0.9,
        "mismatch_ece": 0.04,
        "targets": {
            "damage_auroc": {
                "target": ">= 0.95",
                "value": 0.9,
                "met": False,
                "interval_95": [0.85, 0.94],
            },
            "mismatch_ece": {
                "target": "<= 0.05",
                "value": 0.04,
                "met": True,
                "ece_if_perfectly_calibrated": {"median": 0.03, "p95": 0.045},
            },
        },
        "split": "test fixture: no test split",
    },
    "baselines": {"damage_auroc": 0.7, "what": "test fixture: no baseline model"},
    "limitations": ["test fixture: not a trained model"],
}


def tiny_model_proto(embedding_dim: int = TINY_EMBEDDING_DIM, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    # 1x1 convolution: RED_GAIN * (R - (G + B) / 2) - RED_BIAS on the pooled cells.
    redness = np.array([[[[1.0]], [[-0.5]], [[-0.5]]]], dtype=np.float32) * RED_GAIN
    projection = rng.normal(size=(3 * 7 * 7, embedding_dim)).astype(np.float32)
    initializers = [
        numpy_helper.from_array(redness, "redness_w"),
        numpy_helper.from_array(np.array([-RED_BIAS], dtype=np.float32), "redness_b"),
        numpy_helper.from_array(np.array([-1, 7, 7], dtype=np.int64), "map_shape"),
        numpy_helper.from_array(projection, "projection"),
    ]
    nodes = [
        helper.make_node(
            "AveragePool", ["image"], ["cells"], kernel_shape=[32, 32], strides=[32, 32]
        ),
        helper.make_node("Conv", ["cells", "redness_w", "redness_b"], ["map4d"]),
        helper.make_node("Reshape", ["map4d", "map_shape"], ["damage_map"]),
        helper.make_node("ReduceMax", ["damage_map"], ["damage_logit"], axes=[1, 2], keepdims=0),
        helper.make_node("Flatten", ["cells"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "projection"], ["raw_embedding"]),
        helper.make_node("LpNormalization", ["raw_embedding"], ["embedding"], axis=1, p=2),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_evidence_model",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [
            helper.make_tensor_value_info("damage_logit", TensorProto.FLOAT, ["N"]),
            helper.make_tensor_value_info("damage_map", TensorProto.FLOAT, ["N", 7, 7]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", embedding_dim]),
        ],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the project allows
    onnx.checker.check_model(model)
    return model


def write_tiny_model(directory: Path, *, card_overrides: dict | None = None) -> Path:
    """Write model.onnx and model_card.json into `directory` (created) and return it."""
    directory.mkdir(parents=True, exist_ok=True)
    card = json.loads(json.dumps(TINY_CARD))
    card.update(card_overrides or {})
    onnx.save(tiny_model_proto(card["embedding_dim"]), str(directory / card["file"]))
    (directory / "model_card.json").write_text(json.dumps(card, indent=2))
    return directory
