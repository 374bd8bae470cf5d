"""Database rows and the model card -> response schemas. Pure functions: no queries here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.api import schemas
from service.api.triage import deadline_of
from service.auth import Role
from service.db.models import AuditEvent, Claim, ClaimPhoto, Listing, ListingImage, Photo, Review
from service.engine import ModelCard
from service.policy import PolicyConfig, reasons_for_buyer


def photo_url(photo_id: str) -> str:
    return f"/v1/photos/{photo_id}"


def listing_image_public(image: ListingImage, photo: Photo) -> schemas.ListingImagePublic:
    return schemas.ListingImagePublic(
        photo_id=image.photo_id,
        position=image.position,
        format=photo.format,
        width=photo.width,
        height=photo.height,
        url=photo_url(image.photo_id),
    )


def listing_public(
    listing: Listing, images: Sequence[tuple[ListingImage, Photo]]
) -> schemas.ListingPublic:
    return schemas.ListingPublic(
        listing_id=listing.listing_id,
        title=listing.title,
        category=listing.category,
        created_at=listing.created_at,
        images=[listing_image_public(image, photo) for image, photo in images],
    )


def assessment_public(row: ClaimPhoto) -> schemas.PhotoAssessmentPublic:
    return schemas.PhotoAssessmentPublic(
        photo_id=row.photo_id,
        position=row.position,
        filename=row.filename,
        damage=row.damage,
        mismatch=row.mismatch,
        match_similarity=row.match_similarity,
        issues=[schemas.IssuePublic.model_validate(issue) for issue in row.issues],
        model_version=row.model_version,
        created_at=row.created_at,
        url=photo_url(row.photo_id),
        heatmap_url=f"{photo_url(row.photo_id)}/heatmap.png",
    )


def triage_public(claim: Claim, policy: PolicyConfig, *, viewer: str) -> schemas.TriagePublic:
    """The claim's triage as `viewer` may see it: its buyer is not told which other claims its
    photos repeat (reviewers and admins are)."""
    return schemas.TriagePublic(
        support=claim.support,
        sufficiency=claim.sufficiency,  # type: ignore[arg-type]  # written by the policy
        lane=claim.lane,  # type: ignore[arg-type]
        priority=claim.priority,
        reasons=reasons_for_buyer(claim.reasons) if viewer == Role.buyer else list(claim.reasons),
        deadline=deadline_of(claim, policy),
        triaged_at=claim.triaged_at,
    )


def claim_public(
    claim: Claim, photos: Sequence[ClaimPhoto], policy: PolicyConfig, *, viewer: str
) -> schemas.ClaimPublic:
    return schemas.ClaimPublic(
        claim_id=claim.claim_id,
        listing_id=claim.listing_id,
        order_ref=claim.order_ref,
        reason=claim.reason,  # type: ignore[arg-type]  # validated on the way in
        resolution=claim.resolution,  # type: ignore[arg-type]
        description=claim.description,
        amount=claim.amount,
        currency=claim.currency,
        status=claim.status,  # type: ignore[arg-type]
        decision=claim.decision,  # type: ignore[arg-type]
        opened_at=claim.opened_at,
        created_at=claim.created_at,
        updated_at=claim.updated_at,
        escalated_at=claim.escalated_at,
        decided_at=claim.decided_at,
        photos=[assessment_public(photo) for photo in photos],
        triage=triage_public(claim, policy, viewer=viewer),
    )


def review_public(review: Review, claim: Claim) -> schemas.ReviewPublic:
    return schemas.ReviewPublic(
        review_id=review.review_id,
        claim_id=review.claim_id,
        reviewer_key_id=review.reviewer_key_id,
        decision=review.decision,  # type: ignore[arg-type]
        amount=review.amount,
        notes=review.notes,
        labels=[schemas.PhotoLabel.model_validate(label) for label in review.labels],
        created_at=review.created_at,
        claim_status=claim.status,  # type: ignore[arg-type]
    )


def audit_public(event: AuditEvent) -> schemas.AuditEventPublic:
    return schemas.AuditEventPublic(
        event_id=event.event_id,
        claim_id=event.claim_id,
        listing_id=event.listing_id,
        actor_key_id=event.actor_key_id,
        actor_role=event.actor_role,
        action=event.action,
        detail=event.detail,
        created_at=event.created_at,
    )


def _table(value: object) -> dict[str, Any]:
    """A card section as a dict; anything else (absent, a list, a note) as an empty one."""
    return value if isinstance(value, dict) else {}


def _number(value: object) -> float | None:
    """A card entry as a metric value when it is a plain number (not a flag, a note or a table)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def model_metrics_public(card_extra: dict[str, Any]) -> list[schemas.ModelMetricPublic]:
    """The numeric top-level entries of the card's `metrics`, each with its `baselines` entry and
    its `metrics.targets` goal where the card has them."""
    metrics = _table(card_extra.get("metrics"))
    baselines = _table(card_extra.get("baselines"))
    targets = _table(metrics.get("targets"))
    headline = []
    for name, value in metrics.items():
        measured = _number(value)
        if measured is None:
            continue
        target = _table(targets.get(name))
        met = target.get("met")
        interval = target.get("interval_95")
        bounds = [_number(bound) for bound in interval] if isinstance(interval, list) else []
        floor = _number(_table(target.get("ece_if_perfectly_calibrated")).get("median"))
        headline.append(
            schemas.ModelMetricPublic(
                name=name,
                value=measured,
                baseline=_number(baselines.get(name)),
                target=str(target["target"]) if "target" in target else None,
                target_met=met if isinstance(met, bool) else None,
                interval_95=(bounds[0], bounds[1])
                if len(bounds) == 2 and None not in bounds
                else None,
                ece_if_perfectly_calibrated=floor,
            )
        )
    return headline


def model_public(card: ModelCard) -> schemas.ModelPublic:
    extra = card.model_extra or {}
    limitations = extra.get("limitations")
    return schemas.ModelPublic(
        name=card.name,
        version=card.version,
        model_version=card.model_version,
        input_size=card.input.size,
        thresholds=schemas.ModelThresholdsPublic.model_validate(card.thresholds.model_dump()),
        metrics=model_metrics_public(extra),
        limitations=[str(item) for item in limitations] if isinstance(limitations, list) else [],
    )
