"""`triage evidence rehash`: evidence stored by an older release, hashed again under every window.

Older releases stored fewer hashes per evidence photo: the whole frame alone before crop windows
were kept, the 12 crop windows before mirror images and quarter turns were. These tests write such
rows as those releases did, then check that the command stores what an upload stores today, that
it carries on after an interruption, and, through the API, that a mirrored copy of an old photo is
found only once it has run.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from api_server import ApiServer, run_api_server
from conftest import add_bare_claim, add_bare_evidence, add_bare_photo, encode, textured_image
from PIL import ImageDraw, ImageOps
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from service.auth import Role
from service.cli import app
from service.db import crud
from service.db.migrate import upgrade_to_head
from service.db.models import ClaimPhoto, Photo
from service.db.session import make_engine, make_session_factory, transaction
from service.duplicates import HASHES_PER_PHOTO, WINDOWS, format_hash, format_hashes, photo_windows
from service.intake import open_photo
from service.rehash import count_short_evidence, rehash_evidence
from service.store import PhotoStore

NOW = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def as_older_release(windows: tuple[int, ...], release: str) -> str | None:
    """The `window_hashes` an older release stored for a photo with these current windows."""
    if release == "whole frame only":
        return None
    return format_hashes(windows[: len(WINDOWS)])  # "crop windows, no flips"


def bare_claim(session: Session) -> str:
    """A claim on a new listing with no images, by a new buyer key; returns its id."""
    key = crud.create_api_key(session, role=Role.buyer, name="buyer", now=NOW)
    crud.create_listing(session, listing_id="lst-old", title="Mug", category=None, now=NOW)
    session.flush()
    owner = crud.find_active_key(session, key=key)
    assert owner is not None
    return add_bare_claim(
        session, owner_key_id=owner.key_id, listing_id="lst-old", idempotency_key="old", now=NOW
    )


@pytest.mark.parametrize("release", ["whole frame only", "crop windows, no flips"])
def test_rehash_stores_what_an_upload_stores_today_and_resumes(
    tmp_path: Path, release: str
) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'triage.db'}")
    upgrade_to_head(engine)
    sessions = make_session_factory(engine)
    store = PhotoStore(tmp_path / "photos")
    originals = [encode(textured_image(seed=seed), "JPEG", quality=90) for seed in range(3)]
    photo_ids = [store.put(data) for data in originals]
    current = {
        photo_id: photo_windows(open_photo(data).image)
        for photo_id, data in zip(photo_ids, originals, strict=True)
    }
    gone = "f" * 64  # evidence whose original has left the store
    with transaction(sessions) as session:
        claim_id = bare_claim(session)
        for photo_id in [*photo_ids, gone]:
            windows = current.get(photo_id, (0,))
            add_bare_photo(
                session,
                photo_id,
                now=NOW,
                perceptual_hash=format_hash(windows[0]),
                window_hashes=as_older_release(windows, release),
            )
            session.flush()
            add_bare_evidence(session, claim_id, photo_id, now=NOW)
        add_bare_photo(session, "e" * 64, now=NOW)  # a listing image: never hashed

    assert count_short_evidence(sessions) == 4

    def interrupt_after_first_batch(done: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rehash_evidence(sessions, store, batch_size=2, advance=interrupt_after_first_batch)
    assert count_short_evidence(sessions) == 2  # the first batch was committed

    summary = rehash_evidence(sessions, store, batch_size=2)
    assert (summary.short, summary.rehashed) == (2, 1)
    assert summary.missing == [gone] and summary.unreadable == []
    with sessions() as session:
        rows = {row.photo_id: row for row in session.scalars(select(Photo))}
    for photo_id, windows in current.items():
        assert rows[photo_id].window_hashes == format_hashes(windows)
        assert len(windows) == HASHES_PER_PHOTO
        assert rows[photo_id].perceptual_hash == format_hash(windows[0])
    assert rows["e" * 64].window_hashes is None and rows["e" * 64].perceptual_hash is None
    # What is left short is only the photo with no original; a second run changes nothing.
    assert count_short_evidence(sessions) == 1
    again = rehash_evidence(sessions, store)
    assert (again.short, again.rehashed, again.missing) == (1, 0, [gone])
    engine.dispose()


def test_a_mirrored_copy_of_older_evidence_is_found_once_rehashed(api_server: ApiServer) -> None:
    from test_api import files, new_claim, new_listing, plain_jpeg

    listing_id = new_listing(api_server, plain_jpeg(seed=201))
    original = textured_image(seed=202)
    ImageDraw.Draw(original).rectangle((60, 60, 300, 260), fill=(200, 30, 30))
    claim_id = new_claim(api_server, listing_id)
    with api_server.client(api_server.keys["buyer"]) as buyer:
        stored = buyer.post(
            f"/v1/claims/{claim_id}/evidence", files=files(encode(original, "JPEG", quality=92))
        )
    assert stored.status_code == 201, stored.text
    photo_id = stored.json()["data"][0]["photo_id"]
    engine = make_engine(api_server.settings.resolved_database_url)
    sessions = make_session_factory(engine)
    with transaction(sessions) as session:
        row = session.get(Photo, photo_id)
        assert row is not None and row.window_hashes is not None
        stored_today = row.window_hashes
        row.window_hashes = format_hashes(
            int(text, 16) for text in stored_today.split()[: len(WINDOWS)]
        )  # as the release before flipped windows stored it
    engine.dispose()
    mirrored = encode(ImageOps.mirror(original), "JPEG", quality=80)

    def found_by_a_fresh_server() -> bool:
        with (
            run_api_server(api_server.settings) as restarted,
            restarted.client(api_server.keys["other_buyer"]) as other,
        ):
            checked = other.post("/v1/evidence/check", files=files(mirrored, field="file"))
        assert checked.status_code == 200, checked.text
        return "duplicate_across_claims" in [i["code"] for i in checked.json()["issues"]]

    assert not found_by_a_fresh_server()
    settings = api_server.settings
    result = CliRunner().invoke(
        app,
        ["evidence", "rehash"],
        env={
            "TRIAGE_DATA_DIR": str(settings.data_dir),
            "TRIAGE_DATABASE_URL": settings.resolved_database_url,
        },
    )
    assert result.exit_code == 0, result.output
    assert "1 of 1 evidence photos hashed again" in result.output
    engine = make_engine(settings.resolved_database_url)
    with make_session_factory(engine)() as session:
        row = session.get(Photo, photo_id)
        assert row is not None and row.window_hashes == stored_today
    engine.dispose()
    assert found_by_a_fresh_server()


def test_rescore_scores_open_evidence_of_an_earlier_model_again(api_server: ApiServer) -> None:
    from test_api import files, new_claim, new_listing, plain_jpeg, red_patch_jpeg

    listing_id = new_listing(api_server, plain_jpeg(seed=211))
    claim_id = new_claim(api_server, listing_id, reason="wrong_item")
    with api_server.client(api_server.keys["buyer"]) as buyer:
        stored = buyer.post(
            f"/v1/claims/{claim_id}/evidence", files=files(red_patch_jpeg(seed=212))
        )
    assert stored.status_code == 201, stored.text
    scored_now = stored.json()["data"][0]
    engine = make_engine(api_server.settings.resolved_database_url)
    sessions = make_session_factory(engine)
    with transaction(sessions) as session:  # as an earlier release left it
        for row in session.scalars(select(ClaimPhoto).where(ClaimPhoto.claim_id == claim_id)):
            row.model_version, row.mismatch, row.damage = "evidence-lite0-0.9.0", 0.999, 0.5
    settings = api_server.settings
    env = {
        "TRIAGE_DATA_DIR": str(settings.data_dir),
        "TRIAGE_DATABASE_URL": settings.resolved_database_url,
        "TRIAGE_MODEL_DIR": str(settings.model_dir),
    }
    record_before = settings.start_up_record_path.read_bytes()
    result = CliRunner().invoke(app, ["evidence", "rescore"], env=env)
    assert result.exit_code == 0, result.output
    # The servers' start-up maintenance (re-triage of every open claim with this command's own
    # settings, cache sweeps) is not run by the command.
    assert settings.start_up_record_path.read_bytes() == record_before
    with sessions() as session:
        [row] = session.scalars(select(ClaimPhoto).where(ClaimPhoto.claim_id == claim_id))
        audit = [event.action for event in crud.audit_trail(session, claim_id=claim_id)]
    engine.dispose()
    assert row.model_version == scored_now["model_version"]
    assert row.mismatch == pytest.approx(scored_now["mismatch"])
    assert row.damage == pytest.approx(scored_now["damage"])
    assert "evidence_rescored" in audit
    # Nothing is left to score again: a second run changes nothing.
    again = CliRunner().invoke(app, ["evidence", "rescore"], env=env)
    assert again.exit_code == 0 and "0 open claims scored again" in again.output


def test_the_rehash_help_names_every_kind_of_window_stored_today() -> None:
    """`triage evidence rehash --help` says what it stores: crops, mirror images, quarter turns
    and, since session 11, tilts; a stale list would let an operator think tilted copies need no
    rehash."""
    result = CliRunner().invoke(app, ["evidence", "rehash", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.replace("│", " ").split())
    for kind in ("crops", "mirror images", "quarter turns", "tilts"):
        assert kind in text, kind
