"""`triage batch MANIFEST --images-root DIR --out OUT [--engine local|ray] [--resume]`.

Scores every photo of a manifest with the same code as the API (service.batch) and writes the
per-photo output plus a claim-level file beside it, with a Rich progress bar. Exit status: 0 when
the run finished (bad photos are reported in the `error` column, not by failing), 2 when the
manifest, the output path or the model is unusable, 130 when interrupted (Ctrl-C): the rows
scored so far are kept for `--resume`.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from service.cli.inputs import EXIT_BAD_INPUT

EXIT_INTERRUPTED = 130  # what a shell reports for a process ended by SIGINT


class EngineChoice(StrEnum):
    local = "local"
    ray = "ray"


def batch(
    manifest: Annotated[
        Path, typer.Argument(help="CSV, JSONL or Parquet: claim_id, photo, listing_images, ...")
    ],
    images_root: Annotated[
        Path, typer.Option("--images-root", help="Folder the manifest's paths are relative to.")
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Output table (.parquet, .csv or .jsonl; no extension: Parquet); claims go to "
            "OUT.claims.*",
        ),
    ],
    engine: Annotated[
        EngineChoice, typer.Option(help="local (this process) or ray (Ray Data actors).")
    ] = EngineChoice.local,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Keep the results an interrupted run already saved, for the rows whose photo "
            "and listing images are unchanged; the other rows are scored.",
        ),
    ] = False,
    ray_actors: Annotated[
        int, typer.Option(min=1, help="Ray actors, each with its own model session.")
    ] = 2,
    model_dir: Annotated[
        Path | None,
        typer.Option(envvar="TRIAGE_MODEL_DIR", help="Model folder (default: the shipped model)."),
    ] = None,
) -> None:
    """Score a manifest of claim photos, resumably, into a table plus a claim-level table."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from service.batch import BatchJob, ManifestError
    from service.config import Settings
    from service.engine import DEFAULT_MODEL_DIR, ModelLoadError, ScoringEngine

    console = Console(stderr=True)
    if engine is EngineChoice.ray:
        try:
            import ray  # noqa: F401  (only to say clearly that the extra is missing)
        except ImportError:
            console.print("[red]--engine ray needs the ray extra:[/red] pip install '.[ray]'")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        # Said before Ray starts: joining a cluster that cannot be reached waits minutes in
        # silence inside ray.init, and this names what it is waiting for.
        address = os.environ.get("RAY_ADDRESS")
        console.print(
            f"Ray: joining the cluster at {address} (RAY_ADDRESS)"
            if address
            else "Ray: starting a local Ray on this machine (a few seconds)",
            markup=False,
        )
    try:
        scoring = ScoringEngine.load(model_dir or DEFAULT_MODEL_DIR)
        with Progress(
            TextColumn("[bold]scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("rows", total=None)
            job = BatchJob(
                manifest,
                images_root=images_root,
                out=out,
                engine=scoring,
                # The same TRIAGE_POLICY__* configuration as the API, so both triage alike.
                policy=Settings().policy,
                resume=resume,
                engine_kind=engine.value,
                ray_actors=ray_actors,
                on_progress=lambda rows: progress.advance(task, rows),
            )
            progress.update(task, total=job.table.num_rows)
            summary = job.run()
    except (ManifestError, ModelLoadError) as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        console.print("interrupted: rerun with --resume to continue", markup=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    console.print(
        f"{summary.rows} rows ({summary.resumed} from an earlier run), {summary.errors} with an "
        f"error, {summary.claims} claims -> {summary.out} and {summary.claims_out}"
    )
    if summary.unused_saved:
        console.print(
            f"{summary.unused_saved} saved results matched no manifest row (the row changed or "
            "is gone, or another model scored it) and were not used"
        )
    for path, problem in sorted(summary.unusable_listing_images.items()):
        console.print(f"[yellow]listing image {path} skipped:[/yellow] {problem}")


def register(app: typer.Typer) -> None:
    app.command("batch")(batch)
