"""`triage demo`: a few dozen generated claims that fill every part of the queue."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.auth import Role
from service.cli import app
from service.config import Settings
from service.db import crud
from service.db.models import Claim, ClaimPhoto
from service.db.session import make_engine, make_session_factory
from service.demo import StoreNotEmpty, populate


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Settings:
    return Settings(data_dir=tmp_path_factory.mktemp("demo"), model_dir=tiny_model_dir)


@pytest.fixture(scope="module")
def demo_result(demo_store: Settings):
    return populate(demo_store)


def test_demo_fills_a_queue_with_every_kind_of_case(
    demo_store: Settings, demo_result: object
) -> None:
    engine = make_engine(demo_store.resolved_database_url)
    try:
        with make_session_factory(engine)() as session:
            claims = session.query(Claim).all()
            photos = session.query(ClaimPhoto).all()
    finally:
        engine.dispose()
    assert 30 <= len(claims) <= 60
    assert len(photos) >= len(claims)
    codes = {issue["code"] for photo in photos for issue in photo.issues}
    assert {"blurry", "too_dark", "duplicate_across_claims", "listing_photo_reuse"} <= codes
    lanes = {claim.lane for claim in claims}
    assert {"suspicious", "needs_review", "needs_more_evidence"} <= lanes
    assert {claim.status for claim in claims} == {"open", "escalated"}
    assert len({claim.priority for claim in claims}) > 5


def test_demo_keys_work_for_their_roles(demo_store: Settings, demo_result: object) -> None:
    engine = make_engine(demo_store.resolved_database_url)
    try:
        with make_session_factory(engine)() as session:
            for attribute, role in (
                ("reviewer_key", Role.reviewer),
                ("buyer_key", Role.buyer),
                ("admin_key", Role.admin),
            ):
                row = crud.find_active_key(session, key=getattr(demo_result, attribute))
                assert row is not None and row.role == role
    finally:
        engine.dispose()


def test_demo_refuses_a_store_that_holds_claims(demo_store: Settings, demo_result: object) -> None:
    with pytest.raises(StoreNotEmpty):
        populate(demo_store)
    result = CliRunner().invoke(
        app,
        ["demo"],
        env={
            "TRIAGE_DATA_DIR": str(demo_store.data_dir),
            "TRIAGE_MODEL_DIR": str(demo_store.model_dir),
        },
    )
    assert result.exit_code == 1
