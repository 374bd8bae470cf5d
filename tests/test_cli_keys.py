"""`triage keys create`: the key alone on the last line, stored hashed, usable at once;
`triage keys list` and `revoke`: keys known by their display prefix, refused once revoked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from api_server import ApiServer
from sqlalchemy import select, text
from typer.testing import CliRunner

from service.cli import app
from service.db import crud
from service.db.models import ApiKey, AuditEvent
from service.db.session import make_engine, make_session_factory, transaction


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
    article = "an" if role == "admin" else "a"
    assert f"Created {article} {role} key, listed as {key[:10]}." in result.stderr
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


def create_key(role: str, name: str) -> str:
    result = CliRunner().invoke(app, ["keys", "create", "--role", role, "--name", name])
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1]


def stored_keys(database_url: str) -> dict[str, ApiKey]:
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            return {row.key_id: row for row in crud.list_api_keys(session)}
    finally:
        engine.dispose()


def test_list_shows_every_key_by_its_prefix_and_never_the_key(env: str) -> None:
    kept = create_key("reviewer", "kept")
    gone = create_key("buyer", "gone")
    assert CliRunner().invoke(app, ["keys", "revoke", gone[:10]]).exit_code == 0
    table = CliRunner().invoke(app, ["keys", "list"])
    assert table.exit_code == 0, table.output
    assert table.stdout.splitlines()[0].split() == ["PREFIX", "ROLE", "CREATED", "REVOKED", "NAME"]
    rows = {line.split()[0]: line for line in table.stdout.splitlines()[1:]}
    # PREFIX ROLE date time UTC (REVOKED: "-" or date time UTC) NAME
    assert rows[kept[:10]].split()[:2] == [kept[:10], "reviewer"]
    assert rows[kept[:10]].split()[4:] == ["UTC", "-", "kept"]
    assert rows[gone[:10]].split()[:2] == [gone[:10], "buyer"]
    assert rows[gone[:10]].split()[4::3] == ["UTC", "UTC"] and rows[gone[:10]].endswith(" gone")
    listed = CliRunner().invoke(app, ["keys", "list", "--json"])
    lines = {item["prefix"]: item for item in map(json.loads, listed.stdout.splitlines())}
    assert lines[kept[:10]]["revoked_at"] is None
    assert lines[gone[:10]]["revoked_at"] >= lines[gone[:10]]["created_at"]
    assert set(lines[kept[:10]]) == {"prefix", "role", "name", "created_at", "revoked_at"}
    assert kept not in table.output + listed.output and gone not in table.output + listed.output


def test_revoke_refuses_an_unknown_or_ambiguous_prefix(env: str) -> None:
    unknown = CliRunner().invoke(app, ["keys", "revoke", "trk_nokey0"])
    assert unknown.exit_code == 2 and "No key has the prefix" in unknown.stderr
    first, second = create_key("buyer", "twin 1"), create_key("admin", "twin 2")
    engine = make_engine(env)
    try:
        with transaction(make_session_factory(engine)) as session:
            for key in (first, second):
                row = crud.find_active_key(session, key=key)
                assert row is not None
                row.display_prefix = "trk_twin00"
    finally:
        engine.dispose()
    ambiguous = CliRunner().invoke(app, ["keys", "revoke", "trk_twin00"])
    assert ambiguous.exit_code == 2 and "2 active keys" in ambiguous.stderr
    twins = [row for row in stored_keys(env).values() if row.display_prefix == "trk_twin00"]
    assert len(twins) == 2 and all(row.revoked_at is None for row in twins)


def test_a_revoked_key_is_refused_by_the_running_api_at_once(
    env: str, api_server: ApiServer
) -> None:
    assert api_server.settings.resolved_database_url == env
    key = create_key("buyer", "to revoke")
    with api_server.client(key) as client:
        assert client.get("/v1/claims").status_code == 200
        revoked = CliRunner().invoke(app, ["keys", "revoke", key[:10]])
        assert revoked.exit_code == 0, revoked.output
        assert revoked.stdout.strip() == f"Revoked the buyer key {key[:10]} ('to revoke')."
        refused = client.get("/v1/claims")
    assert refused.status_code == 401 and refused.json()["code"] == "invalid_api_key"
    with api_server.client(api_server.keys["buyer"]) as other:
        assert other.get("/v1/claims").status_code == 200
    again = CliRunner().invoke(app, ["keys", "revoke", key[:10]])
    assert again.exit_code == 0 and "already revoked" in again.stdout
    engine = make_engine(env)
    try:
        with make_session_factory(engine)() as session:
            events = session.scalars(
                select(AuditEvent).where(AuditEvent.action == "key_revoked")
            ).all()
            # Once: revoking a revoked key changes nothing.
            assert [event.detail["name"] for event in events].count("to revoke") == 1
    finally:
        engine.dispose()
