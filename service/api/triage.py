"""Keeps each claim's stored triage current.

Ordering choice (priority depends on the clock through the deadline): triage is recomputed and
stored on every change to a claim (new claim, evidence, escalation, decision), at start-up (the
policy configuration may have changed), and on every queue read for open claims whose stored
triage is older than `triage_refresh_seconds`. The queue is then ordered in SQL by the stored
priority, so pagination is a cheap keyset scan; the deadline part moves by at most
35 points / 15 days, i.e. well under one point per refresh interval at the default 15 minutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from service.db import crud
from service.db.models import Claim, ClaimPhoto
from service.policy import ClaimFacts, PhotoFacts, PolicyConfig, Triage, triage_claim


def claim_facts(claim: Claim, photos: Sequence[ClaimPhoto]) -> ClaimFacts:
    return ClaimFacts(
        reason=claim.reason,
        opened_at=claim.opened_at,
        status=claim.status,
        escalated=claim.escalated_at is not None,
        photos=tuple(
            PhotoFacts(
                index=number,
                damage=photo.damage,
                mismatch=photo.mismatch,
                issues=tuple((issue["code"], issue["severity"]) for issue in photo.issues),
                duplicate_claims=tuple(photo.duplicate_claims),
            )
            for number, photo in enumerate(photos, start=1)
        ),
    )


def retriage(session: Session, claim: Claim, *, policy: PolicyConfig, now: datetime) -> Triage:
    """Recompute and store the claim's triage from its stored evidence."""
    photos = crud.claim_photos(session, claim_id=claim.claim_id)
    triage = triage_claim(claim_facts(claim, photos), config=policy, now=now)
    crud.set_triage(
        claim,
        support=triage.support,
        sufficiency=triage.sufficiency,
        lane=triage.lane,
        priority=triage.priority,
        reasons=triage.reasons,
        now=now,
    )
    return triage


def refresh_stale(
    session: Session, *, policy: PolicyConfig, now: datetime, max_age: timedelta
) -> int:
    """Re-triage open claims whose stored triage is older than `max_age`; returns how many."""
    stale = crud.stale_open_claims(session, triaged_before=now - max_age)
    for claim in stale:
        retriage(session, claim, policy=policy, now=now)
    return len(stale)


def deadline_of(claim: Claim, policy: PolicyConfig) -> datetime:
    return claim.opened_at + timedelta(days=policy.deadline_days)
