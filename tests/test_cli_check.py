"""`triage check`: readable feedback, JSON lines, clear errors and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import encode, textured_image
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from service.cli import app
from service.cli.inputs import EXIT_BAD_INPUT, EXIT_BAD_PHOTO

runner = CliRunner()


@pytest.fixture
def photos(tmp_path: Path) -> dict[str, Path]:
    files = {
        "good.jpg": encode(textured_image(800, 600), "JPEG", quality=90),
        "blurry.jpg": encode(
            textured_image(800, 600).filter(ImageFilter.GaussianBlur(8)), "JPEG", quality=90
        ),
        "listing.png": encode(textured_image(600, 600, seed=9), "PNG"),
        "notes.jpg": b"this is a text file with a photo's name\n",
        "cut.jpg": encode(textured_image(800, 600), "JPEG")[:3000],
        "drawing.svg": b'<svg xmlns="http://www.w3.org/2000/svg"/>',
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / name
        paths[name].write_bytes(data)
    return paths


def json_lines(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_json_gives_one_line_per_photo(photos: dict[str, Path]) -> None:
    result = runner.invoke(
        app, ["check", str(photos["good.jpg"]), str(photos["blurry.jpg"]), "--json"]
    )
    assert result.exit_code == 0, result.output
    good, blurry = json_lines(result.stdout)
    assert good == {"photo": str(photos["good.jpg"]), "issues": [], "error": None}
    assert [issue["code"] for issue in blurry["issues"]] == ["blurry"]
    assert set(blurry["issues"][0]) == {"code", "severity", "message", "tip"}
    assert blurry["error"] is None


def test_bad_files_get_an_error_each_and_a_non_zero_exit(photos: dict[str, Path]) -> None:
    names = ["good.jpg", "notes.jpg", "cut.jpg", "drawing.svg"]
    result = runner.invoke(app, ["check", *(str(photos[n]) for n in names), "--json"])
    assert result.exit_code == EXIT_BAD_PHOTO
    lines = {Path(str(line["photo"])).name: line for line in json_lines(result.stdout)}
    assert list(lines) == names, "every photo is still reported, in order"
    assert lines["good.jpg"]["error"] is None
    assert [i["code"] for i in lines["notes.jpg"]["issues"]] == ["unsupported_format"]
    assert [i["code"] for i in lines["cut.jpg"]["issues"]] == ["corrupt"]
    assert "SVG" in str(lines["drawing.svg"]["error"])


def test_missing_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    result = runner.invoke(app, ["check", str(tmp_path / "nowhere.jpg"), "--json"])
    assert result.exit_code == EXIT_BAD_PHOTO
    (line,) = json_lines(result.stdout)
    assert "cannot read" in str(line["error"])


def test_listing_copy_is_flagged(photos: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy.jpg"
    listing_image = Image.open(photos["listing.png"]).convert("RGB")
    copy.write_bytes(encode(listing_image.resize((700, 700)), "JPEG", quality=70))
    result = runner.invoke(
        app, ["check", str(copy), "--listing", str(photos["listing.png"]), "--json"]
    )
    assert result.exit_code == 0, result.output
    (line,) = json_lines(result.stdout)
    assert [issue["code"] for issue in line["issues"]] == ["listing_photo_reuse"]


def test_unusable_listing_image_stops_with_a_clear_message(photos: dict[str, Path]) -> None:
    result = runner.invoke(
        app, ["check", str(photos["good.jpg"]), "--listing", str(photos["notes.jpg"])]
    )
    assert result.exit_code == EXIT_BAD_INPUT
    assert "listing image" in result.output


def test_readable_output_explains_and_gives_tips(photos: dict[str, Path]) -> None:
    result = runner.invoke(
        app,
        ["check", str(photos["good.jpg"]), str(photos["blurry.jpg"]), str(photos["cut.jpg"])],
        terminal_width=200,
    )
    assert result.exit_code == EXIT_BAD_PHOTO
    text = " ".join(result.output.split())  # Rich wraps long lines at the console width
    assert "good.jpg: looks good" in text
    assert "blurry" in text and "tip: Hold the phone steady" in text
    assert "could not be read" in text


def test_help_names_the_options() -> None:
    result = runner.invoke(app, ["check", "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "--listing" in result.output and "--json" in result.output
