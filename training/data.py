"""Data sources over the shared manifests, the user-label adapter, and product/source splits.

Photos are decoded with the service's own intake (`service.intake.open_photo`) so that training
sees exactly the pixels serving sees. Splits are by product (grocery) and by source_id
(packages), never by photo: validation and test measure products the model has never seen.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from service.intake import open_photo

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class GroceryImage:
    path: Path
    product: str
    coarse_class: str
    category: str  # Fruit / Vegetables / Packages: the fallback for single-product classes
    role: str  # "photo" (phone photo in a store) or "listing" (catalog image)


@dataclass(frozen=True)
class PackageImage:
    path: Path
    damaged: bool
    source_id: str


@dataclass(frozen=True)
class TileImage:
    path: Path
    damaged: bool
    defect: str
    mask_path: Path | None


@dataclass(frozen=True)
class LabelledPhoto:
    """A user's own photo with optional reviewer labels (the label-correction export format)."""

    path: Path
    damage: bool | None
    matches_listing: bool | None
    listing_images: tuple[Path, ...]


def load_photo(path: Path) -> Image.Image:
    """Decode a photo file exactly as the service decodes an upload, to the picture the service
    scores (padding bands cut off, `service.intake.Photo.picture`)."""
    return open_photo(path.read_bytes()).picture


def _read_manifest(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def load_grocery(root: Path) -> list[GroceryImage]:
    folder = root / "grocery"
    return [
        GroceryImage(
            path=folder / row["path"],
            product=row["product"],
            coarse_class=row["coarse_class"],
            category=Path(row["path"]).parts[2],
            role=row["role"],
        )
        for row in _read_manifest(folder / "manifest.csv")
    ]


def load_packages(root: Path) -> list[PackageImage]:
    folder = root / "packages"
    return [
        PackageImage(folder / row["path"], row["label"] == "damaged", row["source_id"])
        for row in _read_manifest(folder / "manifest.csv")
    ]


def load_tiles(root: Path) -> list[TileImage]:
    folder = root / "tiles"
    return [
        TileImage(
            path=folder / row["path"],
            damaged=row["label"] == "damaged",
            defect=row["defect"],
            mask_path=folder / row["mask"] if row.get("mask") else None,
        )
        for row in _read_manifest(folder / "manifest.csv")
    ]


def _optional_flag(value: object, column: str, where: str) -> bool | None:
    text = "" if value is None else str(value).strip().lower()
    if text in ("", "none", "null", "nan"):
        return None
    if text in ("1", "true", "yes"):
        return True
    if text in ("0", "false", "no"):
        return False
    raise ValueError(f"{where}: column {column!r} must be 0, 1 or empty, got {value!r}")


def _listing_paths(value: object, base: Path) -> tuple[Path, ...]:
    if isinstance(value, list):
        items = [str(item) for item in value]
    else:
        items = [] if value is None else str(value).split(";")
    return tuple(base / item.strip() for item in items if item.strip())


def load_labelled_photos(manifest: Path) -> list[LabelledPhoto]:
    """Read a user's labelled photos: CSV or JSONL with columns `photo`, `damage` (0/1, optional),
    `matches_listing` (0/1, optional) and `listing_images` (';'-separated in CSV, a list or a
    ';'-separated string in JSONL). Relative paths are taken from the manifest's folder.

    This is also the format the reviewer label corrections are exported to, so corrected labels
    can be fed straight back into training with `--extra-manifest`.
    """
    base = manifest.parent
    if manifest.suffix.lower() == ".jsonl":
        rows: Iterable[dict[str, object]] = (
            json.loads(line) for line in manifest.read_text().splitlines() if line.strip()
        )
    elif manifest.suffix.lower() == ".csv":
        rows = _read_manifest(manifest)
    else:
        raise ValueError(f"{manifest}: expected a .csv or .jsonl manifest")
    photos = []
    for number, row in enumerate(rows, start=1):
        where = f"{manifest.name} row {number}"
        if not row.get("photo"):
            raise ValueError(f"{where}: the 'photo' column is empty")
        photos.append(
            LabelledPhoto(
                path=base / str(row["photo"]),
                damage=_optional_flag(row.get("damage"), "damage", where),
                matches_listing=_optional_flag(
                    row.get("matches_listing"), "matches_listing", where
                ),
                listing_images=_listing_paths(row.get("listing_images"), base),
            )
        )
    return photos


def check_labelled_photos(manifest: Path) -> list[LabelledPhoto]:
    """`load_labelled_photos`, refusing a row whose photo or listing image is not a file: found
    before any rendering, with the row named, rather than half-way through the caches."""
    photos = load_labelled_photos(manifest)
    for number, photo in enumerate(photos, start=1):
        for path in (photo.path, *photo.listing_images):
            if not path.is_file():
                raise ValueError(f"{manifest.name} row {number}: {path} is not a file")
    return photos


def write_labelled_photos(path: Path, photos: Iterable[LabelledPhoto]) -> Path:
    """Write labelled photos as a CSV manifest that `load_labelled_photos` reads back."""

    def flag(value: bool | None) -> str:
        return "" if value is None else str(int(value))

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("photo", "damage", "matches_listing", "listing_images"))
        for photo in photos:
            writer.writerow(
                (
                    photo.path,
                    flag(photo.damage),
                    flag(photo.matches_listing),
                    ";".join(str(image) for image in photo.listing_images),
                )
            )
    return path


def assign_splits(
    groups: Iterable[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """Deterministic group -> split, by a seeded hash, independent of the order of `groups`.

    Groups are ranked by hash; the first `test_fraction` of them go to test, the next
    `val_fraction` to val. Adding a group elsewhere never moves an existing one across much.
    """
    unique = sorted(set(groups))
    ranked = sorted(
        unique, key=lambda group: hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()
    )
    n_test = round(len(ranked) * test_fraction)
    n_val = round(len(ranked) * val_fraction)
    split_of = {}
    for rank, group in enumerate(ranked):
        split_of[group] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return split_of


@dataclass(frozen=True)
class Splits:
    """Everything the recipe reads, already split. Listings are kept for every product: at
    evaluation an unseen product's photo is ranked against all 61 catalog images."""

    grocery_photos: dict[str, list[GroceryImage]]
    listings: list[GroceryImage]
    product_split: dict[str, str]
    packages: dict[str, list[PackageImage]]


def make_splits(root: Path, val_fraction: float, test_fraction: float, seed: int) -> Splits:
    grocery = load_grocery(root)
    packages = load_packages(root)
    product_split = assign_splits(
        (image.product for image in grocery), val_fraction, test_fraction, seed
    )
    source_split = assign_splits(
        (package.source_id for package in packages), val_fraction, test_fraction, seed
    )
    return Splits(
        grocery_photos={
            split: [g for g in grocery if g.role == "photo" and product_split[g.product] == split]
            for split in SPLITS
        },
        listings=[g for g in grocery if g.role == "listing"],
        product_split=product_split,
        packages={
            split: [p for p in packages if source_split[p.source_id] == split] for split in SPLITS
        },
    )


def product_index(splits: Splits) -> dict[str, int]:
    """Product name -> its position in `splits.listings` (the product ids used everywhere)."""
    return {listing.product: index for index, listing in enumerate(splits.listings)}


def hard_negative_listing(photo: GroceryImage, listings: list[GroceryImage]) -> GroceryImage:
    """The other listing a photo is tested against: a product of the same coarse class (another
    juice for a juice); for a product alone in its class, one of the same category. The choice
    is deterministic (by hash) so the evaluation pairs never change between runs."""
    others = [item for item in listings if item.product != photo.product]
    same_class = [item for item in others if item.coarse_class == photo.coarse_class]
    pool = same_class or [item for item in others if item.category == photo.category] or others
    digest = hashlib.sha256(str(photo.path.name).encode()).digest()
    return sorted(pool, key=lambda item: item.product)[digest[0] % len(pool)]
