"""Approval integrity: what was approved (digest) and why a window was cut.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("grants") as batch:
        batch.add_column(sa.Column("request_digest", sa.String(64)))
        batch.add_column(sa.Column("cap_note", sa.String(500)))


def downgrade() -> None:
    with op.batch_alter_table("grants") as batch:
        batch.drop_column("cap_note")
        batch.drop_column("request_digest")
