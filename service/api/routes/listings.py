"""Listings and their images (admins)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Request
from starlette.concurrency import run_in_threadpool

from service.api import schemas, views
from service.api.deps import AdminKey, ReviewerOrAdminKey, RuntimeDep
from service.api.photo_uploads import accept_photos, read_photo_files, record_photo, store_originals
from service.api.problems import ProblemError
from service.api.rescore import rescore_open_evidence
from service.api.runtime import Runtime, utcnow
from service.api.uploads import MultipartBody
from service.db import crud
from service.db.models import ApiKey
from service.db.session import transaction

logger = logging.getLogger("service.api")
router = APIRouter(prefix="/v1/listings", tags=["listings"])
ListingId = Annotated[str, Path(min_length=1, max_length=64, pattern=schemas.ONE_LINE)]
PROBLEMS = {code: {"model": schemas.Problem} for code in (401, 403, 404, 409, 413, 415, 422)}
MULTIPART_FILES = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            }
        },
    }
}


def _actor(key: ApiKey) -> crud.Actor:
    return crud.Actor(key_id=key.key_id, role=key.role)


@router.post(
    "",
    status_code=201,
    response_model=schemas.ListingPublic,
    responses=PROBLEMS,
    summary="Create a listing",
)
def create_listing(
    body: schemas.ListingCreate, runtime: RuntimeDep, key: AdminKey
) -> schemas.ListingPublic:
    listing_id = body.listing_id or crud.new_id("lst")
    now = utcnow()
    with transaction(runtime.sessions) as session:
        if crud.get_listing(session, listing_id=listing_id) is not None:
            raise ProblemError(
                409, "listing_exists", "Listing exists", f"Listing {listing_id} already exists."
            )
        listing = crud.create_listing(
            session, listing_id=listing_id, title=body.title, category=body.category, now=now
        )
        crud.record_audit(
            session,
            actor=_actor(key),
            action="listing_created",
            listing_id=listing_id,
            detail={"title": body.title, "category": body.category},
            now=now,
        )
    return views.listing_public(listing, [])


def store_listing_images(
    runtime: Runtime, key: ApiKey, listing_id: str, body: MultipartBody
) -> schemas.ListingImagesPublic:
    """Decode (all or nothing), store and attach the images (also used by `triage demo`)."""
    with runtime.sessions() as session:
        if crud.get_listing(session, listing_id=listing_id) is None:
            raise ProblemError(
                404, "listing_not_found", "Listing not found", f"No listing {listing_id}."
            )
    accepted = accept_photos(
        body.files, limits=runtime.settings.limits.intake_limits(), metrics=runtime.metrics
    )
    now = utcnow()
    store_originals(runtime.store, accepted)
    with transaction(runtime.sessions) as session:
        added = []
        for item in accepted:
            photo = record_photo(session, accepted=item, now=now)
            session.flush()
            image = crud.add_listing_image(
                session, listing_id=listing_id, photo_id=photo.photo_id, now=now
            )
            session.flush()
            added.append(views.listing_image_public(image, photo))
        crud.record_audit(
            session,
            actor=_actor(key),
            action="listing_images_added",
            listing_id=listing_id,
            detail={"photo_ids": [image.photo_id for image in added]},
            now=now,
        )
    # Claims already open on this listing were compared with fewer images: compare them again.
    try:
        rescore_open_evidence(
            runtime, actor=_actor(key), now=now, why="listing images added", listing_id=listing_id
        )
    except Exception:  # the images are stored: answer for them, and say what was not done
        logger.exception("open claims not compared again", extra={"listing_id": listing_id})
    return schemas.ListingImagesPublic(listing_id=listing_id, data=added, count=len(added))


@router.post(
    "/{listing_id}/images",
    status_code=201,
    response_model=schemas.ListingImagesPublic,
    responses=PROBLEMS,
    openapi_extra=MULTIPART_FILES,
    summary="Add listing images (multipart field `files`)",
)
async def add_listing_images(
    listing_id: ListingId, request: Request, runtime: RuntimeDep, key: AdminKey
) -> schemas.ListingImagesPublic:
    body = await read_photo_files(request, runtime.settings.limits)
    return await run_in_threadpool(store_listing_images, runtime, key, listing_id, body)


@router.get(
    "/{listing_id}",
    response_model=schemas.ListingPublic,
    responses=PROBLEMS,
    summary="A listing with its images",
)
def get_listing(
    listing_id: ListingId, runtime: RuntimeDep, key: ReviewerOrAdminKey
) -> schemas.ListingPublic:
    del key  # reviewers compare the evidence with the listing; admins manage it
    with runtime.sessions() as session:
        listing = crud.get_listing(session, listing_id=listing_id)
        if listing is None:
            raise ProblemError(
                404, "listing_not_found", "Listing not found", f"No listing {listing_id}."
            )
        images = crud.listing_images_with_photos(session, listing_id=listing_id)
    return views.listing_public(listing, images)
