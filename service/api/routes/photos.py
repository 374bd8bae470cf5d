"""Photos: the display copy (re-encoded, metadata stripped) and the damage heatmap overlay.

A display copy is encoded on the first request for it and served from `Runtime.display_copies`
after that (photos are content-addressed, so the copy of a photo id never changes while the
display format stays the same). Its ETag names the photo id and that format's version, so a
client revalidating with If-None-Match gets a 304 without a byte of the image.

A heatmap PNG is cached the same way in `Runtime.heatmaps`, keyed by the SHA-256 of what
determines its bytes (`Runtime.heatmap_key`: photo id, the stored damage map, format version), so
a new damage map for the same photo (another claim, a model upgrade) gets a new file and ETag.
Once a PNG that was not cached is stored, the photo's PNGs whose damage map is no longer stored
are deleted (`Runtime.prune_heatmaps`), that new PNG included if a rescore replaced its map while
it was rendered, so a rescore leaves no old file behind.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Header, Path, Response
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.api import schemas
from service.api.deps import BuyerOrReviewerKey, RuntimeDep
from service.api.problems import ProblemError
from service.api.runtime import Runtime
from service.auth import Role
from service.db import crud
from service.db.models import ApiKey, ClaimPhoto
from service.intake import display_copy
from service.store import PhotoCorrupted, PhotoNotFound, SealedFileCache

router = APIRouter(prefix="/v1/photos", tags=["photos"])
logger = logging.getLogger("service.api")
PhotoId = Annotated[str, Path(min_length=1, max_length=64, pattern=schemas.ONE_LINE)]
PROBLEMS = {code: {"model": schemas.Problem} for code in (401, 403, 404)}
IMAGE_RESPONSE = {"content": {"image/jpeg": {}}, "description": "JPEG display copy"}
NOT_MODIFIED_RESPONSE = {"description": "Not modified: If-None-Match names the current ETag"}
PNG_RESPONSE = {"content": {"image/png": {}}, "description": "PNG heatmap overlay"}
# Content-addressed, so a photo id's bytes never change; private because evidence is personal.
_CACHE = "private, max-age=86400, immutable"
# A heatmap's URL shows whatever damage map is stored now (a rescore changes it), so browsers
# revalidate it every time; the ETag makes that a cheap 304.
_HEATMAP_CACHE = "private, no-cache"


def photo_not_found(photo_id: str) -> ProblemError:
    return ProblemError(404, "photo_not_found", "Photo not found", f"No photo {photo_id}.")


def _visible(session: Session, photo_id: str, key: ApiKey) -> bool:
    if key.role == Role.reviewer:
        return crud.get_photo(session, photo_id=photo_id) is not None
    return crud.photo_visible_to_owner(session, photo_id=photo_id, owner_key_id=key.key_id)


def display_etag(photo_id: str, version: int) -> str:
    """Strong ETag of a photo's display copy: the same photo id and display format version
    always give the same bytes (they are read from the cache once made)."""
    return f'"{photo_id}-display-v{version}"'


_ENTITY_TAG = re.compile(r'(?:W/)?("[^"]*")')


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (weak comparison, as RFC 9110 13.1.2
    prescribes for it: a W/ prefix is ignored), or is `*`."""
    if if_none_match.strip() == "*":
        return True
    return etag in _ENTITY_TAG.findall(if_none_match)


def _original(runtime: Runtime, photo_id: str) -> bytes:
    try:
        return runtime.store.get(photo_id)
    except PhotoNotFound:
        raise photo_not_found(photo_id) from None
    except PhotoCorrupted:
        logger.error("stored photo fails its hash check", extra={"photo_id": photo_id})
        raise ProblemError(
            500,
            "photo_corrupted",
            "Stored photo damaged",
            "The stored original no longer matches its hash; it is withheld.",
        ) from None


def _cached_response(
    cache: SealedFileCache,
    key: str,
    make: Callable[[], bytes],
    *,
    media_type: str,
    headers: dict[str, str],
    if_none_match: str | None,
    photo_id: str,
    after_store: Callable[[], None] | None = None,
) -> Response:
    """304 when If-None-Match names the current ETag; otherwise the cached bytes, made and
    stored on a miss, then `after_store` is called. A full or read-only disk costs speed, not the
    answer: they are sent anyway."""
    if if_none_match is not None and etag_matches(if_none_match, headers["ETag"]):
        return Response(status_code=304, headers=headers)
    data = cache.get(key)
    if data is None:
        data = make()
        try:
            cache.put(key, data)
        except OSError:
            logger.warning(f"{cache.kind} not cached", extra={"photo_id": photo_id}, exc_info=True)
        if after_store is not None:
            after_store()
    return Response(data, media_type=media_type, headers=headers)


@router.get(
    "/{photo_id}",
    response_class=Response,
    responses={200: IMAGE_RESPONSE, 304: NOT_MODIFIED_RESPONSE, **PROBLEMS},
    summary="Display copy: oriented JPEG without metadata (never the original)",
)
def get_photo(
    photo_id: PhotoId,
    runtime: RuntimeDep,
    key: BuyerOrReviewerKey,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    with runtime.sessions() as session:
        if not _visible(session, photo_id, key):
            raise photo_not_found(photo_id)
    # The original is read and its hash checked even when the copy is cached or the client's
    # is current: a damaged original is withheld (500) exactly as before there was a cache.
    original = _original(runtime, photo_id)
    cache = runtime.display_copies
    return _cached_response(
        cache,
        photo_id,
        lambda: display_copy(original),
        media_type="image/jpeg",
        headers={"Cache-Control": _CACHE, "ETag": display_etag(photo_id, cache.version)},
        if_none_match=if_none_match,
        photo_id=photo_id,
    )


def heatmap_etag(key: str) -> str:
    """Strong ETag of a heatmap PNG: `key` (Runtime.heatmap_key) hashes everything that
    determines its bytes, which are read from the cache once rendered."""
    return f'"heatmap-{key}"'


@router.get(
    "/{photo_id}/heatmap.png",
    response_class=Response,
    responses={200: PNG_RESPONSE, 304: NOT_MODIFIED_RESPONSE, **PROBLEMS},
    summary="The model's damage heatmap over the photo",
)
def get_heatmap(
    photo_id: PhotoId,
    runtime: RuntimeDep,
    key: BuyerOrReviewerKey,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    owner = None if key.role == Role.reviewer else key.key_id
    with runtime.sessions() as session:
        evidence: ClaimPhoto | None = crud.claim_photo_for_heatmap(
            session, photo_id=photo_id, owner_key_id=owner
        )
    if evidence is None or evidence.damage_map is None:
        raise photo_not_found(photo_id)
    # As for the display copy: the original is read and hash-checked on every request, so a
    # damaged original is withheld (500) whether or not its heatmap is cached.
    original = _original(runtime, photo_id)
    damage_map = evidence.damage_map
    cache_key = runtime.heatmap_key(photo_id, damage_map)

    def prune() -> None:
        # Not cached, most often because the map is new: the PNG of the map it replaced can
        # no longer be served. Run after the new PNG is stored, so that it is checked too: a
        # rescore may have replaced `damage_map` while it was rendered. Best effort: a failure
        # leaves a file for start-up's sweep.
        try:
            runtime.prune_heatmaps(photo_id)
        except (OSError, SQLAlchemyError):
            logger.warning("old heatmaps not pruned", extra={"photo_id": photo_id}, exc_info=True)

    return _cached_response(
        runtime.heatmaps,
        cache_key,
        lambda: runtime.render_heatmap(original, damage_map, model_version=evidence.model_version),
        media_type="image/png",
        headers={"Cache-Control": _HEATMAP_CACHE, "ETag": heatmap_etag(cache_key)},
        if_none_match=if_none_match,
        photo_id=photo_id,
        after_store=prune,
    )
