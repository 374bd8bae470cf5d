"""What part of a photo is the picture: its analysis copy, and the flat bands pasted around it.

A photo padded to a square, a phone screenshot with blank margins above and below, or a PNG with
transparent edges carries bands that are not part of the scene. Measured or scored with them,
white bars read as a washed-out photo, every bar lowers the contrast-normalised sharpness, and the
model, which never saw phone frames in training, finds damage in them (a quarter of the intact
photos in a screenshot frame scored above 0.5, against 2 % without it). `framed` cuts them off;
`service.intake.Photo.picture` is the decoded photo's picture, what the quality checks measure and
the model scores.

Pure image logic, no I/O: part of the inference core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

# Longest side of the greyscale copy every metric is measured on. 256 keeps a little more detail
# than the model's 224 input and is below the grocery photos' 348 px, so the fitting data is
# always downscaled the same way a phone photo is; images smaller than this are not upscaled
# (upscaling would fabricate blur), and they are too_small anyway.
ANALYSIS_SIDE = 256
# Padding: a band is the lines from an edge up to a seam, the first line that differs from the
# outermost line's colour (its median, give or take PADDING_TOLERANCE grey levels: JPEG ringing
# stays within it) along PADDING_SEAM_SHARE of its length, where the picture begins. The band's
# lines must be of that colour along PADDING_FLAT_SHARE of their length on average and along
# PADDING_LINE_SHARE of each (a phone's status bar or toolbar puts a line of glyphs in a band).
PADDING_TOLERANCE = 6.0
PADDING_SEAM_SHARE = 0.9
PADDING_FLAT_SHARE = 0.9
PADDING_LINE_SHARE = 0.5
PADDING_MIN_KEPT = 0.25
# Frames with fewer lines than this (a thumbnail, a 1-px strip) are not cut: too few lines to
# tell a band from the picture.
PADDING_MIN_SIDE = 16
FULL_FRAME = (0.0, 0.0, 1.0, 1.0)


def analysis_grey(image: Image.Image, side: int = ANALYSIS_SIDE) -> np.ndarray:
    """Luma of `image` as float32, longest side at most `side` (downscaled with antialiasing)."""
    grey = image.convert("L")
    if max(grey.size) > side:
        scale = side / max(grey.size)
        size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
        # One filter at every scale (Pillow's resize is antialiased), so the fine detail left
        # for `sharpness` depends on the scene, not on how far the photo had to shrink.
        grey = grey.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.float32)


def _band_depth(lines: np.ndarray) -> int:
    """How many of `lines` (the frame's lines from one edge inwards) form a padding band: lines
    of one flat colour, up to a straight edge where the picture begins. 0 when there is none."""
    colour = np.median(lines[0])
    flat = (np.abs(lines - colour) <= PADDING_TOLERANCE).mean(axis=1)
    seams = np.flatnonzero(flat <= 1.0 - PADDING_SEAM_SHARE)
    if seams.size == 0 or seams[0] == 0:
        return 0
    seam = int(seams[0])
    # The line before the seam may blend band and picture (the downscale): not held to the rule.
    band = flat[: max(1, seam - 1)]
    if (
        band.mean() < PADDING_FLAT_SHARE
        or band.min() < PADDING_LINE_SHARE
        # Sharp: flat up to the blended line. A smooth gradient (a sky, an evenly lit wall)
        # drifts off the colour over many lines and has no such edge.
        or band[-1] < PADDING_FLAT_SHARE
    ):
        # Not flat: a scene, or an item on white whose outline meets the white along part of a
        # line only, so no straight edge is where the picture begins.
        return 0
    # The seam line goes with the band too: at the downscale's scale it may still blend the two.
    return seam + 1


def padding_box(grey: np.ndarray) -> tuple[float, float, float, float]:
    """The picture inside flat bands pasted around it (letterbox or pillarbox bars, the blank
    margins of a phone screenshot, a transparent PNG's empty edges), as fractions of the frame:
    (left, top, right, bottom). The whole frame when there are none, or when cutting them would
    leave less than `PADDING_MIN_KEPT` of a side."""
    height, width = grey.shape
    if min(height, width) < PADDING_MIN_SIDE:
        return FULL_FRAME
    top, bottom = _band_depth(grey), _band_depth(grey[::-1])
    left, right = _band_depth(grey.T), _band_depth(grey.T[::-1])
    if height - top - bottom < PADDING_MIN_KEPT * height:
        top = bottom = 0
    if width - left - right < PADDING_MIN_KEPT * width:
        left = right = 0
    return (left / width, top / height, 1 - right / width, 1 - bottom / height)


@dataclass(frozen=True)
class Framed:
    """A photo's picture, the picture's analysis copy, and where the picture is in the photo
    (`padding_box`'s fractions)."""

    picture: Image.Image
    analysis: np.ndarray
    box: tuple[float, float, float, float]


def framed(image: Image.Image) -> Framed:
    """`image` without its padding bands (`padding_box` on its analysis copy), with the
    picture's own analysis copy; `image` and the copy already made when it has no bands (most
    photos), so that copy is made once."""
    grey = analysis_grey(image)
    box = padding_box(grey)
    if box == FULL_FRAME:
        return Framed(image, grey, box)
    width, height = image.size
    left, top, right, bottom = box
    # Rounded inwards, so that no line of a band is left at the picture's edge.
    picture = image.crop(
        (
            math.ceil(left * width),
            math.ceil(top * height),
            math.floor(right * width),
            math.floor(bottom * height),
        )
    )
    return Framed(picture, analysis_grey(picture), box)
