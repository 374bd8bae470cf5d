"""Quality findings on photos with flat bands around them, before and after padding is cut off.

    python bench/padding_study.py [--data ../shared/data] [--photos-per-product 2]

A photo padded to a square with white, a phone screenshot with blank margins above and below,
or a PNG with transparent edges used to be measured with its bands: white bars read as a
washed-out photo (an `overexposed` blocker on almost every one) and lowered the
contrast-normalised sharpness (`blurry` warnings). Since session 10 `service.quality.measure`
measures `Photo.picture` (`service.framing.framed`: the bands cut off, lines of one flat
colour up to a straight edge where the picture begins). This prints, for padded copies of clean
grocery phone photos and for photos that must not change (the web package photos, many of them
letterboxed by their dataset; the catalog images, items on white; clean and +2.5 EV phone
photos), the share with any blocker, an `overexposed` blocker and any `blurry` finding, measured
with and without the cut in the same run. Every photo goes through PNG or JPEG q88 and the
service's intake, as an upload would. Run on purpose, not in CI (about a minute on 2 cores).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from service.framing import analysis_grey
from service.quality import (
    DEFAULT_THRESHOLDS,
    QualityMetrics,
    decide,
    measure,
    measure_grey,
)
from training.config import TrainConfig
from training.data import load_grocery, load_packages
from training.quality_thresholds import (
    as_uploaded,
    exposure_shift,
    gaussian_blur,
    read_grocery_photos,
)

WHITE, BLACK = (255, 255, 255), (0, 0, 0)


def uploaded(image: Image.Image) -> tuple[QualityMetrics, QualityMetrics]:
    """The metrics of `image` as uploaded, measured with its bands and without them."""
    photo = as_uploaded(image)
    return measure_grey(analysis_grey(photo.image), photo.original_size), measure(photo)


def padded(
    content_size: tuple[int, int], canvas_size: tuple[int, int], colour: tuple[int, ...]
) -> Callable[[Image.Image], Image.Image]:
    """The photo cut to `content_size`'s shape, resized to it and centred on a flat canvas."""

    def apply(image: Image.Image) -> Image.Image:
        mode = "RGBA" if len(colour) == 4 else "RGB"
        canvas = Image.new(mode, canvas_size, colour)
        content = ImageOps.fit(image.convert(mode), content_size, Image.Resampling.LANCZOS)
        canvas.paste(
            content,
            ((canvas_size[0] - content_size[0]) // 2, (canvas_size[1] - content_size[1]) // 2),
        )
        return canvas

    return apply


def gallery_screenshot(colour: tuple[int, int, int]) -> Callable[[Image.Image], Image.Image]:
    """The photo in a phone's gallery app: a status bar's glyphs above, a toolbar's below."""
    pad = padded((400, 300), (400, 866), colour)
    ink = tuple(255 - value for value in colour)

    def apply(image: Image.Image) -> Image.Image:
        screen = pad(image)
        draw = ImageDraw.Draw(screen)
        font = ImageFont.load_default(size=16)
        draw.text((16, 8), "9:41", fill=ink, font=font)
        draw.text((320, 8), "5G 87%", fill=ink, font=font)
        draw.text((24, 820), "Share     Edit     Like     Delete", fill=ink, font=font)
        return screen

    return apply


PADDINGS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "white letterbox (4:3 on a square)": padded((400, 300), (400, 400), WHITE),
    "black letterbox (4:3 on a square)": padded((400, 300), (400, 400), BLACK),
    "white pillarbox (3:4 on 4:3)": padded((300, 400), (533, 400), WHITE),
    "phone screenshot, light (4:3 on 9:19.5)": padded((400, 300), (400, 866), WHITE),
    "phone screenshot, dark (4:3 on 9:19.5)": padded((400, 300), (400, 866), BLACK),
    "PNG with transparent bands": padded((400, 300), (400, 400), (0, 0, 0, 0)),
    "gallery screenshot, light (status bar and toolbar)": gallery_screenshot(WHITE),
    "gallery screenshot, dark (status bar and toolbar)": gallery_screenshot(BLACK),
}


def share(metrics: list[QualityMetrics], found: Callable[[str, str], bool]) -> str:
    hits = [
        any(found(issue.code, issue.severity) for issue in decide(m, DEFAULT_THRESHOLDS))
        for m in metrics
    ]
    return f"{np.mean(hits):.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(TrainConfig().data_root))
    parser.add_argument("--photos-per-product", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    photos = [
        Image.open(path).convert("RGB")
        for paths in read_grocery_photos(args.data).values()
        for path in paths[: args.photos_per_product]
    ]
    groups: dict[str, list[tuple[QualityMetrics, QualityMetrics]]] = {
        name: [uploaded(pad(photo)) for photo in photos] for name, pad in PADDINGS.items()
    }
    groups["grocery phone photos, clean"] = [uploaded(photo) for photo in photos]
    brighter = exposure_shift(2.5)
    groups["grocery phone photos, +2.5 EV"] = [uploaded(brighter(p, rng)) for p in photos]
    # Padding must not hide what is wrong with the picture inside it.
    white_letterbox = PADDINGS["white letterbox (4:3 on a square)"]
    blur = gaussian_blur(3.0)
    groups["blurred (sigma 3), white letterbox"] = [
        uploaded(white_letterbox(blur(p, rng))) for p in photos
    ]
    groups["+2.5 EV, white letterbox"] = [
        uploaded(white_letterbox(brighter(p, rng))) for p in photos
    ]
    groups["grocery catalog images (items on white)"] = [
        uploaded(Image.open(item.path))
        for item in load_grocery(args.data)
        if item.role == "listing"
    ]
    groups["web package photos"] = [
        uploaded(Image.open(package.path)) for package in load_packages(args.data)
    ]

    findings: dict[str, Callable[[str, str], bool]] = {
        "any blocker": lambda code, severity: severity == "blocker",
        "overexposed blocker": lambda code, severity: (
            code == "overexposed" and severity == "blocker"
        ),
        "blurry": lambda code, severity: code == "blurry",
    }
    print("| photos | n | " + " | ".join(f"{name}: before / now" for name in findings) + " |")
    print("|---|---:|" + "---:|" * len(findings))
    for name, pairs in groups.items():
        before = [pair[0] for pair in pairs]
        now = [pair[1] for pair in pairs]
        cells = [f"{share(before, found)} / **{share(now, found)}**" for found in findings.values()]
        print(f"| {name} | {len(pairs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
