"""Registers every `triage` command on the app. One line per command module."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
