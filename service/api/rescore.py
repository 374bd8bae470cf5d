"""Open claims' evidence scored again: after a listing's images change, or after a model upgrade.

Mismatch and listing-photo reuse are judged against the listing's images at upload time, and
every score by the model serving then. When an admin adds images to a listing later, the open
claims on it keep scores made against fewer images (a mismatch of null with the reason "listing
has no images to compare with", or the seller's own new listing image not flagged): the request
that added them scores that listing's open evidence again. When a new model is deployed, open
claims keep the old model's scores, which the policy would judge against the new card's
thresholds: `triage evidence rescore` scores every open claim's evidence that another model
scored.

Either way each photo is run through the shared assessor against every image of its listing now,
and the whole assessment by the model serving now is stored (damage, map, mismatch, similarity,
findings, model version), keeping only the duplicates across claims, which belong to the order
of uploads; each claim is re-triaged, with an audit entry. One listing at a time, a chunk of
photos per model run, a transaction per listing: an interrupted rescore keeps what it committed,
and the upgrade's is resumed by running it again (the rows done carry the new model). A photo
whose original cannot be read keeps its scores.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from service.api.runtime import Runtime
from service.api.triage import retriage
from service.assessment import PhotoAssessment
from service.checks import DUPLICATE_ACROSS_CLAIMS
from service.db import crud
from service.db.session import transaction
from service.intake import Photo, PhotoRejected, open_photo
from service.store import PhotoCorrupted, PhotoNotFound

RESCORE_CHUNK = 16  # evidence photos per model run


def merged_issues(
    stored: list[dict[str, Any]], rescored: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The rescored findings, with the stored `duplicate_across_claims` in place of the
    rescore's (duplicates were judged at upload, in upload order; the rescore has no index)."""
    code = DUPLICATE_ACROSS_CLAIMS.code
    return [issue for issue in rescored if issue["code"] != code] + [
        issue for issue in stored if issue["code"] == code
    ]


def rescore_open_evidence(
    runtime: Runtime,
    *,
    actor: crud.Actor,
    now: datetime,
    why: str,
    listing_id: str | None = None,
    other_than_model: str | None = None,
) -> int:
    """Score again the open claims' evidence of `listing_id` (all listings if None) and/or only
    what another model than `other_than_model` scored; returns how many claims were re-triaged."""
    with runtime.sessions() as session:
        photo_ids_by_listing = crud.open_evidence_photo_ids(
            session, listing_id=listing_id, other_than_model=other_than_model
        )
    claims = 0
    for found_listing, photo_ids in photo_ids_by_listing.items():
        assessments = _assess(runtime, found_listing, sorted(photo_ids))
        claims += _store(
            runtime,
            found_listing,
            assessments,
            actor=actor,
            now=now,
            why=why,
            other_than_model=other_than_model,
        )
    return claims


def _assess(runtime: Runtime, listing_id: str, photo_ids: list[str]) -> dict[str, PhotoAssessment]:
    with runtime.sessions() as session:
        images = crud.listing_images_with_photos(session, listing_id=listing_id)
    listing_photos: list[Photo] = []
    for image, _ in images:
        try:
            listing_photos.append(runtime.listing_photo(image.photo_id))
        except (PhotoNotFound, PhotoCorrupted, PhotoRejected):
            continue  # an unreadable listing image is compared with by no upload either
    assessments: dict[str, PhotoAssessment] = {}
    # A chunk at a time: one model run of a popular listing's every photo would hold the
    # micro-batcher, and the uploads queued behind it, for as long as it takes.
    for start in range(0, len(photo_ids), RESCORE_CHUNK):
        photos = []
        for photo_id in photo_ids[start : start + RESCORE_CHUNK]:
            try:
                photos.append(open_photo(runtime.store.get(photo_id)))
            except (PhotoNotFound, PhotoCorrupted, PhotoRejected):
                continue
        # No duplicate index: duplicates across claims were judged at upload, in upload order.
        assessments.update(
            (assessment.photo_id, assessment)
            for assessment in runtime.assessor.assess_many(photos, listing_photos=listing_photos)
        )
    return assessments


def _store(
    runtime: Runtime,
    listing_id: str,
    assessments: dict[str, PhotoAssessment],
    *,
    actor: crud.Actor,
    now: datetime,
    why: str,
    other_than_model: str | None,
) -> int:
    changed: dict[str, list[str]] = defaultdict(list)
    with transaction(runtime.sessions) as session:
        rows = crud.open_claim_photos(
            session, listing_id=listing_id, other_than_model=other_than_model
        )
        for _, row in rows:
            assessment = assessments.get(row.photo_id)
            if assessment is None:
                continue
            # The whole assessment, by the model serving now: a row never mixes two models.
            row.damage = assessment.damage
            row.damage_map = assessment.heatmap.round(4).tolist()
            row.mismatch = assessment.mismatch
            row.match_similarity = assessment.match_similarity
            row.model_version = assessment.model_version
            row.issues = merged_issues(row.issues, [issue.to_dict() for issue in assessment.issues])
            changed[row.claim_id].append(row.photo_id)
        session.flush()
        for claim_id, photo_ids in changed.items():
            claim = crud.get_claim(session, claim_id=claim_id)
            if claim is None:
                continue
            retriage(session, claim, policy=runtime.policy, now=now)
            crud.record_audit(
                session,
                actor=actor,
                action="evidence_rescored",
                claim_id=claim_id,
                listing_id=listing_id,
                detail={
                    "why": why,
                    "photo_ids": photo_ids,
                    "model_version": runtime.model_version,
                    "lane": claim.lane,
                    "priority": claim.priority,
                },
                now=now,
            )
    return len(changed)
