"""Keeps each claim's stored triage current.

Ordering choice (priority depends on the clock through the deadline): triage is recomputed and
stored on every change to a claim (new claim, evidence, escalation, decision), at start-up (the
policy configuration may have changed), and by a background task (`service.api.refresher`,
started by the app's lifespan) that every `triage_refresh_interval_seconds` (default half of
`triage_refresh_seconds`) re-triages the open claims whose stored triage is older than
`triage_refresh_seconds`. The queue is then ordered in SQL by the stored priority, so pagination
is a cheap keyset scan; the deadline part moves by at most 35 points / 15 days, i.e. well under
one point per refresh interval at the default 15 minutes.

Why in the background: in steady use every open claim goes stale at about the same time, so a
refresh on the read path made the first queue read after each interval re-triage all of them
inside that request (seconds for tens of thousands of claims). A queue read still refreshes, as a
safety net for when the background task is behind or failing, but only claims older than
`QUEUE_READ_STALE_FACTOR` x `triage_refresh_seconds`: with the task running, the oldest stored
triage is about 1.5 x the refresh age, so a read finds nothing and costs one query.

Refreshing many claims (every open claim at start-up; every claim that went stale since the last
round) goes in chunks of `REFRESH_CHUNK` claims with three statements each: the claims, all their
photos, one UPDATE. The triage of each claim is the same as `retriage` computes, from the same
facts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from service.db import crud
from service.db.models import Claim, ClaimPhoto
from service.db.session import transaction
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
    crud.set_triage(claim, triage, now=now)
    return triage


# Claims per chunk: one IN list of claim ids (crud keeps those at 500) and a bounded transaction.
REFRESH_CHUNK = 500
# Queue reads refresh only triage older than this many refresh ages: the background task keeps
# stored triage under about 1.5 of them, so the read path re-triages only when it is behind.
QUEUE_READ_STALE_FACTOR = 2


def _retriage_chunk(
    session: Session,
    claim_ids: Sequence[str],
    *,
    triaged_before: datetime,
    policy: PolicyConfig,
    now: datetime,
) -> int:
    """`retriage` for those of `claim_ids` still open and stale (selected again: one may have
    been decided or re-triaged since it was listed), with their photos read in one query and
    one UPDATE; returns how many."""
    claims = crud.stale_open_claims(session, claim_ids=claim_ids, triaged_before=triaged_before)
    photos = crud.claim_photos_by_claim(session, claim_ids=[claim.claim_id for claim in claims])
    updates = [
        crud.TriageUpdate.from_triage(
            claim.claim_id,
            triage_claim(claim_facts(claim, photos[claim.claim_id]), config=policy, now=now),
        )
        for claim in claims
    ]
    crud.set_triages(session, updates=updates, now=now)
    return len(claims)


def _id_chunks(claim_ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(claim_ids), REFRESH_CHUNK):
        yield claim_ids[start : start + REFRESH_CHUNK]


def refresh_stale(
    session: Session, *, policy: PolicyConfig, now: datetime, max_age: timedelta
) -> int:
    """Re-triage open claims whose stored triage is older than `max_age`; returns how many.

    Runs inside the caller's transaction (a queue read commits the refresh before it reads the
    page), chunk by chunk so that neither the claims nor their photos are all held at once.
    """
    triaged_before = now - max_age
    refreshed = 0
    for chunk in _id_chunks(crud.stale_open_claim_ids(session, triaged_before=triaged_before)):
        refreshed += _retriage_chunk(
            session, chunk, triaged_before=triaged_before, policy=policy, now=now
        )
    return refreshed


def refresh_stale_in_chunks(
    sessions: sessionmaker[Session],
    *,
    policy: PolicyConfig,
    now: datetime,
    max_age: timedelta,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """`refresh_stale`, each chunk committed in its own transaction; returns how many.

    For start-up, which re-triages every open claim, and the background refresher: one
    transaction over the whole table would hold SQLite's write lock (and on PostgreSQL row locks
    on every open claim) for all of it. Each claim's triage depends on that claim alone, so a
    crash part-way leaves some claims refreshed and the rest as they were, for the next round to
    finish. A claim decided or re-triaged by someone else between the listing and its chunk is
    skipped, since each chunk selects its claims again with the same open-and-stale filter.
    `should_stop` is asked before each chunk, so a shutdown waits for one chunk, not the table.
    """
    triaged_before = now - max_age
    with sessions() as session:
        # Only the ids up front (tens of bytes a claim): paging through the filtered query by
        # a keyset on claim_id made SQLite scan every open claim per chunk (its planner takes
        # the queue index for `status IN`), quadratic in the number of open claims.
        claim_ids = crud.stale_open_claim_ids(session, triaged_before=triaged_before)
    refreshed = 0
    for chunk in _id_chunks(claim_ids):
        if should_stop is not None and should_stop():
            break
        with transaction(sessions) as session:
            refreshed += _retriage_chunk(
                session, chunk, triaged_before=triaged_before, policy=policy, now=now
            )
    return refreshed


def deadline_of(claim: Claim, policy: PolicyConfig) -> datetime:
    return claim.opened_at + timedelta(days=policy.deadline_days)
