"""`triage keys create`: make an API key (stored hashed; the key itself is printed once)."""

from __future__ import annotations

from typing import Annotated

import typer

from service.auth import Role

keys_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)


@keys_app.command("create")
def create(
    role: Annotated[Role, typer.Option(help="What the key may do.", case_sensitive=False)],
    name: Annotated[str | None, typer.Option(help="Who or what the key is for.")] = None,
) -> None:
    """Create a key. The key is printed alone on the last line (easy to capture in scripts)."""
    from service.config import Settings
    from service.db import crud
    from service.db.migrate import upgrade_to_head
    from service.db.session import make_engine, make_session_factory, transaction

    settings = Settings()
    engine = make_engine(settings.resolved_database_url)
    try:
        upgrade_to_head(engine)
        with transaction(make_session_factory(engine)) as session:
            key = crud.create_api_key(
                session, role=role, name=name or f"{role.value} key", now=crud.utcnow()
            )
    finally:
        engine.dispose()
    typer.echo(f"Created a {role.value} key. Store it now; it cannot be shown again.", err=True)
    typer.echo(key)


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
