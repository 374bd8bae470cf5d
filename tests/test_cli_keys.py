"""`triage keys create`: the key alone on the last line, stored hashed, usable at once."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from service.cli import app
from service.db import crud
from service.db.session import make_engine, make_session_factory


@pytest.fixture
def env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TRIAGE_DATABASE_URL", database_url)
    return database_url


@pytest.mark.parametrize("role", ["buyer", "reviewer", "admin"])
def test_create_prints_the_key_last_and_stores_its_hash(env: str, role: str) -> None:
    result = CliRunner().invoke(app, ["keys", "create", "--role", role, "--name", "ci bot"])
    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("trk_") and " " not in key
    engine = make_engine(env)
    try:
        with make_session_factory(engine)() as session:
            row = crud.find_active_key(session, key=key)
            assert row is not None and row.role == role and row.name == "ci bot"
        with engine.connect() as connection:
            hashes = [row[0] for row in connection.execute(text("SELECT key_hash FROM api_keys"))]
        assert key not in hashes
    finally:
        engine.dispose()


def test_an_unknown_role_is_refused(env: str) -> None:
    result = CliRunner().invoke(app, ["keys", "create", "--role", "superuser"])
    assert result.exit_code != 0


def test_role_is_required(env: str) -> None:
    result = CliRunner().invoke(app, ["keys", "create"])
    assert result.exit_code != 0
