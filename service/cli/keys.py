"""`triage keys create | list | revoke`: API keys (stored hashed; a key itself is printed once,
at creation, and afterwards known by its display prefix)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from service.auth import Role, display_prefix, with_article
from service.cli.inputs import EXIT_BAD_INPUT

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy.orm import Session

keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)


@contextmanager
def _transaction() -> Iterator[Session]:
    """A transaction on the configured database, migrated to the current schema first."""
    from service.config import Settings
    from service.db.migrate import upgrade_to_head
    from service.db.session import make_engine, make_session_factory, transaction

    engine = make_engine(Settings().resolved_database_url)
    try:
        upgrade_to_head(engine)
        with transaction(make_session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


def _minute(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment is not None else "-"


@keys_app.command("create")
def create(
    role: Annotated[Role, typer.Option(help="What the key may do.", case_sensitive=False)],
    name: Annotated[str | None, typer.Option(help="Who or what the key is for.")] = None,
) -> None:
    """Create a key. The key is printed alone on the last line (easy to capture in scripts)."""
    from service.db import crud

    with _transaction() as session:
        key = crud.create_api_key(
            session, role=role, name=name or f"{role.value} key", now=crud.utcnow()
        )
    typer.echo(
        f"Created {with_article(role.value)} key, listed as {display_prefix(key)}. "
        "Store it now; it cannot be shown again.",
        err=True,
    )
    typer.echo(key)


@keys_app.command("list")
def list_keys(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per key per line.")
    ] = False,
) -> None:
    """Every key with its prefix, role, name, creation and revocation time (never the key)."""
    from service.db import crud

    with _transaction() as session:
        keys = crud.list_api_keys(session)
    if as_json:
        for key in keys:
            revoked = key.revoked_at.isoformat() if key.revoked_at is not None else None
            line = {
                "prefix": key.display_prefix,
                "role": key.role,
                "name": key.name,
                "created_at": key.created_at.isoformat(),
                "revoked_at": revoked,
            }
            typer.echo(json.dumps(line))
        return
    typer.echo(f"{'PREFIX':<12}{'ROLE':<10}{'CREATED':<22}{'REVOKED':<22}NAME")
    for key in keys:
        typer.echo(
            f"{key.display_prefix:<12}{key.role:<10}{_minute(key.created_at):<22}"
            f"{_minute(key.revoked_at):<22}{key.name}"
        )


@keys_app.command("revoke")
def revoke(
    prefix: Annotated[
        str,
        typer.Argument(
            metavar="PREFIX", help="The key's prefix as `triage keys list` shows it (trk_ + 6)."
        ),
    ],
) -> None:
    """Revoke a key: the API refuses it (401) from the next request on.

    Exit status 2, and nothing revoked, when no key or more than one active key has the prefix.
    """
    from service.db import crud

    with _transaction() as session:
        matches = crud.api_keys_with_prefix(session, display_prefix=prefix)
        active = [key for key in matches if key.revoked_at is None]
        if not matches:
            typer.echo(f"No key has the prefix {prefix!r}; see `triage keys list`.", err=True)
            raise typer.Exit(EXIT_BAD_INPUT)
        if len(active) > 1:
            names = ", ".join(f"{key.name!r} ({key.role})" for key in active)
            typer.echo(
                f"{len(active)} active keys have the prefix {prefix!r}: {names}. Nothing was "
                "revoked.",
                err=True,
            )
            raise typer.Exit(EXIT_BAD_INPUT)
        if not active:
            typer.echo(f"The key {prefix} was already revoked ({_minute(matches[-1].revoked_at)}).")
            return
        key = active[0]
        crud.revoke_api_key(session, key=key, now=crud.utcnow())
        role, name = key.role, key.name
    typer.echo(f"Revoked the {role} key {prefix} ({name!r}).")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
