"""Re-triage of many claims at once (start-up, queue reads): the same triage as `retriage` per
claim, in a number of SQL statements that depends on the number of chunks, not of claims."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from api_server import reset_postgres
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

import service.api.runtime as runtime_module
from service.api import triage
from service.api.runtime import Runtime
from service.auth import Role
from service.config import Settings
from service.db import crud
from service.db.migrate import upgrade_to_head
from service.db.models import Claim, ClaimPhoto
from service.db.session import make_engine, make_session_factory, transaction
from service.policy import CLAIM_REASONS, PolicyConfig

NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
CREATED = NOW - timedelta(days=30)  # when the test claims got their placeholder triage
POLICY = PolicyConfig().for_card(
    SimpleNamespace(damage_high=0.8, damage_low=0.3, mismatch_high=0.8, mismatch_low=0.3)
)
ISSUES: list[list[dict[str, str]]] = [
    [],
    [],
    [{"code": "blurry", "severity": "warning"}],
    [{"code": "too_dark", "severity": "blocker"}],
    [{"code": "listing_photo_reuse", "severity": "warning"}],
]
STATUSES = ["open", "open", "open", "escalated", "awaiting_evidence", "resolved"]


@pytest.fixture
def database(database_url: str, tmp_path: Path) -> str:
    """An empty, migrated database for this test alone (SQLite here, or the PostgreSQL one)."""
    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'triage.sqlite3'}"
    else:
        reset_postgres(database_url)
        url = database_url
    engine = make_engine(url)
    upgrade_to_head(engine)
    engine.dispose()
    return url


@pytest.fixture
def engine(database: str) -> Iterator[Engine]:
    engine = make_engine(database)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


def add_claims(sessions: sessionmaker[Session], count: int, *, seed: int) -> list[str]:
    """`count` claims of every reason and status with 0-4 scored photos each, all stale.

    Positions are assigned in reverse of insertion, so that photo order must come from
    `position` (reasons name photos by number)."""
    rng = random.Random(seed)
    with transaction(sessions) as session:
        key = crud.create_api_key(session, role=Role.buyer, name=f"b{seed}", now=CREATED)
        session.flush()
        owner = crud.find_active_key(session, key=key)
        assert owner is not None
        listing_id = f"lst-{seed}"
        crud.create_listing(session, listing_id=listing_id, title="Mug", category=None, now=CREATED)
        session.flush()
        claims: list[tuple[Claim, int]] = []
        for number in range(count):
            opened_at = NOW - timedelta(days=rng.uniform(0, 20))
            claim = crud.create_claim(
                session,
                owner_key_id=owner.key_id,
                listing_id=listing_id,
                order_ref=f"ORD-{number}",
                reason=rng.choice(CLAIM_REASONS),
                resolution="full_refund",
                description=None,
                amount=None,
                currency=None,
                opened_at=opened_at,
                idempotency_key=f"{seed}-{number}",
                request_fingerprint="f" * 64,
                now=CREATED,
            )
            claim.status = rng.choice(STATUSES)
            if claim.status == "escalated":
                claim.escalated_at = opened_at
            claims.append((claim, rng.randint(0, 4)))
        session.flush()
        claim_ids = [claim.claim_id for claim, _ in claims]
        for claim, photos in claims:
            for position in reversed(range(photos)):
                photo_id = f"{rng.getrandbits(256):064x}"
                crud.get_or_add_photo(
                    session,
                    photo_id=photo_id,
                    image_format="JPEG",
                    byte_size=1000,
                    size=(640, 480),
                    has_gps=False,
                    perceptual_hash=None,
                    window_hashes=None,
                    now=CREATED,
                )
                session.flush()
                session.add(
                    ClaimPhoto(
                        claim_id=claim.claim_id,
                        photo_id=photo_id,
                        position=position,
                        filename=None,
                        damage=rng.random() if rng.random() < 0.9 else None,
                        mismatch=rng.random() if rng.random() < 0.7 else None,
                        match_similarity=None,
                        issues=rng.choice(ISSUES),
                        damage_map=None,
                        duplicate_claims=[rng.choice(claim_ids)] if rng.random() < 0.1 else [],
                        model_version="test",
                        created_at=CREATED,
                    )
                )
    return claim_ids


def stored(sessions: sessionmaker[Session], claim_ids: list[str]) -> dict[str, tuple[Any, ...]]:
    with sessions() as session:
        rows = session.execute(
            select(
                Claim.claim_id,
                Claim.support,
                Claim.sufficiency,
                Claim.lane,
                Claim.priority,
                Claim.reasons,
                Claim.triaged_at,
            ).where(Claim.claim_id.in_(claim_ids))
        )
        return {row[0]: tuple(row[1:]) for row in rows}


def per_claim_retriage(
    sessions: sessionmaker[Session], claim_ids: list[str], policy: PolicyConfig, now: datetime
) -> dict[str, tuple[Any, ...]]:
    """What `retriage`, one claim at a time, stores for the open ones (rolled back after)."""
    expected = {}
    with sessions() as session:
        for claim_id in claim_ids:
            claim = crud.get_claim(session, claim_id=claim_id)
            assert claim is not None
            if claim.status not in crud.OPEN_STATUSES:
                continue
            result = triage.retriage(session, claim, policy=policy, now=now)
            expected[claim_id] = (
                result.support,
                result.sufficiency,
                result.lane,
                result.priority,
                list(result.reasons),
                now,
            )
        session.rollback()
    return expected


@contextmanager
def counting_statements(engine: Engine) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_start_up_stores_the_same_triage_as_per_claim_retriage(
    database: str,
    sessions: sessionmaker[Session],
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    claim_ids = add_claims(sessions, 300, seed=1)
    before = stored(sessions, claim_ids)
    # Small chunks, so that several chunks (and their commits) are exercised.
    monkeypatch.setattr(triage, "REFRESH_CHUNK", 64)
    monkeypatch.setattr(runtime_module, "utcnow", lambda: NOW)
    settings = Settings(data_dir=tmp_path / "data", database_url=database, model_dir=tiny_model_dir)
    runtime = Runtime.start(settings)
    try:
        policy = runtime.policy
    finally:
        runtime.close()
    after = stored(sessions, claim_ids)
    expected = per_claim_retriage(sessions, claim_ids, policy, NOW)
    assert len(expected) > 200  # most claims are open; the rest must be left alone
    assert {claim_id: after[claim_id] for claim_id in expected} == expected
    for claim_id in set(claim_ids) - set(expected):
        assert after[claim_id] == before[claim_id]
    # The placeholder triage really was replaced, and with varied results.
    assert {after[claim_id][2] for claim_id in expected} >= {"needs_review", "needs_more_evidence"}
    assert len({after[claim_id][3] for claim_id in expected}) > 10


def test_queue_read_refresh_matches_start_up(sessions: sessionmaker[Session]) -> None:
    """`refresh_stale` (a queue read, in the caller's transaction) and the start-up variant
    store the same triage; only claims older than `max_age` are touched."""
    claim_ids = add_claims(sessions, 120, seed=2)
    expected = per_claim_retriage(sessions, claim_ids, POLICY, NOW)
    with transaction(sessions) as session:
        refreshed = triage.refresh_stale(
            session, policy=POLICY, now=NOW, max_age=timedelta(minutes=15)
        )
    assert refreshed == len(expected)
    after = stored(sessions, claim_ids)
    assert {claim_id: after[claim_id] for claim_id in expected} == expected
    # Ten minutes later nothing is stale yet.
    with transaction(sessions) as session:
        assert (
            triage.refresh_stale(
                session,
                policy=POLICY,
                now=NOW + timedelta(minutes=10),
                max_age=timedelta(minutes=15),
            )
            == 0
        )
    assert stored(sessions, claim_ids) == after


def test_refresh_statements_grow_with_chunks_not_claims(
    engine: Engine, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    add_claims(sessions, 30, seed=3)
    with counting_statements(engine) as few:
        few_refreshed = triage.refresh_stale_in_chunks(
            sessions, policy=POLICY, now=NOW, max_age=timedelta(0)
        )
    add_claims(sessions, 270, seed=4)
    later = NOW + timedelta(hours=1)  # every open claim is stale again
    with counting_statements(engine) as many:
        many_refreshed = triage.refresh_stale_in_chunks(
            sessions, policy=POLICY, now=later, max_age=timedelta(0)
        )
    assert 0 < few_refreshed < many_refreshed
    # One chunk either way: list the ids, then the claims, their photos, one UPDATE.
    assert len(few) == len(many) == 4, many

    monkeypatch.setattr(triage, "REFRESH_CHUNK", 100)
    chunks = -(-many_refreshed // 100)
    with counting_statements(engine) as chunked:
        assert (
            triage.refresh_stale_in_chunks(
                sessions, policy=POLICY, now=later + timedelta(hours=1), max_age=timedelta(0)
            )
            == many_refreshed
        )
    assert len(chunked) == 1 + 3 * chunks, chunked
    with counting_statements(engine) as queue_read, transaction(sessions) as session:
        triage.refresh_stale(
            session, policy=POLICY, now=later + timedelta(hours=2), max_age=timedelta(0)
        )
    assert len(queue_read) == 1 + 3 * chunks, queue_read
