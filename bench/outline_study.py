"""`low_detail` on items close to their background's colour, before and after the outline rule.

    python bench/outline_study.py [--data ../shared/data] [--photos-per-product 3]

`low_detail` (a blocker: "we cannot make out an item") read only the coarse detail, the spread
of a 16x16 grid of block means. A white box on a white table, a document or a drawing on white
has almost none, so 37 of the 1,000 web package photos were told their item did not show.
Since session 10 a photo with a distinct outline (`service.quality.outline`: a 99th-percentile
step between neighbouring 4-px block means of `outline_strength` grey levels or more, standing
out `outline_contrast` times from the median step) is not `low_detail`.

The two cuts were chosen from a first look at the package photos, the fitting products' fogged,
blank and covered-lens photos and textures drawn with seeds 0-39: `outline_strength` is 1.2x the
strongest step of any fog, blank or covered-lens photo (9.9), `outline_contrast` 1.2x the
largest contrast of a texture or a fog at 85 % (20.8, a brick wall). This run checks them on what
that look did not choose from: every product's low-detail variants and textures drawn with seeds
100-139, which must all stay `low_detail`. Every photo goes through JPEG q88 and the service's
intake, as an upload would; "before" is the same thresholds with the outline rule switched off,
in the same run. Run on purpose, not in CI (about two minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from service.quality import DEFAULT_THRESHOLDS, QualityMetrics, decide, measure
from training.config import TrainConfig
from training.data import load_grocery, load_packages
from training.quality_thresholds import (
    as_uploaded,
    covered_lens,
    flat_surface,
    fogged,
    read_grocery_photos,
)

WITHOUT_OUTLINE = dataclasses.replace(DEFAULT_THRESHOLDS, outline_strength=float("inf"))
TEXTURE_SEEDS = range(100, 140)


def measured(image: Image.Image) -> QualityMetrics:
    return measure(as_uploaded(image))


def texture(kind: str, seed: int) -> Image.Image:
    """A blank surface, evenly lit and filling a 1024x768 frame: no item anywhere."""
    rng = np.random.default_rng(seed)
    height, width = 768, 1024
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "fabric":
        threads = rng.normal(0, 1, (height // 3 + 1, width // 3 + 1))
        surface = np.kron(threads, np.ones((3, 3)))[:height, :width] * rng.uniform(8, 25)
    elif kind == "carpet":
        surface = rng.normal(0, rng.uniform(10, 30), (height, width))
    elif kind == "wood grain":
        warp = np.cumsum(rng.normal(0, 0.5, height))[:, None] * 4
        period = rng.uniform(4, 10)
        surface = np.sin((y + warp + 0.05 * x) / period) * rng.uniform(10, 25)
        surface += rng.normal(0, 4, (height, width))
    elif kind == "brick wall":
        brick_height, brick_width = rng.integers(40, 70), rng.integers(100, 160)
        offset = (y // brick_height) % 2 * brick_width / 2
        mortar = ((y % brick_height) < 6) | (((x + offset) % brick_width) < 6)
        surface = np.where(mortar, rng.uniform(-50, -25), 0) + rng.normal(0, 6, (height, width))
    elif kind == "concrete":
        surface = sum(
            np.kron(
                rng.normal(0, 1, (height // side + 1, width // side + 1)), np.ones((side, side))
            )[:height, :width]
            * amplitude
            for side, amplitude in ((2, 6), (8, 6), (32, 5))
        )
    else:
        raise ValueError(kind)
    grey = np.clip(rng.uniform(90, 200) + surface, 0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def shares(metrics: list[QualityMetrics], code: str) -> tuple[str, str]:
    def share(thresholds: object) -> str:
        found = [
            any(issue.code == code for issue in decide(m, thresholds))  # type: ignore[arg-type]
            for m in metrics
        ]
        return f"{np.mean(found):.1%}"

    return share(WITHOUT_OUTLINE), share(DEFAULT_THRESHOLDS)


def any_blocker(metrics: list[QualityMetrics]) -> tuple[str, str]:
    def share(thresholds: object) -> str:
        found = [
            any(issue.severity == "blocker" for issue in decide(m, thresholds))  # type: ignore[arg-type]
            for m in metrics
        ]
        return f"{np.mean(found):.1%}"

    return share(WITHOUT_OUTLINE), share(DEFAULT_THRESHOLDS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(TrainConfig().data_root))
    parser.add_argument("--photos-per-product", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    groups: dict[str, list[QualityMetrics]] = {}
    packages = load_packages(args.data)
    for label, damaged in (("damaged", True), ("intact", False)):
        groups[f"package photos, {label}"] = [
            measured(Image.open(package.path)) for package in packages if package.damaged == damaged
        ]
    groups["grocery catalog images"] = [
        measured(Image.open(item.path))
        for item in load_grocery(args.data)
        if item.role == "listing"
    ]
    photos = [
        Image.open(path).convert("RGB")
        for paths in read_grocery_photos(args.data).values()
        for path in paths[: args.photos_per_product]
    ]
    variants: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
        "grocery phone photos, clean": lambda image, _rng: image,
        "grocery, fogged 92% (low_detail)": fogged(0.92),
        "grocery, fogged 85%": fogged(0.85),
        "grocery, blank surface (low_detail)": flat_surface,
        "grocery, covered lens (low_detail)": covered_lens,
    }
    for name, variant in variants.items():
        groups[name] = [measured(variant(image, rng)) for image in photos]
    for kind in ("fabric", "carpet", "wood grain", "brick wall", "concrete"):
        groups[f"texture: {kind} (seeds 100-139)"] = [
            measured(texture(kind, seed)) for seed in TEXTURE_SEEDS
        ]

    print("| photos | n | low_detail before | **now** | any blocker before | now |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, metrics in groups.items():
        low_before, low_now = shares(metrics, "low_detail")
        blocker_before, blocker_now = any_blocker(metrics)
        print(
            f"| {name} | {len(metrics)} | {low_before} | **{low_now}** | {blocker_before} | "
            f"{blocker_now} |"
        )


if __name__ == "__main__":
    main()
