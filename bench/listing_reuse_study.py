"""Listing-photo reuse by embedding: how often genuine photos trip it, and what it adds to hashes.

    python bench/listing_reuse_study.py [--data ../shared/data] [--model-dir models/...]

`listing_photo_reuse` is a blocker, so a genuine photo flagged by it tells an honest buyer that
their photo is the seller's and sends the claim to the suspicious lane. The model's card sets
`listing_reuse_similarity` where at most 1 in 200 genuine validation photos reach it. This study
measures, with the service's own engine and hashes:

- genuine phone photos of the validation and test products (never trained on) against their own
  listing image: the share that reaches the similarity alone, and the share that reaches it with
  the photo's whole-frame hash also within B bits of one of the listing image's windows
  (`service.checks.LISTING_REUSE_CORROBORATION_DISTANCE` is the B in use), and the low
  percentiles of their hash distances;
- edited copies of all 61 listing images that the 8-bit hash check mostly misses (a shop-page
  screenshot, turned 8 degrees with the corners filled or trimmed level, a band of colour over
  it, cropped 20 or 30 %, mirrored and cropped 15 %, saturated): the share caught by the hash
  check or the embedding, for each B.

Run on purpose, not in CI (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from service.checks import LISTING_REUSE_CORROBORATION_DISTANCE
from service.duplicates import (
    DUPLICATE_MAX_DISTANCE,
    closest_distance,
    perceptual_hash,
    photo_windows,
)
from service.engine import DEFAULT_MODEL_DIR, ScoringEngine
from service.intake import open_photo
from training.config import TrainConfig
from training.data import make_splits

BOUNDS = (12, 14, 16, 18, 20, 22)


def _jpeg(image: Image.Image, quality: int = 80) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return open_photo(buffer.getvalue()).image


def _crop(image: Image.Image, fraction: float) -> Image.Image:
    width, height = image.size
    dx, dy = int(width * fraction), int(height * fraction)
    return image.crop((dx, dy, width - dx, height - dy))


def _shop_screenshot(image: Image.Image) -> Image.Image:
    """The listing image on a shop page: a status bar above, a price and a button below."""
    width, height = image.size
    page = Image.new("RGB", (width, int(height * 1.6)), (250, 250, 250))
    page.paste(image, (0, int(height * 0.3)))
    draw = ImageDraw.Draw(page)
    draw.rectangle((0, 0, width, int(height * 0.08)), fill=(30, 30, 30))
    draw.text((10, int(height * 1.35)), "Add to basket  1.99", fill=(0, 0, 0))
    return page


def _band(image: Image.Image) -> Image.Image:
    banded = image.copy()
    ImageDraw.Draw(banded).rectangle(
        (0, int(banded.height * 0.8), banded.width, banded.height), fill=(200, 20, 20)
    )
    return banded


EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "shop-page screenshot": _shop_screenshot,
    "turned 8 degrees": lambda image: image.rotate(8, expand=True, fillcolor=(255, 255, 255)),
    # Turned and trimmed to a level frame (0.82 of each side keeps the corners out at 8 degrees).
    "turned 8 degrees, trimmed": lambda image: _crop(image.rotate(8), 0.09),
    "band over the bottom 20 %": _band,
    "cropped 20 % each side": lambda image: _crop(image, 0.20),
    "cropped 30 % each side": lambda image: _crop(image, 0.30),
    "mirrored, cropped 15 %": lambda image: _crop(ImageOps.mirror(image), 0.15),
    "saturation x1.6": lambda image: ImageEnhance.Color(image).enhance(1.6),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(TrainConfig().data_root))
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    args = parser.parse_args()
    config = TrainConfig()
    splits = make_splits(args.data, config.val_fraction, config.test_fraction, config.seed)
    with (args.data / "grocery" / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    engine = ScoringEngine.load(args.model_dir)
    threshold = engine.card.thresholds.listing_reuse_similarity

    def load(path: str) -> Image.Image:
        return open_photo((args.data / "grocery" / path).read_bytes()).image

    listings = {row["product"]: load(row["path"]) for row in rows if row["role"] == "listing"}
    embeddings = {
        product: engine.infer([image])[0].embedding for product, image in listings.items()
    }
    windows = {product: photo_windows(image) for product, image in listings.items()}
    print(
        f"{engine.model_version}: listing_reuse_similarity {threshold}; bound in use "
        f"{LISTING_REUSE_CORROBORATION_DISTANCE} bits; hash check {DUPLICATE_MAX_DISTANCE} bits"
    )

    print("\ngenuine photos against their own listing image (share flagged)")
    print(
        f"{'split':6s} {'photos':>6s} {'embedding':>10s} "
        + " ".join(f"{'B=' + str(b):>7s}" for b in BOUNDS)
        + "   hash distance p0.5 / p1 / p5"
    )
    for split in ("val", "test"):
        photos = [
            row
            for row in rows
            if row["role"] == "photo" and splits.product_split.get(row["product"]) == split
        ]
        similarities, distances = [], []
        for start in range(0, len(photos), 32):
            chunk = photos[start : start + 32]
            images = [load(row["path"]) for row in chunk]
            for output, row, image in zip(engine.infer(images), chunk, images, strict=True):
                similarities.append(float(output.embedding @ embeddings[row["product"]]))
                distances.append(closest_distance(perceptual_hash(image), windows[row["product"]]))
        close, dist = np.array(similarities) >= threshold, np.array(distances)
        cells = " ".join(f"{np.mean(close & (dist <= b)):7.2%}" for b in BOUNDS)
        low = " / ".join(f"{np.quantile(dist, q):.0f}" for q in (0.005, 0.01, 0.05))
        print(f"{split:6s} {len(photos):6d} {close.mean():10.2%} {cells}   {low}")

    print("\nedited copies of the 61 listing images (share caught: hash check, or embedding)")
    print(
        f"{'edit':28s} {'hash':>6s} {'+embedding':>10s} "
        + " ".join(f"{'B=' + str(b):>7s}" for b in BOUNDS)
    )
    for name, edit in EDITS.items():
        similarities, distances = [], []
        for product, image in listings.items():
            copy = _jpeg(edit(image))
            similarities.append(float(engine.infer([copy])[0].embedding @ embeddings[product]))
            distances.append(closest_distance(perceptual_hash(copy), windows[product]))
        close, dist = np.array(similarities) >= threshold, np.array(distances)
        by_hash = dist <= DUPLICATE_MAX_DISTANCE
        cells = " ".join(f"{np.mean(by_hash | (close & (dist <= b))):7.0%}" for b in BOUNDS)
        print(f"{name:28s} {by_hash.mean():6.0%} {np.mean(by_hash | close):10.0%} {cells}")


if __name__ == "__main__":
    main()
