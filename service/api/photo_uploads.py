"""Uploaded files -> decoded photos (all or nothing) -> stored originals.

A request whose files include one that intake refuses is refused as a whole, with one entry per
bad file, so a buyer never ends up with half their evidence stored and nothing changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from fastapi import Request
from sqlalchemy.orm import Session

from service.api.metrics import Metrics
from service.api.problems import ProblemError
from service.api.uploads import MultipartBody, UploadedFile, read_multipart
from service.config import UploadLimits
from service.db import crud
from service.db.models import Photo as PhotoRow
from service.duplicates import format_hash, format_hashes
from service.intake import IntakeLimits, Photo, PhotoRejected, open_photo
from service.store import PhotoStore

# Refusals that are about size rather than content get 413, like the streaming cap.
_SIZE_CODES = {"file_too_large", "too_many_pixels"}


@dataclass(frozen=True)
class AcceptedPhoto:
    filename: str | None
    data: bytes
    photo: Photo


async def read_photo_files(request: Request, limits: UploadLimits) -> MultipartBody:
    """The multipart field `files` of a photo upload, within the count and byte caps."""
    return await read_multipart(
        request,
        file_field="files",
        max_files=limits.max_files_per_request,
        max_file_bytes=limits.max_upload_bytes,
    )


def accept_photos(
    files: list[UploadedFile], *, limits: IntakeLimits, metrics: Metrics
) -> list[AcceptedPhoto]:
    accepted: list[AcceptedPhoto] = []
    refused: list[dict[str, str | int | None]] = []
    for number, upload in enumerate(files, start=1):
        try:
            photo = open_photo(upload.data, limits=limits)
        except PhotoRejected as error:
            metrics.photos_rejected.labels(error.code).inc()
            refused.append(
                {
                    "index": number,
                    "filename": upload.filename,
                    "code": error.code,
                    "message": error.message,
                    "tip": error.tip,
                }
            )
            continue
        accepted.append(AcceptedPhoto(upload.filename, upload.data, photo))
    if refused:
        only_size = all(item["code"] in _SIZE_CODES for item in refused)
        names = ", ".join(str(item["filename"] or f"file {item['index']}") for item in refused)
        first = refused[0]
        raise ProblemError(
            413 if only_size else 422,
            str(first["code"]) if len(refused) == 1 else "photos_rejected",
            "Photo refused" if len(refused) == 1 else "Photos refused",
            f"{names}: {first['message']}"
            if len(refused) == 1
            else (
                f"{len(refused)} of {len(files)} files cannot be used ({names}); nothing was "
                "stored."
            ),
            files=refused,
        )
    return accepted


def store_originals(store: PhotoStore, accepted: Sequence[AcceptedPhoto]) -> None:
    """Write the originals (idempotent, content-addressed), before the transaction that records
    them: each write ends in an fsync, and inside the transaction it would hold SQLite's write
    lock, and with it every other upload, for that long. An original whose transaction then
    fails stays in the store unrecorded, as one did when it was written inside the transaction."""
    for item in accepted:
        store.put(item.data)


def record_photo(
    session: Session,
    *,
    accepted: AcceptedPhoto,
    window_hashes: Sequence[int] = (),
    now: datetime,
) -> PhotoRow:
    """The metadata row of an original `store_originals` wrote; evidence photos give their
    `window_hashes` (whole frame first) for the duplicate index."""
    return crud.get_or_add_photo(
        session,
        photo_id=accepted.photo.photo_id,
        image_format=accepted.photo.format,
        byte_size=accepted.photo.byte_size,
        size=accepted.photo.original_size,
        has_gps=accepted.photo.has_gps,
        perceptual_hash=format_hash(window_hashes[0]) if window_hashes else None,
        window_hashes=format_hashes(window_hashes) if window_hashes else None,
        now=now,
    )
