"""Uploads in progress, shared by every process: an upload's photos are registered here before it
records them, so an upload of the same photo to another claim through another process (uvicorn
worker, container on the same database) is flagged before its duplicate index has caught up.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from service.db.models import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pending_evidence",
        sa.Column("upload_id", sa.String(40), primary_key=True),
        sa.Column("ref", sa.String(120), primary_key=True),
        sa.Column("window_hashes", sa.Text, nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_pending_evidence_expires_at", "pending_evidence", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_pending_evidence_expires_at", table_name="pending_evidence")
    op.drop_table("pending_evidence")
