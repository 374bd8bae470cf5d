"""What the photo commands (`check`, `score`) share: exit codes and reading listing images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from service.intake import Photo

EXIT_BAD_PHOTO = 1
EXIT_BAD_INPUT = 2


def open_listing_photos(paths: Sequence[Path]) -> list[Photo]:
    """Decode every `--listing` image; an unusable one stops the command (exit 2), because
    comparing against a listing that is not all there would give a misleading answer."""
    from rich.console import Console

    from service.intake import PhotoRejected, open_photo

    listing_photos = []
    for path in paths:
        try:
            listing_photos.append(open_photo(path.read_bytes()))
        except OSError as error:
            reason = error.strerror or str(error)
        except PhotoRejected as error:
            reason = error.message
        else:
            continue
        Console(stderr=True).print(f"[red]listing image {path} is unusable:[/red] {reason}")
        raise typer.Exit(EXIT_BAD_INPUT)
    return listing_photos
