"""`triage labels export OUT_DIR [--since ISO_DATE]`: reviewer label corrections as a manifest.

Writes OUT_DIR/labels.csv (the format `training.data.load_labelled_photos` reads, for
`python -m training train --extra-manifest OUT_DIR/labels.csv`) and copies the labelled photos
and their claims' listing images into OUT_DIR/photos (see service/labels.py). The manifest path
is printed on stdout, warnings and a one-line summary on stderr. Exit status 2 when OUT_DIR or
--since is unusable.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from service.cli.inputs import EXIT_BAD_INPUT

labels_app = typer.Typer(help="Export reviewer photo labels for training.", no_args_is_help=True)


def parse_since(value: str) -> datetime:
    """An ISO 8601 date or date-time; without a time zone it is taken as UTC."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO date or date-time (e.g. 2025-03-01 or "
            "2025-03-01T12:00:00+01:00)"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


@labels_app.command("export")
def export(
    out_dir: Annotated[
        Path,
        typer.Argument(
            metavar="OUT_DIR", help="Folder for labels.csv and photos/ (created if needed)."
        ),
    ],
    since: Annotated[
        datetime | None,
        typer.Option(
            "--since",
            parser=parse_since,
            metavar="ISO_DATE",
            help="Only photos whose label was last set at or after this date or date-time "
            "(UTC unless a zone is given).",
        ),
    ] = None,
) -> None:
    """Write the latest reviewer label of every labelled evidence photo, with the photos and
    their listing images, as a training manifest (labels.csv)."""
    from service.config import Settings
    from service.db.migrate import upgrade_to_head
    from service.db.session import make_engine, make_session_factory
    from service.labels import export_labels
    from service.store import PhotoStore

    if out_dir.exists() and not out_dir.is_dir():
        typer.echo(f"{out_dir} exists and is not a folder", err=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    settings = Settings()
    engine = make_engine(settings.resolved_database_url)
    try:
        upgrade_to_head(engine)
        summary = export_labels(
            make_session_factory(engine),
            PhotoStore(settings.photos_dir),
            out_dir,
            since=since,
            warn=lambda message: typer.echo(f"warning: {message}", err=True),
        )
    finally:
        engine.dispose()
    typer.echo(
        f"rows written: {summary.rows}; photos skipped as missing from the store: "
        f"{len(summary.skipped_photos)} (rows left out: {summary.rows_dropped}, listing images "
        f"left out: {summary.listing_images_dropped}); files copied: {summary.copied}, "
        f"reused: {summary.reused}",
        err=True,
    )
    typer.echo(str(summary.manifest))


def register(app: typer.Typer) -> None:
    app.add_typer(labels_app, name="labels")
