"""`triage score PHOTO... [--listing IMG ...] [--json]`: the full photo assessment from the shell.

Same intake, preprocessing, engine and assessment code as the API. With --json each photo gets
one JSON object on its own line (photo, damage, mismatch, match_similarity, issues,
model_version, error); a photo that cannot be read gets an `error` on its line, the others are
still scored, and the command exits 1 at the end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from service.cli.inputs import EXIT_BAD_INPUT, EXIT_BAD_PHOTO, open_listing_photos


def score(
    photos: Annotated[list[Path], typer.Argument(help="Photo files to score.", show_default=False)],
    listing: Annotated[
        list[Path] | None,
        typer.Option(
            "--listing",
            help="A listing image to compare with (repeat for several).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per photo per line.")
    ] = False,
    model_dir: Annotated[
        Path | None,
        typer.Option(envvar="TRIAGE_MODEL_DIR", help="Model folder (default: the shipped model)."),
    ] = None,
) -> None:
    """Score photos with the shipped model: damage, mismatch against the listing, quality issues."""
    from rich.console import Console
    from rich.table import Table

    from service.assessment import Assessor, ScoredFile, assess_bytes
    from service.engine import DEFAULT_MODEL_DIR, ModelLoadError, ScoringEngine

    errors = Console(stderr=True)
    try:
        engine = ScoringEngine.load(model_dir or DEFAULT_MODEL_DIR)
    except ModelLoadError as error:
        errors.print(f"[red]cannot load the model:[/red] {error}")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    listing_photos = open_listing_photos(listing or ())
    assessor = Assessor(engine)
    results = []
    for path in photos:
        try:
            data = path.read_bytes()
        except OSError as error:
            message = f"unreadable: {error.strerror or error}"
            scored = ScoredFile.failed(str(path), message, engine.model_version)
        else:
            scored = assess_bytes(assessor, data, source=str(path), listing_photos=listing_photos)
        line = {"photo": str(path), **scored.score_fields()}
        results.append(line)
        if as_json:
            typer.echo(json.dumps(line))
    if not as_json:
        table = Table(title=f"Photo assessment ({engine.model_version})")
        # The photo's whole path, wrapped: a narrow terminal must not cut it to a shared prefix.
        table.add_column("photo", overflow="fold", ratio=2)
        for column in ("damage", "mismatch", "similarity"):
            table.add_column(column, justify="right", no_wrap=True)
        table.add_column("issues / error", ratio=1)
        for line in results:
            table.add_row(
                line["photo"],
                _number(line["damage"]),
                _number(line["mismatch"]),
                _number(line["match_similarity"]),
                line["error"] or ", ".join(issue["code"] for issue in line["issues"]) or "-",
            )
        Console().print(table)
    if any(line["error"] for line in results):
        raise typer.Exit(EXIT_BAD_PHOTO)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def register(app: typer.Typer) -> None:
    app.command("score")(score)
