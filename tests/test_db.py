"""Storage on both backends: migrations, WAL, append-only audit, idempotency, queue order."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from conftest import add_bare_claim, add_bare_evidence, add_bare_photo
from sqlalchemy import Engine, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.auth import Role
from service.db import crud
from service.db.migrate import alembic_config, upgrade_to_head
from service.db.models import AuditEvent, Base, Claim
from service.db.session import make_engine, make_session_factory, transaction
from service.policy import Triage

NOW = datetime(2025, 11, 20, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    upgrade_to_head(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture(scope="module")
def buyer_key_id(sessions: sessionmaker[Session]) -> str:
    with transaction(sessions) as session:
        key = crud.create_api_key(session, role=Role.buyer, name="db test", now=NOW)
        session.flush()
        row = crud.find_active_key(session, key=key)
        assert row is not None
        crud.create_listing(session, listing_id="db-listing", title="Mug", category=None, now=NOW)
        return row.key_id


def _claim(session: Session, owner: str, idempotency_key: str, opened_at: datetime) -> str:
    return add_bare_claim(
        session,
        owner_key_id=owner,
        listing_id="db-listing",
        idempotency_key=idempotency_key,
        now=NOW,
        opened_at=opened_at,
    )


def test_migrations_match_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_migrating_twice_is_harmless(
    engine: Engine, sessions: sessionmaker[Session], buyer_key_id: str
) -> None:
    def state() -> tuple[list[str], int]:
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version"))
            keys = connection.execute(text("SELECT count(*) FROM api_keys"))
            return list(versions.scalars()), keys.scalar_one()

    before = state()
    upgrade_to_head(engine)
    assert state() == before and len(before[0]) == 1 and before[1] >= 1
    with sessions() as session:
        assert crud.get_listing(session, listing_id="db-listing") is not None


def test_sqlite_runs_in_wal_mode(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("WAL is a SQLite setting")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_keys_are_stored_hashed_and_found_by_key(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    with transaction(sessions) as session:
        key = crud.create_api_key(session, role=Role.reviewer, name="hash test", now=NOW)
    with engine.connect() as connection:
        stored = [row[0] for row in connection.execute(text("SELECT key_hash FROM api_keys"))]
    assert key not in stored
    with sessions() as session:
        row = crud.find_active_key(session, key=key)
        assert row is not None and row.role == "reviewer"
        assert crud.find_active_key(session, key=key[:-1] + "x") is None


def test_audit_log_refuses_updates_and_deletes(
    sessions: sessionmaker[Session], engine: Engine
) -> None:
    with transaction(sessions) as session:
        crud.record_audit(session, actor=crud.SYSTEM, action="probe", detail={"n": 1}, now=NOW)
    for statement in (
        update(AuditEvent).values(action="rewritten"),
        text("DELETE FROM audit_events"),
    ):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
            connection.execute(statement)
    with sessions() as session:
        assert session.query(AuditEvent).filter_by(action="probe").count() == 1


def test_idempotency_key_is_unique_per_owner(
    sessions: sessionmaker[Session], buyer_key_id: str
) -> None:
    with transaction(sessions) as session:
        _claim(session, buyer_key_id, "same-key", NOW)
    with pytest.raises(IntegrityError), transaction(sessions) as session:
        _claim(session, buyer_key_id, "same-key", NOW)
    with sessions() as session:
        found = crud.find_claim_by_idempotency_key(
            session, owner_key_id=buyer_key_id, idempotency_key="same-key"
        )
        assert found is not None


def test_datetimes_come_back_timezone_aware(
    sessions: sessionmaker[Session], buyer_key_id: str
) -> None:
    opened = datetime(2025, 11, 1, 8, 30, tzinfo=UTC)
    with transaction(sessions) as session:
        claim_id = _claim(session, buyer_key_id, "tz", opened)
    with sessions() as session:
        claim = crud.get_claim(session, claim_id=claim_id)
        assert claim is not None
        assert claim.opened_at == opened and claim.opened_at.tzinfo is not None


TRIAGE = Triage(
    support=0.81,
    sufficiency="weak",
    lane="needs_review",
    priority=67,
    reasons=("escalated", "damage 0.81 on photo 1"),
    deadline=NOW + timedelta(days=15),
)


def test_the_triage_mapping_covers_every_triage_field_the_claim_stores() -> None:
    columns = crud.TriageUpdate.from_triage("clm_x", TRIAGE).columns(now=NOW)
    # The deadline is derived from opened_at, never stored; triaged_at is when this triage was.
    assert set(columns) == {field.name for field in fields(Triage)} - {"deadline"} | {"triaged_at"}
    assert set(columns) <= set(Claim.__table__.columns.keys())


def test_one_claim_and_a_bulk_update_store_the_same_triage(
    sessions: sessionmaker[Session], buyer_key_id: str
) -> None:
    triaged_at = NOW + timedelta(minutes=5)
    with transaction(sessions) as session:
        one = _claim(session, buyer_key_id, "triage-one", NOW)
        bulk = _claim(session, buyer_key_id, "triage-bulk", NOW)
        loaded = crud.get_claim(session, claim_id=one)
        assert loaded is not None
        crud.set_triage(loaded, TRIAGE, now=triaged_at)
        crud.set_triages(
            session, updates=[crud.TriageUpdate.from_triage(bulk, TRIAGE)], now=triaged_at
        )
    columns = ("support", "sufficiency", "lane", "priority", "reasons", "triaged_at")
    with sessions() as session:
        stored = [
            {column: getattr(session.get(Claim, claim_id), column) for column in columns}
            for claim_id in (one, bulk)
        ]
    expected = {
        "support": 0.81,
        "sufficiency": "weak",
        "lane": "needs_review",
        "priority": 67,
        "reasons": ["escalated", "damage 0.81 on photo 1"],
        "triaged_at": triaged_at,
    }
    assert stored == [expected, expected]


def test_queue_pages_are_ordered_by_priority_then_age_without_overlap(
    sessions: sessionmaker[Session], buyer_key_id: str
) -> None:
    priorities = [40, 90, 40, 10, 90, 65, 40]
    with transaction(sessions) as session:
        for index, priority in enumerate(priorities):
            claim = crud.get_claim(
                session,
                claim_id=_claim(session, buyer_key_id, f"q{index}", NOW - timedelta(hours=index)),
            )
            assert claim is not None
            claim.priority = priority
            claim.reason = "missing_parts"  # a reason no other test uses, to filter on
    seen: list[tuple[int, datetime]] = []
    after = None
    with sessions() as session:
        while True:
            page = crud.queue_page(
                session,
                statuses=crud.OPEN_STATUSES,
                lane=None,
                reason="missing_parts",
                limit=3,
                after=after,
            )
            assert page.count == len(priorities)
            seen.extend((claim.priority, claim.opened_at) for claim in page.rows)
            if not page.has_more:
                break
            last = page.rows[-1]
            after = (last.priority, last.opened_at, last.claim_id)
    assert len(seen) == len(priorities)
    assert seen == sorted(seen, key=lambda item: (-item[0], item[1]))


def test_queue_depth_counts_open_claims_by_lane(
    sessions: sessionmaker[Session], buyer_key_id: str
) -> None:
    with transaction(sessions) as session:
        before = crud.queue_depth_by_lane(session)
        claim = crud.get_claim(session, claim_id=_claim(session, buyer_key_id, "depth", NOW))
        assert claim is not None
        claim.lane = "suspicious"
    with sessions() as session:
        after = crud.queue_depth_by_lane(session)
    assert after.get("suspicious", 0) == before.get("suspicious", 0) + 1


def test_a_listing_image_used_as_evidence_is_indexed_with_its_windows(
    sessions: sessionmaker[Session], buyer_key_id: str
) -> None:
    photo_id = "e" * 64
    windows = "00000000000000ff 0000000000000f0f"
    with transaction(sessions) as session:
        assert add_bare_photo(session, photo_id, now=NOW).window_hashes is None  # a listing image
        session.flush()
        claim_id = _claim(session, buyer_key_id, "windows", NOW)
        add_bare_photo(
            session, photo_id, now=NOW, perceptual_hash="00000000000000ff", window_hashes=windows
        )
        add_bare_evidence(session, claim_id, photo_id, now=NOW)
    with sessions() as session:
        (row,) = [row for row in crud.evidence_hashes(session) if row.claim_id == claim_id]
    assert (row.photo_id, row.perceptual_hash, row.window_hashes) == (
        photo_id,
        "00000000000000ff",
        windows,
    )


def test_evidence_stored_before_windows_keeps_its_whole_frame_hash(tmp_path: Path) -> None:
    """Upgrading a store made by revision 0001 keeps its rows; they have no windows yet."""
    engine = make_engine(f"sqlite:///{tmp_path / 'old.sqlite3'}")
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0001")
        connection.execute(
            text(
                "INSERT INTO photos (photo_id, format, byte_size, width, height, has_gps, "
                "perceptual_hash, created_at) VALUES ('p', 'JPEG', 1, 1, 1, false, "
                "'00000000000000ff', '2025-11-20 12:00:00')"
            )
        )
    upgrade_to_head(engine)
    with make_session_factory(engine)() as session:
        photo = crud.get_photo(session, photo_id="p")
        assert photo is not None
        assert (photo.perceptual_hash, photo.window_hashes) == ("00000000000000ff", None)
    engine.dispose()
