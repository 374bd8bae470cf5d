"""Shared fixtures. Images are synthesised here, never downloaded."""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy.orm import Session

from service.db import crud
from service.db.models import ClaimPhoto, Photo

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or a skip that says why the test cannot run here."""
    if not (SHARED_DATA / "grocery" / "manifest.csv").is_file():
        pytest.skip(f"real data not available at {SHARED_DATA} (see ../shared/data/README.md)")
    return SHARED_DATA


def textured_image(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    """A sharp, well-exposed synthetic 'product photo': smooth gradients plus shapes and texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            120 + 60 * np.sin(x / (23 + seed % 7)),
            110 + 50 * np.cos(y / (31 + seed % 5)),
            100 + 40 * np.sin((x + y) / 47),
        ],
        axis=-1,
    )
    for _ in range(12):
        cx, cy = rng.integers(0, width), rng.integers(0, height)
        r = rng.integers(min(width, height) // 20, min(width, height) // 5)
        mask = (x - cx) ** 2 + (y - cy) ** 2 < r**2
        base[mask] = rng.integers(20, 235, size=3)
    base += rng.normal(0, 6, base.shape)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str = "JPEG", **save_kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


@pytest.fixture
def sharp_jpeg() -> bytes:
    return encode(textured_image(), "JPEG", quality=92)


def add_bare_photo(
    session: Session,
    photo_id: str,
    *,
    now: datetime,
    image_format: str = "JPEG",
    byte_size: int = 1000,
    size: tuple[int, int] = (640, 480),
    perceptual_hash: str | None = None,
    window_hashes: str | None = None,
) -> Photo:
    """A `photos` row written through crud, without GPS; by default a listing image (no hashes)
    of a 640x480 JPEG that no photo store holds."""
    return crud.get_or_add_photo(
        session,
        photo_id=photo_id,
        image_format=image_format,
        byte_size=byte_size,
        size=size,
        has_gps=False,
        perceptual_hash=perceptual_hash,
        window_hashes=window_hashes,
        now=now,
    )


def add_bare_claim(
    session: Session,
    *,
    owner_key_id: str,
    listing_id: str,
    idempotency_key: str,
    now: datetime,
    opened_at: datetime | None = None,
) -> str:
    """An open "damaged" claim on a stored listing, written through crud; returns its id."""
    claim = crud.create_claim(
        session,
        owner_key_id=owner_key_id,
        listing_id=listing_id,
        order_ref="ORD-1",
        reason="damaged",
        resolution="full_refund",
        description=None,
        amount=None,
        currency=None,
        opened_at=opened_at or now,
        idempotency_key=idempotency_key,
        request_fingerprint="f" * 64,
        now=now,
    )
    session.flush()
    return claim.claim_id


def add_bare_evidence(
    session: Session, claim_id: str, photo_id: str, *, now: datetime
) -> ClaimPhoto:
    """`photo_id` (already stored) as evidence in `claim_id`, written through crud with no
    assessment: no scores, issues, damage map or duplicates."""
    return crud.add_claim_photo(
        session,
        claim_id=claim_id,
        photo_id=photo_id,
        filename=None,
        damage=None,
        mismatch=None,
        match_similarity=None,
        issues=[],
        damage_map=None,
        duplicate_claims=[],
        model_version="test",
        now=now,
    )


# API and database fixtures (tests/api_server.py): `database_url` (SQLite, and PostgreSQL where
# TRIAGE_TEST_POSTGRES_URL is set), `tiny_model_dir`, `api_server` (real uvicorn on a free port).
from api_server import api_server, database_url, tiny_model_dir  # noqa: E402, F401
