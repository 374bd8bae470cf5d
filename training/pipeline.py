"""The stages after training: export (ONNX, parity check, INT8 study), calibrate, evaluate and
release (models/<name>-<version>/ with its card). Each stage reads what the previous one wrote
into the run directory.

The fine-tuned model is calibrated and evaluated through the very ONNX file that ships (INT8
when the study says so), with photos rendered by the service's preprocessing: INT8 moves the
logits enough to matter for calibration (package ECE 0.078 fitted on fp32 outputs became 0.103
through the INT8 file). The baseline is only a point of comparison and is scored with torch from
the cached prefix features."""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from service.intake import open_photo
from service.preprocess import batch_inputs, model_input
from training.calibrate import fit_calibration
from training.card import build_card, write_card
from training.config import TrainConfig
from training.data import load_photo, make_splits
from training.evaluate import (
    Calibration,
    Outputs,
    Predictor,
    heldout_figures,
    localisation_figures,
    quick_figures,
    tile_samples,
)
from training.export import export_onnx, latency_ms, onnx_session, quantize_int8, run_onnx
from training.model import EvidenceNet
from training.samples import KIND_PACKAGE, KIND_PHOTO, Rendered, Sample, render
from training.train import (
    data_caches,
    heldout_samples,
    predict_cache,
    trained,
)

SHIPPED_FILE = "model.onnx"  # in the run directory: the file `release` copies into models/
RENDER_BATCH = 32
PARITY_TOLERANCE = 1e-4
# INT8 ships only if it is clearly faster and costs (almost) nothing in the held-out figures.
INT8_MIN_SPEEDUP = 1.25
INT8_MAX_AUROC_DROP = 0.01


def _json(path: Path, value: Any | None = None) -> Any:
    if value is None:
        return json.loads(path.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")
    return value


def load_baseline(config: TrainConfig) -> EvidenceNet:
    """The frozen-trunk baseline; the fine-tuned model is scored through its shipped file (whose
    checkpoint must be of this recipe too)."""
    trained(config)
    model, _ = trained(dataclasses.replace(config, fine_tune=False))
    return model


def stage_output(config: TrainConfig, name: str, command: str) -> Any:
    """A report an earlier stage wrote into the run directory."""
    path = Path(config.run_dir) / name
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `python -m training {command}` first")
    return _json(path)


def listing_copies(image: Image.Image) -> list[Image.Image]:
    """What a re-uploaded listing photo looks like: re-encoded, resized, cropped, brightened."""

    def jpeg(picture: Image.Image, quality: int) -> Image.Image:
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=quality)
        return open_photo(buffer.getvalue()).picture

    width, height = image.size
    margin_w, margin_h = width // 20, height // 20
    return [
        jpeg(image, 50),
        jpeg(image.resize((max(1, width // 2), max(1, height // 2))), 75),
        jpeg(image.crop((margin_w, margin_h, width - margin_w, height - margin_h)), 80),
        jpeg(image.point(lambda value: min(255, int(value * 1.1))), 70),
    ]


def torch_predictor(model: EvidenceNet) -> Predictor:
    @torch.no_grad()
    def predict(batch: np.ndarray) -> Outputs:
        logits, maps, embeddings = model(torch.from_numpy(batch))
        return {
            "damage_logit": logits.numpy(),
            "damage_map": maps.numpy(),
            "embedding": embeddings.numpy(),
        }

    return predict


def onnx_predictor(path: Path, threads: int) -> Predictor:
    session = onnx_session(path, threads)
    return lambda batch: run_onnx(session, batch)


def shipped_predictor(config: TrainConfig) -> Predictor:
    path = Path(config.run_dir) / SHIPPED_FILE
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `python -m training export` first")
    return onnx_predictor(path, config.threads)


def joined_outputs(parts: list[Outputs]) -> Outputs:
    """Model outputs of several batches as one."""
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def predict_images(predict: Predictor, images: Sequence[np.ndarray]) -> Outputs:
    """Model inputs (3, 224, 224 each) scored in batches."""
    return joined_outputs(
        [
            predict(np.stack(images[start : start + RENDER_BATCH]))
            for start in range(0, len(images), RENDER_BATCH)
        ]
    )


def predict_rendered(predict: Predictor, rendered: Sequence[Rendered]) -> Outputs:
    return predict_images(predict, [item.image for item in rendered])


def predict_samples(predict: Predictor, samples: Sequence[Sample]) -> Outputs:
    """Render and score samples a batch at a time: a held-out split rendered at once would hold
    about 1 GB of model inputs."""
    return joined_outputs(
        [
            predict_rendered(predict, [render(s) for s in samples[start : start + RENDER_BATCH]])
            for start in range(0, len(samples), RENDER_BATCH)
        ]
    )


def copy_similarities(predict: Predictor, listing_paths: list[Path]) -> np.ndarray:
    similarities = []
    for path in listing_paths:
        original = load_photo(path)
        images = [original, *listing_copies(original)]
        embeddings = predict(batch_inputs(images))["embedding"]
        similarities.extend((embeddings[1:] @ embeddings[0]).tolist())
    return np.array(similarities)


def calibrate(config: TrainConfig) -> dict[str, Any]:
    """Fit calibration and thresholds on validation: the shipped file, and the baseline."""
    baseline = load_baseline(config)
    torch.set_num_threads(config.threads)
    splits = make_splits(
        Path(config.data_root), config.val_fraction, config.test_fraction, config.seed
    )
    # The prefix cache was rendered from the same samples: its labels are theirs.
    cache, samples = data_caches(config, baseline, splits, "val")
    val_listings = [
        listing.path
        for listing in splits.listings
        if splits.product_split[listing.product] == "val"
    ]
    shipped = shipped_predictor(config)
    scored = {
        "model": (predict_samples(shipped, samples), shipped),
        "baseline": (predict_cache(baseline, cache), torch_predictor(baseline)),
    }
    result = {}
    for variant, (outputs, predict) in scored.items():
        calibration, thresholds, details = fit_calibration(
            samples, cache.damage.numpy(), outputs, splits, copy_similarities(predict, val_listings)
        )
        result[variant] = {
            "calibration": calibration.__dict__,
            "thresholds": thresholds,
            "details": details,
        }
    return _json(Path(config.run_dir) / "calibration.json", result)


def _calibration(entry: dict[str, Any]) -> Calibration:
    return Calibration(**entry["calibration"])


def rendered_tiles(config: TrainConfig) -> list[Rendered]:
    """The magnetic tiles the INT8 study and the evaluation score, rendered with their masks."""
    samples = tile_samples(Path(config.data_root), config.tiles_intact_limit, config.eval_limit)
    return [render(sample) for sample in samples]


def evaluate(config: TrainConfig) -> dict[str, Any]:
    """Held-out test figures for the shipped file and the frozen-trunk baseline."""
    calibrations = stage_output(config, "calibration.json", "calibrate")
    baseline = load_baseline(config)
    torch.set_num_threads(config.threads)
    splits = make_splits(
        Path(config.data_root), config.val_fraction, config.test_fraction, config.seed
    )
    cache, samples = data_caches(config, baseline, splits, "test")
    # Rendered once for both models (and their masks); the baseline runs its whole network on
    # them instead of going through a prefix cache of its own, which would render them again.
    tiles_rendered = rendered_tiles(config)
    shipped = shipped_predictor(config)
    scored = {
        "model": (predict_samples(shipped, samples), predict_rendered(shipped, tiles_rendered)),
        "baseline": (
            predict_cache(baseline, cache),
            predict_rendered(torch_predictor(baseline), tiles_rendered),
        ),
    }
    report: dict[str, Any] = {
        "split": "test: grocery products and package source_ids never "
        "seen in training or calibration; tiles never used in training",
        "scored": {
            "model": f"the shipped ONNX file ({SHIPPED_FILE} in the run directory) on photos "
            "rendered through service.preprocess.model_input",
            "baseline": "torch: held-out photos from the cached frozen-prefix features, tiles "
            "through the whole network",
        },
    }
    for variant, (outputs, tile_outputs) in scored.items():
        entry = calibrations[variant]
        figures = heldout_figures(
            samples,
            cache.damage.numpy(),
            cache.kinds_drawn,
            outputs,
            splits,
            _calibration(entry),
            entry["thresholds"],
        )
        figures["localisation_tiles"] = localisation_figures(tiles_rendered, tile_outputs)
        report[variant] = figures
    return _json(Path(config.run_dir) / "evaluation.json", report)


def parity_photos(config: TrainConfig, count: int = 8) -> list[Image.Image]:
    """Real photos (phone photos, a catalog image, packages) decoded by the service's intake."""
    splits = make_splits(
        Path(config.data_root), config.val_fraction, config.test_fraction, config.seed
    )
    photos = splits.grocery_photos["val"][:: max(1, len(splits.grocery_photos["val"]) // count)]
    paths = [p.path for p in photos[: count // 2]] + [splits.listings[0].path]
    paths += [p.path for p in splits.packages["val"][: count - len(paths)]]
    return [open_photo(path.read_bytes()).picture for path in paths]


def torch_onnx_max_difference(
    model: EvidenceNet, onnx_path: Path, images: list[Image.Image]
) -> float:
    batch = np.stack([model_input(image) for image in images])
    with torch.no_grad():
        expected = [tensor.numpy() for tensor in model(torch.from_numpy(batch))]
    actual = run_onnx(onnx_session(onnx_path), batch)
    return max(
        float(np.abs(actual[name] - value).max())
        for name, value in zip(actual, expected, strict=True)
    )


def _onnx_figures(
    path: Path,
    rendered_images: np.ndarray,
    samples: list[Sample],
    labels: np.ndarray,
    splits: Any,
    tiles: Sequence[Rendered],
) -> dict[str, float]:
    predict = onnx_predictor(path, threads=2)
    outputs = predict_images(predict, list(rendered_images))
    localisation = localisation_figures(tiles, predict_rendered(predict, tiles))
    return {
        **quick_figures(samples, labels, outputs, splits),
        "tiles_image_auroc": localisation["image_auroc"],
        "tiles_pixel_auroc": localisation["pixel_auroc"],
    }


# Every held-out AUROC the study measures; INT8 may lose at most INT8_MAX_AUROC_DROP on each.
# The tiles are there because quantising the frozen ImageNet layers costs most on real damage of
# a kind never trained on (1.3.0: -0.030 tile image AUROC against -0.003 on grocery photos).
INT8_STUDY_AUROCS = (
    "damage_auroc_synthetic",
    "damage_auroc_packages",
    "mismatch_auroc",
    "tiles_image_auroc",
    "tiles_pixel_auroc",
)


def choose_int8_or_fp32(fp32: dict[str, float], int8: dict[str, float]) -> tuple[str, float, float]:
    """The format that ships, the INT8 speed-up at batch 1 and INT8's largest AUROC loss."""
    speedup = fp32["latency_ms_batch1"] / int8["latency_ms_batch1"]
    drop = max(fp32[key] - int8[key] for key in INT8_STUDY_AUROCS)
    ship_int8 = speedup >= INT8_MIN_SPEEDUP and drop <= INT8_MAX_AUROC_DROP
    return ("int8" if ship_int8 else "fp32"), speedup, drop


def int8_study(config: TrainConfig, fp32_path: Path, int8_path: Path) -> dict[str, Any]:
    """Static QDQ INT8 calibrated on validation photos, against fp32: speed and held-out loss."""
    splits = make_splits(
        Path(config.data_root), config.val_fraction, config.test_fraction, config.seed
    )
    limited = TrainConfig.from_dict({**config.to_dict(), "eval_limit": config.eval_limit or 150})
    calibration_samples = [
        s for s in heldout_samples(limited, splits, "val") if s.kind in (KIND_PHOTO, KIND_PACKAGE)
    ]
    calibration_images = np.stack([render(s).image for s in calibration_samples])
    quantize_int8(
        fp32_path,
        int8_path,
        [calibration_images[i : i + 16] for i in range(0, len(calibration_images), 16)],
    )
    test_samples = heldout_samples(limited, splits, "test")
    rendered = [render(s) for s in test_samples]
    images = np.stack([item.image for item in rendered])
    labels = np.array([item.damage for item in rendered])
    tiles = rendered_tiles(config)
    study: dict[str, Any] = {
        "calibration_images": len(calibration_images),
        "test_images": len(test_samples),
        "tiles": len(tiles),
        "threads": 2,
    }
    for name, path in (("fp32", fp32_path), ("int8", int8_path)):
        study[name] = {
            "size_mb": round(path.stat().st_size / 1e6, 2),
            "latency_ms_batch1": round(latency_ms(path, images[:1], repeats=30), 2),
            "latency_ms_per_image_batch8": round(latency_ms(path, images[:8], repeats=10), 2),
            **_onnx_figures(path, images, test_samples, labels, splits, tiles),
        }
    shipped, speedup, drop = choose_int8_or_fp32(study["fp32"], study["int8"])
    study["speedup_batch1"] = round(speedup, 3)
    study["largest_auroc_drop"] = round(drop, 4)
    study["shipped"] = shipped
    study["rule"] = (
        f"ship INT8 only if at least {INT8_MIN_SPEEDUP}x faster at batch 1 and no "
        f"held-out AUROC (grocery, packages, mismatch, tiles) drops by more than "
        f"{INT8_MAX_AUROC_DROP}"
    )
    return study


def export(config: TrainConfig) -> Path:
    """Export the fine-tuned model, check parity, study INT8 and keep the file that will ship
    (run_dir/model.onnx), which `calibrate` and `evaluate` then score."""
    torch.set_num_threads(config.threads)
    run_dir = Path(config.run_dir)
    model, _ = trained(config)
    fp32_path = export_onnx(model, run_dir / "model.fp32.onnx")
    parity = torch_onnx_max_difference(model, fp32_path, parity_photos(config))
    if parity > PARITY_TOLERANCE:
        raise RuntimeError(f"torch and onnxruntime disagree by {parity:.2e}")
    study = int8_study(config, fp32_path, run_dir / "model.int8.onnx")
    _json(run_dir / "int8_study.json", {**study, "torch_onnx_max_abs_diff": parity})
    shipped = fp32_path if study["shipped"] == "fp32" else run_dir / "model.int8.onnx"
    (run_dir / SHIPPED_FILE).write_bytes(shipped.read_bytes())
    return run_dir / SHIPPED_FILE


def release(config: TrainConfig) -> Path:
    """models/<name>-<version>/: the shipped file and its card (calibration, metrics, recipe)."""
    run_dir = Path(config.run_dir)
    _, state = trained(config)
    study = stage_output(config, "int8_study.json", "export")
    parity = study.pop("torch_onnx_max_abs_diff")
    model_dir = config.model_dir
    shipped = (run_dir / SHIPPED_FILE).read_bytes()
    released = model_dir / "model.onnx"
    if released.exists() and released.read_bytes() != shipped:
        # A released version is never replaced by other weights (the default --models-dir is
        # the repository's models/, where the shipped model lives).
        raise SystemExit(
            f"{model_dir} already holds another model: release under a new version "
            "(--set version=...) or into another --models-dir"
        )
    model_dir.mkdir(parents=True, exist_ok=True)
    released.write_bytes(shipped)
    write_card(model_card(config, state, parity, study), model_dir)
    return model_dir


def _headline(figures: dict[str, Any]) -> dict[str, float]:
    return {
        "damage_auroc_synthetic_unseen_products": figures["damage_synthetic_unseen_products"][
            "auroc"
        ],
        "damage_ap_synthetic_unseen_products": figures["damage_synthetic_unseen_products"][
            "average_precision"
        ],
        "damage_ece_synthetic_unseen_products": figures["damage_synthetic_unseen_products"]["ece"],
        "damage_auroc_real_packages": figures["damage_real_packages"]["auroc"],
        "damage_ap_real_packages": figures["damage_real_packages"]["average_precision"],
        "damage_ece_real_packages": figures["damage_real_packages"]["ece"],
        "mismatch_auroc_same_coarse_class": figures["mismatch_same_coarse_class"]["auroc"],
        "mismatch_ece": figures["mismatch_same_coarse_class"]["ece"],
        "retrieval_top1_all_listings": figures["retrieval_all_listings"]["top1"],
        "retrieval_top5_all_listings": figures["retrieval_all_listings"]["top5"],
        "heatmap_pixel_auroc_tiles": figures["localisation_tiles"]["pixel_auroc"],
        "damage_image_auroc_tiles": figures["localisation_tiles"]["image_auroc"],
    }


# name in the card's metrics -> (comparison, target, the figure group in evaluation.json it reads)
TARGETS = {
    "mismatch_auroc_same_coarse_class": (">=", 0.95, "mismatch_same_coarse_class"),
    "damage_auroc_synthetic_unseen_products": (">=", 0.95, "damage_synthetic_unseen_products"),
    "damage_auroc_real_packages": (">=", 0.85, "damage_real_packages"),
    "damage_ece_synthetic_unseen_products": ("<=", 0.05, "damage_synthetic_unseen_products"),
    "damage_ece_real_packages": ("<=", 0.05, "damage_real_packages"),
    "mismatch_ece": ("<=", 0.05, "mismatch_same_coarse_class"),
}


def target_verdicts(metrics: dict[str, float], figures: dict[str, Any]) -> dict[str, Any]:
    """Each target against its figure, with how far chance alone moves that figure: the AUROC's
    95% interval over resampled products / sources, and for an ECE the range a perfectly
    calibrated model shows on the same set (a target below that range cannot be checked there)."""
    verdicts = {}
    for name, (op, target, group) in TARGETS.items():
        value = metrics[name]
        verdict: dict[str, Any] = {
            "target": f"{op} {target}",
            "value": round(value, 4),
            "met": value >= target if op == ">=" else value <= target,
        }
        detail = figures[group]
        if op == ">=":
            low, high = detail["auroc_interval_95"]
            verdict["interval_95"] = [round(low, 4), round(high, 4)]
            verdict["target_inside_interval"] = low <= target <= high
        else:
            floor = detail["ece_if_perfectly_calibrated"]
            verdict["ece_if_perfectly_calibrated"] = {k: round(v, 4) for k, v in floor.items()}
            verdict["checkable_on_this_set"] = floor["median"] < target
            verdict["consistent_with_calibrated"] = value <= floor["p95"]
        verdicts[name] = verdict
    return verdicts


def model_card(
    config: TrainConfig, state: dict[str, Any], parity: float, study: dict[str, Any]
) -> dict[str, Any]:
    calibrations = stage_output(config, "calibration.json", "calibrate")
    evaluation = stage_output(config, "evaluation.json", "evaluate")
    metrics = _headline(evaluation["model"])
    baseline = _headline(evaluation["baseline"])
    targets = target_verdicts(metrics, evaluation["model"])
    entry = calibrations["model"]
    _, baseline_state = trained(dataclasses.replace(config, fine_tune=False))
    return build_card(
        name=config.name,
        version=config.version,
        embedding_dim=config.embedding_dim,
        temperature=round(entry["calibration"]["temperature"], 4),
        damage_bias=round(entry["calibration"]["damage_bias"], 4),
        mismatch_slope=round(entry["calibration"]["mismatch_slope"], 4),
        mismatch_intercept=round(entry["calibration"]["mismatch_intercept"], 4),
        thresholds=entry["thresholds"],
        metrics={
            **{k: round(v, 4) for k, v in metrics.items()},
            "targets": targets,
            "detail": evaluation["model"],
            "split": evaluation["split"],
        },
        baselines={
            **{k: round(v, 4) for k, v in baseline.items()},
            "what": "the same heads trained with the same recipe on the frozen ImageNet "
            "trunk (no fine-tuning)",
            "detail": evaluation["baseline"],
            "calibration": calibrations["baseline"],
        },
        training={
            "config": state["config"],
            "steps": state["step"],
            "train_seconds_fine_tuned": round(state["train_seconds"], 1),
            "train_seconds_baseline": round(baseline_state["train_seconds"], 1),
            "history": state["history"],
            "calibration_details": entry["details"],
            "command": "python -m training run",
            "trained_at": time.strftime("%Y-%m-%d", time.gmtime()),
        },
        provisional=False,
        extra={
            "export": {
                "opset": 17,
                "exporter": "torch.onnx (TorchScript, dynamo=False)",
                "dynamic_axes": "batch",
                "torch_onnx_max_abs_diff": parity,
                "format": study["shipped"],
                "int8_study": study,
            }
        },
    )
