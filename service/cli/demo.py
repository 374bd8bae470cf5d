"""`triage demo`: fill an empty store with generated listings and claims to explore."""

from __future__ import annotations

import typer


def demo() -> None:
    """Create demo listings, buyers and a few dozen claims, then print keys to use."""
    from rich.console import Console

    from service.config import Settings
    from service.demo import StoreNotEmpty, populate

    console = Console(stderr=True)
    settings = Settings()
    try:
        with console.status("Generating demo listings, photos and claims..."):
            result = populate(settings)
    except StoreNotEmpty as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
    console.print(
        f"Created {result.listings} listings and {result.claims} claims "
        f"({result.photos} photos scored) in {settings.data_dir}."
    )
    typer.echo(f"reviewer key: {result.reviewer_key}")
    typer.echo(f"buyer key:    {result.buyer_key}")
    typer.echo(f"admin key:    {result.admin_key}")
    typer.echo("Next: triage serve, then open http://127.0.0.1:8000/review/ with the reviewer key.")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
