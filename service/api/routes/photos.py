"""Photos: the display copy (re-encoded, metadata stripped) and the damage heatmap overlay."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Response
from sqlalchemy.orm import Session

from service.api import schemas
from service.api.deps import BuyerOrReviewerKey, RuntimeDep
from service.api.problems import ProblemError
from service.api.runtime import Runtime
from service.auth import Role
from service.db import crud
from service.db.models import ApiKey, ClaimPhoto
from service.intake import display_copy
from service.store import PhotoCorrupted, PhotoNotFound

router = APIRouter(prefix="/v1/photos", tags=["photos"])
logger = logging.getLogger("service.api")
PhotoId = Annotated[str, Path(min_length=1, max_length=64)]
PROBLEMS = {code: {"model": schemas.Problem} for code in (401, 403, 404)}
IMAGE_RESPONSE = {"content": {"image/jpeg": {}}, "description": "JPEG display copy"}
PNG_RESPONSE = {"content": {"image/png": {}}, "description": "PNG heatmap overlay"}
# Content-addressed, so a photo id's bytes never change; private because evidence is personal.
_CACHE = "private, max-age=86400, immutable"


def photo_not_found(photo_id: str) -> ProblemError:
    return ProblemError(404, "photo_not_found", "Photo not found", f"No photo {photo_id}.")


def _visible(session: Session, photo_id: str, key: ApiKey) -> bool:
    if key.role == Role.reviewer:
        return crud.get_photo(session, photo_id=photo_id) is not None
    return crud.photo_visible_to_owner(session, photo_id=photo_id, owner_key_id=key.key_id)


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


@router.get(
    "/{photo_id}",
    response_class=Response,
    responses={200: IMAGE_RESPONSE, **PROBLEMS},
    summary="Display copy: oriented JPEG without metadata (never the original)",
)
def get_photo(photo_id: PhotoId, runtime: RuntimeDep, key: BuyerOrReviewerKey) -> Response:
    with runtime.sessions() as session:
        if not _visible(session, photo_id, key):
            raise photo_not_found(photo_id)
    copy = display_copy(_original(runtime, photo_id))
    return Response(copy, media_type="image/jpeg", headers={"Cache-Control": _CACHE})


@router.get(
    "/{photo_id}/heatmap.png",
    response_class=Response,
    responses={200: PNG_RESPONSE, **PROBLEMS},
    summary="The model's damage heatmap over the photo",
)
def get_heatmap(photo_id: PhotoId, runtime: RuntimeDep, key: BuyerOrReviewerKey) -> Response:
    owner = None if key.role == Role.reviewer else key.key_id
    with runtime.sessions() as session:
        evidence: ClaimPhoto | None = crud.claim_photo_for_heatmap(
            session, photo_id=photo_id, owner_key_id=owner
        )
    if evidence is None or evidence.damage_map is None:
        raise photo_not_found(photo_id)
    png = runtime.render_heatmap(_original(runtime, photo_id), evidence.damage_map)
    return Response(png, media_type="image/png", headers={"Cache-Control": _CACHE})
