"""Claims: create (idempotent), read, list, escalate, review decisions, audit trail."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.api import schemas, views
from service.api.cursors import decode_cursor, encode_cursor
from service.api.deps import (
    BuyerKey,
    BuyerOrAdminKey,
    BuyerOrReviewerKey,
    ReviewerKey,
    ReviewerOrAdminKey,
    RuntimeDep,
)
from service.api.problems import ProblemError
from service.api.runtime import utcnow
from service.api.triage import retriage
from service.auth import Role
from service.db import crud
from service.db.models import ApiKey, Claim
from service.db.session import transaction
from service.policy import PolicyConfig

router = APIRouter(prefix="/v1/claims", tags=["claims"])
ClaimId = Annotated[str, Path(min_length=1, max_length=64, pattern=schemas.ONE_LINE)]
PROBLEMS = {code: {"model": schemas.Problem} for code in (400, 401, 403, 404, 409, 422)}
# Opening a claim in the future, or a clock-skewed device a little ahead, must not be trusted.
_OPENED_AT_SKEW = timedelta(minutes=5)
# The decisions that pay the buyer money, and so may carry an amount.
REFUND_DECISIONS = frozenset({"uphold_full_refund", "uphold_partial_refund"})
_CENT = Decimal("0.01")


def actor(key: ApiKey) -> crud.Actor:
    return crud.Actor(key_id=key.key_id, role=key.role)


def claim_not_found(claim_id: str) -> ProblemError:
    return ProblemError(404, "claim_not_found", "Claim not found", f"No claim {claim_id}.")


def claim_resolved(claim: Claim, consequence: str) -> ProblemError:
    """The 409 for a change to a decided claim; `consequence` says what it rules out."""
    return ProblemError(
        409,
        "claim_resolved",
        "Claim already resolved",
        f"Claim {claim.claim_id} was decided ({claim.decision}); {consequence}.",
    )


def evidence_requested(claim: Claim) -> ProblemError:
    """The 409 for escalating a claim a reviewer asked more evidence for: escalating would end
    the request unanswered (only new evidence does, service/api/routes/evidence.py)."""
    return ProblemError(
        409,
        "evidence_requested",
        "More evidence requested",
        f"A reviewer asked for more evidence on claim {claim.claim_id}; upload new photos to "
        "send it back for review.",
    )


def load_claim(session: Session, claim_id: str, key: ApiKey) -> Claim:
    """The claim if this key may see it. A buyer asking for someone else's claim gets the same
    404 as for a claim that does not exist, so claim ids cannot be probed."""
    claim = crud.get_claim(session, claim_id=claim_id)
    if claim is None or (key.role == Role.buyer and claim.owner_key_id != key.key_id):
        raise claim_not_found(claim_id)
    return claim


def _fingerprint(body: schemas.ClaimCreate) -> str:
    fields = body.model_dump(mode="json")
    if body.amount is not None:
        # One amount however it is written ("20", "20.0", 20.0, "20.00"): a retry from another
        # serialiser is the same request. The schema allows at most two decimals.
        fields["amount"] = str(body.amount.quantize(_CENT))
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def open_claim(
    session: Session,
    *,
    body: schemas.ClaimCreate,
    key: ApiKey,
    idempotency_key: str,
    policy: PolicyConfig,
    now: datetime,
) -> Claim:
    """Store a new claim with its first triage and audit entry (also used by `triage demo`)."""
    opened_at = body.opened_at or now
    if opened_at > now + _OPENED_AT_SKEW:
        raise ProblemError(
            422, "opened_at_in_future", "Invalid opened_at", "opened_at lies in the future."
        )
    if crud.get_listing(session, listing_id=body.listing_id) is None:
        raise ProblemError(
            422, "unknown_listing", "Unknown listing", f"There is no listing {body.listing_id}."
        )
    claim = crud.create_claim(
        session,
        owner_key_id=key.key_id,
        listing_id=body.listing_id,
        order_ref=body.order_ref,
        reason=body.reason,
        resolution=body.resolution,
        description=body.description,
        amount=body.amount,
        currency=body.currency,
        opened_at=opened_at,
        idempotency_key=idempotency_key,
        request_fingerprint=_fingerprint(body),
        now=now,
    )
    session.flush()
    retriage(session, claim, policy=policy, now=now)
    crud.record_audit(
        session,
        actor=actor(key),
        action="claim_created",
        claim_id=claim.claim_id,
        detail={
            "reason": body.reason,
            "resolution": body.resolution,
            "listing_id": body.listing_id,
            "lane": claim.lane,
            "priority": claim.priority,
        },
        now=now,
    )
    return claim


def escalate(
    session: Session, claim: Claim, *, key: ApiKey, policy: PolicyConfig, now: datetime
) -> None:
    """Move the claim to `escalated` (idempotent) and record it (also used by `triage demo`).

    A buyer may not while a reviewer's request for more evidence is open (`awaiting_evidence`):
    new evidence answers it, and the claim goes back to `escalated` then. An admin may (design.md
    gives escalation to the owner and admins), to put a claim back in the queue without it. The
    first escalation's time is kept either way: it records when the buyer first asked for the
    platform (the deadline counts from `opened_at`)."""
    # Only a buyer waits for the evidence asked of them; an admin overrides the request.
    waits_for_evidence = key.role != Role.admin
    if claim.status == "resolved":
        raise claim_resolved(claim, "it cannot be escalated")
    if claim.status == "escalated":
        return
    if claim.status == "awaiting_evidence" and waits_for_evidence:
        raise evidence_requested(claim)
    held = crud.hold_unresolved_claim(session, claim_id=claim.claim_id, now=now)
    session.refresh(claim)  # read again with the row held: a decision or a request may have landed
    if not held:  # a decision: `escalated` must not overwrite it
        raise claim_resolved(claim, "it cannot be escalated")
    if claim.status == "awaiting_evidence" and waits_for_evidence:
        raise evidence_requested(claim)
    previous = claim.status
    claim.status = "escalated"
    claim.escalated_at = claim.escalated_at or now
    claim.updated_at = now
    retriage(session, claim, policy=policy, now=now)
    crud.record_audit(
        session,
        actor=actor(key),
        action="claim_escalated",
        claim_id=claim.claim_id,
        detail={"from_status": previous, "lane": claim.lane, "priority": claim.priority},
        now=now,
    )


@router.post(
    "",
    status_code=201,
    response_model=schemas.ClaimPublic,
    responses=PROBLEMS,
    summary="Open a claim (idempotent per Idempotency-Key)",
    description="Repeating a request with the same `Idempotency-Key` and body returns the claim "
    "created the first time (201, same claim_id); the same key with a different body is a 409.",
)
def create_claim(
    body: schemas.ClaimCreate,
    runtime: RuntimeDep,
    key: BuyerKey,
    response: Response,
    idempotency_key: Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=200)],
) -> schemas.ClaimPublic:
    fingerprint = _fingerprint(body)
    now = utcnow()
    try:
        with transaction(runtime.sessions) as session:
            existing = crud.find_claim_by_idempotency_key(
                session, owner_key_id=key.key_id, idempotency_key=idempotency_key
            )
            if existing is None:
                claim = open_claim(
                    session,
                    body=body,
                    key=key,
                    idempotency_key=idempotency_key,
                    policy=runtime.policy,
                    now=now,
                )
                return views.claim_public(claim, [], runtime.policy, viewer=key.role)
    except IntegrityError:
        # A concurrent request with the same key won the race: answer with its claim below.
        pass
    with runtime.sessions() as session:
        existing = crud.find_claim_by_idempotency_key(
            session, owner_key_id=key.key_id, idempotency_key=idempotency_key
        )
        if existing is None:  # the integrity error was about something else
            raise ProblemError(409, "conflict", "Conflict", "The claim could not be stored.")
        if existing.request_fingerprint != fingerprint:
            raise ProblemError(
                409,
                "idempotency_key_reused",
                "Idempotency-Key reused",
                "This Idempotency-Key was already used for a different claim request.",
            )
        response.headers["Idempotent-Replayed"] = "true"
        photos = crud.claim_photos(session, claim_id=existing.claim_id)
        return views.claim_public(existing, photos, runtime.policy, viewer=key.role)


@router.get(
    "",
    response_model=schemas.ClaimsPublic,
    responses=PROBLEMS,
    summary="Claims, newest first (buyers: their own; reviewers: all)",
)
def list_claims(
    runtime: RuntimeDep,
    key: BuyerOrReviewerKey,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> schemas.ClaimsPublic:
    after = decode_cursor(cursor, shape=(datetime, str)) if cursor else None
    owner = key.key_id if key.role == Role.buyer else None
    with runtime.sessions() as session:
        page = crud.list_claims(session, owner_key_id=owner, limit=limit, after=after)  # type: ignore[arg-type]
        data = [
            views.claim_public(
                claim,
                crud.claim_photos(session, claim_id=claim.claim_id),
                runtime.policy,
                viewer=key.role,
            )
            for claim in page.rows
        ]
    last = page.rows[-1] if page.rows else None
    next_cursor = encode_cursor(last.created_at, last.claim_id) if page.has_more and last else None
    return schemas.ClaimsPublic(data=data, count=page.count, next_cursor=next_cursor)


@router.get(
    "/{claim_id}",
    response_model=schemas.ClaimPublic,
    responses=PROBLEMS,
    summary="A claim with its photo assessments and triage",
)
def get_claim(
    claim_id: ClaimId, runtime: RuntimeDep, key: BuyerOrReviewerKey
) -> schemas.ClaimPublic:
    with runtime.sessions() as session:
        claim = load_claim(session, claim_id, key)
        photos = crud.claim_photos(session, claim_id=claim_id)
        return views.claim_public(claim, photos, runtime.policy, viewer=key.role)


@router.post(
    "/{claim_id}/escalate",
    response_model=schemas.ClaimPublic,
    responses=PROBLEMS,
    summary="Escalate the claim to the platform",
)
def escalate_claim(
    claim_id: ClaimId, runtime: RuntimeDep, key: BuyerOrAdminKey
) -> schemas.ClaimPublic:
    now = utcnow()
    with transaction(runtime.sessions) as session:
        claim = load_claim(session, claim_id, key)
        escalate(session, claim, key=key, policy=runtime.policy, now=now)
        photos = crud.claim_photos(session, claim_id=claim_id)
        return views.claim_public(claim, photos, runtime.policy, viewer=key.role)


@router.post(
    "/{claim_id}/reviews",
    status_code=201,
    response_model=schemas.ReviewPublic,
    responses=PROBLEMS,
    summary="Record a reviewer's decision",
)
def review_claim(
    claim_id: ClaimId, body: schemas.ReviewCreate, runtime: RuntimeDep, key: ReviewerKey
) -> schemas.ReviewPublic:
    now = utcnow()
    with transaction(runtime.sessions) as session:
        claim = load_claim(session, claim_id, key)
        if claim.status == "resolved":
            raise claim_resolved(claim, "it cannot be reviewed again")
        held = crud.hold_unresolved_claim(session, claim_id=claim_id, now=now)
        # Read again with the row held: what is recorded (the status it leaves, the triage)
        # must be of the claim as it is now, after an escalation or a request that landed.
        session.refresh(claim)
        if not held:  # another reviewer's decision landed since the claim was read
            raise claim_resolved(claim, "it cannot be reviewed again")
        evidence = {photo.photo_id for photo in crud.claim_photos(session, claim_id=claim_id)}
        unknown = [label.photo_id for label in body.labels if label.photo_id not in evidence]
        if unknown:
            raise ProblemError(
                422,
                "unknown_photo",
                "Label for a photo not in this claim",
                f"Photos {', '.join(unknown)} are not evidence of claim {claim_id}.",
            )
        if body.decision == "uphold_partial_refund" and body.amount is None:
            raise ProblemError(
                422,
                "amount_required",
                "Amount required",
                "A partial refund needs the amount to refund.",
            )
        if body.amount is not None and body.decision not in REFUND_DECISIONS:
            raise ProblemError(
                422,
                "amount_not_applicable",
                "No amount for this decision",
                f"A decision of {body.decision} refunds nothing; send the amount only with "
                "uphold_partial_refund (or uphold_full_refund).",
            )
        if body.amount is not None and claim.amount is not None and body.amount > claim.amount:
            raise ProblemError(
                422,
                "amount_too_high",
                "Amount too high",
                f"The refund {body.amount} exceeds the claimed amount {claim.amount}.",
            )
        amount = body.amount
        if body.decision == "uphold_full_refund" and claim.amount is not None:
            # A full refund is the claimed amount: recorded as such, so refund totals add up.
            if amount is not None and amount != claim.amount:
                raise ProblemError(
                    422,
                    "amount_not_full",
                    "Not the full amount",
                    f"A full refund is the claimed amount {claim.amount}; to refund {amount}, "
                    "record uphold_partial_refund.",
                )
            amount = claim.amount
        labels = [label.model_dump(mode="json") for label in body.labels]
        review = crud.create_review(
            session,
            claim_id=claim_id,
            reviewer_key_id=key.key_id,
            decision=body.decision,
            amount=amount,
            notes=body.notes,
            labels=labels,
            now=now,
        )
        previous = claim.status
        if body.decision == "request_more_evidence":
            claim.status = "awaiting_evidence"
        else:
            claim.status = "resolved"
            claim.decision = body.decision
            claim.decided_at = now
        claim.updated_at = now
        retriage(session, claim, policy=runtime.policy, now=now)
        session.flush()
        crud.record_audit(
            session,
            actor=actor(key),
            action="review_recorded",
            claim_id=claim_id,
            detail={
                "review_id": review.review_id,
                "decision": body.decision,
                "amount": None if amount is None else str(amount),
                "labels": labels,
                "from_status": previous,
                "to_status": claim.status,
            },
            now=now,
        )
        return views.review_public(review, claim)


@router.get(
    "/{claim_id}/audit",
    response_model=schemas.AuditTrailPublic,
    responses=PROBLEMS,
    summary="The append-only history of the claim",
)
def claim_audit(
    claim_id: ClaimId, runtime: RuntimeDep, key: ReviewerOrAdminKey
) -> schemas.AuditTrailPublic:
    with runtime.sessions() as session:
        load_claim(session, claim_id, key)
        events = crud.audit_trail(session, claim_id=claim_id)
    return schemas.AuditTrailPublic(
        claim_id=claim_id, data=[views.audit_public(event) for event in events], count=len(events)
    )
