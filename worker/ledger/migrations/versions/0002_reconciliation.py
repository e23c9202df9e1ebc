"""Reconciliation: source poll watermarks, drift findings, manual revoke notes.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from worker.ledger.schema import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("grants") as batch:
        batch.add_column(sa.Column("revoke_note", sa.String(500)))
    op.create_table(
        "poll_state",
        sa.Column("source", sa.String(32), primary_key=True),
        sa.Column("watermark", UTCDateTime),
        sa.Column("last_poll_at", UTCDateTime),
        sa.Column("last_error", sa.String(200)),
        sa.Column("lease_until", UTCDateTime),
    )
    op.create_table(
        "drift_findings",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("principal", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("grant_id", sa.String(36)),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("first_seen", UTCDateTime, nullable=False),
        sa.Column("last_seen", UTCDateTime, nullable=False),
        sa.Column("resolved_at", UTCDateTime),
    )
    where = sa.text("resolved_at IS NULL")
    op.create_index(
        "uq_drift_open",
        "drift_findings",
        ["target", "role", "principal", "kind"],
        unique=True,
        postgresql_where=where,
        sqlite_where=where,
    )


def downgrade() -> None:
    op.drop_table("drift_findings")
    op.drop_table("poll_state")
    with op.batch_alter_table("grants") as batch:
        batch.drop_column("revoke_note")
