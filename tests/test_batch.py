"""`triage batch`: manifest formats, row errors, duplicates across claims, claims file, resume."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
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
# Photos the manifest names that cannot be scored: a resume tries them again.
FAILING = {"broken.jpg", "nowhere.jpg", "../escape.jpg"}


def failing(rows: list[dict]) -> int:
    return sum(row["photo"] in FAILING for row in rows)


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


def test_quality_blockers_are_the_codes_that_keep_a_photo_out(scored):
    _, rows, _ = scored
    for row in rows:
        codes = (row["quality_codes"] or "").split(";")
        blockers = [code for code in (row["quality_blockers"] or "").split(";") if code]
        assert set(blockers) <= set(codes), row["photo"]
    by_photo = {row["photo"]: row for row in rows}
    assert "listing_photo_reuse" in by_photo["listing.jpg"]["quality_blockers"].split(";")
    assert not by_photo["a2.jpg"]["quality_blockers"]


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
    # a2's unreadable listing image was scored in the first run: still reported after resuming
    assert [row["listing_errors"] for row in rows] == [row["listing_errors"] for row in reference]
    assert "gone.jpg" in job.summary.unusable_listing_images


def rows_of(path: Path) -> list[tuple]:
    """What a resumed run must reproduce: each row's photo and results, and the claim file."""
    return [
        (
            row["photo"],
            row["note"],
            None if row["damage"] is None else round(row["damage"], 6),
            row["quality_codes"],
            row["error"],
            row["listing_errors"],
        )
        for row in read_any(path)
    ] + read_any(claims_path(path))


def resume_from(engine, images_root, manifest: Path, earlier: Path, out: Path) -> BatchJob:
    """Resume `manifest` into `out` from the parts an earlier run (of another manifest) left."""
    parts_dir(out).mkdir()
    for part in parts_dir(earlier).glob("part-*.parquet"):
        (parts_dir(out) / part.name).write_bytes(part.read_bytes())
    return run_job(engine, manifest, images_root, out, resume=True)


def test_resume_after_the_manifest_changed_reuses_only_rows_with_the_same_inputs(
    engine, images_root, tmp_path, scored
):
    job, _, _ = scored
    changed = [dict(row) for row in reversed(MANIFEST_ROWS)]  # re-sorted...
    changed[2]["photo"] = "a2.jpg"  # ...and nowhere.jpg's path fixed
    manifest = write_manifest(tmp_path / "changed.csv", changed)
    fresh = tmp_path / "fresh.parquet"
    run_job(engine, manifest, images_root, fresh)
    resumed = resume_from(engine, images_root, manifest, job.out, tmp_path / "resumed.parquet")
    # Only the fixed row is scored again; every other row finds its own photo's results, and
    # the duplicates across claims follow the new order (a1 now repeats b1, not the reverse).
    retried = failing(changed)
    assert (resumed.summary.resumed, resumed.summary.scored_now) == (
        len(changed) - 1 - retried,
        1 + retried,
    )
    assert rows_of(resumed.out) == rows_of(fresh)


@pytest.mark.parametrize(
    "rows",
    [
        MANIFEST_ROWS[:3],
        [*MANIFEST_ROWS, {"claim_id": "E", "photo": "a2.jpg", "reason": "damaged"}],
    ],
)
def test_resume_with_fewer_or_more_rows(engine, images_root, tmp_path, scored, rows):
    job, _, _ = scored
    manifest = write_manifest(tmp_path / "m.csv", rows)
    fresh = tmp_path / "fresh.parquet"
    run_job(engine, manifest, images_root, fresh)
    resumed = resume_from(engine, images_root, manifest, job.out, tmp_path / "resumed.parquet")
    new_rows = max(0, len(rows) - len(MANIFEST_ROWS))
    retried = failing(rows[: len(MANIFEST_ROWS)])
    assert (resumed.summary.resumed, resumed.summary.scored_now) == (
        len(rows) - new_rows - retried,
        new_rows + retried,
    )
    assert resumed.summary.unused_saved == max(0, len(MANIFEST_ROWS) - len(rows))
    assert rows_of(resumed.out) == rows_of(fresh)


def test_resume_does_not_reuse_another_models_results(images_root, tmp_path, scored):
    job, _, _ = scored
    other = ScoringEngine.load(
        write_tiny_model(tmp_path / "model-2", card_overrides={"version": "2.0.0"})
    )
    manifest = write_manifest(tmp_path / "m.csv", MANIFEST_ROWS)
    resumed = resume_from(other, images_root, manifest, job.out, tmp_path / "resumed.parquet")
    assert (resumed.summary.resumed, resumed.summary.unused_saved) == (0, len(MANIFEST_ROWS))
    assert {row["model_version"] for row in read_any(resumed.out)} == {other.model_version}


def test_resume_refuses_parts_without_fingerprints(engine, images_root, tmp_path):
    manifest = write_manifest(tmp_path / "m.csv", MANIFEST_ROWS[:1])
    out = tmp_path / "scores.parquet"
    parts_dir(out).mkdir()
    pq.write_table(pa.table({"_row": [0], "damage": [0.5]}), parts_dir(out) / "part-0.parquet")
    with pytest.raises(ManifestError, match="older version"):
        run_job(engine, manifest, images_root, out, resume=True)


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
        (
            "m.csv",
            "claim_id,photo,photo\nA,a1.jpg,a2.jpg\n",
            "names a column more than once: photo",
        ),
        (
            "m.csv",
            "claim_id,photo,note,note\nA,a1.jpg,x,y\n",
            "names a column more than once: note",
        ),
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


def test_csv_pass_through_columns_come_out_as_written(engine, images_root, tmp_path: Path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("claim_id,photo,order_ref,amount,note\nA,a1.jpg,000038,12.50,\n")
    out = tmp_path / "scores.parquet"
    run_job(engine, manifest, images_root, out)
    [row] = read_any(out)
    assert (row["order_ref"], row["amount"], row["note"]) == ("000038", "12.50", "")


@pytest.mark.parametrize("manifest_ext", [".jsonl", ".parquet"])
def test_listing_images_may_be_a_list(engine, images_root, tmp_path, scored, manifest_ext):
    as_lists = [row | {"listing_images": split(row["listing_images"])} for row in MANIFEST_ROWS]
    manifest = write_manifest(tmp_path / f"m{manifest_ext}", as_lists)
    out = tmp_path / "scores.parquet"
    run_job(engine, manifest, images_root, out)
    _, reference, _ = scored
    got = read_any(out)
    assert [row["listing_images"] for row in got] == [row["listing_images"] for row in as_lists]
    for column in ("match_similarity", "quality_codes", "listing_errors"):
        assert [row[column] for row in got] == [row[column] for row in reference]


def split(paths: str) -> list[str]:
    return [path for path in paths.split(";") if path]


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("claim_id", {"id": 1}),
        ("listing_images", {"path": "listing.jpg"}),
        ("listing_images", [{"path": "listing.jpg"}]),
        ("opened_at", ["2025-06-01"]),
        ("escalated", {"yes": True}),
    ],
)
def test_known_columns_of_an_unusable_type_are_refused(tmp_path: Path, column, value):
    manifest = tmp_path / "m.jsonl"
    row = {"claim_id": "A", "photo": "a1.jpg"} | {column: value}
    manifest.write_text(json.dumps(row) + "\n")
    with pytest.raises(ManifestError, match=f"column {column} "):
        read_manifest(manifest)


def test_nested_pass_through_columns_are_json_text_in_csv(engine, images_root, tmp_path: Path):
    manifest = tmp_path / "m.jsonl"
    row = {"claim_id": "A", "photo": "a1.jpg", "order": {"ref": "000038", "items": [1, 2]}}
    manifest.write_text(json.dumps(row) + "\n")
    out = tmp_path / "scores.csv"
    run_job(engine, manifest, images_root, out)
    [written] = read_any(out)
    assert json.loads(written["order"]) == row["order"]


def test_an_output_without_extension_is_parquet(engine, images_root, tmp_path: Path):
    manifest = write_manifest(tmp_path / "m.csv", MANIFEST_ROWS[:2])
    out = tmp_path / "o3"
    run_job(engine, manifest, images_root, out)
    assert pq.read_table(out).num_rows == 2
    assert pq.read_table(claims_path(out)).num_rows == 1
    assert claims_path(out).name == "o3.claims"


def test_jsonl_times_are_iso_8601(engine, images_root, tmp_path: Path):
    manifest = write_manifest(tmp_path / "m.jsonl", MANIFEST_ROWS[:1])
    out = tmp_path / "scores.jsonl"
    run_job(engine, manifest, images_root, out)
    [claim] = read_any(claims_path(out))
    assert claim["deadline"] == "2025-06-25T00:00:00+00:00"


def test_the_same_photo_twice_in_a_claim_counts_once(engine, images_root, tmp_path: Path):
    rows = [{"claim_id": "P", "photo": "a2.jpg", "reason": "missing_parts"}] * 2
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "scores.parquet"
    run_job(engine, manifest, images_root, out)
    [claim] = read_any(claims_path(out))
    assert claim["photos"] == 1 and claim["sufficiency"] == "weak"
    assert "duplicate_across_claims" not in read_any(out)[1]["quality_codes"]


def test_rows_without_a_claim_id_are_scored_but_not_triaged(engine, images_root, tmp_path):
    rows = [
        {"claim_id": "", "photo": "a1.jpg"},
        {"claim_id": None, "photo": "a2.jpg"},
        {"claim_id": "Q", "photo": "a1.jpg", "reason": "damaged"},  # the same photo as row 1
    ]
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    out = tmp_path / "scores.parquet"
    run_job(engine, manifest, images_root, out)
    assert [row["damage"] is not None for row in read_any(out)] == [True, True, True]
    claims = {claim["claim_id"]: claim for claim in read_any(claims_path(out))}
    assert set(claims) == {"", "Q"}  # a null id is no claim "None"
    assert claims[""]["error"] == "rows with no claim_id: not triaged"
    assert claims[""]["lane"] is None
    # A row of no claim is no claim's evidence: Q's photo is not "reused" from it.
    assert claims["Q"]["lane"] != "suspicious"


def test_resume_tries_failed_rows_again(engine, images_root, tmp_path: Path):
    root = tmp_path / "images"
    root.mkdir()
    manifest = write_manifest(tmp_path / "m.csv", [{"claim_id": "L", "photo": "late.jpg"}])
    out = tmp_path / "scores.parquet"
    run_job(engine, manifest, root, out)
    assert read_any(out)[0]["error"].startswith("unreadable")
    (root / "late.jpg").write_bytes((images_root / "a2.jpg").read_bytes())  # the file arrives
    run_job(engine, manifest, root, out, resume=True)
    [row] = read_any(out)
    assert row["error"] is None and row["damage"] is not None


@pytest.mark.parametrize("manifest_ext", [".csv", ".jsonl"])
def test_claims_without_a_reason_are_triaged_on_their_evidence(
    engine, images_root, tmp_path: Path, manifest_ext: str
):
    rows = [
        {"claim_id": "N", "photo": "a1.jpg", "reason": None},  # no reason at all
        {"claim_id": "M", "photo": "broken.jpg", "reason": ""},  # an empty cell
    ]
    if manifest_ext == ".csv":
        rows = [{key: value for key, value in row.items() if key != "reason"} for row in rows]
    manifest = write_manifest(tmp_path / f"m{manifest_ext}", rows)
    out = tmp_path / "scores.parquet"
    run_job(engine, manifest, images_root, out)
    claims = {claim["claim_id"]: claim for claim in read_any(claims_path(out))}
    assert claims["N"]["error"] is None and claims["N"]["support"] is None
    assert claims["N"]["lane"] == "needs_review"
    assert "no claim reason given: support not judged" in claims["N"]["reasons"]
    assert claims["M"]["lane"] == "needs_more_evidence"  # its only photo is unreadable


def test_unreadable_listing_images_are_recorded(engine, images_root, tmp_path: Path):
    rows = [{"claim_id": "W", "photo": "a2.jpg", "listing_images": "gone.jpg;broken.jpg"}]
    manifest = write_manifest(tmp_path / "m.csv", [row | {"reason": "wrong_item"} for row in rows])
    out = tmp_path / "scores.parquet"
    run_job(engine, manifest, images_root, out)
    [row] = read_any(out)
    assert row["error"] is None and row["mismatch"] is None
    assert row["listing_errors"].startswith("gone.jpg: unreadable: ")
    assert "; broken.jpg: corrupt: " in row["listing_errors"]
    [claim] = read_any(claims_path(out))
    assert "listing images could not be read (broken.jpg, gone.jpg)" in claim["reasons"]
    assert "listing has no images" not in claim["reasons"]


def test_cli_batch(engine, images_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TRIAGE_MODEL_DIR", str(engine.model_dir))
    manifest = write_manifest(tmp_path / "m.csv", MANIFEST_ROWS)
    out = tmp_path / "out.csv"
    args = ["batch", str(manifest), "--images-root", str(images_root), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(read_any(out)) == len(MANIFEST_ROWS) and claims_path(out).is_file()
    resumed = CliRunner().invoke(app, [*args, "--resume"])
    from_earlier = len(MANIFEST_ROWS) - failing(MANIFEST_ROWS)
    assert resumed.exit_code == 0 and f"{from_earlier} from an earlier run" in resumed.output
    bad = CliRunner().invoke(
        app,
        ["batch", str(tmp_path / "none.csv"), "--images-root", str(images_root), "--out", str(out)],
    )
    assert bad.exit_code == 2


@pytest.mark.parametrize(
    ("address", "said"),
    [("ray://10.0.0.9:10001", "joining the cluster at ray://10.0.0.9:10001"), (None, "local Ray")],
)
def test_cli_batch_says_which_ray_it_waits_for(
    engine, images_root, tmp_path, monkeypatch, address, said
):
    """Joining an unreachable cluster waits minutes inside ray.init: the command says first
    what it is joining. (A missing manifest stops it before Ray starts.)"""
    pytest.importorskip("ray", reason="needs the ray extra")
    monkeypatch.setenv("TRIAGE_MODEL_DIR", str(engine.model_dir))
    if address is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", address)
    args = ["batch", str(tmp_path / "none.csv"), "--images-root", str(images_root)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o.csv"), "--engine", "ray"])
    assert result.exit_code == 2
    assert said in " ".join(result.output.split())


def test_cli_batch_refuses_an_unknown_output_extension(engine, images_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TRIAGE_MODEL_DIR", str(engine.model_dir))
    manifest = write_manifest(tmp_path / "m.csv", MANIFEST_ROWS[:1])
    args = ["batch", str(manifest), "--images-root", str(images_root)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o.txt")])
    assert result.exit_code == 2 and "unknown table format '.txt'" in result.output


def test_cli_batch_interrupted_says_how_to_go_on(engine, images_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TRIAGE_MODEL_DIR", str(engine.model_dir))

    def interrupted(self: BatchJob) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(BatchJob, "run", interrupted)
    manifest = write_manifest(tmp_path / "m.csv", MANIFEST_ROWS[:1])
    out = str(tmp_path / "o.parquet")
    args = ["batch", str(manifest), "--images-root", str(images_root), "--out", out]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 130
    assert "interrupted: rerun with --resume to continue" in result.output


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


def copy_of(images_root: Path, folder: Path) -> Path:
    """A private copy of the images, for a test that replaces some of them."""
    folder.mkdir()
    for image in images_root.iterdir():
        (folder / image.name).write_bytes(image.read_bytes())
    return folder


@pytest.mark.parametrize(
    ("replaced", "rescored"),
    [
        ("a2.jpg", {"a2.jpg"}),  # a photo
        ("listing.jpg", {"a1.jpg", "a2.jpg", "b1.jpg", "listing.jpg"}),  # every row comparing it
    ],
)
def test_resume_scores_again_a_file_replaced_under_the_same_path(
    engine, images_root, tmp_path: Path, replaced: str, rescored: set[str]
):
    root = copy_of(images_root, tmp_path / "images")
    manifest = write_manifest(tmp_path / "m.csv", MANIFEST_ROWS)
    out = tmp_path / "scores.parquet"
    run_job(engine, manifest, root, out)
    before = {row["photo"]: row for row in read_any(out)}
    damaged = textured_image(seed=22)
    damaged.paste((255, 0, 0), (0, 0, 160, 120))
    (root / replaced).write_bytes(encode(damaged, "JPEG", quality=92))  # same path, new photo
    job = run_job(engine, manifest, root, out, resume=True)
    retried = failing(MANIFEST_ROWS)
    assert (job.summary.scored_now, job.summary.resumed) == (
        len(rescored) + retried,
        len(MANIFEST_ROWS) - len(rescored) - retried,
    )
    after = {row["photo"]: row for row in read_any(out)}
    fresh = tmp_path / "fresh.parquet"
    run_job(engine, manifest, root, fresh)
    assert rows_of(out) == rows_of(fresh)

    def results(row: dict) -> tuple:
        return row["damage"], row["match_similarity"]

    assert {photo for photo, row in after.items() if results(row) != results(before[photo])} == (
        rescored
    )


def test_resume_notices_a_changed_time_alone(engine, images_root, tmp_path: Path):
    """A file edited in place keeps its size: its modification time tells it apart."""
    root = copy_of(images_root, tmp_path / "images")
    manifest = write_manifest(tmp_path / "m.csv", [{"claim_id": "T", "photo": "a2.jpg"}])
    out = tmp_path / "scores.parquet"
    run_job(engine, manifest, root, out)
    photo = root / "a2.jpg"
    status = photo.stat()
    os.utime(photo, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000_000))
    assert run_job(engine, manifest, root, out, resume=True).summary.resumed == 0
    assert run_job(engine, manifest, root, out, resume=True).summary.resumed == 1


def test_a_path_no_file_can_have_is_a_row_error(engine, images_root, tmp_path: Path):
    rows = [
        {"claim_id": "Z", "photo": "a1\u0000.jpg", "listing_images": ["listing.jpg"]},
        {"claim_id": "Z", "photo": "a2.jpg", "listing_images": ["list\u0000ing.jpg"]},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "scores.parquet"
    job = run_job(engine, manifest, images_root, out)
    first, second = read_any(out)
    assert first["error"] == "'a1\\x00.jpg' is not a usable path: it holds a NUL character"
    assert second["error"] is None and second["damage"] is not None
    assert second["listing_errors"].startswith("list\x00ing.jpg: 'list\\x00ing.jpg' is not a")
    assert job.summary.errors == 1


def test_a_symlink_loop_is_a_row_error(engine, images_root, tmp_path: Path):
    root = copy_of(images_root, tmp_path / "images")
    (root / "loop.jpg").symlink_to("loop.jpg")
    rows = [{"claim_id": "Y", "photo": "loop.jpg", "listing_images": "loop.jpg;listing.jpg"}]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "scores.parquet"
    run_job(engine, manifest, root, out)
    [row] = read_any(out)
    assert row["error"] == "loop.jpg is a loop of symbolic links"
    assert row["listing_errors"] is None  # not scored, so not compared


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path):
    interval = pa.array([pa.MonthDayNano([1, 2, 3])], pa.month_day_nano_interval())
    with pytest.raises(pa.ArrowException):
        write_table(pa.table({"span": interval}), tmp_path / "o.csv")
    assert list(tmp_path.iterdir()) == []


def test_an_unusable_output_path_is_refused_before_scoring(engine, images_root, tmp_path: Path):
    manifest = write_manifest(tmp_path / "m.csv", MANIFEST_ROWS[:1])
    (tmp_path / "a-file").write_text("")
    for out, message in [
        (tmp_path, "is a folder"),
        (tmp_path / "a-file" / "o.parquet", "cannot keep the results"),
    ]:
        with pytest.raises(ManifestError, match=message):
            run_job(engine, manifest, images_root, out)
    assert not (tmp_path.parent / f"{tmp_path.name}.parts").exists()


@pytest.mark.parametrize("out_ext", [".csv", ".jsonl"])
def test_binary_pass_through_columns_are_text_or_hex(engine, images_root, tmp_path, out_ext):
    """Parquet writers that leave text unannotated give binary columns; hashes are bytes."""
    manifest = tmp_path / "m.parquet"
    pq.write_table(
        pa.table(
            {
                "claim_id": ["A", "A"],
                "photo": ["a1.jpg", "a2.jpg"],
                "ref": pa.array([b"order-7", None], pa.binary()),
                "digest": pa.array([b"\x00\xff", b"\xfe"], pa.large_binary()),
            }
        ),
        manifest,
    )
    out = tmp_path / f"scores{out_ext}"
    run_job(engine, manifest, images_root, out)
    got = [(row["ref"] or None, row["digest"]) for row in read_any(out)]
    assert got == [("order-7", "00ff"), (None, "fe")]


def test_photo_paths_are_trimmed_like_listing_paths(engine, images_root, tmp_path: Path, scored):
    """Spreadsheets leave spaces around cells; a listing path was already read without them."""
    rows = [{"claim_id": "S", "photo": " a1.jpg\t", "listing_images": " listing.jpg ; gone.jpg"}]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "scores.parquet"
    run_job(engine, manifest, images_root, out)
    [row] = read_any(out)
    _, reference, _ = scored
    assert row["photo"] == " a1.jpg\t"  # passed through as written
    assert row["error"] is None
    assert row["damage"] == pytest.approx(reference[0]["damage"])


def test_resume_compares_a_listing_image_that_arrived_since(engine, images_root, tmp_path: Path):
    """The row itself did not fail (its photo was scored), so only the stamps can tell."""
    root = copy_of(images_root, tmp_path / "images")
    rows = [{"claim_id": "V", "photo": "a2.jpg", "listing_images": "late.jpg", "reason": "damaged"}]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "scores.parquet"
    run_job(engine, manifest, root, out)
    [row] = read_any(out)
    assert row["mismatch"] is None and row["listing_errors"].startswith("late.jpg: unreadable")
    (root / "late.jpg").write_bytes((root / "a2.jpg").read_bytes())
    job = run_job(engine, manifest, root, out, resume=True)
    [row] = read_any(out)
    assert job.summary.scored_now == 1 and not job.summary.unusable_listing_images
    assert row["listing_errors"] is None
    assert row["match_similarity"] == pytest.approx(1.0, abs=1e-4)


def test_jsonl_output_is_strict_json_when_a_column_holds_nan(engine, images_root, tmp_path):
    """JSON has no NaN or Infinity: JSON.parse, Go and BigQuery refuse what Python writes."""
    manifest = tmp_path / "m.parquet"
    nan, inf = float("nan"), float("inf")
    amounts = pa.array([nan, inf, 1.5])
    samples = pa.array([[nan, 2.0], None, [-inf]], pa.list_(pa.float64()))
    photos = ["a1.jpg", "a2.jpg", "a1.jpg"]
    pq.write_table(
        pa.table({"claim_id": ["A"] * 3, "photo": photos, "amount": amounts, "samples": samples}),
        manifest,
    )
    out = tmp_path / "scores.jsonl"
    run_job(engine, manifest, images_root, out)

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    rows = [json.loads(line, parse_constant=refuse) for line in out.read_text().splitlines()]
    assert [(row["amount"], row["samples"]) for row in rows] == [
        (None, [None, 2.0]),
        (None, None),
        (1.5, [None]),
    ]


def test_resume_refuses_an_unreadable_part_by_name(engine, images_root, tmp_path):
    """A parts folder copied between machines can arrive cut short."""
    manifest = write_manifest(tmp_path / "m.csv", MANIFEST_ROWS[:1])
    out = tmp_path / "scores.parquet"
    run_job(engine, manifest, images_root, out)
    [part] = parts_dir(out).glob("part-*.parquet")
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(ManifestError, match=f"{part.name} cannot be read"):
        run_job(engine, manifest, images_root, out, resume=True)
