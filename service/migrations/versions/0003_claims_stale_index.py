"""Index claims by (status, triaged_at) for the stale-triage check of queue reads and the
background refresher: a range scan per open status instead of a walk over every open claim.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_claims_stale", "claims", ["status", "triaged_at"])


def downgrade() -> None:
    op.drop_index("ix_claims_stale", table_name="claims")
