"""The analysis copy and the picture inside padding bands (service.framing), and that what the
model scores is the picture."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import encode, textured_image
from PIL import Image, ImageDraw, ImageFont

from service.framing import ANALYSIS_SIDE, analysis_grey, framed, padding_box
from service.intake import open_photo


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((4000, 3000), (ANALYSIS_SIDE, 192)),
        ((300, 400), (192, ANALYSIS_SIDE)),
        ((100, 50), (100, 50)),
    ],
)
def test_analysis_copy_has_a_fixed_longest_side_and_is_never_upscaled(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    grey = analysis_grey(Image.new("RGB", size, (10, 20, 30)))
    assert (grey.shape[1], grey.shape[0]) == expected
    assert grey.dtype == np.float32


def on_canvas(picture: np.ndarray, canvas: tuple[int, int], level: float) -> np.ndarray:
    """`picture` centred on a flat canvas of `level`."""
    frame = np.full(canvas, level, dtype=np.float32)
    top, left = (canvas[0] - picture.shape[0]) // 2, (canvas[1] - picture.shape[1]) // 2
    frame[top : top + picture.shape[0], left : left + picture.shape[1]] = picture
    return frame


SCENE = np.asarray(analysis_grey(textured_image(160, 120, seed=3)))  # 160 x 120, no flat edge


@pytest.mark.parametrize(
    ("grey", "expected"),
    [
        (SCENE, (0.0, 0.0, 1.0, 1.0)),
        # 20 lines of band each side, and the seam line with them
        (on_canvas(SCENE, (160, 160), 255.0), (0.0, 21 / 160, 1.0, 139 / 160)),  # letterbox
        (on_canvas(SCENE, (120, 200), 0.0), (21 / 200, 0.0, 179 / 200, 1.0)),  # pillarbox
        # An item on white whose outline meets the edge of the white only in part: not padding.
        (
            on_canvas(
                np.pad(SCENE[:, 40:120], ((0, 0), (40, 40)), constant_values=255), (160, 160), 255.0
            ),
            (0.0, 0.0, 1.0, 1.0),
        ),
        # Bands that would leave under a quarter of a side are not cut.
        (on_canvas(SCENE[:20], (160, 160), 255.0), (0.0, 0.0, 1.0, 1.0)),
    ],
    ids=["no bands", "white letterbox", "black pillarbox", "item on white", "mostly band"],
)
def test_padding_box_known_values(grey: np.ndarray, expected: tuple[float, ...]) -> None:
    assert padding_box(grey) == pytest.approx(expected)


def test_framed_cuts_a_screenshots_margins_and_keeps_a_plain_photo() -> None:
    picture = textured_image(400, 300, seed=4)
    screenshot = Image.new("RGB", (400, 866), (255, 255, 255))
    screenshot.paste(picture, (0, 283))
    cut = framed(screenshot).picture
    # Cut on the 256-line analysis copy (3.4 screenshot lines a line), rounded inwards with the
    # seam line: a few of the picture's edge lines go, none of the margin stays.
    assert cut.width == 400 and 290 <= cut.height < 300
    top = 283  # where the picture was pasted
    kept = screenshot.crop((0, top, 400, top + 300))
    offset = next(
        row
        for row in range(10)
        if kept.crop((0, row, 400, row + cut.height)).tobytes() == cut.tobytes()
    )
    assert 0 < offset < 10
    assert framed(picture).picture is picture
    photo = open_photo(encode(screenshot, "PNG"))
    assert photo.picture.size[1] < photo.image.size[1] / 2


def test_a_status_bar_of_glyphs_stays_in_the_band() -> None:
    """A phone's gallery screenshot: the time and battery above the photo, a toolbar below."""
    picture = textured_image(1080, 810, seed=5)
    screenshot = Image.new("RGB", (1080, 2340), (0, 0, 0))
    draw = ImageDraw.Draw(screenshot)
    font = ImageFont.load_default(size=40)
    draw.text((40, 20), "9:41", fill=(255, 255, 255), font=font)
    draw.text((900, 20), "5G 87%", fill=(255, 255, 255), font=font)
    draw.text((40, 2200), "Share   Edit   Delete", fill=(255, 255, 255), font=font)
    screenshot.paste(picture, (0, 765))
    working = screenshot.resize((207, 448))  # as intake decodes it
    cut = framed(working).picture
    assert cut.width == 207 and 140 <= cut.height <= 155  # the photo's 155 lines, edges trimmed
