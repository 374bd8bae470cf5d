"""Photo quality checks: pure metrics, thresholds fitted from data, and buyer-facing findings.

Three layers, kept apart so each can be tested and tuned on its own:
- metrics (`sharpness`, `exposure`, `coarse_detail`, `outline`, `measure`): numbers computed
  from pixels, with no opinion about what is good;
- thresholds (`QualityThresholds`): loaded from `quality_thresholds.json`, which
  `training/quality_thresholds.py` writes from a labelled set of degraded grocery photos;
- decisions (`quality_issues`): metrics compared with thresholds, with a precedence between
  checks and a message and retake tip for each finding.

Every resolution-dependent metric is measured on the analysis copy of the photo's picture
(`service.framing`: greyscale, longest side `ANALYSIS_SIDE` pixels, padding bands cut off), so a
threshold fitted on 348 px grocery photos means the same on a 4000x3000 phone photo. `too_small`
alone judges a size: the picture's, in the camera's pixels.

No web or database imports: this is part of the inference core.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any, Literal

import numpy as np

from service.intake import Photo, PhotoRejected

Severity = Literal["blocker", "warning"]

# Side of the block-averaged grid `coarse_detail` looks at: coarse enough that sensor noise and
# JPEG artefacts average out, fine enough to see an object against its background.
DETAIL_GRID = 16

# Grey level from which a pixel counts as clipped white (after JPEG, 255 reads as 247-255).
HIGHLIGHT_LEVEL = 247
# A white background: the share of the frame's outer ring (EDGE_RING of the shorter side) that is
# clipped, from which clipped regions joined to the edge are not counted as washed out. Exposing
# the grocery photos +1.5 and +2.5 EV never clipped more than 66 % of that ring; the catalog
# images, items on white, clip 88-100 % (docs/quality.md §2).
WHITE_BACKGROUND_EDGE = 0.7
EDGE_RING = 0.03
BACKGROUND_BLOCK = 4

# Side of the blocks whose neighbouring means `outline` compares: at ANALYSIS_SIDE, 4 px blocks
# average out sensor noise and JPEG ringing but keep the step across an item's edge.
OUTLINE_BLOCK = 4
# Added to an outline's spread (median step, grey levels) before the ratio: JPEG's quantisation
# leaves plain backgrounds a fraction of a level of texture, which would make the ratio explode.
OUTLINE_SPREAD_FLOOR = 0.25

THRESHOLDS_RESOURCE = "quality_thresholds.json"


@dataclass(frozen=True)
class QualityIssue:
    """One finding about a photo, in the shape of design.md section 3."""

    code: str
    severity: Severity
    message: str
    tip: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


# --- metrics ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exposure:
    """Brightness statistics of the analysis copy, in 0..255 grey levels and pixel fractions."""

    mean: float
    p05: float
    p95: float
    shadow_clip: float  # fraction of pixels at or below 8
    highlight_clip: float  # fraction of pixels at or above HIGHLIGHT_LEVEL (247)
    # `highlight_clip` less a white background's pixels (see `washed_out_share`): what the
    # overexposure decision reads
    washed_out: float


@dataclass(frozen=True)
class Outline:
    """The steps between neighbouring block means of the analysis copy, in grey levels."""

    strength: float  # 99th percentile: how sharp the strongest edges are
    spread: float  # median: how much of the frame is edges at all (texture is edges everywhere)

    @property
    def contrast(self) -> float:
        """How much the strongest edges stand out from the rest of the frame."""
        return self.strength / (self.spread + OUTLINE_SPREAD_FLOOR)


@dataclass(frozen=True)
class QualityMetrics:
    """Everything the decisions need, measured once per photo."""

    width: int  # the picture's size in the camera's pixels (padding bands cut off)
    height: int
    sharpness: float
    exposure: Exposure
    detail: float
    outline: Outline

    @property
    def aspect(self) -> float:
        """The picture's longer side over its shorter one, from the camera's size (not the
        rounded analysis copy's: 900x300 is exactly 3:1)."""
        return max(self.width, self.height) / max(1, min(self.width, self.height))


def sharpness(grey: np.ndarray) -> float:
    """Contrast-normalised focus measure: log10(var(Laplacian) / var(grey)).

    The variance of the 4-neighbour Laplacian is the classic focus measure, but it scales with
    the square of the contrast, so an under-exposed photo would read as blurry. Dividing by the
    photo's own grey-level variance leaves the share of its contrast that sits in the finest
    detail, which blur removes and exposure does not change. Measured on the analysis copy, so
    the value does not depend on the camera's resolution.
    """
    if min(grey.shape) < 3:
        return 0.0
    laplacian = (
        grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:] - 4.0 * grey[1:-1, 1:-1]
    )
    return float(np.log10((laplacian.var() + 1.0) / (grey.var() + 1.0)))


def exposure(grey: np.ndarray) -> Exposure:
    """Brightness statistics from a 256-bin histogram (faster than sorting for percentiles)."""
    levels = np.clip(grey + 0.5, 0, 255).astype(np.uint8)
    histogram = np.bincount(levels.ravel(), minlength=256)
    cumulative = np.cumsum(histogram) / levels.size
    return Exposure(
        mean=float(levels.mean()),
        p05=float(np.searchsorted(cumulative, 0.05)),
        p95=float(np.searchsorted(cumulative, 0.95)),
        shadow_clip=float(cumulative[8]),
        highlight_clip=float(1.0 - cumulative[HIGHLIGHT_LEVEL - 1]),
        washed_out=washed_out_share(levels >= HIGHLIGHT_LEVEL),
    )


def washed_out_share(clipped: np.ndarray) -> float:
    """The share of the frame clipped white, not counting a white background.

    A photo of an item on a white sheet, table or backdrop has a clipped background and nothing
    washed out. So where the frame's edge (its outer `EDGE_RING` of the shorter side) is at
    least `WHITE_BACKGROUND_EDGE` clipped, the clipped regions joined to the edge are taken for
    background and left out; what stays counts (an item's own blown-out highlights). Regions
    are traced on `BACKGROUND_BLOCK`-pixel blocks that are mostly clipped, so the trace is cheap.
    """
    if not clipped.any():
        return 0.0
    height, width = clipped.shape
    ring = max(1, round(EDGE_RING * min(height, width)))
    inner = np.zeros_like(clipped)
    inner[ring:-ring, ring:-ring] = True
    if clipped[~inner].mean() < WHITE_BACKGROUND_EDGE:
        return float(clipped.mean())
    block = BACKGROUND_BLOCK
    padded = np.pad(clipped, ((0, -height % block), (0, -width % block)), mode="edge")
    blocks = padded.reshape(padded.shape[0] // block, block, -1, block).mean(axis=(1, 3)) >= 0.5
    background = np.repeat(np.repeat(_edge_connected(blocks), block, 0), block, 1)
    return float((clipped & ~background[:height, :width]).mean())


def _edge_connected(mask: np.ndarray) -> np.ndarray:
    """The cells of `mask` joined to the grid's edge through `mask` (8-neighbour)."""
    reached = np.zeros_like(mask)
    reached[[0, -1], :] = mask[[0, -1], :]
    reached[:, [0, -1]] |= mask[:, [0, -1]]
    while True:
        grown = np.pad(reached, 1)
        grown = (
            grown[:-2, :-2] | grown[:-2, 1:-1] | grown[:-2, 2:]
            | grown[1:-1, :-2] | grown[1:-1, 1:-1] | grown[1:-1, 2:]
            | grown[2:, :-2] | grown[2:, 1:-1] | grown[2:, 2:]
        ) & mask  # fmt: skip
        if np.array_equal(grown, reached):
            return reached
        reached = grown


def coarse_detail(grey: np.ndarray, grid: int = DETAIL_GRID) -> float:
    """Coefficient of variation (std / mean) of a grid x grid block-averaged copy: how much
    large-scale structure (an object against a background) the photo holds. Noise and fine
    texture average out, so a blank wall or a covered lens scores near zero; dividing by the
    mean makes it independent of exposure, which has checks of its own.
    """
    height, width = grey.shape
    if height < grid or width < grid:
        return float(grey.std() / (grey.mean() + 1.0))
    row_starts = np.linspace(0, height, grid, endpoint=False).astype(int)
    col_starts = np.linspace(0, width, grid, endpoint=False).astype(int)
    sums = np.add.reduceat(np.add.reduceat(grey, row_starts, axis=0), col_starts, axis=1)
    counts = np.outer(np.diff(row_starts, append=height), np.diff(col_starts, append=width))
    blocks = sums / counts
    return float(blocks.std() / (blocks.mean() + 1.0))


def outline(grey: np.ndarray, block: int = OUTLINE_BLOCK) -> Outline:
    """The absolute differences between horizontally and vertically neighbouring block means:
    their 99th percentile and their median. A white box on a white table has almost no coarse
    detail, yet its edges and shading are steps of tens of grey levels along a line, on a plain
    frame (a strong 99th percentile, a median near zero). A fog, a covered lens or a blank wall
    has no such step; a fine texture (fabric, wood grain) has its steps all over the frame.
    """
    height, width = grey.shape
    rows, cols = height // block, width // block
    if rows < 2 or cols < 2:
        return Outline(strength=0.0, spread=0.0)
    means = grey[: rows * block, : cols * block].reshape(rows, block, cols, block).mean(axis=(1, 3))
    steps = np.concatenate(
        [np.abs(np.diff(means, axis=1)).ravel(), np.abs(np.diff(means, axis=0)).ravel()]
    )
    strength, spread = np.percentile(steps, [99, 50])
    return Outline(strength=float(strength), spread=float(spread))


def measure(photo: Photo) -> QualityMetrics:
    """Every metric of `photo`, on the analysis copy of its picture (`Photo.framing`: without
    padding bands). Measured with them, white bars read as a washed-out photo and lower the
    contrast-normalised sharpness; the picture gets its own analysis copy, so a blurred photo
    inside a tall screenshot is measured at the scale every threshold was fitted at, not at the
    few pixels it had in the whole frame's copy. Sizes are the picture's in the camera's pixels:
    a small photo inside a large screenshot is small."""
    width, height = photo.original_size
    left, top, right, bottom = photo.framing.box
    picture_size = (round(width * (right - left)), round(height * (bottom - top)))
    return measure_grey(photo.framing.analysis, picture_size)


def measure_grey(grey: np.ndarray, size: tuple[int, int]) -> QualityMetrics:
    """Every metric of an analysis copy of a picture `size` (width, height) camera pixels big."""
    width, height = size
    return QualityMetrics(
        width=width,
        height=height,
        sharpness=sharpness(grey),
        exposure=exposure(grey),
        detail=coarse_detail(grey),
        outline=outline(grey),
    )


# --- thresholds -------------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityThresholds:
    """Decision thresholds. The shipped values are fitted by training/quality_thresholds.py.

    A photo is `too_small` when its picture's shorter side, in the camera's pixels, is below
    `min_short_side` (a blocker), or as a warning when its picture is more than `max_aspect`
    times as long as it is wide (a panorama or a thin strip: in the model's square input the
    item is a sliver); both are rules,
    not fitted. It is `low_detail` when its coarse detail is below `low_detail` and it shows no
    distinct outline (an outline has `outline_strength` grey levels or more and stands out
    `outline_contrast` times from the frame's median step; these two are set in
    bench/outline_study.py, not fitted, since the fitting photos hold no item that is hard to
    tell from its background), `too_dark` when its 95th-percentile brightness is below
    `dark_warning` (a blocker below `dark_blocker`), `overexposed` when the fraction of clipped
    highlights (less a white background) is above `bright_warning` (`bright_blocker`), and
    `blurry` when its sharpness is below `blurry_warning` (`blurry_blocker`). The defaults are
    only a fallback for a missing JSON file.
    """

    min_short_side: int = 224
    max_aspect: float = 3.0
    low_detail: float = 0.1
    dark_warning: float = 130.0
    dark_blocker: float = 80.0
    bright_warning: float = 0.05
    bright_blocker: float = 0.2
    blurry_warning: float = -1.4
    blurry_blocker: float = -2.0
    outline_strength: float = 12.0
    outline_contrast: float = 25.0
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QualityThresholds:
        values = dict(data["thresholds"])
        return cls(**values, provenance=dict(data.get("provenance", {})))

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        provenance = values.pop("provenance")
        return {"thresholds": values, "provenance": provenance}


def load_thresholds() -> QualityThresholds:
    """The thresholds shipped inside the package (service/quality_thresholds.json)."""
    text = resources.files("service").joinpath(THRESHOLDS_RESOURCE).read_text(encoding="utf-8")
    return QualityThresholds.from_dict(json.loads(text))


DEFAULT_THRESHOLDS = load_thresholds()


# --- decisions --------------------------------------------------------------------------------

_RETAKE_SMALL = (
    "Send the original photo from your camera or gallery, not a thumbnail or a screenshot, "
    "and fill the frame with the item."
)
_RETAKE_STRIP = (
    "Take a normal photo instead of a panorama, or crop this one to the item, so the item fills "
    "most of the frame."
)
_RETAKE_BLUR = (
    "Hold the phone steady (lean on something), tap the item on screen to focus, and keep about "
    "30 cm away; wipe the lens if the picture looks hazy."
)
_RETAKE_DARK = (
    "Move to a bright room or near a window, or switch on the flash, and make sure your shadow "
    "is not on the item."
)
_RETAKE_BRIGHT = (
    "Step out of direct sunlight or away from the lamp, turn the flash off, and tap the item on "
    "screen so the camera sets the exposure for it."
)
_RETAKE_DETAIL = (
    "Make sure the item fills most of the frame and nothing covers the lens; photograph the "
    "problem up close and a second photo of the whole item."
)


def _too_small(metrics: QualityMetrics, limits: QualityThresholds) -> QualityIssue | None:
    short_side = min(metrics.width, metrics.height)
    if short_side < limits.min_short_side:
        return QualityIssue(
            "too_small",
            "blocker",
            f"This photo is only {metrics.width}x{metrics.height} pixels, too small to show the "
            "problem clearly.",
            _RETAKE_SMALL,
        )
    if metrics.aspect > limits.max_aspect:
        return QualityIssue(
            "too_small",
            "warning",
            "This photo is a very long, thin strip, so the item in it looks small and details of "
            "the problem may not show.",
            _RETAKE_STRIP,
        )
    return None


def _exposure_issue(metrics: QualityMetrics, limits: QualityThresholds) -> QualityIssue | None:
    light = metrics.exposure
    if light.p95 < limits.dark_warning:
        severe = light.p95 < limits.dark_blocker
        return QualityIssue(
            "too_dark",
            "blocker" if severe else "warning",
            "This photo is too dark to see the item."
            if severe
            else "This photo is rather dark; details of the item may be hard to see.",
            _RETAKE_DARK,
        )
    if light.washed_out > limits.bright_warning:
        return _overexposed(severe=light.washed_out > limits.bright_blocker)
    return None


def _overexposed(*, severe: bool) -> QualityIssue:
    return QualityIssue(
        "overexposed",
        "blocker" if severe else "warning",
        "This photo is so bright that the item is washed out."
        if severe
        else "This photo is very bright; some details may be washed out.",
        _RETAKE_BRIGHT,
    )


def _low_detail(metrics: QualityMetrics, limits: QualityThresholds) -> QualityIssue | None:
    if metrics.detail >= limits.low_detail:
        return None
    edges = metrics.outline
    if edges.strength >= limits.outline_strength and edges.contrast >= limits.outline_contrast:
        return None  # an item close to its background's colour, but drawn by a distinct outline
    return QualityIssue(
        "low_detail",
        "blocker",
        "We cannot make out an item in this photo; it looks almost uniform.",
        _RETAKE_DETAIL,
    )


def _blurry(metrics: QualityMetrics, limits: QualityThresholds) -> QualityIssue | None:
    if metrics.sharpness >= limits.blurry_warning:
        return None
    severe = metrics.sharpness < limits.blurry_blocker
    return QualityIssue(
        "blurry",
        "blocker" if severe else "warning",
        "This photo is too blurry to judge the item."
        if severe
        else "This photo is a little blurry; fine damage such as scratches may not show.",
        _RETAKE_BLUR,
    )


def decide(metrics: QualityMetrics, thresholds: QualityThresholds) -> list[QualityIssue]:
    """The findings for measured metrics, in the order a buyer should act on them.

    too_small judges the original size and stands on its own. A nearly uniform photo
    (low_detail) shows no item at all, so its brightness and sharpness are meaningless and are
    not reported, except that a frame made uniform by blown-out highlights is called
    overexposed, the cause the buyer can fix. Exposure and blur are measured independently of
    each other (sharpness is contrast-normalised), so a dark, shaken photo gets both findings.
    """
    issues = [issue for issue in (_too_small(metrics, thresholds),) if issue]
    detail = _low_detail(metrics, thresholds)
    if detail is not None:
        # All of a blown-out frame is clipped, background included: no white-background rule.
        if metrics.exposure.highlight_clip > thresholds.bright_blocker:
            detail = _overexposed(severe=True)
        return [*issues, detail]
    return [
        *issues,
        *(
            issue
            for issue in (_exposure_issue(metrics, thresholds), _blurry(metrics, thresholds))
            if issue
        ),
    ]


def quality_issues(
    photo: Photo, thresholds: QualityThresholds = DEFAULT_THRESHOLDS
) -> list[QualityIssue]:
    """too_small, too_dark / overexposed, low_detail and blurry findings for one photo."""
    return decide(measure(photo), thresholds)


_REJECTION_FALLBACK_TIP = "Upload a JPEG, PNG, WebP or HEIC photo taken with your camera."


def rejection_issue(error: PhotoRejected) -> QualityIssue:
    """The finding for a photo intake refused (corrupt, unsupported_format, too_many_pixels,
    file_too_large): always a blocker, with intake's own buyer-facing message and tip."""
    return QualityIssue(error.code, "blocker", error.message, error.tip or _REJECTION_FALLBACK_TIP)
