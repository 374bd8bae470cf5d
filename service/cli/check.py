"""`triage check PHOTO... [--listing IMG ...] [--json]`: the buyer-side feedback from the shell.

The same intake and `service.checks.check_photo` as POST /v1/evidence/check, without the model.
By default each photo gets a readable verdict with every finding's message and retake tip; with
--json each photo gets one JSON object on its own line (`photo`, `issues`, `error`). A photo that
cannot be read gets an `error` (and its `corrupt` / `unsupported_format` issue), the others are
still checked, and the command exits 1 at the end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli.inputs import EXIT_BAD_PHOTO, open_listing_photos

_SEVERITY_STYLE = {"blocker": "bold red", "warning": "yellow"}


def check_file(path: Path, listing_photos: list[Any]) -> dict[str, Any]:
    """One output line: the photo's findings, or why it could not be checked."""
    from service.checks import check_photo
    from service.intake import PhotoRejected, open_photo
    from service.quality import rejection_issue

    try:
        data = path.read_bytes()
    except OSError as error:
        return {
            "photo": str(path),
            "issues": [],
            "error": f"cannot read the file: {error.strerror}",
        }
    try:
        photo = open_photo(data)
    except PhotoRejected as error:
        return {
            "photo": str(path),
            "issues": [rejection_issue(error).to_dict()],
            "error": error.message,
        }
    issues = check_photo(photo, listing_photos=listing_photos)
    return {"photo": str(path), "issues": [issue.to_dict() for issue in issues], "error": None}


def _print_readable(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    for line in results:
        name = escape(line["photo"])
        if line["error"]:
            console.print(f"[bold red]✗ {name}[/]: {escape(line['error'])}")
        elif any(issue["severity"] == "blocker" for issue in line["issues"]):
            console.print(f"[bold red]✗ {name}[/]: please retake this photo")
        elif line["issues"]:
            console.print(f"[yellow]! {name}[/]: usable, but could be better")
        else:
            console.print(f"[green]✓ {name}[/]: looks good")
        for issue in line["issues"]:
            if line["error"] and issue["message"] == line["error"]:
                console.print(f"    [dim]tip:[/] {escape(issue['tip'])}")
                continue
            style = _SEVERITY_STYLE[issue["severity"]]
            console.print(
                f"  [{style}]{issue['severity']}[/] {issue['code']}: {escape(issue['message'])}"
            )
            console.print(f"    [dim]tip:[/] {escape(issue['tip'])}")


def check(
    photos: Annotated[list[Path], typer.Argument(help="Photo files to check.", show_default=False)],
    listing: Annotated[
        list[Path] | None,
        typer.Option(
            "--listing",
            help="A listing image the photos must not copy (repeat for several).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per photo per line.")
    ] = False,
) -> None:
    """Check photos before submitting them: size, blur, exposure, detail, listing-photo reuse."""

    listing_photos = open_listing_photos(listing or ())
    results = []
    for path in photos:
        line = check_file(path, listing_photos)
        results.append(line)
        if as_json:
            typer.echo(json.dumps(line))
    if not as_json:
        _print_readable(results)
    if any(line["error"] for line in results):
        raise typer.Exit(EXIT_BAD_PHOTO)


def register(app: typer.Typer) -> None:
    app.command("check")(check)
