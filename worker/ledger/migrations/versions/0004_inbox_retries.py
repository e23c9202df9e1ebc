"""Retries of deliveries and comments whose source was unreachable: when each is due
again, and which comments the source refused for good.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from worker.ledger.schema import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbox") as batch:
        batch.add_column(sa.Column("next_attempt_at", UTCDateTime))
        batch.add_column(sa.Column("last_error", sa.String(200)))
    with op.batch_alter_table("comments") as batch:
        batch.add_column(sa.Column("next_attempt_at", UTCDateTime))
        batch.add_column(sa.Column("failed_at", UTCDateTime))


def downgrade() -> None:
    with op.batch_alter_table("comments") as batch:
        batch.drop_column("failed_at")
        batch.drop_column("next_attempt_at")
    with op.batch_alter_table("inbox") as batch:
        batch.drop_column("last_error")
        batch.drop_column("next_attempt_at")
