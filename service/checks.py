"""The buyer-side photo check: quality, listing-photo reuse and reuse across claims, no model.

One function, `check_photo`, used by POST /v1/evidence/check, by `triage check` and by the
scoring engine, so a buyer sees exactly the findings a reviewer will later see. It sits on the
upload path, so it stays cheap: the quality metrics run on a 256 px copy and the duplicate lookup
on one 64-bit hash.

No web or database imports: this is part of the inference core.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

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


def matches_listing(photo: Photo, listing_photos: Sequence[Photo], max_distance: int) -> bool:
    """Whether the photo is a copy (re-encoded, resized or cropped) of a listing image."""
    photo_hash = perceptual_hash(photo.image)
    return any(
        closest_distance(photo_hash, photo_windows(listing.image)) <= max_distance
        for listing in listing_photos
    )


def find_duplicates(
    photo: Photo,
    duplicate_index: DuplicateIndex,
    *,
    exclude_refs: Collection[str] = (),
    max_distance: int = DUPLICATE_MAX_DISTANCE,
) -> list[DuplicateMatch]:
    """Stored photos this one is a near copy of, nearest first, leaving out `exclude_refs`
    (the refs of the claim the photo belongs to, so re-uploading one's own photo is no reuse).
    """
    matches = duplicate_index.query(perceptual_hash(photo.image), max_distance)
    return [match for match in matches if match.ref not in exclude_refs]


def check_photo(
    photo: Photo,
    *,
    listing_photos: Sequence[Photo] = (),
    duplicate_index: DuplicateIndex | None = None,
    exclude_refs: Collection[str] = (),
    thresholds: QualityThresholds = DEFAULT_THRESHOLDS,
    max_distance: int = DUPLICATE_MAX_DISTANCE,
) -> list[QualityIssue]:
    """Every buyer-facing finding for one decoded photo, blockers and warnings together."""
    issues = quality_issues(photo, thresholds)
    if any(issue.code == "low_detail" for issue in issues):
        # A nearly uniform frame hashes like every other uniform frame (a wall, a covered
        # lens), so a "reuse" finding on it would be noise on top of the real problem.
        return issues
    if listing_photos and matches_listing(photo, listing_photos, max_distance):
        issues.append(LISTING_PHOTO_REUSE)
    if duplicate_index is not None and find_duplicates(
        photo, duplicate_index, exclude_refs=exclude_refs, max_distance=max_distance
    ):
        issues.append(DUPLICATE_ACROSS_CLAIMS)
    return issues
