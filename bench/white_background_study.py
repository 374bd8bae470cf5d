"""`overexposed` on items photographed on white, before and after the white-background rule.

    python bench/white_background_study.py [--data ../shared/data]

`overexposed` used to read the share of clipped-white pixels of the whole frame, so an item on a
white sheet, table or backdrop was told it was washed out, as a blocker when the white covered
more than 15 % of the frame. Since session 9 the decision reads `Exposure.washed_out`, which
leaves out clipped regions joined to the frame's edge when most of that edge is white
(`service.quality.washed_out_share`). This prints, for photos whose items are well exposed on
white (the grocery catalog images, the web package photos) and for the grocery phone photos
(clean, and exposed +1.5 / +2.5 EV as the threshold fit does), the share given `overexposed`
as a warning or a blocker by the shipped thresholds under each measure, in the same run.
Run on purpose, not in CI (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from service.framing import analysis_grey
from service.quality import DEFAULT_THRESHOLDS, Exposure, exposure
from training.config import TrainConfig
from training.data import load_grocery, load_packages
from training.quality_thresholds import as_uploaded, exposure_shift, read_grocery_photos


def measured(image: Image.Image) -> Exposure:
    """Through JPEG and the service's intake, as an upload would be."""
    return exposure(analysis_grey(as_uploaded(image).image))


def shares(values: np.ndarray) -> str:
    warning = np.mean(values > DEFAULT_THRESHOLDS.bright_warning)
    blocker = np.mean(values > DEFAULT_THRESHOLDS.bright_blocker)
    return f"{warning:8.1%} {blocker:8.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(TrainConfig().data_root))
    parser.add_argument("--photos-per-product", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    groups: dict[str, list[Exposure]] = {}
    groups["grocery catalog images (items on white)"] = [
        measured(Image.open(item.path))
        for item in load_grocery(args.data)
        if item.role == "listing"
    ]
    packages = load_packages(args.data)
    for label, damaged in (("damaged", True), ("intact", False)):
        groups[f"package photos, {label}"] = [
            measured(Image.open(package.path)) for package in packages if package.damaged == damaged
        ]
    photos = [
        path
        for paths in read_grocery_photos(args.data).values()
        for path in paths[: args.photos_per_product]
    ]
    for name, stops in (("clean", 0.0), ("+1.5 EV (warning)", 1.5), ("+2.5 EV (blocker)", 2.5)):
        shift = exposure_shift(stops)
        groups[f"grocery phone photos, {name}"] = [
            measured(shift(Image.open(path).convert("RGB"), rng) if stops else Image.open(path))
            for path in photos
        ]
    print(
        f"overexposed at the shipped thresholds (warning > {DEFAULT_THRESHOLDS.bright_warning}, "
        f"blocker > {DEFAULT_THRESHOLDS.bright_blocker})"
    )
    print(f"{'photos':48s} {'n':>5s}   whole frame (before)   washed_out (now)")
    print(f"{'':48s} {'':>5s}   {'any':>8s} {'blocker':>8s}   {'any':>8s} {'blocker':>8s}")
    for name, values in groups.items():
        clip = np.array([value.highlight_clip for value in values])
        washed = np.array([value.washed_out for value in values])
        print(f"{name:48s} {len(values):5d}   {shares(clip)}   {shares(washed)}")


if __name__ == "__main__":
    main()
