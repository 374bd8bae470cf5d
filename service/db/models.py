"""Tables. Alembic migrations in service/migrations are the source of truth for the schema;
these classes mirror them (a test checks that the two agree)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class ApiKey(Base):
    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    display_prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class Photo(Base):
    """One stored original (content-addressed); shared by listings and claims."""

    __tablename__ = "photos"

    photo_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    format: Mapped[str] = mapped_column(String(8))
    byte_size: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    has_gps: Mapped[bool]
    # Set for evidence photos (the duplicate index is rebuilt from them); None for listing images.
    perceptual_hash: Mapped[str | None] = mapped_column(String(64))
    # The hashes of every `photo_windows` window, so cropped copies are found too; None for
    # evidence stored before they were kept (indexed under `perceptual_hash` alone).
    window_hashes: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]


class Listing(Base):
    __tablename__ = "listings"

    listing_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(String(300))
    category: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime]


class ListingImage(Base):
    __tablename__ = "listing_images"

    listing_id: Mapped[str] = mapped_column(ForeignKey("listings.listing_id"), primary_key=True)
    photo_id: Mapped[str] = mapped_column(ForeignKey("photos.photo_id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]


class Claim(Base):
    __tablename__ = "claims"
    __table_args__ = (
        UniqueConstraint("owner_key_id", "idempotency_key", name="uq_claims_owner_idempotency"),
        Index("ix_claims_queue", "status", "priority", "opened_at"),
        Index("ix_claims_owner_created", "owner_key_id", "created_at"),
        Index("ix_claims_stale", "status", "triaged_at"),
    )

    claim_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.key_id"))
    listing_id: Mapped[str] = mapped_column(ForeignKey("listings.listing_id"))
    order_ref: Mapped[str] = mapped_column(String(100))
    reason: Mapped[str] = mapped_column(String(32))
    resolution: Mapped[str] = mapped_column(String(32))
    description: Mapped[str | None] = mapped_column(Text)
    amount: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    currency: Mapped[str | None] = mapped_column(String(3))
    opened_at: Mapped[datetime]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(32))
    escalated_at: Mapped[datetime | None]
    decision: Mapped[str | None] = mapped_column(String(32))
    decided_at: Mapped[datetime | None]
    idempotency_key: Mapped[str] = mapped_column(String(200))
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    # Triage, recomputed on every change and refreshed when older than the refresh interval.
    support: Mapped[float | None] = mapped_column(Float)
    sufficiency: Mapped[str] = mapped_column(String(16))
    lane: Mapped[str] = mapped_column(String(32))
    priority: Mapped[int] = mapped_column(Integer)
    reasons: Mapped[list[Any]]
    triaged_at: Mapped[datetime]


class ClaimPhoto(Base):
    """A photo as evidence in one claim, with its assessment at upload time."""

    __tablename__ = "claim_photos"

    claim_id: Mapped[str] = mapped_column(ForeignKey("claims.claim_id"), primary_key=True)
    photo_id: Mapped[str] = mapped_column(ForeignKey("photos.photo_id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str | None] = mapped_column(String(300))
    damage: Mapped[float | None] = mapped_column(Float)
    mismatch: Mapped[float | None] = mapped_column(Float)
    match_similarity: Mapped[float | None] = mapped_column(Float)
    issues: Mapped[list[Any]]
    damage_map: Mapped[list[Any] | None]
    # Other claims whose photos this one (nearly) duplicates, found at upload time.
    duplicate_claims: Mapped[list[Any]]
    model_version: Mapped[str] = mapped_column(String(64))
    # Indexed: each process reads the evidence committed since it last looked (duplicate index).
    created_at: Mapped[datetime] = mapped_column(index=True)


class PendingEvidence(Base):
    """A photo of an upload being recorded, or recorded moments ago, as duplicate look-ups in
    every process see it before their index has caught up (`Runtime.register_pending_evidence`).
    Short-lived: each row is deleted once `expires_at` has passed."""

    __tablename__ = "pending_evidence"

    # Per upload, not per ref: two uploads of one photo to one claim may both be in progress,
    # and a failed one deletes its own rows only.
    upload_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    ref: Mapped[str] = mapped_column(String(120), primary_key=True)  # `evidence_ref`
    window_hashes: Mapped[str] = mapped_column(Text)  # `format_hashes` of the photo's windows
    # Indexed: every look-up reads the rows not expired, and every upload purges the others.
    expires_at: Mapped[datetime] = mapped_column(index=True)


class Review(Base):
    __tablename__ = "reviews"

    review_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    claim_id: Mapped[str] = mapped_column(ForeignKey("claims.claim_id"), index=True)
    reviewer_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.key_id"))
    decision: Mapped[str] = mapped_column(String(32))
    amount: Mapped[Decimal | None] = mapped_column(Numeric(12, 2))
    notes: Mapped[str | None] = mapped_column(Text)
    labels: Mapped[list[Any]]
    created_at: Mapped[datetime]


class AuditEvent(Base):
    """Append-only: database triggers refuse UPDATE and DELETE (see the initial migration)."""

    __tablename__ = "audit_events"

    event_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    claim_id: Mapped[str | None] = mapped_column(String(40), index=True)
    listing_id: Mapped[str | None] = mapped_column(String(64))
    actor_key_id: Mapped[str | None] = mapped_column(String(40))
    actor_role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(40))
    detail: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
