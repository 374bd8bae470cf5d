"""Fit the quality-check thresholds from data and measure them on held-out products.

    python -m training.quality_thresholds --data ../shared/data \
        --out service/quality_thresholds.json --report docs/quality.md

The labelled set is built from the grocery phone photos: each sampled photo is kept clean and
also degraded in controlled ways (Gaussian and motion blur, upscaling from a low resolution,
under- and over-exposure in linear light, downscaling, near-uniform frames), each degradation
carrying the label a reviewer would give it. Mild versions of each degradation are kept as
negatives, so the thresholds must separate "a little soft" from "blurry". Every variant is
JPEG-encoded and read back through the service's own intake, exactly as an upload would be.

Products (not photos) are split into a fitting half and a held-out half, so precision and recall
are measured on products the thresholds never saw. No torch: this runs wherever the service runs.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from service.intake import Photo, open_photo
from service.quality import QualityMetrics, QualityThresholds, decide, measure

REPORT_BEGIN = "<!-- BEGIN quality_thresholds report (generated; do not edit by hand) -->"
REPORT_END = "<!-- END quality_thresholds report -->"
CHECKS = ("too_small", "low_detail", "too_dark", "overexposed", "blurry")
# sRGB is close enough to a 2.2 power law for simulating exposure changes.
_GAMMA = 2.2
_UPLOAD_JPEG_QUALITY = 88

Transform = Callable[[Image.Image, np.random.Generator], Image.Image]


@dataclass(frozen=True)
class Variant:
    """One controlled degradation and the finding a reviewer would expect for it."""

    name: str
    transform: Transform
    code: str | None = None
    severity: str | None = None


@dataclass(frozen=True)
class Sample:
    product: str
    photo: str
    variant: str
    code: str | None
    severity: str | None
    metrics: QualityMetrics


# --- degradations -----------------------------------------------------------------------------


def gaussian_blur(sigma: float) -> Transform:
    return lambda image, _rng: image.filter(ImageFilter.GaussianBlur(sigma))


def motion_blur(length: int) -> Transform:
    """Horizontal camera shake: a box filter `length` pixels long along the rows."""

    def apply(image: Image.Image, _rng: np.random.Generator) -> Image.Image:
        pixels = np.asarray(image, dtype=np.float32)
        padded = np.pad(pixels, ((0, 0), (length // 2, length - 1 - length // 2), (0, 0)), "edge")
        cumulative = np.cumsum(padded, axis=1)
        cumulative = np.concatenate([np.zeros_like(cumulative[:, :1]), cumulative], axis=1)
        blurred = (cumulative[:, length:] - cumulative[:, :-length]) / length
        return Image.fromarray(np.clip(blurred + 0.5, 0, 255).astype(np.uint8))

    return apply


def upscaled_from(fraction: float) -> Transform:
    """A low-resolution photo blown up to full size (digital zoom, a resent thumbnail)."""

    def apply(image: Image.Image, _rng: np.random.Generator) -> Image.Image:
        small = (max(1, round(image.width * fraction)), max(1, round(image.height * fraction)))
        return image.resize(small, Image.Resampling.BOX).resize(
            image.size, Image.Resampling.BICUBIC
        )

    return apply


def exposure_shift(stops: float, noise: float = 0.0) -> Transform:
    """Change the exposure by `stops` EV in linear light; dark shots get sensor noise added,
    as a phone's gain would in a dim room."""

    def apply(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        linear = (np.asarray(image, dtype=np.float32) / 255.0) ** _GAMMA * (2.0**stops)
        pixels = np.clip(linear, 0.0, 1.0) ** (1.0 / _GAMMA) * 255.0
        if noise:
            pixels = pixels + rng.normal(0.0, noise, pixels.shape)
        return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))

    return apply


def downscaled_to(short_side: int) -> Transform:
    def apply(image: Image.Image, _rng: np.random.Generator) -> Image.Image:
        scale = short_side / min(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        return image.resize(size, Image.Resampling.LANCZOS)

    return apply


def fogged(opacity: float) -> Transform:
    """The frame covered by something nearly uniform (a finger, a wall, a fogged lens)."""

    def apply(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        pixels = np.asarray(image, dtype=np.float32)
        mean_colour = pixels.reshape(-1, 3).mean(axis=0)
        covered = (1.0 - opacity) * pixels + opacity * mean_colour
        covered += rng.normal(0.0, 2.0, covered.shape)
        return Image.fromarray(np.clip(covered + 0.5, 0, 255).astype(np.uint8))

    return apply


def flat_surface(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A photo of a blank surface in the photo's own colours: a gentle light falloff plus noise."""
    pixels = np.asarray(image, dtype=np.float32)
    height, width = pixels.shape[:2]
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    falloff = 1.0 - 0.15 * (((x - width / 2) / width) ** 2 + ((y - height / 2) / height) ** 2)
    surface = pixels.reshape(-1, 3).mean(axis=0) * falloff[..., None]
    surface += rng.normal(0.0, 3.0, surface.shape)
    return Image.fromarray(np.clip(surface + 0.5, 0, 255).astype(np.uint8))


def covered_lens(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A finger or a pocket over the lens: a nearly black frame with sensor noise."""
    dim = np.asarray(flat_surface(image, rng), dtype=np.float32) * 0.08
    dim += rng.normal(0.0, 2.0, dim.shape)
    return Image.fromarray(np.clip(dim + 0.5, 0, 255).astype(np.uint8))


VARIANTS: tuple[Variant, ...] = (
    Variant("clean", lambda image, _rng: image),
    Variant("soft_sigma0.6", gaussian_blur(0.6)),
    Variant("darker_0.7ev", exposure_shift(-0.7, noise=1.0)),
    Variant("brighter_0.5ev", exposure_shift(0.5)),
    Variant("downscaled_280", downscaled_to(280)),
    Variant("blur_sigma2", gaussian_blur(2.0), "blurry", "warning"),
    Variant("blur_sigma3", gaussian_blur(3.0), "blurry", "warning"),
    Variant("motion_9px", motion_blur(9), "blurry", "warning"),
    Variant("upscaled_from_1/3", upscaled_from(1 / 3), "blurry", "warning"),
    Variant("blur_sigma5", gaussian_blur(5.0), "blurry", "blocker"),
    Variant("motion_21px", motion_blur(21), "blurry", "blocker"),
    Variant("dark_2ev", exposure_shift(-2.0, noise=2.0), "too_dark", "warning"),
    Variant("dark_3.5ev", exposure_shift(-3.5, noise=2.0), "too_dark", "blocker"),
    Variant("bright_1.5ev", exposure_shift(1.5), "overexposed", "warning"),
    Variant("bright_2.5ev", exposure_shift(2.5), "overexposed", "blocker"),
    Variant("fogged_92pct", fogged(0.92), "low_detail", "blocker"),
    Variant("blank_surface", flat_surface, "low_detail", "blocker"),
    Variant("covered_lens", covered_lens, "low_detail", "blocker"),
    Variant("defocused_sigma12", gaussian_blur(12.0), "blurry", "blocker"),
    Variant("downscaled_200", downscaled_to(200), "too_small", "blocker"),
    Variant("downscaled_120", downscaled_to(120), "too_small", "blocker"),
)


# --- the labelled set -------------------------------------------------------------------------


def read_grocery_photos(data_dir: Path) -> dict[str, list[Path]]:
    """Phone photos (role == photo) of each grocery product, in manifest order."""
    grocery = data_dir / "grocery"
    photos: dict[str, list[Path]] = {}
    with (grocery / "manifest.csv").open(newline="") as manifest:
        for row in csv.DictReader(manifest):
            if row["role"] == "photo":
                photos.setdefault(row["product"], []).append(grocery / row["path"])
    return photos


def split_products(products: Iterable[str], held_out_fraction: float = 0.5) -> set[str]:
    """The held-out products: a stable hash of the name decides, so the split never depends on
    which products happen to be present or on their order."""

    def bucket(product: str) -> float:
        return int(hashlib.sha256(product.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF

    return {product for product in products if bucket(product) < held_out_fraction}


def as_uploaded(image: Image.Image) -> Photo:
    """`image` as the service receives an upload of it: a JPEG at a phone's upload quality (a
    PNG where it has transparency), decoded by the service's intake."""
    buffer = io.BytesIO()
    if image.mode == "RGBA":
        image.save(buffer, format="PNG")
    else:
        image.convert("RGB").save(buffer, format="JPEG", quality=_UPLOAD_JPEG_QUALITY)
    return open_photo(buffer.getvalue())


def variant_samples(
    product: str, path: Path, variants: Sequence[Variant], rng: np.random.Generator
) -> list[Sample]:
    source = Image.open(path).convert("RGB")
    samples = []
    for variant in variants:
        metrics = measure(as_uploaded(variant.transform(source, rng)))
        samples.append(
            Sample(product, path.name, variant.name, variant.code, variant.severity, metrics)
        )
    return samples


def build_labelled_set(
    data_dir: Path,
    *,
    photos_per_product: int,
    seed: int = 0,
    variants: Sequence[Variant] = VARIANTS,
    max_products: int | None = None,
) -> list[Sample]:
    rng = np.random.default_rng(seed)
    by_product = read_grocery_photos(data_dir)
    products = sorted(by_product)[:max_products] if max_products else sorted(by_product)
    samples: list[Sample] = []
    for product in products:
        paths = by_product[product]
        chosen = rng.choice(len(paths), size=min(photos_per_product, len(paths)), replace=False)
        for index in sorted(chosen):
            samples.extend(variant_samples(product, paths[index], variants, rng))
    return samples


# --- fitting ----------------------------------------------------------------------------------


def best_threshold(values: np.ndarray, positive: np.ndarray, *, below: bool) -> float:
    """The cut that maximises F1 for "flag when value < cut" (below) or "value > cut".

    Candidate cuts are midpoints between consecutive distinct values; ties in F1 go to the cut
    with the larger margin from the nearest sample, which is the more conservative choice.
    """
    if not positive.any() or positive.all():
        raise ValueError("fitting a threshold needs both positive and negative samples")
    distinct = np.unique(values)
    cuts = (distinct[:-1] + distinct[1:]) / 2.0 if distinct.size > 1 else distinct
    flagged = values[None, :] < cuts[:, None] if below else values[None, :] > cuts[:, None]
    true_positive = (flagged & positive[None, :]).sum(axis=1)
    precision = true_positive / np.maximum(flagged.sum(axis=1), 1)
    recall = true_positive / positive.sum()
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = np.flatnonzero(f1 >= f1.max() - 1e-9)
    margins = np.abs(values[None, :] - cuts[best, None]).min(axis=1)
    return float(cuts[best[np.argmax(margins)]])


def _feature(samples: Sequence[Sample], name: str) -> np.ndarray:
    getters: dict[str, Callable[[QualityMetrics], float]] = {
        "sharpness": lambda m: m.sharpness,
        "p95": lambda m: m.exposure.p95,
        "washed_out": lambda m: m.exposure.washed_out,
        "detail": lambda m: m.detail,
    }
    return np.array([getters[name](sample.metrics) for sample in samples], dtype=np.float64)


def _fit_one(
    samples: Sequence[Sample], code: str, feature: str, *, below: bool, blocker: bool
) -> float:
    """Fit one cut on the samples that reach this check in quality.decide: everything except
    what low_detail (which comes first and hides the rest) takes; low_detail itself sees all."""
    population = [s for s in samples if code == "low_detail" or s.code != "low_detail"]
    positive = np.array(
        [s.code == code and (not blocker or s.severity == "blocker") for s in population]
    )
    return best_threshold(_feature(population, feature), positive, below=below)


def fit_thresholds(samples: Sequence[Sample], *, min_short_side: int) -> QualityThresholds:
    return QualityThresholds(
        min_short_side=min_short_side,
        low_detail=_fit_one(samples, "low_detail", "detail", below=True, blocker=False),
        dark_warning=_fit_one(samples, "too_dark", "p95", below=True, blocker=False),
        dark_blocker=_fit_one(samples, "too_dark", "p95", below=True, blocker=True),
        bright_warning=_fit_one(samples, "overexposed", "washed_out", below=False, blocker=False),
        bright_blocker=_fit_one(samples, "overexposed", "washed_out", below=False, blocker=True),
        blurry_warning=_fit_one(samples, "blurry", "sharpness", below=True, blocker=False),
        blurry_blocker=_fit_one(samples, "blurry", "sharpness", below=True, blocker=True),
    )


# --- evaluation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckScore:
    check: str
    positives: int
    flagged: int
    true_positives: int
    blocker_positives: int
    blocker_flagged: int
    blocker_true_positives: int

    @staticmethod
    def _ratio(numerator: int, denominator: int) -> float | None:
        return numerator / denominator if denominator else None

    @property
    def precision(self) -> float | None:
        return self._ratio(self.true_positives, self.flagged)

    @property
    def recall(self) -> float | None:
        return self._ratio(self.true_positives, self.positives)

    @property
    def blocker_precision(self) -> float | None:
        return self._ratio(self.blocker_true_positives, self.blocker_flagged)

    @property
    def blocker_recall(self) -> float | None:
        return self._ratio(self.blocker_true_positives, self.blocker_positives)


def evaluate(samples: Sequence[Sample], thresholds: QualityThresholds) -> list[CheckScore]:
    """Per check: the final decisions of quality.decide (precedence included) against labels."""
    findings = [
        {issue.code: issue.severity for issue in decide(s.metrics, thresholds)} for s in samples
    ]
    scores = []
    for check in CHECKS:
        is_positive = [s.code == check for s in samples]
        is_flagged = [check in found for found in findings]
        is_blocker_positive = [s.code == check and s.severity == "blocker" for s in samples]
        is_blocker_flagged = [found.get(check) == "blocker" for found in findings]
        scores.append(
            CheckScore(
                check=check,
                positives=sum(is_positive),
                flagged=sum(is_flagged),
                true_positives=sum(p and f for p, f in zip(is_positive, is_flagged, strict=True)),
                blocker_positives=sum(is_blocker_positive),
                blocker_flagged=sum(is_blocker_flagged),
                blocker_true_positives=sum(
                    p and f for p, f in zip(is_blocker_positive, is_blocker_flagged, strict=True)
                ),
            )
        )
    return scores


def false_alarms_by_variant(
    samples: Sequence[Sample], thresholds: QualityThresholds
) -> dict[str, dict[str, int]]:
    """For each variant, how many of its photos got a finding that differs from the label."""
    wrong: dict[str, dict[str, int]] = {}
    for sample in samples:
        codes = {issue.code for issue in decide(sample.metrics, thresholds)}
        expected = {sample.code} if sample.code else set()
        for code in codes ^ expected:
            counts = wrong.setdefault(sample.variant, {})
            key = code if code in codes else f"missed {code}"
            counts[key] = counts.get(key, 0) + 1
    return wrong


# --- report -----------------------------------------------------------------------------------


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def render_report(
    thresholds: QualityThresholds,
    scores: Sequence[CheckScore],
    errors: dict[str, dict[str, int]],
    provenance: dict[str, object],
) -> str:
    lines = [
        REPORT_BEGIN,
        "",
        f"Held-out products: {provenance['held_out_products']} of {provenance['products']} "
        f"({provenance['held_out_photos']} photos x {len(VARIANTS)} variants = "
        f"{provenance['held_out_samples']} samples); thresholds fitted on the other "
        f"{provenance['fit_products']} products ({provenance['fit_samples']} samples). "
        f"Command: `{provenance['command']}`.",
        "",
        "| check | positives | precision | recall | blocker positives | blocker precision "
        "| blocker recall |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for score in scores:
        lines.append(
            f"| `{score.check}` | {score.positives} | {_percent(score.precision)} | "
            f"{_percent(score.recall)} | {score.blocker_positives} | "
            f"{_percent(score.blocker_precision)} | {_percent(score.blocker_recall)} |"
        )
    lines += [
        "",
        "Fitted thresholds (service/quality_thresholds.json):",
        "",
        "```json",
        json.dumps(thresholds.to_dict()["thresholds"], indent=2),
        "```",
        "",
        "Held-out disagreements by variant (a finding the label did not expect, or `missed X`):",
        "",
        "| variant | disagreements |",
        "|---|---|",
    ]
    for variant in (v.name for v in VARIANTS):
        found = errors.get(variant)
        summary = ", ".join(f"{code} {n}" for code, n in sorted(found.items())) if found else "—"
        lines.append(f"| {variant} | {summary} |")
    lines += ["", REPORT_END]
    return "\n".join(lines)


def write_report(path: Path, section: str) -> None:
    """Replace the generated section of `path` (or append it), leaving the prose around it."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    pattern = re.compile(re.escape(REPORT_BEGIN) + ".*?" + re.escape(REPORT_END), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _match: section, text)
    else:
        text = (text.rstrip() + "\n\n" if text else "") + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def run(
    data_dir: Path,
    *,
    photos_per_product: int,
    min_short_side: int,
    seed: int,
    command: str,
    max_products: int | None = None,
) -> tuple[QualityThresholds, list[CheckScore], str]:
    samples = build_labelled_set(
        data_dir, photos_per_product=photos_per_product, seed=seed, max_products=max_products
    )
    products = {s.product for s in samples}
    held_out = split_products(products)
    fit = [s for s in samples if s.product not in held_out]
    test = [s for s in samples if s.product in held_out]
    if not fit or not test:
        raise ValueError("need products on both sides of the split; sample more products")
    provenance = {
        "fitted_by": "training/quality_thresholds.py",
        "command": command,
        "data": "grocery phone photos (../shared/data/grocery, MIT)",
        "seed": seed,
        "photos_per_product": photos_per_product,
        "products": len(products),
        "fit_products": len(products - held_out),
        "held_out_products": len(held_out & products),
        "fit_samples": len(fit),
        "held_out_samples": len(test),
        "held_out_photos": len({(s.product, s.photo) for s in test}),
        "variants": {v.name: v.code and f"{v.code}/{v.severity}" for v in VARIANTS},
        "min_short_side": "rule, not fitted: the model's 224 px input (see docs/quality.md)",
        "max_aspect": "rule, not fitted: a 3:1 picture fills a third of the model's square input",
    }
    thresholds = fit_thresholds(fit, min_short_side=min_short_side)
    scores = evaluate(test, thresholds)
    provenance["held_out"] = {
        score.check: {
            "precision": score.precision,
            "recall": score.recall,
            "blocker_precision": score.blocker_precision,
            "blocker_recall": score.blocker_recall,
        }
        for score in scores
    }
    fitted = QualityThresholds(**{**thresholds.to_dict()["thresholds"]}, provenance=provenance)
    report = render_report(fitted, scores, false_alarms_by_variant(test, fitted), provenance)
    return fitted, scores, report


def _rounded(thresholds: QualityThresholds) -> dict[str, object]:
    data = thresholds.to_dict()
    data["thresholds"] = {
        key: round(value, 4) if isinstance(value, float) else value
        for key, value in data["thresholds"].items()
    }
    return data


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("service/quality_thresholds.json"))
    parser.add_argument("--report", type=Path, default=None, help="markdown file to update")
    parser.add_argument("--photos-per-product", type=int, default=6)
    parser.add_argument("--max-products", type=int, default=None)
    parser.add_argument("--min-short-side", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    command = (
        f"python -m training.quality_thresholds --data {args.data} --out {args.out}"
        + (f" --report {args.report}" if args.report else "")
        + f" --photos-per-product {args.photos_per_product} --seed {args.seed}"
    )
    thresholds, scores, report = run(
        args.data,
        photos_per_product=args.photos_per_product,
        min_short_side=args.min_short_side,
        seed=args.seed,
        command=command,
        max_products=args.max_products,
    )
    args.out.write_text(json.dumps(_rounded(thresholds), indent=2) + "\n", encoding="utf-8")
    if args.report:
        write_report(args.report, report)
    for score in scores:
        print(
            f"{score.check:12s} precision {_percent(score.precision):>6s} "
            f"recall {_percent(score.recall):>6s}  (blocker {_percent(score.blocker_precision)}"
            f" / {_percent(score.blocker_recall)})"
        )


if __name__ == "__main__":
    main()
