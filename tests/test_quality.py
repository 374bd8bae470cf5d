"""Quality checks: metrics with known values, the decisions' precedence, the shipped thresholds."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources

import numpy as np
import pytest
from conftest import encode, textured_image
from PIL import Image, ImageDraw, ImageFilter

from service.framing import analysis_grey
from service.intake import PhotoRejected, open_photo
from service.quality import (
    DEFAULT_THRESHOLDS,
    Exposure,
    Outline,
    QualityIssue,
    QualityMetrics,
    QualityThresholds,
    coarse_detail,
    decide,
    exposure,
    load_thresholds,
    measure,
    outline,
    quality_issues,
    rejection_issue,
    sharpness,
    washed_out_share,
)

DESIGN_CODES = {"too_small", "blurry", "too_dark", "overexposed", "low_detail"}


def checkerboard(size: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return ((x + y) % 2 * 255).astype(np.float32)


def halves(size: int = 64, left: float = 0.0, right: float = 200.0) -> np.ndarray:
    grey = np.full((size, size), left, dtype=np.float32)
    grey[:, size // 2 :] = right
    return grey


def codes(issues: list[QualityIssue]) -> list[str]:
    return [issue.code for issue in issues]


def photo_of(image: Image.Image) -> object:
    return open_photo(encode(image, "PNG"))


# --- metrics: known values --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grey", "expected"),
    [
        (np.full((32, 32), 90.0, dtype=np.float32), 0.0),  # no contrast, no detail
        # Every pixel differs from its 4 neighbours by 255: Laplacian +-1020, grey std 127.5,
        # so the ratio of variances is (1020 / 127.5)^2 = 64.
        (checkerboard(), np.log10((1020.0**2 + 1) / (127.5**2 + 1))),
        (np.zeros((2, 2), dtype=np.float32), 0.0),  # too small for a Laplacian
    ],
)
def test_sharpness_known_values(grey: np.ndarray, expected: float) -> None:
    assert sharpness(grey) == pytest.approx(expected, abs=1e-4)


def test_sharpness_ignores_exposure() -> None:
    grey = analysis_grey(textured_image(400, 300))
    # Two stops darker: the raw Laplacian variance drops 16-fold (-1.2 in log10); the normalised
    # measure moves only by the +1 guard against division by zero.
    assert sharpness(grey * 0.25) == pytest.approx(sharpness(grey), abs=0.1)


def test_sharpness_falls_as_blur_grows() -> None:
    image = textured_image(400, 300)
    values = [
        sharpness(analysis_grey(image.filter(ImageFilter.GaussianBlur(sigma))))
        for sigma in (0, 1, 2, 4)
    ]
    assert values == sorted(values, reverse=True)


def test_sharpness_is_comparable_across_resolutions() -> None:
    # The same scene as a 12 MP phone photo and as a 400 px copy: the fixed analysis scale
    # must give nearly the same sharpness, or thresholds fitted on small photos would not transfer.
    large = textured_image(1600, 1200, seed=3)
    small = large.resize((400, 300), Image.Resampling.LANCZOS)
    assert sharpness(analysis_grey(large)) == pytest.approx(
        sharpness(analysis_grey(small)), abs=0.05
    )


@pytest.mark.parametrize(
    ("grey", "expected"),
    [
        # Half the edge is white: not a white background, so all its clipping counts.
        (halves(left=0, right=255), Exposure(127.5, 0, 255, 0.5, 0.5, 0.5)),
        (np.full((10, 10), 100.0, dtype=np.float32), Exposure(100.0, 100, 100, 0.0, 0.0, 0.0)),
        (np.full((10, 10), 3.0, dtype=np.float32), Exposure(3.0, 3, 3, 1.0, 0.0, 0.0)),
        # All white: all of it is background.
        (np.full((10, 10), 250.0, dtype=np.float32), Exposure(250.0, 250, 250, 0.0, 1.0, 0.0)),
    ],
)
def test_exposure_known_values(grey: np.ndarray, expected: Exposure) -> None:
    measured = exposure(grey)
    for name in ("mean", "p05", "p95", "shadow_clip", "highlight_clip", "washed_out"):
        assert getattr(measured, name) == pytest.approx(getattr(expected, name)), name


def item_on_white(highlight: bool = False, edge_white: bool = True) -> np.ndarray:
    """A 200x160 frame: a mid-grey item in the middle on a white (or grey) background, with
    a white 20x20 highlight on the item if asked."""
    frame = np.full((160, 200), 255 if edge_white else 120, dtype=np.uint8)
    frame[40:120, 50:150] = 110
    if highlight:
        frame[60:80, 90:110] = 255
    return frame >= 247


@pytest.mark.parametrize(
    ("clipped", "expected"),
    [
        (np.zeros((50, 60), dtype=bool), 0.0),
        (item_on_white(), 0.0),  # the background is not washed out
        (item_on_white(highlight=True), 400 / (160 * 200)),  # the item's own highlight is
        (item_on_white(highlight=True, edge_white=False), 400 / (160 * 200)),
        # A bright band along the top: too little of the edge for a white background.
        (np.vstack([np.ones((40, 200), bool), np.zeros((120, 200), bool)]), 0.25),
        (np.ones((30, 30), dtype=bool), 0.0),  # all background (decide calls it overexposed)
    ],
)
def test_washed_out_share_leaves_out_a_white_background(
    clipped: np.ndarray, expected: float
) -> None:
    assert washed_out_share(clipped) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("grey", "expected"),
    [
        (np.full((64, 64), 120.0, dtype=np.float32), 0.0),
        (halves(left=0, right=200), 100.0 / 101.0),  # block means 0 and 200: std 100, mean 100
        (np.full((4, 4), 50.0, dtype=np.float32), 0.0),  # smaller than the grid
    ],
)
def test_coarse_detail_known_values(grey: np.ndarray, expected: float) -> None:
    assert coarse_detail(grey) == pytest.approx(expected, rel=1e-5)


def square_on_plain(size: int = 64, inside: float = 180.0, outside: float = 200.0) -> np.ndarray:
    grey = np.full((size, size), outside, dtype=np.float32)
    grey[16:48, 16:48] = inside  # 8 x 8 blocks of 4 px, aligned with the outline's blocks
    return grey


def checkerboard_of_blocks(size: int = 64, low: float = 100.0, high: float = 140.0) -> np.ndarray:
    cells = (np.add.outer(np.arange(size) // 4, np.arange(size) // 4) % 2).astype(bool)
    return np.where(cells, high, low).astype(np.float32)


@pytest.mark.parametrize(
    ("grey", "expected"),
    [
        (np.full((64, 64), 120, dtype=np.float32), Outline(strength=0.0, spread=0.0)),
        # 32 of the 480 neighbouring block pairs straddle the square's edge (6.7% > 1%).
        (square_on_plain(), Outline(strength=20.0, spread=0.0)),
        (checkerboard_of_blocks(), Outline(strength=40.0, spread=40.0)),
        (np.zeros((6, 6), dtype=np.float32), Outline(strength=0.0, spread=0.0)),  # < 2 blocks
    ],
    ids=["uniform", "square on plain", "texture", "too small"],
)
def test_outline_known_values(grey: np.ndarray, expected: Outline) -> None:
    found = outline(grey)
    assert found.strength == pytest.approx(expected.strength, abs=1e-4)
    assert found.spread == pytest.approx(expected.spread, abs=1e-4)


def test_outline_contrast_sets_an_outline_apart_from_texture() -> None:
    assert outline(square_on_plain()).contrast == pytest.approx(20.0 / 0.25)
    assert outline(checkerboard_of_blocks()).contrast < 1.0


def white_box_on_white() -> Image.Image:
    """A white box filling half the frame on a white table, lit from the left: its faces and
    shadow 10-30 grey levels from the table."""
    image = Image.new("L", (640, 480), 236)
    ImageDraw.Draw(image).polygon([(200, 400), (540, 400), (600, 440), (260, 440)], fill=215)
    image = image.filter(ImageFilter.GaussianBlur(6))  # a soft shadow
    draw = ImageDraw.Draw(image)
    draw.polygon([(120, 100), (460, 100), (540, 160), (200, 160)], fill=244)  # top
    draw.polygon([(120, 100), (200, 160), (200, 400), (120, 340)], fill=206)  # side, in shade
    draw.polygon([(200, 160), (540, 160), (540, 400), (200, 400)], fill=226)  # front
    return image.convert("RGB")


def fine_fabric(seed: int = 0) -> Image.Image:
    """A close-up of plain fabric, evenly lit: 3 px threads of +-20 grey levels, no item."""
    rng = np.random.default_rng(seed)
    threads = np.kron(rng.normal(0, 20, (160, 214)), np.ones((3, 3)))[:480, :640]
    return Image.fromarray(np.clip(150 + threads, 0, 255).astype(np.uint8)).convert("RGB")


@pytest.mark.parametrize(
    ("image", "expected"),
    [(white_box_on_white(), []), (fine_fabric(), ["low_detail"])],
    ids=["white box on white", "plain fabric"],
)
def test_an_outline_keeps_a_white_item_on_white_from_low_detail(
    image: Image.Image, expected: list[str]
) -> None:
    photo = open_photo(encode(image, "JPEG", quality=88))
    grey = analysis_grey(photo.image)
    assert coarse_detail(grey) < DEFAULT_THRESHOLDS.low_detail  # both are nearly uniform
    assert [issue.code for issue in quality_issues(photo)] == expected


@pytest.mark.parametrize("colour", [(255, 255, 255), (0, 0, 0)], ids=["white", "black"])
def test_a_padded_photo_is_measured_as_its_picture(colour: tuple[int, int, int]) -> None:
    picture = textured_image(400, 300, seed=4)
    screenshot = Image.new("RGB", (400, 866), colour)  # a phone screenshot's blank margins
    screenshot.paste(picture, (0, 283))
    plain = measure(open_photo(encode(picture, "PNG")))
    padded = measure(open_photo(encode(screenshot, "PNG")))
    # The picture had 207 x 155 pixels of the screenshot's working copy against 256 x 192 alone.
    assert padded.sharpness == pytest.approx(plain.sharpness, abs=0.1)
    assert padded.exposure.washed_out == pytest.approx(plain.exposure.washed_out, abs=0.01)
    assert padded.detail == pytest.approx(plain.detail, rel=0.05)
    assert quality_issues(open_photo(encode(screenshot, "PNG"))) == []


def test_size_and_shape_are_the_pictures_in_camera_pixels() -> None:
    # Exactly 3:1 is no strip (the rounded analysis copy made it 3.01 once).
    assert quality_issues(open_photo(encode(textured_image(900, 300, seed=6), "PNG"))) == []
    # A photo too small for the model, inside a screenshot whose frame is large enough.
    screenshot = Image.new("RGB", (300, 650), (255, 255, 255))
    screenshot.paste(textured_image(300, 210, seed=7), (0, 220))
    issues = quality_issues(open_photo(encode(screenshot, "PNG")))
    assert [(issue.code, issue.severity) for issue in issues] == [("too_small", "blocker")]


def test_coarse_detail_ignores_fine_noise_and_exposure() -> None:
    rng = np.random.default_rng(0)
    noisy_wall = np.clip(120 + rng.normal(0, 20, (256, 256)), 0, 255).astype(np.float32)
    assert coarse_detail(noisy_wall) < 0.02
    scene = analysis_grey(textured_image(400, 300))
    assert coarse_detail(scene * 0.3) == pytest.approx(coarse_detail(scene), rel=0.05)


# --- decisions --------------------------------------------------------------------------------

THRESHOLDS = QualityThresholds(
    min_short_side=224,
    low_detail=0.1,
    dark_warning=120,
    dark_blocker=80,
    bright_warning=0.05,
    bright_blocker=0.15,
    blurry_warning=-1.3,
    blurry_blocker=-2.3,
)
GOOD_LIGHT = Exposure(
    mean=110, p05=20, p95=210, shadow_clip=0.0, highlight_clip=0.001, washed_out=0.001
)


# A scene's outline: edges of 30 grey levels on a frame whose median step is 2.
SCENE_OUTLINE = Outline(strength=30.0, spread=2.0)


def metrics(**changes: object) -> QualityMetrics:
    base = QualityMetrics(
        width=4000,
        height=3000,
        sharpness=-0.8,
        exposure=GOOD_LIGHT,
        detail=0.4,
        outline=SCENE_OUTLINE,
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    ("measured", "expected"),
    [
        (metrics(), []),
        (metrics(width=200, height=150), [("too_small", "blocker")]),
        # A panorama: the item is a sliver of the model's square input.
        (metrics(width=8000, height=1200), [("too_small", "warning")]),
        (metrics(width=4000, height=1800), []),  # a 20:9 phone photo is fine
        (metrics(width=200, height=40), [("too_small", "blocker")]),
        (metrics(sharpness=-1.5), [("blurry", "warning")]),
        (metrics(sharpness=-2.5), [("blurry", "blocker")]),
        (metrics(exposure=dataclasses.replace(GOOD_LIGHT, p95=100)), [("too_dark", "warning")]),
        (metrics(exposure=dataclasses.replace(GOOD_LIGHT, p95=50)), [("too_dark", "blocker")]),
        (
            metrics(exposure=dataclasses.replace(GOOD_LIGHT, highlight_clip=0.1, washed_out=0.1)),
            [("overexposed", "warning")],
        ),
        (
            metrics(exposure=dataclasses.replace(GOOD_LIGHT, highlight_clip=0.4, washed_out=0.4)),
            [("overexposed", "blocker")],
        ),
        # A white background: clipped, but nothing of the item is washed out.
        (
            metrics(exposure=dataclasses.replace(GOOD_LIGHT, highlight_clip=0.6, washed_out=0.0)),
            [],
        ),
        (metrics(detail=0.05), [("low_detail", "blocker")]),
        # An item close to its background's colour: little coarse detail, a distinct outline.
        (metrics(detail=0.05, outline=Outline(strength=20.0, spread=0.1)), []),
        # A fine texture (fabric, wood grain) has strong steps, but everywhere: still uniform.
        (
            metrics(detail=0.05, outline=Outline(strength=20.0, spread=2.0)),
            [("low_detail", "blocker")],
        ),
        # A fog or a covered lens: no step strong enough to be an edge.
        (
            metrics(detail=0.05, outline=Outline(strength=8.0, spread=0.0)),
            [("low_detail", "blocker")],
        ),
        # Exposure and blur are independent findings: a dark, shaken photo gets both.
        (
            metrics(sharpness=-2.5, exposure=dataclasses.replace(GOOD_LIGHT, p95=50)),
            [("too_dark", "blocker"), ("blurry", "blocker")],
        ),
        # A near-uniform frame hides brightness and blur: they say nothing about an item.
        (
            metrics(detail=0.01, sharpness=-3, exposure=dataclasses.replace(GOOD_LIGHT, p95=20)),
            [("low_detail", "blocker")],
        ),
        # ...unless blown-out highlights made it uniform: then the cause is the exposure.
        (
            metrics(detail=0.02, exposure=dataclasses.replace(GOOD_LIGHT, highlight_clip=0.8)),
            [("overexposed", "blocker")],
        ),
        # too_small judges the original size and stands beside any other finding.
        (
            metrics(width=100, height=100, detail=0.01),
            [("too_small", "blocker"), ("low_detail", "blocker")],
        ),
    ],
)
def test_decide(measured: QualityMetrics, expected: list[tuple[str, str]]) -> None:
    assert [(issue.code, issue.severity) for issue in decide(measured, THRESHOLDS)] == expected


def test_too_small_boundary_is_the_documented_minimum() -> None:
    at_minimum = metrics(width=300, height=THRESHOLDS.min_short_side)
    below = metrics(width=300, height=THRESHOLDS.min_short_side - 1)
    assert decide(at_minimum, THRESHOLDS) == []
    assert codes(decide(below, THRESHOLDS)) == ["too_small"]


def test_every_issue_speaks_to_the_buyer() -> None:
    cases = [
        metrics(width=100, height=100),
        metrics(sharpness=-1.5),
        metrics(sharpness=-3),
        metrics(exposure=dataclasses.replace(GOOD_LIGHT, p95=10)),
        metrics(exposure=dataclasses.replace(GOOD_LIGHT, highlight_clip=0.9, washed_out=0.9)),
        metrics(detail=0.0),
    ]
    seen = set()
    for measured in cases:
        for issue in decide(measured, THRESHOLDS):
            seen.add(issue.code)
            assert issue.severity in ("blocker", "warning")
            assert issue.message.endswith(".") and len(issue.tip) > 30
            assert issue.to_dict() == {
                "code": issue.code,
                "severity": issue.severity,
                "message": issue.message,
                "tip": issue.tip,
            }
    assert seen == DESIGN_CODES


def test_quality_issue_is_immutable() -> None:
    issue = QualityIssue("blurry", "warning", "m", "t")
    with pytest.raises(dataclasses.FrozenInstanceError):
        issue.code = "too_dark"  # type: ignore[misc]


# --- end to end with the shipped thresholds ---------------------------------------------------


def test_sharp_well_exposed_photo_has_no_issues(sharp_jpeg: bytes) -> None:
    assert quality_issues(open_photo(sharp_jpeg)) == []


def test_large_phone_photo_is_judged_on_its_original_size() -> None:
    phone_sized = textured_image(500, 375).resize((4000, 3000))
    photo = open_photo(encode(phone_sized, "JPEG", quality=85))
    assert photo.image.size == (448, 336)
    assert "too_small" not in codes(quality_issues(photo))


@pytest.mark.parametrize(
    ("degrade", "expected"),
    [
        (lambda image: image.filter(ImageFilter.GaussianBlur(6)), "blurry"),
        (lambda image: Image.eval(image, lambda value: value // 6), "too_dark"),
        (lambda image: Image.eval(image, lambda value: min(255, value * 3)), "overexposed"),
        (lambda image: Image.new("RGB", image.size, (128, 120, 110)), "low_detail"),
        (lambda image: image.resize((160, 120)), "too_small"),
    ],
)
def test_degraded_photos_are_flagged(degrade: object, expected: str) -> None:
    image = degrade(textured_image(640, 480))  # type: ignore[operator]
    assert expected in codes(quality_issues(photo_of(image)))


def test_one_pixel_photo_is_too_small() -> None:
    issues = quality_issues(photo_of(Image.new("RGB", (1, 1), (120, 90, 60))))
    assert issues[0].code == "too_small"
    assert issues[0].severity == "blocker"


def test_shipped_thresholds_carry_their_provenance() -> None:
    text = resources.files("service").joinpath("quality_thresholds.json").read_text()
    data = json.loads(text)
    assert data["provenance"]["fitted_by"] == "training/quality_thresholds.py"
    assert set(data["provenance"]["held_out"]) == DESIGN_CODES
    assert load_thresholds() == DEFAULT_THRESHOLDS
    assert DEFAULT_THRESHOLDS.blurry_blocker < DEFAULT_THRESHOLDS.blurry_warning
    assert DEFAULT_THRESHOLDS.dark_blocker < DEFAULT_THRESHOLDS.dark_warning
    assert DEFAULT_THRESHOLDS.bright_blocker > DEFAULT_THRESHOLDS.bright_warning


def test_thresholds_round_trip_through_their_json_shape() -> None:
    again = QualityThresholds.from_dict(json.loads(json.dumps(THRESHOLDS.to_dict())))
    assert again == THRESHOLDS


@pytest.mark.parametrize("code", ["corrupt", "unsupported_format", "too_many_pixels"])
def test_rejection_issue_is_a_blocker_with_intakes_words(code: str) -> None:
    error = PhotoRejected(code, "This photo could not be read.", "Take it again.")
    issue = rejection_issue(error)
    assert (issue.code, issue.severity) == (code, "blocker")
    assert (issue.message, issue.tip) == (error.message, error.tip)


def test_rejection_issue_from_a_real_rejection() -> None:
    with pytest.raises(PhotoRejected) as caught:
        open_photo(b"GIF89a....")
    assert rejection_issue(caught.value).code == "unsupported_format"
