"""The background triage refresh: stale claims are re-triaged without a queue read paying for it,
the loop survives a failed round and stops cleanly, one refresher at a time runs a round on a data
folder, and queue reads refresh only what it missed."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.api.app import create_app
from service.api.refresher import BackgroundRefresher, round_lock
from service.auth import Role
from service.config import Settings
from service.db import crud
from service.db.migrate import upgrade_to_head
from service.db.models import Claim
from service.db.session import make_engine, make_session_factory, transaction

# How long a test waits for something that should happen within milliseconds. Every wait ends as
# soon as its condition holds, so a generous limit costs a passing run nothing and keeps a loaded
# 2-core machine (other test runs, training) from failing it.
POLL_LIMIT_S = 10.0


def poll(condition: Callable[[], bool], *, limit: float = POLL_LIMIT_S) -> bool:
    """True as soon as `condition` holds, False if it still does not after `limit` seconds."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# --- the loop on its own ------------------------------------------------------------------------


def test_a_failed_round_is_logged_and_the_next_one_still_runs(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    calls: list[int] = []

    def refresh(should_stop: Callable[[], bool]) -> int:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("database went away")
        return 3

    async def scenario() -> None:
        refresher = BackgroundRefresher(refresh, interval=0.01, lock_path=tmp_path / "lock")
        refresher.start()
        deadline = time.monotonic() + POLL_LIMIT_S
        while len(calls) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await refresher.stop()
        assert not refresher.running

    with caplog.at_level(logging.INFO, logger="service.api"):
        asyncio.run(scenario())
    assert len(calls) >= 3
    failures = [r for r in caplog.records if r.message.startswith("triage refresh failed")]
    assert len(failures) == 1
    assert failures[0].exc_info is not None and "database went away" in str(failures[0].exc_info[1])
    assert any(getattr(r, "claims_retriaged", None) == 3 for r in caplog.records)


def test_stop_ends_a_sleeping_loop_at_once_and_leaves_no_task(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    def refresh(should_stop: Callable[[], bool]) -> int:
        raise AssertionError("no round is due within an hour")

    async def scenario() -> None:
        refresher = BackgroundRefresher(refresh, interval=3600, lock_path=tmp_path / "lock")
        refresher.start()
        await asyncio.sleep(0.01)
        assert refresher.running
        started = time.monotonic()
        await refresher.stop()
        # At once, not after the hour the loop sleeps: the bound leaves room for a busy machine.
        assert time.monotonic() - started < 5
        assert not refresher.running
        assert asyncio.all_tasks() == {asyncio.current_task()}

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        asyncio.run(scenario())
    assert not caught
    assert not [r for r in caplog.records if r.name == "asyncio"]


def test_stop_waits_for_a_round_in_progress_and_asks_it_to_stop(tmp_path: Path) -> None:
    """A round is not cancelled under its thread (which would go on using the database while
    the app closes it): `stop` tells it to stop between chunks and waits for it."""
    in_round = threading.Event()
    saw_stop: list[bool] = []

    def refresh(should_stop: Callable[[], bool]) -> int:
        in_round.set()
        saw_stop.append(poll(should_stop))
        return 0

    async def scenario() -> None:
        refresher = BackgroundRefresher(refresh, interval=0.01, lock_path=tmp_path / "lock")
        refresher.start()
        assert await asyncio.to_thread(in_round.wait, POLL_LIMIT_S)
        await refresher.stop()
        assert not refresher.running

    asyncio.run(scenario())
    assert saw_stop == [True]


def test_interval_setting_defaults_to_half_the_refresh_age_and_must_be_positive(
    tmp_path: Path,
) -> None:
    assert Settings(data_dir=tmp_path).resolved_triage_refresh_interval == 450
    custom = Settings(data_dir=tmp_path, triage_refresh_interval_seconds=0.25)
    assert custom.resolved_triage_refresh_interval == 0.25
    for bad in (0, -1):
        with pytest.raises(ValidationError):
            Settings(data_dir=tmp_path, triage_refresh_interval_seconds=bad)
    with pytest.raises(ValueError):
        BackgroundRefresher(lambda should_stop: 0, interval=0, lock_path=tmp_path / "lock")


# --- one round at a time per data folder --------------------------------------------------------

# Tries the lock from another process, as a second `triage serve` worker would.
OTHER_PROCESS = """
import sys
from pathlib import Path
from service.api.refresher import round_lock
with round_lock(Path(sys.argv[1])) as acquired:
    print(acquired)
"""


def lock_taken_by_another_process(path: Path) -> bool:
    result = subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return {"True": True, "False": False}[result.stdout.strip()]


def test_the_round_lock_admits_one_holder_and_is_released_however_the_round_ends(
    tmp_path: Path,
) -> None:
    path = tmp_path / "triage-refresh.lock"
    with round_lock(path) as first:
        assert first
        # Another open of the same file, in this process or another, does not get it.
        with round_lock(path) as second:
            assert not second
        assert not lock_taken_by_another_process(path)
    assert lock_taken_by_another_process(path)
    with pytest.raises(RuntimeError, match="round failed"), round_lock(path) as held:
        assert held
        raise RuntimeError("round failed")
    with round_lock(path) as after_failure:
        assert after_failure
    assert path.is_file()  # kept: deleting it could let two holders in at once


class SetOnMessage(logging.Handler):
    """Sets `event` when a record's message starts with `prefix`."""

    def __init__(self, prefix: str, event: threading.Event) -> None:
        super().__init__(level=logging.DEBUG)
        self.prefix = prefix
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.prefix):
            self.event.set()


def test_of_two_refreshers_on_one_folder_one_runs_the_round_and_the_other_skips(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lock_path = tmp_path / "triage-refresh.lock"
    first_in_round, release_first = threading.Event(), threading.Event()
    second_skipped, second_ran = threading.Event(), threading.Event()
    second_ran_while_first_held: list[bool] = []

    def first_refresh(should_stop: Callable[[], bool]) -> int:
        first_in_round.set()
        release_first.wait(POLL_LIMIT_S)  # holds the lock until the test lets go
        return 0

    def second_refresh(should_stop: Callable[[], bool]) -> int:
        second_ran_while_first_held.append(not release_first.is_set())
        second_ran.set()
        return 0

    async def scenario() -> None:
        first = BackgroundRefresher(first_refresh, interval=0.01, lock_path=lock_path)
        second = BackgroundRefresher(second_refresh, interval=0.01, lock_path=lock_path)
        first.start()
        assert await asyncio.to_thread(first_in_round.wait, POLL_LIMIT_S)
        second.start()
        # The first round holds the lock in its thread; the event loop, not blocked by it,
        # runs the second refresher's rounds, which skip.
        assert await asyncio.to_thread(second_skipped.wait, POLL_LIMIT_S)
        assert second.skipped >= 1 and not second_ran.is_set()
        release_first.set()
        assert await asyncio.to_thread(second_ran.wait, POLL_LIMIT_S)
        await first.stop()
        await second.stop()

    logger = logging.getLogger("service.api")
    handler = SetOnMessage("triage refresh skipped", second_skipped)
    logger.addHandler(handler)
    try:
        with caplog.at_level(logging.DEBUG, logger="service.api"):
            asyncio.run(scenario())
    finally:
        logger.removeHandler(handler)
    assert second_ran_while_first_held and not any(second_ran_while_first_held)
    skips = [r for r in caplog.records if r.message.startswith("triage refresh skipped")]
    assert skips and all(r.levelno == logging.DEBUG for r in skips)
    assert all(getattr(r, "lock_path", None) == str(lock_path) for r in skips)


# --- in the app ---------------------------------------------------------------------------------


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'triage.sqlite3'}")
    upgrade_to_head(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(database: Engine) -> sessionmaker[Session]:
    return make_session_factory(database)


def add_open_claims(sessions: sessionmaker[Session], count: int) -> list[str]:
    now = crud.utcnow()
    with transaction(sessions) as session:
        key = crud.create_api_key(session, role=Role.buyer, name="buyer", now=now)
        session.flush()
        owner = crud.find_active_key(session, key=key)
        assert owner is not None
        crud.create_listing(session, listing_id="lst-1", title="Mug", category=None, now=now)
        session.flush()
        claims = [
            crud.create_claim(
                session,
                owner_key_id=owner.key_id,
                listing_id="lst-1",
                order_ref=f"ORD-{number}",
                reason="damaged",
                resolution="full_refund",
                description=None,
                amount=None,
                currency=None,
                opened_at=now - timedelta(days=number + 1),
                idempotency_key=f"claim-{number}",
                request_fingerprint="f" * 64,
                now=now,
            )
            for number in range(count)
        ]
        session.flush()
        return [claim.claim_id for claim in claims]


def make_stale(
    sessions: sessionmaker[Session], claim_id: str, *, age: timedelta
) -> tuple[int, datetime]:
    """Backdate a claim's stored triage and spoil its priority (still a valid one, so the queue
    can show it), to see whether it is recomputed; returns what is stored now."""
    triaged_at = crud.utcnow() - age
    with transaction(sessions) as session:
        claim = session.get(Claim, claim_id)
        assert claim is not None
        claim.triaged_at = triaged_at
        claim.priority = claim.priority + 1 if claim.priority < 100 else 0
        return claim.priority, triaged_at


def stored_triage(sessions: sessionmaker[Session], claim_id: str) -> tuple[int, datetime]:
    with sessions() as session:
        claim = session.get(Claim, claim_id)
        assert claim is not None
        return claim.priority, claim.triaged_at


async def eventually(condition: Callable[[], bool], *, limit: float = POLL_LIMIT_S) -> bool:
    """`poll` for use on the event loop, which must keep running for the refresher to."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@asynccontextmanager
async def running_app(
    settings: Settings,
) -> AsyncIterator[tuple[httpx.AsyncClient, BackgroundRefresher]]:
    """The app through its real lifespan (as uvicorn runs it), with an in-process client."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        refresher = app.state.triage_refresher
        assert refresher.running
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, refresher
    # The lifespan has ended: the loop is stopped before the runtime (and its engine) closes.
    assert not refresher.running
    assert asyncio.all_tasks() == {asyncio.current_task()}


def test_the_refresher_retriages_a_stale_claim_without_any_queue_read(
    tmp_path: Path, sessions: sessionmaker[Session], tiny_model_dir: Path
) -> None:
    (claim_id,) = add_open_claims(sessions, 1)
    settings = Settings(
        data_dir=tmp_path / "data",
        model_dir=tiny_model_dir,
        triage_refresh_seconds=1,
        triage_refresh_interval_seconds=0.05,
    )

    async def scenario() -> None:
        async with running_app(settings) as (_client, refresher):
            fresh_priority, _ = stored_triage(sessions, claim_id)
            _, stale_at = make_stale(sessions, claim_id, age=timedelta(hours=1))
            assert await eventually(lambda: stored_triage(sessions, claim_id)[1] > stale_at)
            priority, triaged_at = stored_triage(sessions, claim_id)
            assert priority == fresh_priority
            assert crud.utcnow() - triaged_at < timedelta(seconds=POLL_LIMIT_S + 1)
            assert refresher.rounds >= 1

    asyncio.run(scenario())


def test_a_queue_read_refreshes_only_claims_older_than_twice_the_refresh_age(
    tmp_path: Path, sessions: sessionmaker[Session], tiny_model_dir: Path
) -> None:
    recent, old = add_open_claims(sessions, 2)
    settings = Settings(
        data_dir=tmp_path / "data",
        model_dir=tiny_model_dir,
        triage_refresh_seconds=60,
        triage_refresh_interval_seconds=3600,  # no background round during this test
    )

    async def scenario() -> None:
        async with running_app(settings) as (client, refresher):
            with transaction(sessions) as session:
                reviewer = crud.create_api_key(
                    session, role=Role.reviewer, name="reviewer", now=crud.utcnow()
                )
            old_priority, _ = stored_triage(sessions, old)
            # Stale for the background refresher (over 60 s), not yet for a queue read (120 s).
            recent_spoiled = make_stale(sessions, recent, age=timedelta(seconds=90))
            _, old_at = make_stale(sessions, old, age=timedelta(hours=3))
            response = await client.get(
                "/v1/queue", headers={"Authorization": f"Bearer {reviewer}"}
            )
            assert response.status_code == 200, response.text
            assert stored_triage(sessions, recent) == recent_spoiled
            priority, triaged_at = stored_triage(sessions, old)
            assert priority == old_priority and triaged_at > old_at
            assert refresher.rounds == 0

    asyncio.run(scenario())
