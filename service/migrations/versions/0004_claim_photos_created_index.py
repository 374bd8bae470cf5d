"""Index evidence by created_at: each process catches up on evidence that other processes (uvicorn
workers, containers on the same database) committed, with a range scan since its last look.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_claim_photos_created_at", "claim_photos", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_claim_photos_created_at", table_name="claim_photos")
