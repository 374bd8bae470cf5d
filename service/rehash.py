"""Stored evidence hashed again under every window of the current `photo_windows`.

An evidence photo is stored with the hashes the duplicate checks look it up by
(`photos.window_hashes`). Evidence stored by an older release has fewer: none but the whole
frame's before crop windows were kept, no mirrored or turned windows before flips were. A copy of
it that only a newer window matches (a crop, a mirror image, a quarter turn) is then not found.
`rehash_evidence` decodes each such original from the photo store as an upload is decoded and
stores its full set of hashes (`triage evidence rehash`). A process builds its duplicate index
from these rows when it starts, so a running service finds the new windows after a restart.

Photos are taken in id order, a batch per transaction, so an interrupted run keeps what it
committed and the next run carries on with what is still short; a photo whose original is gone
or no longer decodes is counted and left as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session, sessionmaker

from service.db import crud
from service.db.session import transaction
from service.duplicates import (
    HASHES_PER_PHOTO,
    format_hash,
    format_hashes,
    formatted_length,
    photo_windows,
)
from service.intake import DEFAULT_LIMITS, IntakeLimits, PhotoRejected, open_photo
from service.store import PhotoCorrupted, PhotoNotFound, PhotoStore

FULL_TEXT_LENGTH = formatted_length(HASHES_PER_PHOTO)
REHASH_BATCH = 200


@dataclass
class RehashSummary:
    short: int = 0  # evidence photos found with fewer hashes than HASHES_PER_PHOTO
    rehashed: int = 0
    missing: list[str] = field(default_factory=list)  # not in the photo store
    unreadable: list[str] = field(default_factory=list)  # corrupted, or no longer decodes


def count_short_evidence(sessions: sessionmaker[Session]) -> int:
    """How many evidence photos `rehash_evidence` would hash again."""
    with sessions() as session:
        return crud.count_evidence_short_of(session, text_length=FULL_TEXT_LENGTH)


def rehash_evidence(
    sessions: sessionmaker[Session],
    store: PhotoStore,
    *,
    limits: IntakeLimits = DEFAULT_LIMITS,
    batch_size: int = REHASH_BATCH,
    advance: Callable[[int], None] = lambda done: None,
) -> RehashSummary:
    """Store every evidence photo that has fewer than HASHES_PER_PHOTO hashes under all of
    them; `advance(n)` is called after each batch with the photos it went through."""
    summary = RehashSummary()
    after: str | None = None
    while True:
        with sessions() as session:
            photo_ids = crud.evidence_photos_short_of(
                session, text_length=FULL_TEXT_LENGTH, after=after, limit=batch_size
            )
        if not photo_ids:
            return summary
        after = photo_ids[-1]
        hashed: dict[str, tuple[int, ...]] = {}
        for photo_id in photo_ids:
            try:
                # Decoded as an upload is (oriented, at intake's working size), so the hashes
                # are the ones a fresh upload of the same bytes would be stored under.
                photo = open_photo(store.get(photo_id), limits=limits)
                hashed[photo_id] = photo_windows(photo.image)
            except PhotoNotFound:
                summary.missing.append(photo_id)
            except (PhotoCorrupted, PhotoRejected):
                summary.unreadable.append(photo_id)
        with transaction(sessions) as session:
            for photo_id, windows in hashed.items():
                crud.set_photo_hashes(
                    session,
                    photo_id=photo_id,
                    perceptual_hash=format_hash(windows[0]),
                    window_hashes=format_hashes(windows),
                )
        summary.short += len(photo_ids)
        summary.rehashed += len(hashed)
        advance(len(photo_ids))
