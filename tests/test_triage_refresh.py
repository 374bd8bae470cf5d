"""Re-triage of many claims at once (start-up, queue reads): the same triage as `retriage` per
claim, in a number of SQL statements that depends on the number of chunks, not of claims. And
start-up maintenance (that re-triage and the heatmap sweep) once per deployment start: runtimes
starting together on one data folder do it once, unless their policy or model differs."""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from api_server import reset_postgres
from conftest import add_bare_photo
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

import service.api.runtime as runtime_module
from service.api import startup, triage
from service.api.refresher import round_lock
from service.api.runtime import HEATMAP_FORMAT_VERSION, Runtime, heatmap_key
from service.api.startup import (
    MaintenanceRecord,
    StartUpMaintenance,
    generation_of,
    maintain_once_per_start,
    maintenance_fingerprint,
    read_record,
    write_record,
)
from service.auth import Role
from service.config import Settings
from service.db import crud
from service.db.migrate import upgrade_to_head
from service.db.models import Claim, ClaimPhoto
from service.db.session import make_engine, make_session_factory, transaction
from service.intake import DISPLAY_COPY_VERSION
from service.policy import CLAIM_REASONS, PolicyConfig, PriorityWeights
from service.store import DisplayCache, HeatmapCache

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


@pytest.fixture
def settings(database: str, tiny_model_dir: Path, tmp_path: Path) -> Settings:
    """The service on that database, with the tiny model and a data folder of its own."""
    return Settings(data_dir=tmp_path / "data", database_url=database, model_dir=tiny_model_dir)


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
                add_bare_photo(session, photo_id, now=CREATED)
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
    settings: Settings, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    claim_ids = add_claims(sessions, 300, seed=1)
    before = stored(sessions, claim_ids)
    # Small chunks, so that several chunks (and their commits) are exercised.
    monkeypatch.setattr(triage, "REFRESH_CHUNK", 64)
    monkeypatch.setattr(runtime_module, "utcnow", lambda: NOW)
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


# --- start-up maintenance: once per deployment start, not once per worker -----------------------

EARLIER = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
SEEN = 4  # the maintenance generation a process read when it began starting


@pytest.mark.parametrize(
    ("record", "runs"),
    [
        (None, True),
        (MaintenanceRecord("mine", SEEN + 1, EARLIER), False),
        (MaintenanceRecord("mine", SEEN, EARLIER + timedelta(days=1)), True),
        (MaintenanceRecord("theirs", SEEN + 1, EARLIER), True),
    ],
    ids=[
        "first start",
        "done by a worker of this start",
        "done by an earlier start, on a host whose clock is a day ahead",
        "done since, with another policy or model",
    ],
)
def test_maintenance_is_skipped_only_when_done_for_the_same_fingerprint_since_this_start(
    tmp_path: Path, record: MaintenanceRecord | None, runs: bool
) -> None:
    record_path = tmp_path / "start-up-maintenance.json"
    if record is not None:
        write_record(record_path, record)
    done = StartUpMaintenance(claims_retriaged=3, heatmaps_removed=1, cache_versions_removed=0)
    calls: list[str] = []

    def maintain() -> StartUpMaintenance:
        calls.append("maintained")
        return done

    result = maintain_once_per_start(
        maintain,
        lock_path=tmp_path / "lock",
        record_path=record_path,
        fingerprint="mine",
        generation_at_start=SEEN,
    )
    after = read_record(record_path)
    assert after is not None
    if runs:
        assert (result, calls) == (done, ["maintained"])
        assert after.fingerprint == "mine"
        assert after.generation == max(SEEN, 0 if record is None else record.generation) + 1
    else:
        assert (result, calls, after) == (None, [], record)


def test_a_record_from_before_generations_reads_as_generation_zero(tmp_path: Path) -> None:
    path = tmp_path / "start-up-maintenance.json"
    path.write_text('{"fingerprint": "mine", "finished_at": "2025-06-01T09:00:00+00:00"}')
    assert read_record(path) == MaintenanceRecord("mine", 0, EARLIER)
    assert generation_of(read_record(path)) == generation_of(None) == 0


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{",
        "[]",
        '{"fingerprint": "mine"}',
        '{"fingerprint": "mine", "generation": 2, "finished_at": 1}',
        '{"fingerprint": "mine", "generation": -1, "finished_at": "2025-06-01T09:00:00+00:00"}',
        '{"fingerprint": "mine", "generation": "2", "finished_at": "2025-06-01T09:00:00+00:00"}',
        '{"fingerprint": "mine", "generation": true, "finished_at": "2025-06-01T09:00:00+00:00"}',
    ],
)
def test_a_missing_or_unreadable_record_reads_as_none_so_the_work_is_done_again(
    tmp_path: Path, content: str
) -> None:
    path = tmp_path / "start-up-maintenance.json"
    assert read_record(path) is None
    path.write_text(content)
    assert read_record(path) is None


def test_the_fingerprint_changes_with_the_database_the_policy_and_the_model() -> None:
    base: dict[str, Any] = {
        "database_url": "sqlite:///a.sqlite3",
        "policy": POLICY,
        "model_version": "evidence-lite0-1.3.1",
    }
    fingerprint = maintenance_fingerprint(**base)
    assert maintenance_fingerprint(**base) == fingerprint
    for change in (
        {"database_url": "postgresql+psycopg://db/triage"},
        {"policy": POLICY.model_copy(update={"damage_high": 0.9})},
        {"policy": POLICY.model_copy(update={"weights": PriorityWeights(escalated=40.0)})},
        {"model_version": "evidence-lite0-1.4.0"},
    ):
        assert maintenance_fingerprint(**(base | change)) != fingerprint, change


@dataclass
class StartUps:
    """Runtimes started in this test: `together` starts them as uvicorn workers start, and
    `maintenances` holds every start-up maintenance that ran, with the policy it ran with, in
    the order they ran (one at a time: under the lock)."""

    maintenances: list[tuple[PolicyConfig, StartUpMaintenance]] = field(default_factory=list)
    # Released by each runtime as it reaches the maintenance lock.
    arrived: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))

    @contextmanager
    def together(self, *every_settings: Settings) -> Iterator[list[Runtime]]:
        """Runtimes started in threads while the test holds the maintenance lock, released only
        once every one of them has begun starting and reached it: so no start comes after a
        maintenance ended, whichever of them takes the lock first."""
        lock_path = every_settings[0].refresh_lock_path
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(len(every_settings)) as pool:
            with round_lock(lock_path) as held:
                assert held
                starting = [pool.submit(Runtime.start, settings) for settings in every_settings]
                for _ in every_settings:
                    assert self.arrived.acquire(timeout=60)
            runtimes = [future.result(timeout=60) for future in starting]
        try:
            yield runtimes
        finally:
            for runtime in runtimes:
                runtime.close()


@pytest.fixture
def start_ups(monkeypatch: pytest.MonkeyPatch) -> StartUps:
    observed = StartUps()
    maintain = Runtime.start_up_maintenance

    def recording(self: Runtime) -> StartUpMaintenance:
        result = maintain(self)
        observed.maintenances.append((self.policy, result))
        return result

    def arriving(path: Path, *, wait: bool = False) -> AbstractContextManager[bool]:
        observed.arrived.release()
        return round_lock(path, wait=wait)

    # Alembic runs a migration through module-level state, so two at once in one process break
    # each other; workers are processes, each with its own. The database is at head already.
    migrating = threading.Lock()

    def upgrade_one_at_a_time(engine: Engine) -> None:
        with migrating:
            upgrade_to_head(engine)

    monkeypatch.setattr(Runtime, "start_up_maintenance", recording)
    monkeypatch.setattr(startup, "round_lock", arriving)
    monkeypatch.setattr(runtime_module, "upgrade_to_head", upgrade_one_at_a_time)
    return observed


def open_claim_ids(sessions: sessionmaker[Session]) -> set[str]:
    with sessions() as session:
        return set(
            session.scalars(select(Claim.claim_id).where(Claim.status.in_(crud.OPEN_STATUSES)))
        )


def test_runtimes_starting_together_maintain_once_and_a_later_start_again(
    settings: Settings, sessions: sessionmaker[Session], start_ups: StartUps
) -> None:
    claim_ids = add_claims(sessions, 80, seed=5)
    cache = HeatmapCache(settings.heatmap_dir, version=HEATMAP_FORMAT_VERSION)
    # A PNG of a photo that is no evidence, and one named as before keys began with the photo.
    unservable = heatmap_key("0f" * 32, [[0.5] * 7 for _ in range(7)], 224)
    cache.put(unservable, b"\x89PNG left behind")
    stray = cache.path_for(unservable).with_name("ab" * 32 + ".png")
    stray.write_bytes(b"\x89PNG old layout")
    # Display copies made by older code (version 1 kept a JPEG comment of the original).
    older_copies = DisplayCache(settings.display_dir, version=DISPLAY_COPY_VERSION - 1)
    older_copies.put("cd" * 32, b"\xff\xd8 a copy with a comment")
    with start_ups.together(settings, settings):
        pass
    open_ids = open_claim_ids(sessions)
    assert [done for _, done in start_ups.maintenances] == [
        StartUpMaintenance(
            claims_retriaged=len(open_ids), heatmaps_removed=2, cache_versions_removed=1
        )
    ]
    assert not cache.path_for(unservable).exists() and not stray.exists()
    assert not older_copies.root.exists()
    retriaged = stored(sessions, claim_ids)
    assert all(retriaged[claim_id][5] > CREATED for claim_id in open_ids)
    # A later start may run other code, and requests may have left PNGs behind: it maintains.
    stray.write_bytes(b"\x89PNG old layout")
    Runtime.start(settings).close()
    assert len(start_ups.maintenances) == 2
    assert start_ups.maintenances[1][1].heatmaps_removed == 1
    assert not stray.exists()


def test_a_runtime_with_another_policy_maintains_again_and_the_last_one_wins(
    settings: Settings,
    sessions: sessionmaker[Session],
    start_ups: StartUps,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    claim_ids = add_claims(sessions, 80, seed=6)
    # A clock that moves on at each reading, as a real one does between the two maintenances.
    seconds = itertools.count()
    monkeypatch.setattr(runtime_module, "utcnow", lambda: NOW + timedelta(seconds=next(seconds)))
    escalation_first = settings.model_copy(
        update={"policy": PolicyConfig(weights=PriorityWeights(escalated=60.0))}
    )
    with start_ups.together(settings, escalation_first) as runtimes:
        policies = [runtime.policy for runtime in runtimes]
    assert policies[0] != policies[1]
    ran_with = [policy for policy, _ in start_ups.maintenances]
    assert ran_with in (policies, policies[::-1])
    after = stored(sessions, claim_ids)
    (last_run,) = {after[claim_id][5] for claim_id in open_claim_ids(sessions)}
    expected = per_claim_retriage(sessions, claim_ids, ran_with[-1], last_run)
    assert {claim_id: after[claim_id] for claim_id in expected} == expected
    # The two policies do triage differently, so the stored triage tells which ran last.
    assert per_claim_retriage(sessions, claim_ids, ran_with[0], last_run) != expected
