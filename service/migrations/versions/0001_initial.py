"""Initial schema: keys, photos, listings, claims, evidence, reviews, append-only audit log.

Revision ID: 0001
Revises:
Create Date: 2025-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.db.models import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_APPEND_ONLY_SQLITE = """
CREATE TRIGGER audit_events_no_{verb} BEFORE {verb} ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END
"""
_APPEND_ONLY_POSTGRES_FUNCTION = """
CREATE FUNCTION audit_events_append_only() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'audit_events is append-only'; END
$$ LANGUAGE plpgsql
"""
_APPEND_ONLY_POSTGRES_TRIGGER = """
CREATE TRIGGER audit_events_no_update_delete BEFORE UPDATE OR DELETE ON audit_events
FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()
"""


def _when() -> UTCDateTime:
    return UTCDateTime()


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("display_prefix", sa.String(16), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("revoked_at", _when(), nullable=True),
    )
    op.create_table(
        "photos",
        sa.Column("photo_id", sa.String(64), primary_key=True),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("byte_size", sa.Integer, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("has_gps", sa.Boolean, nullable=False),
        sa.Column("perceptual_hash", sa.String(64), nullable=True),
        sa.Column("created_at", _when(), nullable=False),
    )
    op.create_table(
        "listings",
        sa.Column("listing_id", sa.String(64), primary_key=True),
        sa.Column("title", sa.String(300), nullable=False),
        sa.Column("category", sa.String(100), nullable=True),
        sa.Column("created_at", _when(), nullable=False),
    )
    op.create_table(
        "listing_images",
        sa.Column(
            "listing_id", sa.String(64), sa.ForeignKey("listings.listing_id"), primary_key=True
        ),
        sa.Column("photo_id", sa.String(64), sa.ForeignKey("photos.photo_id"), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("created_at", _when(), nullable=False),
    )
    op.create_table(
        "claims",
        sa.Column("claim_id", sa.String(40), primary_key=True),
        sa.Column("owner_key_id", sa.String(40), sa.ForeignKey("api_keys.key_id"), nullable=False),
        sa.Column(
            "listing_id", sa.String(64), sa.ForeignKey("listings.listing_id"), nullable=False
        ),
        sa.Column("order_ref", sa.String(100), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("resolution", sa.String(32), nullable=False),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("amount", sa.Numeric(12, 2), nullable=True),
        sa.Column("currency", sa.String(3), nullable=True),
        sa.Column("opened_at", _when(), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
        sa.Column("updated_at", _when(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("escalated_at", _when(), nullable=True),
        sa.Column("decision", sa.String(32), nullable=True),
        sa.Column("decided_at", _when(), nullable=True),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("request_fingerprint", sa.String(64), nullable=False),
        sa.Column("support", sa.Float, nullable=True),
        sa.Column("sufficiency", sa.String(16), nullable=False),
        sa.Column("lane", sa.String(32), nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("reasons", sa.JSON, nullable=False),
        sa.Column("triaged_at", _when(), nullable=False),
        sa.UniqueConstraint("owner_key_id", "idempotency_key", name="uq_claims_owner_idempotency"),
    )
    op.create_index("ix_claims_queue", "claims", ["status", "priority", "opened_at"])
    op.create_index("ix_claims_owner_created", "claims", ["owner_key_id", "created_at"])
    op.create_table(
        "claim_photos",
        sa.Column("claim_id", sa.String(40), sa.ForeignKey("claims.claim_id"), primary_key=True),
        sa.Column("photo_id", sa.String(64), sa.ForeignKey("photos.photo_id"), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("filename", sa.String(300), nullable=True),
        sa.Column("damage", sa.Float, nullable=True),
        sa.Column("mismatch", sa.Float, nullable=True),
        sa.Column("match_similarity", sa.Float, nullable=True),
        sa.Column("issues", sa.JSON, nullable=False),
        sa.Column("damage_map", sa.JSON, nullable=True),
        sa.Column("duplicate_claims", sa.JSON, nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("created_at", _when(), nullable=False),
    )
    op.create_table(
        "reviews",
        sa.Column("review_id", sa.String(40), primary_key=True),
        sa.Column("claim_id", sa.String(40), sa.ForeignKey("claims.claim_id"), nullable=False),
        sa.Column(
            "reviewer_key_id", sa.String(40), sa.ForeignKey("api_keys.key_id"), nullable=False
        ),
        sa.Column("decision", sa.String(32), nullable=False),
        sa.Column("amount", sa.Numeric(12, 2), nullable=True),
        sa.Column("notes", sa.Text, nullable=True),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("created_at", _when(), nullable=False),
    )
    op.create_index("ix_reviews_claim_id", "reviews", ["claim_id"])
    op.create_table(
        "audit_events",
        sa.Column("event_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("claim_id", sa.String(40), nullable=True),
        sa.Column("listing_id", sa.String(64), nullable=True),
        sa.Column("actor_key_id", sa.String(40), nullable=True),
        sa.Column("actor_role", sa.String(16), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.Column("created_at", _when(), nullable=False),
    )
    op.create_index("ix_audit_events_claim_id", "audit_events", ["claim_id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_APPEND_ONLY_POSTGRES_FUNCTION)
        op.execute(_APPEND_ONLY_POSTGRES_TRIGGER)
    else:
        op.execute(_APPEND_ONLY_SQLITE.format(verb="UPDATE"))
        op.execute(_APPEND_ONLY_SQLITE.format(verb="DELETE"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_events_no_update_delete ON audit_events")
        op.execute("DROP FUNCTION audit_events_append_only()")
    for table in (
        "audit_events",
        "reviews",
        "claim_photos",
        "claims",
        "listing_images",
        "listings",
        "photos",
        "api_keys",
    ):
        op.drop_table(table)
