"""Keyword-only data access for the ledger. Callers own the transaction."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, Table, and_, bindparam, or_, select, tuple_, update

from connectors.base import TicketRef, TicketSnapshot
from policies.engine import LedgerGrant
from worker.ledger.db import Ledger, insert_unless_present
from worker.ledger.schema import comments, grants, inbox, tickets

__all__ = [
    "add_comment",
    "grant_key",
    "lock_grant",
    "lock_ticket",
    "record_delivery",
]


def record_delivery(
    ledger: Ledger,
    *,
    source: str,
    delivery_key: str,
    ticket_id: str,
    ticket_key: str | None,
    event_version: int | None,
    now: datetime,
) -> tuple[str, bool]:
    """Store a verified delivery in the inbox. Returns (inbox id, is_duplicate)."""
    with ledger.tx() as conn:
        return record_deliveries(conn, [{
            "source": source, "delivery_key": delivery_key, "ticket_id": ticket_id,
            "ticket_key": ticket_key, "event_version": event_version,
        }], now=now)[0]


def record_deliveries(conn: Connection, items: Sequence[dict[str, Any]], *,
                      now: datetime) -> list[tuple[str, bool]]:
    """``record_delivery`` for many, in the caller's transaction (the listener's group
    commit). Items carry source, delivery_key, ticket_id, ticket_key, event_version;
    answers (inbox id, is_duplicate) in order. One insert that skips known keys, one
    select for the ids of those it skipped."""
    rows = [
        {"id": str(uuid.uuid4()), "source": item["source"],
         "delivery_key": item["delivery_key"][:200],
         "ticket_uid": f"{item['source']}:{item['ticket_id']}", "ticket_id": item["ticket_id"],
         "ticket_key": item["ticket_key"], "event_version": item["event_version"],
         "received_at": now}
        for item in items
    ]
    if not rows:
        return []
    stored = set(conn.execute(
        insert_unless_present(conn, inbox, ["source", "delivery_key"]).values(rows)
        .returning(inbox.c.id)
    ).scalars())
    missing = {(r["source"], r["delivery_key"]) for r in rows if r["id"] not in stored}
    known: dict[tuple[str, str], str] = {}
    if missing:
        known = {
            (str(source), str(key)): str(inbox_id)
            for inbox_id, source, key in conn.execute(
                select(inbox.c.id, inbox.c.source, inbox.c.delivery_key)
                .where(tuple_(inbox.c.source, inbox.c.delivery_key).in_(sorted(missing)))
            )
        }
    return [(row["id"], False) if row["id"] in stored
            else (known[(row["source"], row["delivery_key"])], True) for row in rows]


def load_delivery(conn: Connection, inbox_id: str) -> Row[Any] | None:
    return conn.execute(select(inbox).where(inbox.c.id == inbox_id)).first()


def delivery_attempts(conn: Connection, inbox_id: str) -> int:
    value = conn.execute(select(inbox.c.attempts).where(inbox.c.id == inbox_id)).scalar()
    return int(value or 0)


def defer_delivery(conn: Connection, inbox_id: str, *, attempts: int, error: str,
                   retry_at: datetime) -> None:
    conn.execute(
        update(inbox)
        .where(inbox.c.id == inbox_id, inbox.c.processed_at.is_(None))
        .values(attempts=attempts, last_error=error, next_attempt_at=retry_at)
    )


def finish_delivery(conn: Connection, inbox_id: str, *, outcome: str, now: datetime) -> None:
    conn.execute(
        update(inbox)
        .where(inbox.c.id == inbox_id)
        .values(processed_at=now, outcome=outcome, attempts=inbox.c.attempts + 1)
    )


def ticket_version(conn: Connection, uid: str) -> int:
    value = conn.execute(select(tickets.c.last_version).where(tickets.c.uid == uid)).scalar()
    return int(value) if value is not None else -1


def lock_ticket(ledger: Ledger, conn: Connection, ref: TicketRef) -> int:
    """Lock the ticket's row (creating it) so one worker at a time decides for it.
    Returns the last version acted upon."""
    stmt = select(tickets.c.last_version).where(tickets.c.uid == ref.uid)
    if ledger.is_postgres:
        stmt = stmt.with_for_update()
    value = conn.execute(stmt).scalar()
    if value is not None:
        return int(value)
    # Created unless a concurrent worker did; the SELECT then waits for its lock.
    _insert_new(conn, tickets, {"uid": ref.uid, "source": ref.source, "external_id": ref.id,
                                "key": ref.key, "url": ref.url}, ["uid"])
    return int(conn.execute(stmt).scalar_one())


def save_ticket(conn: Connection, snapshot: TicketSnapshot, *, now: datetime) -> None:
    conn.execute(
        update(tickets)
        .where(tickets.c.uid == snapshot.ref.uid)
        .values(
            key=snapshot.ref.key,
            url=snapshot.ref.url,
            last_version=snapshot.version,
            status=snapshot.status,
            state=snapshot.state,
            updated_at=snapshot.updated_at,
            last_seen_at=now,
        )
    )


def ticket_grants(conn: Connection, uid: str) -> list[LedgerGrant]:
    rows = conn.execute(select(grants).where(grants.c.ticket_uid == uid)).all()
    return [
        LedgerGrant(
            grant_id=r.id,
            policy=r.policy,
            target=r.target,
            role=r.role,
            principal=r.principal,
            approval_ref=r.approval_ref,
            state=r.state,
            request_digest=r.request_digest,
        )
        for r in rows
    ]


def principal_load(conn: Connection, pairs: set[tuple[str, str]], *, ticket_uid: str
                   ) -> dict[str, int]:
    """Live grants per (policy, principal) held through other tickets."""
    out: dict[str, int] = {}
    for policy, principal in pairs:
        count = len(conn.execute(
            select(grants.c.ticket_uid).where(
                grants.c.policy == policy,
                grants.c.principal == principal,
                grants.c.ticket_uid != ticket_uid,
                grants.c.state.in_(("pending", "active")),
            ).distinct()
        ).all())
        out[f"{policy}\x1f{principal}"] = count
    return out


def grant_key(*, ticket_uid: str, policy: str, target: str, role: str, principal: str,
              approval_ref: str) -> str:
    raw = "\x1f".join((ticket_uid, policy, target, role, principal, approval_ref))
    return hashlib.sha256(raw.encode()).hexdigest()


def _insert_new(conn: Connection, table: Table, values: dict[str, Any],
                conflict: list[str]) -> bool:
    """INSERT unless a row with the same ``conflict`` key exists; True when inserted.
    One statement, where a savepoint around a plain INSERT costs three round trips."""
    inserted = conn.execute(
        insert_unless_present(conn, table, conflict).values(**values)
        .returning(table.c[conflict[0]])
    ).first()
    return inserted is not None


def insert_grant(conn: Connection, values: dict[str, Any]) -> bool:
    """Insert a pending grant; False when the same grant key exists already."""
    return _insert_new(conn, grants, values, ["grant_key"])


def request_revoke(
    conn: Connection, grant_id: str, *, reason: str, now: datetime, retry_at: datetime
) -> bool:
    """Move a live grant to ``revoking``; False if it was not live."""
    result = conn.execute(
        update(grants)
        .where(
            grants.c.id == grant_id,
            grants.c.state.in_(("pending", "active")),
        )
        .values(
            state="revoking",
            revoke_reason=reason,
            revoke_requested_at=now,
            attempts=0,
            next_attempt_at=retry_at,
            updated_at=now,
        )
    )
    return bool(result.rowcount)


def lock_grant(ledger: Ledger, conn: Connection, grant_id: str) -> Row[Any] | None:
    stmt = select(grants).where(grants.c.id == grant_id)
    if ledger.is_postgres:
        stmt = stmt.with_for_update()
    return conn.execute(stmt).first()


def set_grant(conn: Connection, grant_id: str, **values: Any) -> None:
    conn.execute(update(grants).where(grants.c.id == grant_id).values(**values))


def shared_holders(conn: Connection, row: Row[Any]) -> int:
    """Other grants that still need the same membership (reference counting)."""
    return len(
        conn.execute(
            select(grants.c.id).where(
                grants.c.target == row.target,
                grants.c.role == row.role,
                grants.c.principal == row.principal,
                grants.c.id != row.id,
                grants.c.state == "active",
            )
        ).all()
    )


def active_memberships(conn: Connection, rows: Sequence[Row[Any]]
                       ) -> set[tuple[str, str, str]]:
    """``shared_holders`` for a batch: the (target, role, principal) memberships among
    ``rows`` that some active grant still needs."""
    triples = sorted({(r.target, r.role, r.principal) for r in rows})
    if not triples:
        return set()
    found = conn.execute(
        select(grants.c.target, grants.c.role, grants.c.principal).where(
            grants.c.state == "active",
            grants.c.id.not_in([r.id for r in rows]),
            tuple_(grants.c.target, grants.c.role, grants.c.principal).in_(triples),
        )
    ).all()
    return {(str(t), str(r), str(p)) for t, r, p in found}


def live_principals_on_targets(conn: Connection, rows: Sequence[Row[Any]]
                               ) -> set[tuple[str, str]]:
    """``other_live_grants_on_target`` for a batch of grants being revoked."""
    pairs = sorted({(r.target, r.principal) for r in rows})
    if not pairs:
        return set()
    found = conn.execute(
        select(grants.c.target, grants.c.principal).distinct().where(
            grants.c.state.in_(("pending", "active")),
            grants.c.id.not_in([r.id for r in rows]),
            tuple_(grants.c.target, grants.c.principal).in_(pairs),
        )
    ).all()
    return {(str(t), str(p)) for t, p in found}


def mark_revoked(conn: Connection, items: Sequence[dict[str, Any]], *, now: datetime) -> None:
    """Set many grants ``revoked`` in one executemany; items carry ``gid``, ``reason``
    and ``requested`` (when the revocation was asked for)."""
    if not items:
        return
    conn.execute(
        update(grants)
        .where(grants.c.id == bindparam("gid"))
        .values(state="revoked", revoked_at=now, revoke_reason=bindparam("reason"),
                revoke_requested_at=bindparam("requested"), last_error=None,
                next_attempt_at=None, updated_at=now),
        [dict(item) for item in items],
    )


def add_comments(conn: Connection, items: Sequence[tuple[TicketRef, str, str]], *,
                 now: datetime) -> list[str]:
    """Queue comments (ref, marker, body) in the outbox, in one statement; a marker
    queued before is skipped. Returns the ids of the new ones, in order."""
    rows: list[dict[str, Any]] = [{"id": str(uuid.uuid4()), "marker": marker, "ticket_uid": ref.uid,
             "source": ref.source, "ticket_id": ref.id, "ticket_key": ref.key,
             "ticket_url": ref.url, "body": body, "created_at": now}
            for ref, marker, body in items]
    if not rows:
        return []
    new = set(conn.execute(
        insert_unless_present(conn, comments, ["marker"]).values(rows).returning(comments.c.id)
    ).scalars())
    return [str(row["id"]) for row in rows if row["id"] in new]


def approval_siblings(conn: Connection, row: Row[Any]) -> list[str]:
    """Other live grants made for the same ticket, policy and approval."""
    return list(
        conn.execute(
            select(grants.c.id).where(
                grants.c.ticket_uid == row.ticket_uid,
                grants.c.policy == row.policy,
                grants.c.approval_ref == row.approval_ref,
                grants.c.id != row.id,
                grants.c.state.in_(("pending", "active")),
            )
        ).scalars()
    )


def other_live_grants_on_target(conn: Connection, row: Row[Any]) -> bool:
    """Does the principal hold anything else (any role) on this target?"""
    return (
        conn.execute(
            select(grants.c.id).where(
                grants.c.target == row.target,
                grants.c.principal == row.principal,
                grants.c.id != row.id,
                grants.c.state.in_(("pending", "active")),
            ).limit(1)
        ).first()
        is not None
    )


def latest_expiry(conn: Connection, row: Row[Any]) -> datetime:
    """The furthest expiry among the principal's live grants on a target, so a
    login's VALID UNTIL is never cut short by a shorter, newer grant."""
    values = conn.execute(
        select(grants.c.expires_at).where(
            grants.c.target == row.target,
            grants.c.principal == row.principal,
            grants.c.state.in_(("pending", "active")),
        )
    ).scalars().all()
    latest: datetime = max([row.expires_at, *values])
    return latest


def add_comment(
    conn: Connection, *, ref: TicketRef, marker: str, body: str, now: datetime
) -> str | None:
    added = add_comments(conn, [(ref, marker, body)], now=now)
    return added[0] if added else None


def due_work(conn: Connection, *, now: datetime, stuck_after: timedelta,
             limit: int) -> Sequence[str]:
    """Grants whose pending/revoking work is due again: retries whose time has come
    and work orphaned by a dead worker or a flushed broker."""
    stuck = now - stuck_after
    rows = conn.execute(
        select(grants.c.id)
        .where(
            grants.c.state.in_(("pending", "revoking", "revoke_failed")),
            or_(
                # Not tried yet: due at its time (a window opening, or an inline attempt
                # that a dead worker never made).
                and_(
                    grants.c.attempts == 0,
                    or_(
                        grants.c.next_attempt_at <= now,
                        and_(grants.c.next_attempt_at.is_(None), grants.c.updated_at <= stuck),
                    ),
                ),
                # Retrying: its own countdown chain runs it; step in only when that chain
                # is overdue (lost with a flushed broker or a killed worker), so a long
                # outage never multiplies retries.
                and_(grants.c.attempts > 0, grants.c.next_attempt_at <= stuck),
            ),
            grants.c.starts_at <= now,
        )
        .order_by(grants.c.next_attempt_at)
        .limit(limit)
    ).scalars()
    return list(rows)
