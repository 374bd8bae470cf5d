"""`triage evidence rehash | rescore`: bring stored evidence up to the current release.

`rehash` stores older evidence under every window of today's duplicate checks (service/rehash.py;
exit status 1 when some photos were missing from the store or no longer decode, listed on
stderr; the rest is done either way). `rescore` scores the open claims' evidence that another
model scored with the model configured now, and re-triages those claims
(service/api/rescore.py).
"""

from __future__ import annotations

import typer

evidence_app = typer.Typer(help="Maintain stored evidence.", no_args_is_help=True)


@evidence_app.command("rehash")
def rehash() -> None:
    """Hash every evidence photo stored by an older release again under all of today's windows
    (crops, mirror images, quarter turns, tilts), so the duplicate checks find its copies too.
    Safe to interrupt and run again; restart the service afterwards to load the new hashes."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from service.config import Settings
    from service.db.migrate import upgrade_to_head
    from service.db.session import make_engine, make_session_factory
    from service.rehash import count_short_evidence, rehash_evidence
    from service.store import PhotoStore

    console = Console(stderr=True)
    settings = Settings()
    engine = make_engine(settings.resolved_database_url)
    try:
        upgrade_to_head(engine)
        sessions = make_session_factory(engine)
        with Progress(
            TextColumn("[bold]rehashing"), BarColumn(), MofNCompleteColumn(), console=console
        ) as progress:
            task = progress.add_task("photos", total=count_short_evidence(sessions))
            summary = rehash_evidence(
                sessions,
                PhotoStore(settings.photos_dir),
                limits=settings.limits.intake_limits(),
                advance=lambda done: progress.advance(task, done),
            )
    finally:
        engine.dispose()
    for photo_id in summary.missing:
        console.print(f"[yellow]not in the photo store:[/yellow] {photo_id}")
    for photo_id in summary.unreadable:
        console.print(f"[yellow]no longer decodes:[/yellow] {photo_id}")
    console.print(
        f"{summary.rehashed} of {summary.short} evidence photos hashed again "
        f"({len(summary.missing)} missing from the store, {len(summary.unreadable)} unreadable)."
        + (" Restart the service to load them." if summary.rehashed else "")
    )
    if summary.missing or summary.unreadable:
        raise typer.Exit(1)


@evidence_app.command("rescore")
def rescore() -> None:
    """Score the open claims' evidence that an earlier model scored with the model configured
    now (TRIAGE_MODEL_DIR, default the shipped one), and re-triage those claims. Run it after a
    model upgrade: until then the policy judges the old model's scores against the new card's
    thresholds. Safe to interrupt and run again (a listing at a time is committed)."""
    from rich.console import Console

    from service.api.rescore import rescore_open_evidence
    from service.api.runtime import Runtime
    from service.config import Settings
    from service.db import crud

    console = Console(stderr=True)
    # The servers do their own start-up maintenance; this command only scores.
    runtime = Runtime.start(Settings(), maintain=False)
    try:
        with console.status(f"Scoring open evidence again with {runtime.model_version}..."):
            claims = rescore_open_evidence(
                runtime,
                actor=crud.SYSTEM,
                now=crud.utcnow(),
                why=f"model upgraded to {runtime.model_version}",
                other_than_model=runtime.model_version,
            )
    finally:
        runtime.close()
    console.print(f"{claims} open claims scored again by {runtime.model_version} and re-triaged.")


def register(app: typer.Typer) -> None:
    app.add_typer(evidence_app, name="evidence")
