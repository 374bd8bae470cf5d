"""`triage batch`: manifest formats, row errors, duplicates across claims, claims file, resume."""

from __future__ import annotations

import csv
import importlib.util
import json
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import encode, textured_image
from onnx_fixtures import TINY_MODEL_VERSION, write_tiny_model
from PIL import Image
from typer.testing import CliRunner

from service.batch import (
    SCORE_COLUMNS,
    BatchJob,
    ManifestError,
    claims_path,
    parts_dir,
    read_manifest,
    write_table,
)
from service.cli import app
from service.engine import ScoringEngine
from service.policy import PolicyConfig

NOW = datetime(2025, 6, 10, tzinfo=UTC)
MANIFEST_ROWS = [
    # claim A: a damaged item, the listing image beside it (and one listing image that is gone)
    {"claim_id": "A", "photo": "a1.jpg", "listing_images": "listing.jpg", "reason": "damaged"},
    {
        "claim_id": "A",
        "photo": "a2.jpg",
        "listing_images": "listing.jpg;gone.jpg",
        "reason": "damaged",
    },
    # claim B reuses claim A's first photo (re-encoded), and has one corrupt file
    {"claim_id": "B", "photo": "b1.jpg", "listing_images": "listing.jpg", "reason": "damaged"},
    {"claim_id": "B", "photo": "broken.jpg", "listing_images": "listing.jpg", "reason": "damaged"},
    # claim C: a missing file, a path outside the root
    {"claim_id": "C", "photo": "nowhere.jpg", "listing_images": "", "reason": "wrong_item"},
    {"claim_id": "C", "photo": "../escape.jpg", "listing_images": "", "reason": "wrong_item"},
    # claim D: the seller's own listing photo
    {"claim_id": "D", "photo": "listing.jpg", "listing_images": "listing.jpg", "reason": "damaged"},
]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> ScoringEngine:
    return ScoringEngine.load(write_tiny_model(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="module")
def images_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    damaged = textured_image(seed=21)
    damaged.paste((255, 0, 0), (0, 0, 160, 120))
    (root / "a1.jpg").write_bytes(encode(damaged, "JPEG", quality=92))
    (root / "a2.jpg").write_bytes(encode(textured_image(seed=22), "JPEG", quality=92))
    (root / "b1.jpg").write_bytes(encode(damaged, "JPEG", quality=70))  # a re-encoded copy
    (root / "broken.jpg").write_bytes(encode(textured_image(seed=23))[:400])
    (root / "listing.jpg").write_bytes(encode(textured_image(seed=24), "JPEG", quality=90))
    (root.parent / "escape.jpg").write_bytes(encode(textured_image(seed=25)))
    return root


def write_manifest(path: Path, rows: list[dict]) -> Path:
    write_table(
        pa.Table.from_pylist([row | {"note": f"n{index}"} for index, row in enumerate(rows)]), path
    )
    return path


def run_job(
    engine: ScoringEngine, manifest: Path, images_root: Path, out: Path, **kwargs
) -> BatchJob:
    job = BatchJob(
        manifest,
        images_root=images_root,
        out=out,
        engine=engine,
        policy=PolicyConfig(),
        now=NOW,
        **kwargs,
    )
    job.summary = job.run()  # type: ignore[attr-defined]
    return job


def read_any(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix == ".csv":
        with path.open(newline="") as stream:
            return list(csv.DictReader(stream))
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def scored(engine: ScoringEngine, images_root: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("run")
    manifest = write_manifest(folder / "manifest.csv", MANIFEST_ROWS)
    job = run_job(engine, manifest, images_root, folder / "scores.parquet")
    return job, read_any(folder / "scores.parquet"), read_any(folder / "scores.claims.parquet")


def test_every_row_comes_back_in_order_with_its_columns(scored):
    _, rows, _ = scored
    assert [row["photo"] for row in rows] == [row["photo"] for row in MANIFEST_ROWS]
    assert [row["note"] for row in rows] == [f"n{index}" for index in range(len(MANIFEST_ROWS))]
    for row in rows:
        assert set(SCORE_COLUMNS) <= row.keys()
        assert not any(key.startswith("_") for key in row)
        assert row["model_version"] == TINY_MODEL_VERSION


def test_bad_photos_get_an_error_and_do_not_stop_the_run(scored):
    job, rows, _ = scored
    by_photo = {row["photo"]: row for row in rows}
    assert by_photo["broken.jpg"]["error"].startswith("corrupt")
    assert by_photo["broken.jpg"]["quality_codes"] == "corrupt"
    assert by_photo["nowhere.jpg"]["error"].startswith("unreadable")
    assert "outside the images root" in by_photo["../escape.jpg"]["error"]
    assert by_photo["a1.jpg"]["error"] is None and by_photo["a2.jpg"]["error"] is None
    assert job.summary.errors == 3
    assert "gone.jpg" in job.summary.unusable_listing_images


def test_scores_are_the_models(scored, engine: ScoringEngine, images_root: Path):
    _, rows, _ = scored
    by_photo = {row["photo"]: row for row in rows}
    assert by_photo["a1.jpg"]["damage"] > 0.9 > by_photo["a2.jpg"]["damage"]
    assert 0 <= by_photo["a1.jpg"]["mismatch"] <= 1
    assert by_photo["listing.jpg"]["match_similarity"] == pytest.approx(1.0, abs=1e-4)
    assert "listing_photo_reuse" in by_photo["listing.jpg"]["quality_codes"].split(";")


def test_duplicates_across_claims_are_found_in_manifest_order(scored):
    _, rows, claims = scored
    by_photo = {row["photo"]: row for row in rows}
    assert "duplicate_across_claims" in by_photo["b1.jpg"]["quality_codes"].split(";")
    assert "duplicate_across_claims" not in (by_photo["a1.jpg"]["quality_codes"] or "")
    claim_b = next(claim for claim in claims if claim["claim_id"] == "B")
    assert claim_b["lane"] == "suspicious"
    assert "photo 1 reuses a photo from claim A" in claim_b["reasons"]


def test_cropped_copies_are_found_and_uniform_frames_are_not(engine, tmp_path: Path):
    root = tmp_path / "images"
    root.mkdir()
    original = textured_image(640, 480, seed=61)
    (root / "original.jpg").write_bytes(encode(original, "JPEG", quality=92))
    cropped = original.crop((64, 48, 640, 480))  # 10% off the left and top edges
    (root / "cropped.jpg").write_bytes(encode(cropped, "JPEG", quality=80))
    wall = Image.new("RGB", (640, 480), (180, 175, 170))
    (root / "wall.jpg").write_bytes(encode(wall, "JPEG", quality=92))
    manifest = write_manifest(
        tmp_path / "m.csv",
        [
            {"claim_id": "E", "photo": "original.jpg", "reason": "damaged"},
            {"claim_id": "E", "photo": "wall.jpg", "reason": "damaged"},
            {"claim_id": "F", "photo": "cropped.jpg", "reason": "damaged"},
            {"claim_id": "G", "photo": "wall.jpg", "reason": "damaged"},
        ],
    )
    out = tmp_path / "scores.parquet"
    run_job(engine, manifest, root, out)
    codes = [(row["quality_codes"] or "").split(";") for row in read_any(out)]
    assert "duplicate_across_claims" in codes[2]
    # A uniform frame matches every other one: its real problem is low detail, not reuse.
    assert "low_detail" in codes[3] and "duplicate_across_claims" not in codes[3]
    claim_f = next(claim for claim in read_any(claims_path(out)) if claim["claim_id"] == "F")
    assert "photo 1 reuses a photo from claim E" in claim_f["reasons"]


def test_claim_file_has_one_triaged_row_per_claim(scored):
    _, _, claims = scored
    assert [claim["claim_id"] for claim in claims] == ["A", "B", "C", "D"]
    by_id = {claim["claim_id"]: claim for claim in claims}
    assert by_id["A"]["photos"] == 2
    assert by_id["A"]["support"] > 0.9
    assert "damage" in by_id["A"]["reasons"] and "on photo 1" in by_id["A"]["reasons"]
    assert by_id["C"]["sufficiency"] == "insufficient"
    assert by_id["C"]["lane"] == "needs_more_evidence"
    assert by_id["D"]["lane"] == "suspicious"
    assert 0 <= by_id["A"]["priority"] <= 100
    assert by_id["A"]["deadline"] == datetime(2025, 6, 25, tzinfo=UTC)  # opened "now": + 15 days


@pytest.mark.parametrize(("manifest_ext", "out_ext"), [(".jsonl", ".csv"), (".parquet", ".jsonl")])
def test_other_formats(engine, images_root: Path, tmp_path: Path, manifest_ext, out_ext, scored):
    manifest = write_manifest(tmp_path / f"m{manifest_ext}", MANIFEST_ROWS)
    out = tmp_path / f"scores{out_ext}"
    run_job(engine, manifest, images_root, out)
    rows, claims = read_any(out), read_any(claims_path(out))
    _, reference, _ = scored
    assert [row["photo"] for row in rows] == [row["photo"] for row in reference]
    assert [row["quality_codes"] or None for row in rows] == [
        row["quality_codes"] or None for row in reference
    ]
    assert len(claims) == 4


def test_resume_keeps_finished_rows_and_matches_a_full_run(engine, images_root, tmp_path, scored):
    manifest = write_manifest(tmp_path / "m.csv", MANIFEST_ROWS)
    out = tmp_path / "scores.parquet"

    def crash_after_first_part(rows: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_job(
            engine, manifest, images_root, out, chunk_rows=3, on_progress=crash_after_first_part
        )
    assert not out.exists() and len(list(parts_dir(out).glob("part-*.parquet"))) == 1
    job = run_job(engine, manifest, images_root, out, chunk_rows=3, resume=True)
    assert (job.summary.resumed, job.summary.scored_now) == (3, len(MANIFEST_ROWS) - 3)
    _, reference, reference_claims = scored
    rows = read_any(out)
    for got, expected in zip(rows, reference, strict=True):
        assert got["quality_codes"] == expected["quality_codes"]  # b1's duplicate of a1 included
        assert got["damage"] == (
            None if expected["damage"] is None else pytest.approx(expected["damage"])
        )
    assert read_any(claims_path(out)) == reference_claims


def test_a_fresh_run_ignores_old_parts(engine, images_root, tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", MANIFEST_ROWS[:2])
    out = tmp_path / "scores.parquet"
    run_job(engine, manifest, images_root, out)
    job = run_job(engine, manifest, images_root, out)
    assert (job.summary.resumed, job.summary.scored_now) == (0, 2)
    assert len(read_any(out)) == 2


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("m.csv", "claim_id,picture\nA,a1.jpg\n", "lacks the required column"),
        ("m.txt", "claim_id,photo\n", "unknown table format"),
        ("m.parquet", "not parquet", "cannot be read"),
        ("m.csv", "claim_id,photo,damage\nA,a1.jpg,1\n", "already has output column"),
    ],
)
def test_malformed_manifests_are_refused(engine, images_root, tmp_path, name, content, message):
    manifest = tmp_path / name
    manifest.write_text(content)
    with pytest.raises(ManifestError, match=message):
        BatchJob(
            manifest,
            images_root=images_root,
            out=tmp_path / "o.parquet",
            engine=engine,
            policy=PolicyConfig(),
        )


def test_ids_and_paths_are_read_as_text(tmp_path: Path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("claim_id,photo,reason\n007,123.jpg,damaged\n")
    table = read_manifest(manifest)
    assert table["claim_id"].to_pylist() == ["007"] and table["photo"].to_pylist() == ["123.jpg"]


def test_cli_batch(engine, images_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TRIAGE_MODEL_DIR", str(engine.model_dir))
    manifest = write_manifest(tmp_path / "m.csv", MANIFEST_ROWS)
    out = tmp_path / "out.csv"
    args = ["batch", str(manifest), "--images-root", str(images_root), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(read_any(out)) == len(MANIFEST_ROWS) and claims_path(out).is_file()
    resumed = CliRunner().invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0 and f"{len(MANIFEST_ROWS)} from an earlier run" in resumed.output
    bad = CliRunner().invoke(
        app,
        ["batch", str(tmp_path / "none.csv"), "--images-root", str(images_root), "--out", str(out)],
    )
    assert bad.exit_code == 2


@pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason="ray is an optional extra (pip install '.[ray]'); without it the Ray engine is untested",
)
def test_ray_engine_matches_the_local_engine(engine, images_root, tmp_path, scored):
    manifest = write_manifest(tmp_path / "m.csv", MANIFEST_ROWS)
    out = tmp_path / "scores.parquet"
    run_job(engine, manifest, images_root, out, engine_kind="ray", ray_actors=1)
    _, reference, reference_claims = scored
    for got, expected in zip(read_any(out), reference, strict=True):
        assert got["quality_codes"] == expected["quality_codes"]
        assert got["error"] == expected["error"]
    assert read_any(claims_path(out)) == reference_claims


@pytest.mark.shared_data
def test_real_grocery_photos_flow_through(engine, shared_data: Path, tmp_path: Path):
    grocery = shared_data / "grocery"
    with (grocery / "manifest.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    listing_of = {row["product"]: row["path"] for row in rows if row["role"] == "listing"}
    photos = [row for row in rows if row["role"] != "listing"][::700][:6]
    manifest_rows = [
        {
            "claim_id": f"g{index}",
            "photo": row["path"],
            "listing_images": listing_of[row["product"]],
            "reason": "wrong_item",
        }
        for index, row in enumerate(photos)
    ]
    manifest = write_manifest(tmp_path / "grocery.csv", manifest_rows)
    out = tmp_path / "grocery.parquet"
    run_job(engine, manifest, grocery, out)
    scored = read_any(out)
    assert [row["error"] for row in scored] == [None] * len(photos)
    assert all(0 <= row["damage"] <= 1 and 0 <= row["mismatch"] <= 1 for row in scored)
    assert len(read_any(claims_path(out))) == len(photos)
