"""Registers every `triage` command on the app. One line per command module."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    from service.cli import batch, check, demo, evidence, keys, labels, score, serve

    check.register(app)
    serve.register(app)
    demo.register(app)
    keys.register(app)
    labels.register(app)
    score.register(app)
    batch.register(app)
    evidence.register(app)
