"""The `triage` command line. Each command lives in its own module and is registered here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="triage",
    help="Evidence Triage: score the photo evidence of marketplace quality claims.",
    no_args_is_help=True,
    add_completion=False,
)


def _register() -> None:
    # Imported here, not at module top, so `triage --help` stays fast and each command's heavy
    # imports (onnxruntime, FastAPI, SQLAlchemy) load only with that command's module.
    from service.cli import commands

    commands.register(app)


_register()
