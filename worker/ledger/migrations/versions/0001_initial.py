"""Initial ledger: tickets, inbox, grants, audit chain, comment outbox.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from worker.ledger.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ZERO = sa.text("0")


def _partial(condition: str) -> dict[str, Any]:
    return {"postgresql_where": sa.text(condition), "sqlite_where": sa.text(condition)}


def upgrade() -> None:
    op.create_table(
        "tickets",
        sa.Column("uid", sa.String(200), primary_key=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("external_id", sa.String(128), nullable=False),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("url", sa.Text),
        sa.Column("last_version", sa.BigInteger, nullable=False, server_default=sa.text("-1")),
        sa.Column("status", sa.String(128)),
        sa.Column("state", sa.String(16)),
        sa.Column("updated_at", UTCDateTime),
        sa.Column("last_seen_at", UTCDateTime),
    )
    op.create_table(
        "inbox",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("delivery_key", sa.String(200), nullable=False),
        sa.Column("ticket_uid", sa.String(200), nullable=False),
        sa.Column("ticket_id", sa.String(128), nullable=False),
        sa.Column("ticket_key", sa.String(128)),
        sa.Column("event_version", sa.BigInteger),
        sa.Column("received_at", UTCDateTime, nullable=False),
        sa.Column("published_at", UTCDateTime),
        sa.Column("processed_at", UTCDateTime),
        sa.Column("outcome", sa.String(64)),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=_ZERO),
    )
    op.create_index("uq_inbox_delivery", "inbox", ["source", "delivery_key"], unique=True)
    op.create_index(
        "ix_inbox_unprocessed", "inbox", ["received_at"], **_partial("processed_at IS NULL")
    )
    op.create_table(
        "grants",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("grant_key", sa.String(64), nullable=False, unique=True),
        sa.Column("ticket_uid", sa.String(200), nullable=False),
        sa.Column("ticket_key", sa.String(128), nullable=False),
        sa.Column("ticket_url", sa.Text),
        sa.Column("policy", sa.String(64), nullable=False),
        sa.Column("policy_digest", sa.String(80), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("principal", sa.String(128), nullable=False),
        sa.Column("approval_ref", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("approver", sa.Text),
        sa.Column("requester", sa.Text),
        sa.Column("starts_at", UTCDateTime, nullable=False),
        sa.Column("expires_at", UTCDateTime, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("granted_at", UTCDateTime),
        sa.Column("revoke_requested_at", UTCDateTime),
        sa.Column("revoked_at", UTCDateTime),
        sa.Column("revoke_reason", sa.String(32)),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=_ZERO),
        sa.Column("next_attempt_at", UTCDateTime),
        sa.Column("last_error", sa.String(200)),
        sa.Column("delivery_id", sa.String(200)),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_grants_ticket", "grants", ["ticket_uid"])
    op.create_index(
        "ix_grants_active_expiry", "grants", ["expires_at"], **_partial("state = 'active'")
    )
    op.create_index(
        "ix_grants_in_flight",
        "grants",
        ["next_attempt_at"],
        **_partial("state IN ('pending', 'revoking', 'revoke_failed')"),
    )
    op.create_index("ix_grants_membership", "grants", ["target", "role", "principal"])
    op.create_table(
        "audit_events",
        sa.Column(
            "seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True
        ),
        sa.Column("event_key", sa.String(255), nullable=False, unique=True),
        sa.Column("ts", UTCDateTime, nullable=False),
        sa.Column("event", sa.String(40), nullable=False),
        sa.Column("ticket_uid", sa.String(200)),
        sa.Column("grant_id", sa.String(36)),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_ticket", "audit_events", ["ticket_uid"])
    op.create_index("ix_audit_ts", "audit_events", ["ts"])
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.execute(sa.text("INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '" + "0" * 64 + "')"))
    op.create_table(
        "comments",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("marker", sa.String(200), nullable=False, unique=True),
        sa.Column("ticket_uid", sa.String(200), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("ticket_id", sa.String(128), nullable=False),
        sa.Column("ticket_key", sa.String(128), nullable=False),
        sa.Column("ticket_url", sa.Text),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("posted_at", UTCDateTime),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=_ZERO),
        sa.Column("last_error", sa.String(200)),
    )
    op.create_index(
        "ix_comments_unposted", "comments", ["created_at"], **_partial("posted_at IS NULL")
    )


def downgrade() -> None:
    for table in ("comments", "audit_head", "audit_events", "grants", "inbox", "tickets"):
        op.drop_table(table)
