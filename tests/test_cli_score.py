"""`triage score`: one JSON line per photo, errors on their own line, exit status at the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import encode, textured_image
from onnx_fixtures import TINY_MODEL_VERSION, write_tiny_model
from typer.testing import CliRunner

from service.cli import app
from service.engine import DEFAULT_MODEL_DIR

KEYS = {"photo", "damage", "mismatch", "match_similarity", "issues", "model_version", "error"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def runner(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("TRIAGE_MODEL_DIR", str(tiny_dir))
    return CliRunner()


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    damaged = textured_image(seed=31)
    damaged.paste((255, 0, 0), (0, 0, 200, 150))
    files = {
        "damaged": (folder / "damaged.jpg", encode(damaged, "JPEG", quality=92)),
        "intact": (folder / "intact.png", encode(textured_image(seed=32), "PNG")),
        "listing": (folder / "listing.jpg", encode(textured_image(seed=32), "JPEG", quality=90)),
        "corrupt": (folder / "corrupt.jpg", encode(textured_image(seed=33))[:300]),
        "text": (folder / "notes.txt", b"not a photo at all"),
    }
    for path, data in files.values():
        path.write_bytes(data)
    return {name: path for name, (path, _) in files.items()}


def json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def test_json_lines_for_good_and_bad_photos(runner: CliRunner, photos: dict[str, Path]):
    args = ["score", str(photos["damaged"]), str(photos["corrupt"]), str(photos["intact"])]
    args += [str(photos["text"]), str(photos["damaged"].with_name("missing.jpg")), "--json"]
    result = runner.invoke(app, [*args, "--listing", str(photos["listing"])])
    assert result.exit_code == 1  # bad photos: non-zero, but only after every line is out
    lines = json_lines(result.stdout)
    assert [Path(line["photo"]).name for line in lines] == [
        "damaged.jpg",
        "corrupt.jpg",
        "intact.png",
        "notes.txt",
        "missing.jpg",
    ]
    assert all(set(line) == KEYS for line in lines)
    damaged, corrupt, intact, text, missing = lines
    assert damaged["error"] is None and damaged["damage"] > 0.9
    assert intact["error"] is None and intact["damage"] < 0.5
    assert intact["model_version"] == TINY_MODEL_VERSION
    # the intact photo is the listing's item: best match, low mismatch
    assert intact["match_similarity"] > damaged["match_similarity"]
    assert intact["mismatch"] < damaged["mismatch"]
    assert corrupt["error"].startswith("corrupt") and corrupt["damage"] is None
    assert [issue["code"] for issue in corrupt["issues"]] == ["corrupt"]
    assert text["error"].startswith("unsupported_format")
    assert missing["error"].startswith("unreadable")


def test_without_listing_images_mismatch_is_null(runner: CliRunner, photos: dict[str, Path]):
    result = runner.invoke(app, ["score", str(photos["intact"]), "--json"])
    assert result.exit_code == 0, result.output
    (line,) = json_lines(result.stdout)
    assert line["mismatch"] is None and line["match_similarity"] is None
    assert isinstance(line["issues"], list)


def test_table_output(runner: CliRunner, photos: dict[str, Path], monkeypatch):
    monkeypatch.chdir(photos["damaged"].parent)  # short paths: the table is 80 columns wide
    result = runner.invoke(app, ["score", "damaged.jpg", "corrupt.jpg"])
    assert result.exit_code == 1
    assert "damaged.jpg" in result.stdout and "corrupt" in result.stdout
    assert TINY_MODEL_VERSION in result.stdout


def test_unusable_listing_image_is_a_usage_error(runner: CliRunner, photos: dict[str, Path]):
    result = runner.invoke(
        app, ["score", str(photos["intact"]), "--listing", str(photos["corrupt"]), "--json"]
    )
    assert result.exit_code == 2
    assert result.stdout == ""


def test_missing_model_is_a_usage_error(photos: dict[str, Path], tmp_path: Path):
    result = CliRunner().invoke(
        app, ["score", str(photos["intact"]), "--model-dir", str(tmp_path / "none")]
    )
    assert result.exit_code == 2
    assert "no model card" in result.output


def test_shipped_model_scores_from_the_shell(photos: dict[str, Path], monkeypatch):
    if not (DEFAULT_MODEL_DIR / "model_card.json").is_file():
        pytest.skip(f"the shipped model is not in {DEFAULT_MODEL_DIR}")
    monkeypatch.delenv("TRIAGE_MODEL_DIR", raising=False)
    result = CliRunner().invoke(
        app, ["score", str(photos["intact"]), "--listing", str(photos["listing"]), "--json"]
    )
    assert result.exit_code == 0, result.output
    (line,) = json_lines(result.stdout)
    assert line["model_version"] == "evidence-lite0-1.3.1"
    assert 0 <= line["damage"] <= 1 and 0 <= line["mismatch"] <= 1


def test_table_keeps_the_whole_photo_path_on_a_narrow_terminal(
    runner: CliRunner, photos: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    deep = tmp_path / "claims" / "2026" / "november" / "buyer-uploads" / "front-left-corner.jpg"
    deep.parent.mkdir(parents=True)
    deep.write_bytes(photos["damaged"].read_bytes())
    monkeypatch.setenv("COLUMNS", "70")
    result = runner.invoke(app, ["score", str(deep)])
    assert result.exit_code == 0, result.output
    # The path is wrapped inside its cell; joined again, every character of it is there.
    cells = "".join(
        line.split("│")[1].strip() for line in result.stdout.splitlines() if "│" in line
    )
    assert str(deep) in cells
