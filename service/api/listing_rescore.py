"""Evidence compared again with its listing after the listing's images change.

Mismatch and listing-photo reuse are judged against the listing's images at upload time. When
an admin adds images to a listing later, the open claims on it keep scores made against fewer
images: a mismatch of null with the reason "listing has no images to compare with", or a photo
that is the seller's own new listing image not flagged. `rescore_listing_evidence` runs each
open claim's evidence photos through the shared assessor against every image of the listing now
and stores the whole assessment by the model serving now (damage, map, mismatch, similarity,
findings), keeping only the duplicates across claims, which belong to the order of uploads; it
re-triages those claims with an audit entry each.

It runs in the request that added the images, after they are committed: an admin's request,
rare, its work bounded by the photos of the listing's open claims, a chunk of them per model
run. A failure here is logged and does not fail the request, whose images are stored.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from service.api.runtime import Runtime
from service.api.triage import retriage
from service.checks import DUPLICATE_ACROSS_CLAIMS
from service.db import crud
from service.db.session import transaction
from service.intake import PhotoRejected, open_photo
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


def rescore_listing_evidence(
    runtime: Runtime, listing_id: str, *, actor: crud.Actor, now: datetime
) -> int:
    """Compare the evidence of the listing's open claims with its images now; returns how many
    claims were re-triaged. A photo whose original cannot be read keeps its scores."""
    with runtime.sessions() as session:
        rows = crud.open_claim_photos_on_listing(session, listing_id=listing_id)
        listing_ids = [
            image.photo_id
            for image, _ in crud.listing_images_with_photos(session, listing_id=listing_id)
        ]
    if not rows:
        return 0
    listing_photos = []
    for photo_id in listing_ids:
        try:
            listing_photos.append(runtime.listing_photo(photo_id))
        except (PhotoNotFound, PhotoCorrupted, PhotoRejected):
            continue  # an unreadable listing image is compared with by no upload either
    assessments = {}
    evidence_ids = sorted({row.photo_id for row in rows})
    # A chunk at a time: one model run of a popular listing's every photo would hold the
    # micro-batcher, and the uploads queued behind it, for as long as it takes.
    for start in range(0, len(evidence_ids), RESCORE_CHUNK):
        photos = []
        for photo_id in evidence_ids[start : start + RESCORE_CHUNK]:
            try:
                photos.append(open_photo(runtime.store.get(photo_id)))
            except (PhotoNotFound, PhotoCorrupted, PhotoRejected):
                continue
        # No duplicate index: duplicates across claims were judged at upload, in upload order.
        assessments.update(
            (assessment.photo_id, assessment)
            for assessment in runtime.assessor.assess_many(photos, listing_photos=listing_photos)
        )
    changed: dict[str, list[str]] = defaultdict(list)
    with transaction(runtime.sessions) as session:
        for row in crud.open_claim_photos_on_listing(session, listing_id=listing_id):
            assessment = assessments.get(row.photo_id)
            if assessment is None:
                continue
            # The whole assessment, by the model serving now: a row never mixes two models'
            # scores (the listing may be older than the model).
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
                    "why": "listing images added",
                    "photo_ids": photo_ids,
                    "lane": claim.lane,
                    "priority": claim.priority,
                },
                now=now,
            )
    return len(changed)
