"""`triage labels export`: reviewer labels, latest review first, as a training manifest.

The merge rule is tested as a pure function on known cases; the command is run with typer's
CliRunner on data stored through crud (and once through the real API), and its output is read
back with the training side's own reader, `training.data.load_labelled_photos`.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from api_server import ApiServer, reset_postgres
from conftest import add_bare_claim, add_bare_evidence, add_bare_photo, encode, textured_image
from PIL import Image
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from service.auth import Role
from service.cli import app
from service.cli.labels import parse_since
from service.config import Settings
from service.db import crud
from service.db.crud import ReviewLabels
from service.db.migrate import upgrade_to_head
from service.db.session import make_engine, make_session_factory, transaction
from service.intake import sniff_format
from service.labels import COLUMNS, MergedLabel, merge_labels, photo_filename
from service.store import PhotoStore
from training.data import LabelledPhoto, load_labelled_photos

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


# --- the merge rule -----------------------------------------------------------------------------


def review(
    minutes: int, *labels: dict[str, Any], claim: str = "c1", review_id: str = ""
) -> ReviewLabels:
    return ReviewLabels(
        claim_id=claim,
        review_id=review_id or f"rev_{minutes:04d}",
        created_at=at(minutes),
        labels=list(labels),
    )


def label(
    minutes: int,
    photo: str = "p1",
    damage: bool | None = None,
    matches_listing: bool | None = None,
    claim: str = "c1",
) -> MergedLabel:
    return MergedLabel(claim, photo, damage, matches_listing, at(minutes))


MERGE_CASES = {
    "one review, damage only": (
        [review(0, {"photo_id": "p1", "damage": True})],
        [label(0, damage=True)],
    ),
    "a later review corrects an earlier one": (
        [
            review(0, {"photo_id": "p1", "damage": True, "matches_listing": True}),
            review(5, {"photo_id": "p1", "damage": False, "matches_listing": False}),
        ],
        [label(5, damage=False, matches_listing=False)],
    ),
    "a field the later review leaves out keeps the earlier value": (
        [
            review(0, {"photo_id": "p1", "damage": True}),
            review(5, {"photo_id": "p1", "damage": None, "matches_listing": False}),
        ],
        [label(5, damage=True, matches_listing=False)],
    ),
    "a missing key is left out too": (
        [
            review(0, {"photo_id": "p1", "damage": True, "matches_listing": True}),
            review(5, {"photo_id": "p1", "matches_listing": False}),
        ],
        [label(5, damage=True, matches_listing=False)],
    ),
    "order of the input does not matter, time does": (
        [
            review(5, {"photo_id": "p1", "damage": False}),
            review(0, {"photo_id": "p1", "damage": True}),
        ],
        [label(5, damage=False)],
    ),
    "same time: the review id breaks the tie": (
        [
            review(0, {"photo_id": "p1", "damage": False}, review_id="rev_b"),
            review(0, {"photo_id": "p1", "damage": True}, review_id="rev_a"),
        ],
        [label(0, damage=False)],
    ),
    "a label that sets nothing labels nothing, and does not move reviewed_at": (
        [
            review(0, {"photo_id": "p1", "damage": True}),
            review(5, {"photo_id": "p1", "damage": None, "matches_listing": None}),
            review(6, {"photo_id": "p2"}),
        ],
        [label(0, damage=True)],
    ),
    "within one review the last entry for a photo wins": (
        [review(0, {"photo_id": "p1", "damage": True}, {"photo_id": "p1", "damage": False})],
        [label(0, damage=False)],
    ),
    "the same photo in two claims is two labels": (
        [
            review(0, {"photo_id": "p1", "damage": True}, claim="c1"),
            review(1, {"photo_id": "p1", "damage": False}, claim="c2"),
        ],
        [label(0, damage=True, claim="c1"), label(1, damage=False, claim="c2")],
    ),
    "photos of one claim are merged separately, sorted by time then ids": (
        [
            review(0, {"photo_id": "p2", "damage": True}, {"photo_id": "p1", "damage": True}),
            review(5, {"photo_id": "p1", "matches_listing": True}),
        ],
        [label(0, "p2", damage=True), label(5, "p1", damage=True, matches_listing=True)],
    ),
    "malformed entries are ignored": (
        [review(0, {"damage": True}, "p1", {"photo_id": "p1", "damage": "yes"})],
        [],
    ),
    "no reviews": ([], []),
}


@pytest.mark.parametrize(("reviews", "expected"), list(MERGE_CASES.values()), ids=list(MERGE_CASES))
def test_merge_labels(reviews: list[ReviewLabels], expected: list[MergedLabel]) -> None:
    assert merge_labels(reviews) == expected


@pytest.mark.parametrize(
    ("image_format", "extension"),
    [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("HEIF", "heic")],
)
def test_photo_files_are_named_by_id_and_format(image_format: str, extension: str) -> None:
    assert photo_filename("ab" * 32, image_format) == f"{'ab' * 32}.{extension}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-01", T0.replace(hour=0)),
        ("2025-03-01T09:00:00", T0),
        ("2025-03-01T09:00:00Z", T0),
        ("2025-03-01T10:00:00+01:00", T0),
    ],
)
def test_since_is_an_iso_date_in_utc_unless_zoned(text: str, expected: datetime) -> None:
    assert parse_since(text) == expected


# --- the command, on data stored through crud ---------------------------------------------------


@pytest.fixture
def settings(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """An empty database and photo store, named to the command through TRIAGE_* variables."""
    if database_url.startswith("sqlite"):
        database_url = f"sqlite:///{tmp_path / 'data' / 'triage.sqlite3'}"
    else:
        reset_postgres(database_url)
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("TRIAGE_DATABASE_URL", database_url)
    return Settings()


def image_bytes(seed: int, fmt: str = "JPEG") -> bytes:
    return encode(textured_image(160, 120, seed=seed), fmt)


@dataclass
class Store:
    """Claims, photos and reviews written with crud, at chosen times."""

    settings: Settings

    def __post_init__(self) -> None:
        self.engine = make_engine(self.settings.resolved_database_url)
        upgrade_to_head(self.engine)
        self.sessions = make_session_factory(self.engine)
        self.photos = PhotoStore(self.settings.photos_dir)
        with transaction(self.sessions) as session:
            keys = {
                role: crud.create_api_key(session, role=role, name=role.value, now=T0)
                for role in (Role.buyer, Role.reviewer)
            }
            session.flush()
            buyer = crud.find_active_key(session, key=keys[Role.buyer])
            reviewer = crud.find_active_key(session, key=keys[Role.reviewer])
            assert buyer is not None and reviewer is not None
            self.buyer, self.reviewer = buyer.key_id, reviewer.key_id

    def photo(self, session: Session, data: bytes) -> str:
        photo_id = self.photos.put(data)
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
        add_bare_photo(
            session,
            photo_id,
            now=T0,
            image_format=sniff_format(data[:32]) or "JPEG",
            byte_size=len(data),
            size=size,
        )
        return photo_id

    def claim(self, listing: list[bytes], evidence: list[bytes]) -> tuple[str, list[str]]:
        """A claim on a new listing with these images; returns it and its evidence photo ids."""
        with transaction(self.sessions) as session:
            listing_id = f"lst-{uuid.uuid4().hex[:8]}"
            crud.create_listing(session, listing_id=listing_id, title="Mug", category=None, now=T0)
            session.flush()
            for data in listing:
                photo_id = self.photo(session, data)
                session.flush()
                crud.add_listing_image(session, listing_id=listing_id, photo_id=photo_id, now=T0)
                session.flush()
            claim_id = add_bare_claim(
                session,
                owner_key_id=self.buyer,
                listing_id=listing_id,
                idempotency_key=uuid.uuid4().hex,
                now=T0,
            )
            photo_ids = []
            for data in evidence:
                photo_id = self.photo(session, data)
                session.flush()
                add_bare_evidence(session, claim_id, photo_id, now=T0)
                session.flush()
                photo_ids.append(photo_id)
            return claim_id, photo_ids

    def review(self, claim_id: str, minutes: int, *labels: dict[str, Any]) -> None:
        with transaction(self.sessions) as session:
            crud.create_review(
                session,
                claim_id=claim_id,
                reviewer_key_id=self.reviewer,
                decision="request_more_evidence",
                amount=None,
                notes=None,
                labels=list(labels),
                now=at(minutes),
            )


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    built = Store(settings)
    yield built
    built.engine.dispose()


@dataclass
class Export:
    stdout: str
    stderr: str
    manifest: Path
    rows: list[dict[str, str]]  # the CSV as written, extra columns and all
    photos: list[LabelledPhoto]  # the same rows as training reads them

    def by_photo_id(self) -> dict[str, tuple[dict[str, str], LabelledPhoto]]:
        return {
            row["photo_id"]: (row, photo) for row, photo in zip(self.rows, self.photos, strict=True)
        }


def run_export(out: Path, *options: str) -> Export:
    result = CliRunner().invoke(app, ["labels", "export", str(out), *options])
    assert result.exit_code == 0, result.output
    manifest = Path(result.stdout.strip())
    assert manifest == out / "labels.csv"
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    photos = load_labelled_photos(manifest)
    assert len(photos) == len(rows)
    return Export(result.stdout, result.stderr, manifest, rows, photos)


def test_export_takes_the_latest_label_and_copies_the_photos(store: Store, tmp_path: Path) -> None:
    listing = [image_bytes(1), image_bytes(2, "PNG")]
    evidence = [image_bytes(10), image_bytes(11, "WEBP"), image_bytes(12)]
    claim_id, (corrected, damage_only, unlabelled) = store.claim(listing, evidence)
    store.review(
        claim_id,
        0,
        {"photo_id": corrected, "damage": True, "matches_listing": True},
        {"photo_id": damage_only, "damage": False, "matches_listing": None},
    )
    store.review(claim_id, 30, {"photo_id": corrected, "damage": False, "matches_listing": None})

    export = run_export(tmp_path / "out")

    # The training reader's columns first, then provenance.
    assert tuple(export.rows[0]) == COLUMNS
    assert COLUMNS[:4] == ("photo", "damage", "matches_listing", "listing_images")
    rows = export.by_photo_id()
    assert set(rows) == {corrected, damage_only}  # the unlabelled photo is not exported
    assert unlabelled not in export.manifest.read_text()

    row, photo = rows[corrected]
    # The second review corrected damage and left matches_listing as the first one set it.
    assert (photo.damage, photo.matches_listing) == (False, True)
    assert row["claim_id"] == claim_id
    assert datetime.fromisoformat(row["reviewed_at"]) == at(30)
    assert photo.path == tmp_path / "out" / "photos" / f"{corrected}.jpg"
    assert photo.path.read_bytes() == evidence[0]

    row, photo = rows[damage_only]
    assert (photo.damage, photo.matches_listing) == (False, None)
    assert (row["damage"], row["matches_listing"]) == ("0", "")
    assert datetime.fromisoformat(row["reviewed_at"]) == at(0)
    assert photo.path.suffix == ".webp" and photo.path.read_bytes() == evidence[1]

    for _, photo in rows.values():
        # Listing images in listing order, original bytes, extension from the stored format.
        assert [path.suffix for path in photo.listing_images] == [".jpg", ".png"]
        assert [path.read_bytes() for path in photo.listing_images] == listing
    assert "rows written: 2;" in export.stderr
    assert "skipped as missing from the store: 0 " in export.stderr
    assert export.stdout.strip() == str(export.manifest)


def test_the_export_feeds_recalibration_of_the_shipped_model(store: Store, tmp_path: Path) -> None:
    """What reviewers export is what `python -m training recalibrate` reads (too few labels to
    refit here: the new card keeps the calibration and counts what it was given)."""
    pytest.importorskip("torch", reason="recalibration is part of the train extra")
    from service.engine import DEFAULT_MODEL_DIR, ScoringEngine
    from training.__main__ import main as training_main

    claim_id, (first, second) = store.claim(
        [image_bytes(1)], [image_bytes(10), image_bytes(11, "WEBP")]
    )
    store.review(
        claim_id,
        0,
        {"photo_id": first, "damage": True, "matches_listing": True},
        {"photo_id": second, "damage": False, "matches_listing": None},
    )
    export = run_export(tmp_path / "out")
    out = tmp_path / "recalibrated"
    training_main(
        [
            "recalibrate",
            "--model-dir",
            str(DEFAULT_MODEL_DIR),
            "--labels",
            str(export.manifest),
            "--out",
            str(out),
            "--version",
            "site-1",
        ]
    )
    report = json.loads((out / "model_card.json").read_text())["recalibration"]
    assert (report["damage"]["labels"], report["mismatch"]["labels"]) == (2, 1)
    assert ScoringEngine.load(out).model_version.endswith("site-1")


def test_missing_photo_bytes_are_skipped_with_a_warning(store: Store, tmp_path: Path) -> None:
    listing = [image_bytes(1), image_bytes(2)]
    claim_id, (kept, lost) = store.claim(listing, [image_bytes(10), image_bytes(11)])
    store.review(
        claim_id, 0, {"photo_id": kept, "damage": True}, {"photo_id": lost, "damage": True}
    )
    lost_listing_image = store.photos.put(listing[1])
    store.photos.path_for(lost).unlink()
    store.photos.path_for(lost_listing_image).unlink()

    export = run_export(tmp_path / "out")

    assert [row["photo_id"] for row in export.rows] == [kept]
    assert [path.read_bytes() for path in export.photos[0].listing_images] == listing[:1]
    assert f"photo {lost} skipped" in export.stderr
    assert f"photo {lost_listing_image} skipped" in export.stderr
    assert (
        "rows written: 1; photos skipped as missing from the store: 2 "
        "(rows left out: 1, listing images left out: 1)"
    ) in export.stderr


def test_rerun_rewrites_the_manifest_and_reuses_the_copies(store: Store, tmp_path: Path) -> None:
    claim_id, (first, second) = store.claim([image_bytes(1)], [image_bytes(10), image_bytes(11)])
    store.review(claim_id, 0, {"photo_id": first, "damage": True})
    out = tmp_path / "out"
    before = run_export(out)
    assert "files copied: 2, reused: 0" in before.stderr

    store.review(
        claim_id, 10, {"photo_id": first, "damage": False}, {"photo_id": second, "damage": True}
    )
    # A copy already in the export is reused even if the store has lost it since.
    store.photos.path_for(first).unlink()
    after = run_export(out)

    assert {photo_id: photo.damage for photo_id, (_, photo) in after.by_photo_id().items()} == {
        first: False,
        second: True,
    }
    assert "rows written: 2;" in after.stderr
    assert "files copied: 1, reused: 2" in after.stderr
    assert sorted(path.name for path in (out / "photos").iterdir()) == sorted(
        [f"{first}.jpg", f"{second}.jpg", photo_filename(store.photos.put(image_bytes(1)), "JPEG")]
    )


def test_since_keeps_recent_labels_merged_with_their_history(store: Store, tmp_path: Path) -> None:
    old_claim, (old_photo,) = store.claim([image_bytes(1)], [image_bytes(10)])
    claim_id, (corrected, untouched) = store.claim(
        [image_bytes(2)], [image_bytes(11), image_bytes(12)]
    )
    store.review(old_claim, 0, {"photo_id": old_photo, "damage": True})
    store.review(
        claim_id,
        0,
        {"photo_id": corrected, "damage": True},
        {"photo_id": untouched, "matches_listing": True},
    )
    store.review(claim_id, 60, {"photo_id": corrected, "matches_listing": False})

    export = run_export(tmp_path / "out", "--since", at(30).isoformat())

    # Only the photo relabelled after --since; its damage label comes from before it.
    assert [(row["photo_id"], row["damage"], row["matches_listing"]) for row in export.rows] == [
        (corrected, "1", "0")
    ]
    assert len(run_export(tmp_path / "all", "--since", "2025-03-01").rows) == 3


def test_no_labels_gives_an_empty_manifest(store: Store, tmp_path: Path) -> None:
    claim_id, _ = store.claim([image_bytes(1)], [image_bytes(10)])
    store.review(claim_id, 0)  # a decision without labels
    export = run_export(tmp_path / "out")
    assert export.rows == [] and export.photos == []
    assert export.manifest.read_text().startswith("photo,damage,matches_listing,listing_images")


def test_bad_arguments_exit_with_2(settings: Settings, tmp_path: Path) -> None:
    runner = CliRunner()
    bad_date = runner.invoke(app, ["labels", "export", str(tmp_path), "--since", "yesterday"])
    assert bad_date.exit_code == 2
    a_file = tmp_path / "file"
    a_file.write_text("")
    not_a_folder = runner.invoke(app, ["labels", "export", str(a_file)])
    assert not_a_folder.exit_code == 2 and "not a folder" in not_a_folder.stderr


# --- the command, on data stored through the real API --------------------------------------------


def test_labels_recorded_through_the_api_are_exported(
    api_server: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(api_server.settings.data_dir))
    monkeypatch.setenv("TRIAGE_DATABASE_URL", api_server.settings.resolved_database_url)
    listing_image = encode(textured_image(seed=1), "JPEG", quality=92)
    evidence = [encode(textured_image(seed=seed), "JPEG", quality=92) for seed in (20, 21)]
    listing_id = f"lst-{uuid.uuid4().hex[:10]}"
    with api_server.client(api_server.keys["admin"]) as admin:
        assert admin.post(
            "/v1/listings", json={"listing_id": listing_id, "title": "Mug"}
        ).is_success
        added = admin.post(
            f"/v1/listings/{listing_id}/images",
            files=[("files", ("listing.jpg", listing_image, "image/jpeg"))],
        )
        assert added.status_code == 201, added.text
    with api_server.client(api_server.keys["buyer"]) as buyer:
        created = buyer.post(
            "/v1/claims",
            json={
                "listing_id": listing_id,
                "order_ref": "ORD-9",
                "reason": "damaged",
                "resolution": "full_refund",
            },
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        assert created.status_code == 201, created.text
        claim_id = created.json()["claim_id"]
        uploaded = buyer.post(
            f"/v1/claims/{claim_id}/evidence",
            files=[("files", (f"p{i}.jpg", data, "image/jpeg")) for i, data in enumerate(evidence)],
        )
        assert uploaded.status_code == 201, uploaded.text
    first, second = (photo["photo_id"] for photo in uploaded.json()["data"])
    with api_server.client(api_server.keys["reviewer"]) as reviewer:
        for body in (
            {
                "decision": "request_more_evidence",
                "labels": [
                    {"photo_id": first, "damage": True, "matches_listing": True},
                    {"photo_id": second, "damage": True},
                ],
            },
            {"decision": "reject", "labels": [{"photo_id": first, "damage": False}]},
        ):
            response = reviewer.post(f"/v1/claims/{claim_id}/reviews", json=body)
            assert response.status_code == 201, response.text

    export = run_export(tmp_path / "out")

    rows = {
        photo_id: photo
        for photo_id, (row, photo) in export.by_photo_id().items()
        if row["claim_id"] == claim_id
    }
    assert {photo_id: (p.damage, p.matches_listing) for photo_id, p in rows.items()} == {
        first: (False, True),
        second: (True, None),
    }
    for photo_id, data in zip((first, second), evidence, strict=True):
        assert rows[photo_id].path.read_bytes() == data
        assert [path.read_bytes() for path in rows[photo_id].listing_images] == [listing_image]
