"""The reviewers' queue: open claims by priority; triage the background refresh missed is
refreshed on read."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from service.api import schemas, views
from service.api.cursors import decode_cursor, encode_cursor
from service.api.deps import ReviewerKey, RuntimeDep
from service.api.runtime import utcnow
from service.api.triage import QUEUE_READ_STALE_FACTOR, refresh_stale
from service.db import crud
from service.db.session import transaction

router = APIRouter(prefix="/v1/queue", tags=["queue"])
PROBLEMS = {code: {"model": schemas.Problem} for code in (400, 401, 403, 422)}


@router.get(
    "",
    response_model=schemas.ClaimsPublic,
    responses=PROBLEMS,
    summary="Claims by priority, highest first",
    description="Without `status`, every claim not yet resolved (open, escalated, "
    "awaiting_evidence). Stored triage is kept current by a background refresh; triage older "
    "than twice the refresh interval (the refresh fell behind) is recomputed first.",
)
def review_queue(
    runtime: RuntimeDep,
    key: ReviewerKey,
    lane: schemas.Lane | None = None,
    status: schemas.ClaimStatus | None = None,
    reason: schemas.ClaimReason | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> schemas.ClaimsPublic:
    after = decode_cursor(cursor, shape=(int, datetime, str)) if cursor else None
    now = utcnow()
    # A safety net only: the background refresher keeps triage younger than this, so normally
    # this is one query that finds nothing, not a re-triage of every open claim in the request.
    max_age = timedelta(seconds=runtime.settings.triage_refresh_seconds * QUEUE_READ_STALE_FACTOR)
    with transaction(runtime.sessions) as session:
        refresh_stale(session, policy=runtime.policy, now=now, max_age=max_age)
    statuses = (status,) if status else crud.OPEN_STATUSES
    with runtime.sessions() as session:
        page = crud.queue_page(
            session,
            statuses=statuses,
            lane=lane,
            reason=reason,
            limit=limit,
            after=after,  # type: ignore[arg-type]  # shape checked by decode_cursor
        )
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
    next_cursor = (
        encode_cursor(last.priority, last.opened_at, last.claim_id)
        if page.has_more and last
        else None
    )
    return schemas.ClaimsPublic(data=data, count=page.count, next_cursor=next_cursor)
