"""The running service under operational faults: what a client gets when something goes wrong
under the routes (an unexpected error, a database that cannot be reached), and that the service
recovers without a restart once the fault is gone."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import pytest
from api_server import TEST_LIMITS, ApiServer, run_api_server

from service.auth import Role
from service.config import Settings
from service.db import session
from service.db.session import database_reachable, make_engine


@pytest.fixture
def server(tmp_path: Path, tiny_model_dir: Path) -> Iterator[ApiServer]:
    """A server whose SQLite database lies in a folder of its own, apart from the data folder,
    so that a test can take the database away (rename its folder) and give it back."""
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'db' / 'triage.sqlite3'}",
        model_dir=tiny_model_dir,
        limits=TEST_LIMITS,
    )
    with run_api_server(settings) as running:
        running.keys["reviewer"] = running.create_key(Role.reviewer, "reviewer")
        yield running


def assert_problem_of_this_request(response: httpx.Response, status: int, code: str) -> dict:
    """A problem document that a client can report: its request id is the response's own, and
    it went through the middleware that every response passes (security headers)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    assert response.headers["x-content-type-options"] == "nosniff"
    return body


def test_an_unexpected_error_is_answered_with_the_request_id_to_quote(
    server: ApiServer, monkeypatch: pytest.MonkeyPatch, error_log: list[logging.LogRecord]
) -> None:
    def broken() -> dict[str, bool]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(server.runtime, "ready", broken)
    with server.client() as anyone:
        response = anyone.get("/readyz", headers={"X-Request-ID": "ops-500"})
    body = assert_problem_of_this_request(response, 500, "internal_error")
    assert body["request_id"] == "ops-500"
    assert "quote the request id" in body["detail"]
    [logged] = error_log  # once, with its traceback: not again by the server
    assert (logged.levelname, logged.getMessage()) == ("ERROR", "unhandled error")
    assert logged.exc_info and isinstance(logged.exc_info[1], RuntimeError)


def test_an_unreachable_database_is_a_503_until_it_is_back(
    server: ApiServer, error_log: list[logging.LogRecord]
) -> None:
    database_folder = Path(server.settings.resolved_database_url.removeprefix("sqlite:///")).parent
    away = database_folder.with_name("db-away")
    with server.client(server.keys["reviewer"]) as reviewer:
        assert reviewer.get("/v1/queue").status_code == 200
        # The database goes away: pooled connections closed, the file no longer openable.
        server.runtime.db_engine.dispose()
        database_folder.rename(away)
        try:
            ready = reviewer.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"] == {"model": True, "database": False}
            refused = reviewer.get("/v1/queue")
            assert_problem_of_this_request(refused, 503, "database_unavailable")
            assert int(refused.headers["retry-after"]) > 0
            [logged] = error_log  # one line, without a traceback
            assert (logged.levelname, logged.exc_info) == ("WARNING", None)
        finally:
            away.rename(database_folder)
        assert reviewer.get("/readyz").status_code == 200
        assert reviewer.get("/v1/queue").status_code == 200


@contextmanager
def silent_database_server() -> Iterator[int]:
    """A port that accepts TCP connections and never answers: a hung PostgreSQL, or a proxy in
    front of one that is gone. Yields the port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stopping = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stopping.is_set():
            with suppress(TimeoutError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stopping.set()
        thread.join()
        for connection in accepted:
            connection.close()
        listener.close()


def test_a_database_that_never_answers_is_not_ready_within_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("psycopg")
    monkeypatch.setattr(session, "CONNECT_TIMEOUT_SECONDS", 1)
    with silent_database_server() as port:
        engine = make_engine(f"postgresql+psycopg://triage@127.0.0.1:{port}/triage")
        answers: list[bool] = []
        # In a thread: without a connect timeout the check waits for as long as the server does.
        check = threading.Thread(target=lambda: answers.append(database_reachable(engine)))
        check.start()
        check.join(timeout=10)
        assert answers == [False], "/readyz would hang, and every request with it"
        engine.dispose()


@pytest.fixture
def error_log() -> Iterator[list[logging.LogRecord]]:
    """What the service and the server log at WARNING and above while the test runs (the
    service's own error lines and uvicorn's for an exception that got out of the app)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    loggers = [logging.getLogger(name) for name in ("service.api", "uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def test_a_missing_table_is_a_bug_not_an_unreachable_database(
    server: ApiServer, error_log: list[logging.LogRecord]
) -> None:
    """SQLite reports a table that is not there (a migration not applied, a typo in a query) as
    an OperationalError, like a database it cannot open. That is a 500 with its traceback logged
    once, not a 503 that tells clients to retry while /readyz says ready and the log holds one
    warning line without a traceback."""
    with server.runtime.db_engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE claims RENAME TO claims_away")
    with server.client(server.keys["reviewer"]) as reviewer:
        assert reviewer.get("/readyz").status_code == 200
        response = reviewer.get("/v1/queue")
    assert_problem_of_this_request(response, 500, "internal_error")
    assert "retry-after" not in response.headers
    [logged] = error_log
    assert (logged.levelname, logged.getMessage()) == ("ERROR", "unhandled error")
    assert logged.exc_info and "no such table" in str(logged.exc_info[1])


def test_a_client_that_goes_away_mid_upload_is_no_server_error(
    server: ApiServer, error_log: list[logging.LogRecord]
) -> None:
    """A buyer's app cancels an upload halfway: nothing is wrong in the service, so no error is
    logged, and the request is counted as a 499 (client closed request), not a 500."""
    buyer = server.create_key(Role.buyer, "buyer")
    host, port = server.base_url.removeprefix("http://").split(":")
    boundary = "cut-short"
    head = (
        f"POST /v1/evidence/check HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {buyer}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        "Content-Length: 200000\r\n\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(head + b"\xff\xd8\xff" + b"\0" * 1000)
    counted = ""
    for _ in range(200):  # the server notices the closed connection on its own time
        with server.client() as anyone:
            counted = anyone.get("/metrics").text
        if 'status="499"' in counted:
            break
        threading.Event().wait(0.05)
    assert 'status="499"' in counted
    assert not [record for record in error_log if record.levelno >= logging.ERROR]
