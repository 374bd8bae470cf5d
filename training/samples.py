"""What goes into the model during training and evaluation: sample lists and their rendering.

A `Sample` says which photo, whether to draw synthetic damage on it and how to augment it; the
seed makes each one reproducible. `render` turns it into the model's input (through the service's
`model_input`), the damage label and a 7x7 map target. Pure functions of the sample and its file.
"""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from service.preprocess import DEFAULT_INPUT_SPEC, InputSpec, model_input
from training.config import TrainConfig
from training.data import GroceryImage, Splits, load_labelled_photos, load_photo, product_index
from training.synthesis import synthesise_damage

MAP_SIZE = 7
# A cell whose area is this much damage (or more) is fully "damaged"; thin cracks cover
# only a few percent of a 32x32 cell and must still count.
FULL_CELL_COVERAGE = 0.04

KIND_PHOTO, KIND_CATALOG, KIND_PACKAGE, KIND_TILE = "photo", "catalog", "package", "tile"


@dataclass(frozen=True)
class Sample:
    path: Path
    kind: str
    product: int  # index into the product list, -1 when the sample is not for listing matching
    synthesise: bool  # draw synthetic damage (label 1 with its mask)
    real_damage: bool | None  # a real label without a mask (packages, user photos), else None
    augment: bool
    seed: int
    mask_path: Path | None = None  # a real pixel mask (tiles, evaluation only)


@dataclass
class Rendered:
    image: np.ndarray  # (3, 224, 224) float32
    damage: float
    map_target: np.ndarray  # (7, 7) float32 in [0, 1]
    has_map: bool  # False: only the image label is known (map trained by its maximum)
    kinds: tuple[str, ...]
    pixel_mask: np.ndarray | None  # full-resolution letterboxed mask for localisation metrics
    content: np.ndarray  # (224, 224) bool: the letterboxed photo, not its grey padding


def letterbox_mask(mask: np.ndarray, spec: InputSpec = DEFAULT_INPUT_SPEC) -> np.ndarray:
    """Place a mask exactly as `service.preprocess.letterbox` places its image (zeros padded)."""
    height, width = mask.shape
    scale = spec.size / max(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = Image.fromarray((mask * 255).astype(np.uint8)).resize(
        new_size, Image.Resampling.BILINEAR
    )
    canvas = np.zeros((spec.size, spec.size), dtype=np.float32)
    left, top = (spec.size - new_size[0]) // 2, (spec.size - new_size[1]) // 2
    canvas[top : top + new_size[1], left : left + new_size[0]] = np.asarray(resized) / 255.0
    return canvas


def map_target(letterboxed_mask: np.ndarray) -> np.ndarray:
    cell = letterboxed_mask.shape[0] // MAP_SIZE
    coverage = (
        letterboxed_mask[: cell * MAP_SIZE, : cell * MAP_SIZE]
        .reshape(MAP_SIZE, cell, MAP_SIZE, cell)
        .mean(axis=(1, 3))
    )
    return np.clip(coverage / FULL_CELL_COVERAGE, 0.0, 1.0).astype(np.float32)


def augment(image: Image.Image, rng: np.random.Generator, catalog: bool) -> Image.Image:
    """Photometric and geometric jitter that a phone photo of the same item could show."""
    width, height = image.size
    scale = rng.uniform(0.6, 1.0) if not catalog else rng.uniform(0.75, 1.0)
    crop_w = int(width * np.sqrt(scale) * rng.uniform(0.9, 1.1))
    crop_h = int(height * np.sqrt(scale) * rng.uniform(0.9, 1.1))
    crop_w, crop_h = min(max(crop_w, 16), width), min(max(crop_h, 16), height)
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    image = image.crop((left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if catalog and rng.random() < 0.7:
        image = image.rotate(
            float(rng.uniform(-15, 15)),
            resample=Image.Resampling.BILINEAR,
            expand=True,
            fillcolor=(255, 255, 255),
        )
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.7, 1.3))
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.7, 1.3))
    if rng.random() < 0.2:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    if rng.random() < 0.3:  # recompressed uploads
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.integers(40, 90)))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return image


def render(sample: Sample, spec: InputSpec = DEFAULT_INPUT_SPEC) -> Rendered:
    rng = np.random.default_rng(sample.seed)
    image = load_photo(sample.path)
    if sample.augment:
        image = augment(image, rng, catalog=sample.kind == KIND_CATALOG)
    mask = np.zeros((image.height, image.width), dtype=np.float32)
    kinds: tuple[str, ...] = ()
    if sample.synthesise:
        image, mask, drawn = synthesise_damage(image, rng)
        kinds = tuple(drawn)
    elif sample.mask_path is not None:
        real_mask = Image.open(sample.mask_path).convert("L").resize(image.size)
        mask = (np.asarray(real_mask, dtype=np.float32) > 127).astype(np.float32)
    letterboxed = letterbox_mask(mask, spec)
    if sample.real_damage is not None:
        damage, has_map = float(sample.real_damage), not sample.real_damage
    else:
        damage, has_map = float(sample.synthesise or mask.any()), True
    return Rendered(
        image=model_input(image, spec),
        damage=damage,
        map_target=map_target(letterboxed),
        has_map=has_map,
        kinds=kinds,
        pixel_mask=letterboxed if sample.mask_path is not None or sample.synthesise else None,
        content=letterbox_mask(np.ones_like(mask), spec) > 0.5,
    )


def sample_seed(seed: int, *parts: object) -> int:
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def limit_per_product(photos: list[GroceryImage], limit: int) -> list[GroceryImage]:
    if limit <= 0:
        return photos
    seen: dict[str, int] = defaultdict(int)
    kept = []
    for photo in photos:
        if seen[photo.product] < limit:
            kept.append(photo)
            seen[photo.product] += 1
    return kept


def training_samples(config: TrainConfig, splits: Splits) -> tuple[list[Sample], list[str]]:
    """The cached training set: augmented grocery photos and catalog images (half of them with
    synthetic damage), package photos (real labels; intact ones also with synthetic damage, so
    the plain mock-up backgrounds appear on both sides of the label), and user photos."""
    products = list(product_index(splits))
    index = product_index(splits)
    seed = config.seed
    samples: list[Sample] = []
    photos = limit_per_product(splits.grocery_photos["train"], config.max_photos_per_product)
    for number, photo in enumerate(photos):
        for variant in range(config.photo_variants):
            damaged = (
                variant % 2 == 1
                if config.photo_variants > 1
                else (
                    np.random.default_rng(sample_seed(seed, "p", number)).random()
                    < config.damage_probability
                )
            )
            samples.append(
                Sample(
                    photo.path,
                    KIND_PHOTO,
                    index[photo.product],
                    damaged,
                    None,
                    True,
                    sample_seed(seed, "photo", number, variant),
                )
            )
    for listing in splits.listings:
        if splits.product_split[listing.product] != "train":
            continue
        for variant in range(config.catalog_variants):
            samples.append(
                Sample(
                    listing.path,
                    KIND_CATALOG,
                    index[listing.product],
                    variant % 2 == 1,
                    None,
                    True,
                    sample_seed(seed, "catalog", listing.product, variant),
                )
            )
    packages = splits.packages["train"]
    if config.max_packages > 0:
        packages = packages[: config.max_packages]
    for number, package in enumerate(packages):
        for variant in range(config.package_variants):
            synthetic = not package.damaged and variant % 2 == 1
            samples.append(
                Sample(
                    package.path,
                    KIND_PACKAGE,
                    -1,
                    synthetic,
                    None if synthetic else package.damaged,
                    True,
                    sample_seed(seed, "package", number, variant),
                )
            )
    for manifest in config.extra_manifests:
        samples.extend(_user_samples(Path(manifest), products, seed))
    return samples, products


def _user_samples(manifest: Path, products: list[str], seed: int) -> list[Sample]:
    """A user's labelled photos. Damage labels train the damage head like real package photos;
    a photo confirmed to match its listing (matches_listing=1) becomes a phone photo of a new
    product whose catalog images are that listing's images. Rows labelled as not matching are
    not trained on: one photo against one listing is no contrastive batch, and wrong-item
    negatives already come from other products."""
    samples = []
    for number, row in enumerate(load_labelled_photos(manifest)):
        row_seed = sample_seed(seed, manifest.name, number)
        if row.damage is not None:
            samples.append(Sample(row.path, KIND_PACKAGE, -1, False, row.damage, True, row_seed))
        if row.matches_listing and row.listing_images:
            key = "user:" + ";".join(sorted(str(path) for path in row.listing_images))
            if key not in products:
                products.append(key)
                samples.extend(
                    Sample(
                        path,
                        KIND_CATALOG,
                        len(products) - 1,
                        False,
                        None,
                        True,
                        sample_seed(seed, key, variant),
                    )
                    for variant, path in enumerate(row.listing_images)
                )
            samples.append(
                Sample(
                    row.path,
                    KIND_PHOTO,
                    products.index(key),
                    False,
                    row.damage if row.damage is not None else None,
                    True,
                    row_seed,
                )
            )
    return samples


def heldout_samples(config: TrainConfig, splits: Splits, split: str) -> list[Sample]:
    """Unaugmented held-out samples: each photo of an unseen product once intact and once with
    synthetic damage, the split's package photos with their real labels, and every listing."""
    index = product_index(splits)
    photos = limit_per_product(splits.grocery_photos[split], config.max_photos_per_product)
    packages = splits.packages[split]
    if config.eval_limit > 0:
        photos = photos[:: max(1, len(photos) // config.eval_limit)][: config.eval_limit]
        packages = packages[:: max(1, len(packages) // config.eval_limit)][: config.eval_limit]
    samples = []
    for number, photo in enumerate(photos):
        for damaged in (False, True):
            samples.append(
                Sample(
                    photo.path,
                    KIND_PHOTO,
                    index[photo.product],
                    damaged,
                    None,
                    False,
                    sample_seed(config.seed, split, number, damaged),
                )
            )
    samples.extend(Sample(p.path, KIND_PACKAGE, -1, False, p.damaged, False, 0) for p in packages)
    samples.extend(
        Sample(listing.path, KIND_CATALOG, index[listing.product], False, None, False, 0)
        for listing in splits.listings
    )
    return samples
