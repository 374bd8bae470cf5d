"""The threshold-fitting script: pure pieces with known values, and a small fit on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import textured_image
from PIL import Image

from service.quality import QualityThresholds
from training.quality_thresholds import (
    CHECKS,
    REPORT_BEGIN,
    REPORT_END,
    VARIANTS,
    best_threshold,
    downscaled_to,
    exposure_shift,
    motion_blur,
    run,
    split_products,
    write_report,
)


@pytest.mark.parametrize(
    ("values", "positive", "below", "expected"),
    [
        ([1.0, 2.0, 8.0, 9.0], [True, True, False, False], True, 5.0),
        ([1.0, 2.0, 8.0, 9.0], [False, False, True, True], False, 5.0),
        # One positive among the negatives: F1 is best when the cut isolates the clean group.
        ([1.0, 2.0, 3.0, 10.0, 11.0], [True, True, False, False, False], True, 2.5),
    ],
)
def test_best_threshold_known_values(
    values: list[float], positive: list[bool], below: bool, expected: float
) -> None:
    cut = best_threshold(np.array(values), np.array(positive), below=below)
    assert cut == pytest.approx(expected)


def test_best_threshold_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both positive and negative"):
        best_threshold(np.array([1.0, 2.0]), np.array([True, True]), below=True)


def test_exposure_shift_is_two_stops_in_linear_light() -> None:
    grey = Image.new("RGB", (8, 8), (200, 200, 200))
    darker = np.asarray(exposure_shift(-2.0)(grey, np.random.default_rng(0)), dtype=np.float64)
    expected = ((200 / 255) ** 2.2 / 4) ** (1 / 2.2) * 255
    assert darker.mean() == pytest.approx(expected, abs=1.0)


def test_motion_blur_keeps_size_and_brightness() -> None:
    image = textured_image(120, 90)
    blurred = motion_blur(9)(image, np.random.default_rng(0))
    assert blurred.size == image.size
    assert np.asarray(blurred, dtype=np.float64).mean() == pytest.approx(
        np.asarray(image, dtype=np.float64).mean(), abs=2.0
    )


def test_downscaled_to_sets_the_shorter_side() -> None:
    assert downscaled_to(200)(textured_image(348, 348), np.random.default_rng(0)).size == (200, 200)


def test_every_check_has_labelled_variants_and_negatives() -> None:
    labelled = {variant.code for variant in VARIANTS}
    assert set(CHECKS) <= labelled
    assert None in labelled, "clean and mildly degraded photos are needed as negatives"


def test_product_split_is_stable_and_leaves_both_sides() -> None:
    products = [f"product-{number}" for number in range(60)]
    held_out = split_products(products)
    assert held_out == split_products(reversed(products))
    assert 15 < len(held_out) < 45


def test_report_section_is_replaced_and_prose_kept(tmp_path: Path) -> None:
    report = tmp_path / "quality.md"
    report.write_text(f"# Quality\n\nprose\n\n{REPORT_BEGIN}\nold numbers\n{REPORT_END}\n\nmore\n")
    write_report(report, f"{REPORT_BEGIN}\nnew numbers\n{REPORT_END}")
    text = report.read_text()
    assert "new numbers" in text and "old numbers" not in text
    assert text.startswith("# Quality\n\nprose") and text.rstrip().endswith("more")


def test_report_section_is_appended_when_missing(tmp_path: Path) -> None:
    report = tmp_path / "fresh.md"
    write_report(report, f"{REPORT_BEGIN}\nnumbers\n{REPORT_END}")
    assert report.read_text().count(REPORT_BEGIN) == 1


@pytest.mark.shared_data
def test_fit_on_a_handful_of_real_photos(shared_data: Path) -> None:
    thresholds, scores, report = run(
        shared_data,
        photos_per_product=1,
        min_short_side=224,
        seed=0,
        command="pytest",
        max_products=8,
    )
    assert isinstance(thresholds, QualityThresholds)
    assert thresholds.blurry_blocker < thresholds.blurry_warning
    assert thresholds.dark_blocker < thresholds.dark_warning
    assert thresholds.provenance["held_out_products"] > 0
    assert [score.check for score in scores] == list(CHECKS)
    assert all(score.positives > 0 for score in scores)
    # Even fitted on a handful of photos, the clear-cut checks must work on unseen products.
    by_check = {score.check: score for score in scores}
    assert by_check["too_small"].recall == 1.0
    assert by_check["low_detail"].recall is not None and by_check["low_detail"].recall > 0.8
    assert REPORT_BEGIN in report and "| `blurry` |" in report
