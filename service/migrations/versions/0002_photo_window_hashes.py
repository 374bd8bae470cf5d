"""Evidence photos keep the hashes of their crop windows, so cropped copies are found as reuse.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: photos stored earlier have no windows (their originals would have to be decoded
    # again); start-up indexes those under their whole-frame perceptual_hash.
    op.add_column("photos", sa.Column("window_hashes", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("photos", "window_hashes")
