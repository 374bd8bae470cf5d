"""The buyer-side photo check: quality, listing-photo reuse and reuse across claims, no model.

One function, `inspect_photo`, used by POST /v1/evidence/check, by `triage check` and by the
scoring engine, so a buyer sees exactly the findings a reviewer will later see; `check_photo` is
its issues-only form. It sits on the upload path, so it stays cheap: the quality metrics run on
a 256 px copy and the duplicate lookup on one 64-bit hash.

No web or database imports: this is part of the inference core.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from service.duplicates import (
    DUPLICATE_MAX_DISTANCE,
    DuplicateIndex,
    DuplicateMatch,
    closest_distance,
    perceptual_hash,
    photo_windows,
)
from service.intake import Photo
from service.quality import DEFAULT_THRESHOLDS, QualityIssue, QualityThresholds, quality_issues

LISTING_PHOTO_REUSE = QualityIssue(
    "listing_photo_reuse",
    "blocker",
    "This looks like one of the seller's own listing photos, so it cannot show the item you "
    "received.",
    "Photograph the item you received yourself, showing the problem; you can mention the "
    "listing photo in your description instead.",
)
DUPLICATE_ACROSS_CLAIMS = QualityIssue(
    "duplicate_across_claims",
    "blocker",
    "This photo, or a near copy of it, was already used as evidence in another claim.",
    "Take a new photo of the item from this order, showing the problem and, if you can, the "
    "order's packing slip or label.",
)


@dataclass(frozen=True)
class PhotoFindings:
    """A photo's findings, and the stored photos behind its `duplicate_across_claims` (if any),
    nearest first: the claims they belong to are named in the triage reasons."""

    issues: tuple[QualityIssue, ...]
    duplicates: tuple[DuplicateMatch, ...] = ()


def reuse_detectable(quality_codes: Collection[str]) -> bool:
    """Whether reuse findings mean anything for a photo with these quality findings.

    A nearly uniform frame (`low_detail`) hashes like every other uniform frame (a wall, a
    covered lens), so a "reuse" finding on it would be noise on top of the real problem.
    """
    return "low_detail" not in quality_codes


# 21 hashes per listing image, as Python ints in a tuple under its 64-character id: about 4.5 MiB
# when full (tracemalloc, session 11; the raw 8-byte hashes alone would be 0.7 MiB).
LISTING_WINDOWS_CACHE_SIZE = 4096
_listing_windows: OrderedDict[str, tuple[int, ...]] = OrderedDict()
_listing_windows_lock = threading.Lock()


def listing_windows(listing: Photo) -> tuple[int, ...]:
    """`photo_windows` of a listing image, remembered by its photo id.

    Every check against a listing compares with the same few images, and their 21 hashes
    cost a few milliseconds per image; the id is the SHA-256 of the bytes, so the windows stored
    under an id can never go stale.
    """
    with _listing_windows_lock:
        windows = _listing_windows.get(listing.photo_id)
        if windows is not None:
            _listing_windows.move_to_end(listing.photo_id)
            return windows
    windows = photo_windows(listing.image)
    with _listing_windows_lock:
        _listing_windows[listing.photo_id] = windows
        while len(_listing_windows) > LISTING_WINDOWS_CACHE_SIZE:
            _listing_windows.popitem(last=False)
    return windows


def matches_listing(
    photo: Photo,
    listing_photos: Sequence[Photo],
    max_distance: int,
    *,
    photo_hash: int | None = None,
) -> bool:
    """Whether the photo is a copy (re-encoded, resized or cropped) of a listing image.

    `photo_hash` is the photo's whole-frame hash when the caller already has it.
    """
    upload_hash = perceptual_hash(photo.image) if photo_hash is None else photo_hash
    return any(
        closest_distance(upload_hash, listing_windows(listing)) <= max_distance
        for listing in listing_photos
    )


# The model flags `listing_photo_reuse` where a photo embeds as close to a listing image as only
# the same picture should (the card's `listing_reuse_similarity`). Genuine photos of a product
# can embed that close too: 3.0 % of the test products' phone photos did with model 1.3.0 (0.6 %
# of the validation products' it was set on). They are other pictures, so their hashes stay
# 14-32 bits from the listing image's windows (1st percentile on validation: 16), while edited
# copies that the 8-bit hash check misses (turned a few degrees, a band over them, cropped 20 %,
# a shop-page screenshot) sit at 10-20. So the embedding's finding stands only where the hash is
# within this many bits too: 0 of 771 genuine test photos, against 23 without it
# (bench/listing_reuse_study.py; docs/quality.md §3).
LISTING_REUSE_CORROBORATION_DISTANCE = 16


def corroborates_listing_reuse(photo_hash: int, listing: Photo) -> bool:
    """Whether the photo's whole-frame hash is near enough to one of the listing image's windows
    for an embedding match with that image to count as reuse (see above)."""
    return (
        closest_distance(photo_hash, listing_windows(listing))
        <= LISTING_REUSE_CORROBORATION_DISTANCE
    )


def find_duplicates(
    photo_hash: int,
    duplicate_index: DuplicateIndex,
    *,
    exclude_refs: Collection[str] = (),
    max_distance: int = DUPLICATE_MAX_DISTANCE,
) -> list[DuplicateMatch]:
    """Stored photos the one with this whole-frame hash is a near copy of, nearest first,
    leaving out `exclude_refs` (the refs of the claim the photo belongs to, so re-uploading
    one's own photo is no reuse). Not thread-safe, like the index."""
    matches = duplicate_index.query(photo_hash, max_distance)
    return [match for match in matches if match.ref not in exclude_refs]


def inspect_photo(
    photo: Photo,
    *,
    listing_photos: Sequence[Photo] = (),
    duplicate_index: DuplicateIndex | None = None,
    exclude_refs: Collection[str] = (),
    duplicate_lock: AbstractContextManager[Any] | None = None,
    photo_hash: int | None = None,
    thresholds: QualityThresholds = DEFAULT_THRESHOLDS,
    max_distance: int = DUPLICATE_MAX_DISTANCE,
) -> PhotoFindings:
    """Every buyer-facing finding for one decoded photo, blockers and warnings together, with
    the matches behind `duplicate_across_claims`.

    `duplicate_lock`, when given, is held only around the index look-up (the index is not
    thread-safe); `photo_hash` saves hashing the photo again when the caller already did.
    """
    issues = quality_issues(photo, thresholds)
    if not reuse_detectable([issue.code for issue in issues]):
        return PhotoFindings(tuple(issues))
    if photo_hash is None:
        photo_hash = perceptual_hash(photo.image)
    if listing_photos and matches_listing(
        photo, listing_photos, max_distance, photo_hash=photo_hash
    ):
        issues.append(LISTING_PHOTO_REUSE)
    duplicates: list[DuplicateMatch] = []
    if duplicate_index is not None:
        with duplicate_lock or nullcontext():
            duplicates = find_duplicates(
                photo_hash, duplicate_index, exclude_refs=exclude_refs, max_distance=max_distance
            )
    if duplicates:
        issues.append(DUPLICATE_ACROSS_CLAIMS)
    return PhotoFindings(tuple(issues), tuple(duplicates))


def check_photo(
    photo: Photo,
    *,
    listing_photos: Sequence[Photo] = (),
    duplicate_index: DuplicateIndex | None = None,
    exclude_refs: Collection[str] = (),
    thresholds: QualityThresholds = DEFAULT_THRESHOLDS,
    max_distance: int = DUPLICATE_MAX_DISTANCE,
) -> list[QualityIssue]:
    """`inspect_photo`'s issues alone: what a buyer is shown."""
    findings = inspect_photo(
        photo,
        listing_photos=listing_photos,
        duplicate_index=duplicate_index,
        exclude_refs=exclude_refs,
        thresholds=thresholds,
        max_distance=max_distance,
    )
    return list(findings.issues)
