"""Evidence: upload and score a claim's photos; the buyer-side quality check (no state kept)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from service.api import schemas, views
from service.api.deps import BuyerKey, RuntimeDep
from service.api.photo_uploads import (
    AcceptedPhoto,
    accept_photos,
    read_photo_files,
    record_photo,
    store_originals,
)
from service.api.problems import ProblemError
from service.api.routes.claims import actor, claim_resolved, load_claim
from service.api.routes.listings import MULTIPART_FILES
from service.api.runtime import Runtime, utcnow
from service.api.triage import retriage
from service.api.uploads import MultipartBody, PhotoTooLarge, read_multipart
from service.assessment import PhotoAssessment
from service.checks import inspect_photo
from service.db import crud
from service.db.models import ApiKey, ClaimPhoto
from service.db.session import transaction
from service.duplicates import claim_of_ref, evidence_ref
from service.intake import Photo, PhotoRejected, file_too_large, open_photo
from service.quality import rejection_issue

router = APIRouter(tags=["evidence"])
ClaimId = Annotated[str, Path(min_length=1, max_length=64, pattern=schemas.ONE_LINE)]
PROBLEMS = {code: {"model": schemas.Problem} for code in (400, 401, 403, 404, 409, 413, 415, 422)}
MULTIPART_FILE = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "listing_id": {"type": "string"},
                        "claim_id": {"type": "string"},
                    },
                }
            }
        },
    }
}


def _listing_photos(runtime: Runtime, listing_id: str) -> list[Photo]:
    with runtime.sessions() as session:
        images = crud.listing_images_with_photos(session, listing_id=listing_id)
    return [runtime.listing_photo(image.photo_id) for image, _ in images]


def store_evidence(
    runtime: Runtime, key: ApiKey, claim_id: str, body: MultipartBody
) -> schemas.EvidencePublic:
    """Decode (all or nothing), assess, store and re-triage (also used by `triage demo`)."""
    with runtime.sessions() as session:
        claim = load_claim(session, claim_id, key)
        if claim.status == "resolved":
            raise claim_resolved(claim, "no more evidence is accepted")
        listing_id = claim.listing_id
        already = {row.photo_id for row in crud.claim_photos(session, claim_id=claim_id)}
    accepted = accept_photos(
        body.files, limits=runtime.settings.limits.intake_limits(), metrics=runtime.metrics
    )
    fresh: dict[str, AcceptedPhoto] = {}
    for item in accepted:  # the same photo twice (in this request or before) is kept once
        if item.photo.photo_id not in already:
            fresh.setdefault(item.photo.photo_id, item)
    if not fresh:  # a retried upload: every photo is evidence already, nothing changes
        return _stored_evidence(runtime, key, claim_id, {item.photo.photo_id for item in accepted})
    listing_photos = _listing_photos(runtime, listing_id)
    runtime.sync_duplicate_index()
    own_refs = frozenset(evidence_ref(claim_id, photo_id) for photo_id in already | fresh.keys())
    # One model run for the whole upload. assess_many holds the index lock only for the
    # look-ups (fast, not thread-safe), so concurrent uploads still share micro-batches.
    assessments = runtime.assessor.assess_many(
        [item.photo for item in fresh.values()],
        listing_photos=listing_photos,
        duplicate_index=runtime.duplicates,
        exclude_refs=own_refs,
        duplicate_lock=runtime.duplicates_lock,
    )
    runtime.metrics.photos_scored.inc(len(assessments))
    refs = [evidence_ref(claim_id, assessment.photo_id) for assessment in assessments]
    upload_id = crud.new_id("upload")
    recorded = False
    try:
        # Inside the try: a registration that committed before a failed look-up is removed too.
        assessments = runtime.register_pending_evidence(
            upload_id, assessments, refs, own_refs=own_refs
        )
        rows, uploaded, triage = _record_evidence(
            runtime, key, claim_id, fresh, assessments, accepted, utcnow()
        )
        recorded = True
    except IntegrityError:
        # Another upload of the same photo to this claim committed first.
        raise ProblemError(
            409,
            "concurrent_upload",
            "Concurrent upload",
            "The same photo was being added to this claim by another request; retry.",
        ) from None
    finally:
        runtime.settle_pending_evidence(upload_id, assessments, refs, recorded=recorded)
    return _evidence_public(claim_id, rows, uploaded, triage)


def _evidence_public(
    claim_id: str, rows: list[ClaimPhoto], photo_ids: set[str], triage: schemas.TriagePublic
) -> schemas.EvidencePublic:
    """The upload response: the assessments of the photos this upload named."""
    data = [views.assessment_public(row) for row in rows if row.photo_id in photo_ids]
    return schemas.EvidencePublic(claim_id=claim_id, data=data, count=len(data), triage=triage)


def _stored_evidence(
    runtime: Runtime, key: ApiKey, claim_id: str, photo_ids: set[str]
) -> schemas.EvidencePublic:
    """The upload response for photos already stored as the claim's evidence, as they are."""
    with runtime.sessions() as session:
        claim = load_claim(session, claim_id, key)
        rows = crud.claim_photos(session, claim_id=claim_id)
        triage = views.triage_public(claim, runtime.policy, viewer=key.role)
    return _evidence_public(claim_id, rows, photo_ids, triage)


def _record_evidence(
    runtime: Runtime,
    key: ApiKey,
    claim_id: str,
    fresh: dict[str, AcceptedPhoto],
    assessments: list[PhotoAssessment],
    accepted: list[AcceptedPhoto],
    now: datetime,
) -> tuple[list[ClaimPhoto], set[str], schemas.TriagePublic]:
    """One transaction: originals, assessments, new triage and the audit entry."""
    store_originals(runtime.store, list(fresh.values()))
    with transaction(runtime.sessions) as session:
        claim = load_claim(session, claim_id, key)
        # Checked again here, with the row held: a decision may have landed while the photos
        # were being scored, and evidence must neither join a decided claim nor reopen it; a
        # request for evidence that landed is answered by these photos.
        held = crud.hold_unresolved_claim(session, claim_id=claim_id, now=now)
        session.refresh(claim)
        if not held:
            raise claim_resolved(claim, "no more evidence is accepted")
        for item, assessment in zip(fresh.values(), assessments, strict=True):
            record_photo(
                session,
                accepted=item,
                window_hashes=assessment.window_hashes,
                now=now,
            )
            session.flush()
            crud.add_claim_photo(
                session,
                claim_id=claim_id,
                photo_id=item.photo.photo_id,
                filename=item.filename,
                damage=assessment.damage,
                mismatch=assessment.mismatch,
                match_similarity=assessment.match_similarity,
                issues=[issue.to_dict() for issue in assessment.issues],
                damage_map=assessment.heatmap.round(4).tolist(),
                # The other claims it repeats, named in the triage reasons.
                duplicate_claims=sorted({claim_of_ref(ref) for ref in assessment.duplicate_refs}),
                model_version=assessment.model_version,
                now=now,
            )
            session.flush()
        if claim.status == "awaiting_evidence" and fresh:
            claim.status = "escalated" if claim.escalated_at else "open"
        claim.updated_at = now
        retriage(session, claim, policy=runtime.policy, now=now)
        crud.record_audit(
            session,
            actor=actor(key),
            action="evidence_added",
            claim_id=claim_id,
            detail={
                "photo_ids": list(fresh),
                "model_version": runtime.model_version,
                "lane": claim.lane,
                "priority": claim.priority,
            },
            now=now,
        )
        rows = crud.claim_photos(session, claim_id=claim_id)
        uploaded = {item.photo.photo_id for item in accepted}
        triage = views.triage_public(claim, runtime.policy, viewer=key.role)
    return rows, uploaded, triage


@router.post(
    "/v1/claims/{claim_id}/evidence",
    status_code=201,
    response_model=schemas.EvidencePublic,
    responses=PROBLEMS,
    openapi_extra=MULTIPART_FILES,
    summary="Upload evidence photos (multipart field `files`); triage is recomputed",
    description="All or nothing: if any file is refused at intake (not an image, corrupt, "
    "unsupported, too large, too many pixels) nothing is stored and the problem document lists "
    "each refused file. A photo already in the claim is not added twice.",
)
async def upload_evidence(
    claim_id: ClaimId, request: Request, runtime: RuntimeDep, key: BuyerKey
) -> schemas.EvidencePublic:
    body = await read_photo_files(request, runtime.settings.limits)
    return await run_in_threadpool(store_evidence, runtime, key, claim_id, body)


def _check(runtime: Runtime, key: ApiKey, body: MultipartBody) -> schemas.EvidenceCheckPublic:
    upload = body.files[0]
    listing_id = body.fields.get("listing_id") or None
    # The claim the photo is meant for (optional, the buyer's own): its photos are no reuse, and
    # its listing is the one compared with when no listing_id is given.
    own_refs: frozenset[str] = frozenset()
    if claim_id := body.fields.get("claim_id") or None:
        with runtime.sessions() as session:
            claim = load_claim(session, claim_id, key)
            listing_id = listing_id or claim.listing_id
            own_refs = frozenset(
                evidence_ref(claim_id, row.photo_id)
                for row in crud.claim_photos(session, claim_id=claim_id)
            )
    listing_photos: list[Photo] = []
    if listing_id is not None:
        with runtime.sessions() as session:
            if crud.get_listing(session, listing_id=listing_id) is None:
                raise ProblemError(
                    422, "unknown_listing", "Unknown listing", f"There is no listing {listing_id}."
                )
        listing_photos = _listing_photos(runtime, listing_id)
    try:
        photo = open_photo(upload.data, limits=runtime.settings.limits.intake_limits())
    except PhotoRejected as error:
        # Still a problem document (4xx), carrying the issue in the same shape as a check
        # result so the buyer's app can show its message and tip like any other finding.
        size_refusal = error.code in ("file_too_large", "too_many_pixels")
        raise ProblemError(
            413 if size_refusal else 422,
            error.code,
            "Photo refused",
            error.message,
            issues=[rejection_issue(error).to_dict()],
        ) from None
    runtime.sync_duplicate_index()
    findings = inspect_photo(
        photo,
        listing_photos=listing_photos,
        duplicate_index=runtime.duplicates,
        exclude_refs=own_refs,
        duplicate_lock=runtime.duplicates_lock,
    )
    public = [schemas.IssuePublic.model_validate(issue.to_dict()) for issue in findings.issues]
    return schemas.EvidenceCheckPublic(
        photo_id=photo.photo_id,
        filename=upload.filename,
        format=photo.format,
        width=photo.original_size[0],
        height=photo.original_size[1],
        usable=all(issue.severity != "blocker" for issue in public),
        issues=public,
    )


@router.post(
    "/v1/evidence/check",
    response_model=schemas.EvidenceCheckPublic,
    responses=PROBLEMS,
    openapi_extra=MULTIPART_FILE,
    summary="Instant quality feedback on one photo (multipart `file`, optional `listing_id`, "
    "`claim_id`)",
    description="Fast (no model run) and stateless. With `claim_id` (one of the buyer's own "
    "claims), that claim's photos are not reported as reuse and its listing is compared with "
    "unless `listing_id` is given. A file that is not a readable photo gets a "
    "422 problem document whose `issues` holds the `unsupported_format` or `corrupt` finding "
    "(message and retake tip); size caps give 413, with the `file_too_large` or "
    "`too_many_pixels` finding.",
)
async def check_evidence(
    request: Request, runtime: RuntimeDep, key: BuyerKey
) -> schemas.EvidenceCheckPublic:
    limits = runtime.settings.limits
    try:
        body = await read_multipart(
            request, file_field="file", max_files=1, max_file_bytes=limits.max_upload_bytes
        )
    except PhotoTooLarge as error:
        # Refused while streaming, before intake: the same finding as intake's refusal.
        refusal = rejection_issue(file_too_large(limits.intake_limits()))
        error.extensions["issues"] = [refusal.to_dict()]
        raise
    return await run_in_threadpool(_check, runtime, key, body)
