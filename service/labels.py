"""Reviewer label corrections exported as a training manifest (`triage labels export`).

Reviewers label evidence photos in their decisions (`labels: [{photo_id, damage?,
matches_listing?}]`, stored in `reviews.labels`). A later review of a claim corrects an earlier
one, field by field: a field it leaves out keeps the earlier value. `merge_labels` is that rule,
pure; `export_labels` reads the database and the photo store and writes the manifest that
`training.data.load_labelled_photos` reads (`python -m training train --extra-manifest`):

    OUT_DIR/labels.csv          photo,damage,matches_listing,listing_images,claim_id,photo_id,
                                reviewed_at (paths relative to OUT_DIR, labels 0/1 or empty)
    OUT_DIR/photos/<id>.<ext>   the original bytes, evidence and listing images alike

Files are named by content (the photo id is the SHA-256 of the bytes), so a re-run into the same
folder reuses what it already copied and only labels.csv is rewritten.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.db import crud
from service.store import PhotoCorrupted, PhotoNotFound, PhotoStore, write_atomically

MANIFEST_NAME = "labels.csv"
PHOTOS_FOLDER = "photos"
COLUMNS = (
    "photo",
    "damage",
    "matches_listing",
    "listing_images",
    "claim_id",
    "photo_id",
    "reviewed_at",
)
# File extension per stored format (service.intake.SUPPORTED_FORMATS).
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "HEIF": "heic"}
LABEL_FIELDS = ("damage", "matches_listing")
EXPORT_MODE = 0o644  # the export is for others (a training job, a colleague) to read


@dataclass(frozen=True)
class MergedLabel:
    """The current label of one evidence photo of one claim."""

    claim_id: str
    photo_id: str
    damage: bool | None
    matches_listing: bool | None
    reviewed_at: datetime  # the latest review that set one of the fields


def merge_labels(reviews: Iterable[crud.ReviewLabels]) -> list[MergedLabel]:
    """Per (claim, photo), each field as the latest review that sets it left it.

    Reviews are applied oldest first (ties by review id), whatever order they come in; within
    one review a later entry for the same photo wins. A field that is missing or None is not
    set. Pairs where no review ever set a field are left out. Sorted by (reviewed_at, claim_id,
    photo_id).
    """
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for review in sorted(reviews, key=lambda review: (review.created_at, review.review_id)):
        for label in review.labels:
            if not isinstance(label, Mapping) or not isinstance(label.get("photo_id"), str):
                continue
            values = {name: label.get(name) for name in LABEL_FIELDS}
            values = {name: value for name, value in values.items() if isinstance(value, bool)}
            if not values:
                continue
            current = merged.setdefault((review.claim_id, label["photo_id"]), {})
            current.update(values, reviewed_at=review.created_at)
    labels = [
        MergedLabel(
            claim_id=claim_id,
            photo_id=photo_id,
            damage=values.get("damage"),
            matches_listing=values.get("matches_listing"),
            reviewed_at=values["reviewed_at"],
        )
        for (claim_id, photo_id), values in merged.items()
    ]
    return sorted(labels, key=lambda label: (label.reviewed_at, label.claim_id, label.photo_id))


def photo_filename(photo_id: str, image_format: str) -> str:
    return f"{photo_id}.{EXTENSIONS.get(image_format, image_format.lower())}"


@dataclass
class ExportSummary:
    manifest: Path
    rows: int = 0
    # Photos whose bytes were missing from the store (or no longer matched their hash).
    skipped_photos: set[str] = field(default_factory=set)
    rows_dropped: int = 0  # labelled photo missing: the row is not written
    listing_images_dropped: int = 0  # listing image missing: left out of `listing_images`
    copied: int = 0
    reused: int = 0


def export_labels(
    sessions: sessionmaker[Session],
    store: PhotoStore,
    out_dir: Path,
    *,
    since: datetime | None = None,
    warn: Callable[[str], None] = lambda message: None,
) -> ExportSummary:
    """Write OUT_DIR/labels.csv and copy the photos it names into OUT_DIR/photos.

    With `since`, only the photos whose current label was last set at or after it (the labels
    are still merged over the claim's whole review history). A photo whose bytes are missing
    from the store is skipped with a `warn`ing: a labelled one drops its row, a listing image is
    left out of its row's `listing_images`.
    """
    if since is not None and since.tzinfo is None:
        raise ValueError("since must be timezone-aware (reviews are stored in UTC)")
    with sessions() as session:
        labels = merge_labels(crud.review_labels(session, since=since))
        if since is not None:
            labels = [label for label in labels if label.reviewed_at >= since]
        photos = crud.photos_by_id(session, photo_ids={label.photo_id for label in labels})
        listings = crud.claims_listing_images(
            session, claim_ids={label.claim_id for label in labels}
        )
        formats = {photo_id: row.format for photo_id, row in photos.items()}
        listing_files = {
            claim_id: [(row.photo_id, row.format) for row in rows]
            for claim_id, rows in listings.items()
        }

    photos_dir = out_dir / PHOTOS_FOLDER
    photos_dir.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary(manifest=out_dir / MANIFEST_NAME)
    copied: dict[str, str | None] = {}  # photo id -> path relative to out_dir, None if missing

    def copy(photo_id: str, image_format: str | None) -> str | None:
        if photo_id not in copied:
            copied[photo_id] = _copy_photo(store, photos_dir, photo_id, image_format, summary, warn)
        return copied[photo_id]

    rows = []
    for label in labels:
        photo = copy(label.photo_id, formats.get(label.photo_id))
        if photo is None:
            summary.rows_dropped += 1
            continue
        listing_images = []
        for photo_id, image_format in listing_files.get(label.claim_id, []):
            path = copy(photo_id, image_format)
            if path is None:
                summary.listing_images_dropped += 1
            else:
                listing_images.append(path)
        rows.append(
            {
                "photo": photo,
                "damage": _flag(label.damage),
                "matches_listing": _flag(label.matches_listing),
                "listing_images": ";".join(listing_images),
                "claim_id": label.claim_id,
                "photo_id": label.photo_id,
                "reviewed_at": label.reviewed_at.isoformat(),
            }
        )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(summary.manifest, buffer.getvalue().encode(), mode=EXPORT_MODE)
    summary.rows = len(rows)
    return summary


def _flag(value: bool | None) -> str:
    return "" if value is None else str(int(value))


def _copy_photo(
    store: PhotoStore,
    photos_dir: Path,
    photo_id: str,
    image_format: str | None,
    summary: ExportSummary,
    warn: Callable[[str], None],
) -> str | None:
    """Copy one original into the export (or reuse the copy already there); None if missing."""
    if image_format is None:  # labelled but no photo row: nothing to know its bytes by
        return _skip(photo_id, "it has no stored photo record", summary, warn)
    name = photo_filename(photo_id, image_format)
    target = photos_dir / name
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == photo_id:
        summary.reused += 1
    else:
        try:
            data = store.get(photo_id)
        except PhotoNotFound:
            return _skip(photo_id, "its bytes are missing from the photo store", summary, warn)
        except PhotoCorrupted:
            return _skip(photo_id, "its stored bytes no longer match its hash", summary, warn)
        write_atomically(target, data, mode=EXPORT_MODE)
        summary.copied += 1
    return f"{PHOTOS_FOLDER}/{name}"


def _skip(photo_id: str, reason: str, summary: ExportSummary, warn: Callable[[str], None]) -> None:
    summary.skipped_photos.add(photo_id)
    warn(f"photo {photo_id} skipped: {reason}")
    return None
