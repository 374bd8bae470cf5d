"""`triage serve`: the API on embedded defaults (SQLite and photos in ./data, the shipped model)."""

from __future__ import annotations

from typing import Annotated

import typer

GRACEFUL_SHUTDOWN_SECONDS = 20


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
) -> None:
    """Run the REST API and the reviewer page. Settings come from TRIAGE_* variables."""
    import uvicorn

    from service.api.app import create_app
    from service.config import Settings

    settings = Settings()
    typer.echo(
        f"Evidence Triage on http://{host}:{port}  (data: {settings.data_dir}, "
        f"model: {settings.model_dir})",
        err=True,
    )
    # Our middleware writes the access log as JSON with the request id, so uvicorn's is off.
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        access_log=False,
        log_config=None,
        # On SIGTERM, requests in flight get this long to finish (an upload takes well under a
        # second); without it uvicorn waits for them indefinitely, past any orchestrator's grace.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
