"""Ledger tables. The ledger, not the broker, is the truth about every grant.

Changes here need a migration in ``worker/ledger/migrations/versions``; a test
compares the migrated database with this metadata.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)

__all__ = [
    "GRANT_STATES",
    "LIVE_STATES",
    "UTCDateTime",
    "audit_events",
    "audit_head",
    "comments",
    "drift_findings",
    "grants",
    "inbox",
    "metadata",
    "poll_state",
    "tickets",
]

GRANT_STATES = ("pending", "active", "revoking", "revoked", "grant_failed", "revoke_failed")
# States in which a grant still holds, or may still hold, access on its target.
LIVE_STATES = ("pending", "active", "revoking", "revoke_failed")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on PostgreSQL and on SQLite (which has no zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        parsed: datetime = datetime.fromisoformat(value) if isinstance(value, str) else value
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)


metadata = MetaData()

tickets = Table(
    "tickets",
    metadata,
    Column("uid", String(200), primary_key=True),
    Column("source", String(32), nullable=False),
    Column("external_id", String(128), nullable=False),
    Column("key", String(128), nullable=False),
    Column("url", Text),
    Column("last_version", BigInteger, nullable=False, server_default=text("-1")),
    Column("status", String(128)),
    Column("state", String(16)),
    Column("updated_at", UTCDateTime),
    Column("last_seen_at", UTCDateTime),
)

inbox = Table(
    "inbox",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("source", String(32), nullable=False),
    Column("delivery_key", String(200), nullable=False),
    Column("ticket_uid", String(200), nullable=False),
    Column("ticket_id", String(128), nullable=False),
    Column("ticket_key", String(128)),
    Column("event_version", BigInteger),
    Column("received_at", UTCDateTime, nullable=False),
    Column("published_at", UTCDateTime),
    Column("processed_at", UTCDateTime),
    Column("outcome", String(64)),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", UTCDateTime),
    Column("last_error", String(200)),
    Index("uq_inbox_delivery", "source", "delivery_key", unique=True),
    # Unfinished deliveries only: the re-drive sweep must not walk the history.
    Index(
        "ix_inbox_unprocessed",
        "received_at",
        postgresql_where=text("processed_at IS NULL"),
        sqlite_where=text("processed_at IS NULL"),
    ),
)

grants = Table(
    "grants",
    metadata,
    Column("id", String(36), primary_key=True),
    # sha256 of (ticket, policy, target, role, principal, approval): one grant per approval.
    Column("grant_key", String(64), nullable=False, unique=True),
    Column("ticket_uid", String(200), nullable=False),
    Column("ticket_key", String(128), nullable=False),
    Column("ticket_url", Text),
    Column("policy", String(64), nullable=False),
    Column("policy_digest", String(80), nullable=False),
    Column("target", String(64), nullable=False),
    Column("role", String(64), nullable=False),
    Column("principal", String(128), nullable=False),
    Column("approval_ref", String(128), nullable=False),
    Column("state", String(16), nullable=False),
    Column("approver", Text),
    Column("requester", Text),
    Column("starts_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("granted_at", UTCDateTime),
    Column("revoke_requested_at", UTCDateTime),
    Column("revoked_at", UTCDateTime),
    Column("revoke_reason", String(32)),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("next_attempt_at", UTCDateTime),
    Column("last_error", String(200)),
    Column("delivery_id", String(200)),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("revoke_note", String(500)),
    Column("request_digest", String(64)),
    Column("cap_note", String(500)),
    Index("ix_grants_ticket", "ticket_uid"),
    # Only live grants are indexed, so the expiry sweep costs what is due, not what exists.
    Index(
        "ix_grants_active_expiry",
        "expires_at",
        postgresql_where=text("state = 'active'"),
        sqlite_where=text("state = 'active'"),
    ),
    Index(
        "ix_grants_in_flight",
        "next_attempt_at",
        postgresql_where=text("state IN ('pending', 'revoking', 'revoke_failed')"),
        sqlite_where=text("state IN ('pending', 'revoking', 'revoke_failed')"),
    ),
    Index("ix_grants_membership", "target", "role", "principal"),
    # "Does this principal hold anything else on the target?" (session termination on
    # revoke): principal first, since one target can hold most of the grants.
    Index(
        "ix_grants_principal_live",
        "principal",
        "target",
        postgresql_where=text("state IN ('pending', 'active')"),
        sqlite_where=text("state IN ('pending', 'active')"),
    ),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("event_key", String(255), nullable=False, unique=True),
    Column("ts", UTCDateTime, nullable=False),
    Column("event", String(40), nullable=False),
    Column("ticket_uid", String(200)),
    Column("grant_id", String(36)),
    Column("payload", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_ticket", "ticket_uid"),
    Index("ix_audit_ts", "ts"),
)

# One row. Appends lock it, so the hash chain has exactly one successor per link.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

comments = Table(
    "comments",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("marker", String(200), nullable=False, unique=True),
    Column("ticket_uid", String(200), nullable=False),
    Column("source", String(32), nullable=False),
    Column("ticket_id", String(128), nullable=False),
    Column("ticket_key", String(128), nullable=False),
    Column("ticket_url", Text),
    Column("body", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("posted_at", UTCDateTime),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("last_error", String(200)),
    Column("next_attempt_at", UTCDateTime),
    # Set when the source refused it for good (ticket deleted, no permission).
    Column("failed_at", UTCDateTime),
    Index(
        "ix_comments_unposted",
        "created_at",
        postgresql_where=text("posted_at IS NULL"),
        sqlite_where=text("posted_at IS NULL"),
    ),
)

# Source polling: how far each ticket source has been read (the lost-webhook net).
poll_state = Table(
    "poll_state",
    metadata,
    Column("source", String(32), primary_key=True),
    Column("watermark", UTCDateTime),
    Column("last_poll_at", UTCDateTime),
    Column("last_error", String(200)),
    # A poller holds the source until then, so two beats never poll it at once.
    Column("lease_until", UTCDateTime),
)

# Differences between targets and the ledger, open until they disappear.
drift_findings = Table(
    "drift_findings",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("target", String(64), nullable=False),
    Column("role", String(64), nullable=False),
    Column("principal", String(128), nullable=False),
    Column("kind", String(16), nullable=False),  # unmanaged | missing
    Column("grant_id", String(36)),
    Column("action", String(16), nullable=False),  # reported | revoked | reapplied | closed
    Column("first_seen", UTCDateTime, nullable=False),
    Column("last_seen", UTCDateTime, nullable=False),
    Column("resolved_at", UTCDateTime),
    Index(
        "uq_drift_open",
        "target",
        "role",
        "principal",
        "kind",
        unique=True,
        postgresql_where=text("resolved_at IS NULL"),
        sqlite_where=text("resolved_at IS NULL"),
    ),
)
