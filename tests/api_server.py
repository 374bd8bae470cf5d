"""Reusable test fixtures: a database per backend and the real API on a real uvicorn server.

`database_url` is parametrized over SQLite and PostgreSQL (the latter only where
TRIAGE_TEST_POSTGRES_URL is set, skipped with a reason otherwise); `api_server` starts the app
with the tiny ONNX test model on a free port, with a temporary data folder, and hands out keys.
Registered in tests/conftest.py, so any test module can ask for them.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import uvicorn
from onnx_fixtures import write_tiny_model
from sqlalchemy import text

from service.auth import Role
from service.config import Settings, UploadLimits
from service.db import crud
from service.db.migrate import upgrade_to_head
from service.db.session import make_engine, make_session_factory, transaction

if TYPE_CHECKING:
    from fastapi import FastAPI

    from service.api.runtime import Runtime

POSTGRES_ENV = "TRIAGE_TEST_POSTGRES_URL"
# Small caps so that "too large" and "too many" are cheap to provoke in tests.
TEST_LIMITS = UploadLimits(
    max_upload_bytes=400_000, max_files_per_request=4, max_pixels=4_000_000, max_json_bytes=64_000
)


def reset_postgres(url: str) -> None:
    """An empty public schema: each server starts from nothing, as on a fresh install."""
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "postgres":
        url = os.environ.get(POSTGRES_ENV)
        if not url:
            pytest.skip(f"PostgreSQL pass needs {POSTGRES_ENV} (set by .ci/run)")
        reset_postgres(url)
        return url
    folder = tmp_path_factory.mktemp("sqlite")
    return f"sqlite:///{folder / 'triage.sqlite3'}"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ApiServer:
    base_url: str
    settings: Settings
    app: FastAPI
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def runtime(self) -> Runtime:
        """The serving process's runtime (database engine, caches, model), for tests that
        reach under the API, e.g. to make its database unreachable."""
        return self.app.state.runtime

    def create_key(self, role: Role, name: str = "test") -> str:
        engine = make_engine(self.settings.resolved_database_url)
        try:
            with transaction(make_session_factory(engine)) as session:
                return crud.create_api_key(session, role=role, name=name, now=crud.utcnow())
        finally:
            engine.dispose()

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)


@contextmanager
def run_api_server(settings: Settings) -> Iterator[ApiServer]:
    """The app under uvicorn in a background thread, until the block ends."""
    # Imported here so that importing these fixtures (every test session does, via conftest)
    # does not load FastAPI and the model stack for tests that never start a server.
    from service.api.app import create_app

    engine = make_engine(settings.resolved_database_url)
    upgrade_to_head(engine)  # so keys can be made before the server's own start-up
    engine.dispose()
    port = free_port()
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            log_config=None,
        )
    )
    thread = threading.Thread(target=server.run, name="api-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start (see the log above)")
        time.sleep(0.02)
    try:
        yield ApiServer(base_url=f"http://127.0.0.1:{port}", settings=settings, app=app)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def api_server(
    database_url: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """The API on both database backends, with one key per role (and a second buyer)."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        database_url=database_url,
        model_dir=tiny_model_dir,
        limits=TEST_LIMITS,
    )
    with run_api_server(settings) as server:
        for name, role in (
            ("admin", Role.admin),
            ("reviewer", Role.reviewer),
            ("buyer", Role.buyer),
            ("other_buyer", Role.buyer),
        ):
            server.keys[name] = server.create_key(role, name)
        yield server
