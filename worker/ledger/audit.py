"""The audit trail: append-only, hash-chained, written in the state change's transaction.

``hash = sha256(prev_hash || canonical JSON of the event without its hash)``. The
row is the record; the structlog line is emitted from it after the commit, so a log
line never describes a change that was rolled back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Connection, insert, select, update

from worker.ledger.db import Ledger, insert_unless_present
from worker.ledger.schema import audit_events, audit_head

__all__ = ["AUDIT_EVENTS", "AuditObserver", "ChainBreak", "append", "append_many", "canonical",
           "emit", "subscribe", "unsubscribe", "verify_chain"]

AUDIT_EVENTS = frozenset(
    {
        "webhook.rejected",
        "ticket.ignored",
        "grant.denied",
        "grant.issued",
        "grant.extended",
        "grant.failed",
        "grant.revoked",
        "grant.revoke_failed",
        "drift.detected",
    }
)

_audit_log = structlog.get_logger("jitgate.audit")


def canonical(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _hash(prev_hash: str, body: str) -> str:
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def _link(seq: int, prev_hash: str, *, event: str, key: str, ts: datetime,
          fields: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One link of the chain: the ``audit_events`` row and the stored event."""
    if event not in AUDIT_EVENTS:
        raise ValueError(f"unknown audit event {event!r}")
    body: dict[str, Any] = {
        **fields,  # first: a field can never override the chain's own keys
        "seq": seq,
        "ts": ts.isoformat().replace("+00:00", "Z"),
        "event": event,
        "event_key": key,
        "prev_hash": prev_hash,
    }
    text_body = canonical(body)
    digest = _hash(prev_hash, text_body)
    row = {"seq": seq, "event_key": key, "ts": ts, "event": event,
           "ticket_uid": _ticket_uid(fields), "grant_id": fields.get("grant_id"),
           "payload": text_body, "prev_hash": prev_hash, "hash": digest}
    return row, {**body, "hash": digest}


def append(
    ledger: Ledger,
    conn: Connection,
    *,
    event: str,
    key: str,
    ts: datetime,
    fields: Mapping[str, Any],
) -> dict[str, Any] | None:
    """Append one event unless ``key`` was recorded before; returns the stored event.

    Must run inside the transaction that makes the change it describes.
    """
    seq, prev_hash = ledger.lock_audit_head(conn)
    row, stored = _link(seq + 1, prev_hash, event=event, key=key, ts=ts, fields=fields)
    # A key recorded before (a retried task) inserts nothing and leaves the chain as is.
    inserted = conn.execute(
        insert_unless_present(conn, audit_events, ["event_key"]).values(row)
        .returning(audit_events.c.seq)
    ).first()
    if inserted is None:
        return None
    conn.execute(update(audit_head).where(audit_head.c.id == 1)
                 .values(seq=row["seq"], hash=row["hash"]))
    return stored


def append_many(
    ledger: Ledger,
    conn: Connection,
    items: Sequence[tuple[str, str, Mapping[str, Any]]],
    *,
    ts: datetime,
) -> list[dict[str, Any]]:
    """``append`` for many ``(event, key, fields)``: the head is locked once, keys are
    checked in one query (a skipped row inside one insert would leave a gap in the
    chain) and the rows inserted in one statement, so a batch of revocations holds the
    chain's lock for milliseconds, not per event."""
    if not items:
        return []
    seq, prev_hash = ledger.lock_audit_head(conn)
    keys = [key for _, key, _ in items]
    seen = set(conn.execute(select(audit_events.c.event_key)
                            .where(audit_events.c.event_key.in_(keys))).scalars())
    rows: list[dict[str, Any]] = []
    stored: list[dict[str, Any]] = []
    for event, key, fields in items:
        if key in seen:
            continue
        seen.add(key)
        row, event_stored = _link(seq + len(rows) + 1, prev_hash, event=event, key=key,
                                  ts=ts, fields=fields)
        rows.append(row)
        stored.append(event_stored)
        prev_hash = row["hash"]
    if rows:
        conn.execute(insert(audit_events), rows)
        conn.execute(update(audit_head).where(audit_head.c.id == 1)
                     .values(seq=rows[-1]["seq"], hash=prev_hash))
    return stored


def emit(events: list[dict[str, Any]]) -> None:
    """Write committed audit events to the log stream, one JSON line each, then hand
    them to the observers (metrics, notifications)."""
    for record in events:
        _audit_log.info(record["event"], log_type="audit", audit=record)
    if events and _observers:
        _notify_observers(events)


# Observers see each batch of events after it committed, in the process that made it.
# They are best effort by design: the ledger row is the record, an observer only
# reports it, so one failing must never fail (or roll back) the change it reports.
AuditObserver = Callable[[Sequence[Mapping[str, Any]]], None]
_observers: dict[str, AuditObserver] = {}


def subscribe(name: str, observer: AuditObserver) -> None:
    """Call ``observer`` with every committed batch. Keyed by ``name``: subscribing
    again replaces it, so building an app twice in one process does not count twice."""
    _observers[name] = observer


def unsubscribe(name: str) -> None:
    _observers.pop(name, None)


def _notify_observers(events: Sequence[Mapping[str, Any]]) -> None:
    for name, observer in list(_observers.items()):
        try:
            observer(events)
        except Exception as exc:  # noqa: BLE001 - an observer never fails the caller
            # The class only: a message could carry a URL or a broker password.
            _audit_log.warning("audit.observer_failed", observer=name,
                               error=exc.__class__.__name__)


def _ticket_uid(fields: Mapping[str, Any]) -> str | None:
    ticket = fields.get("ticket")
    if isinstance(ticket, Mapping) and ticket.get("source") and ticket.get("id"):
        return f"{ticket['source']}:{ticket['id']}"
    return None


def _row_matches(row: Any, body: Mapping[str, Any]) -> bool:
    """The indexed columns are copies of the payload; an edit to one is tampering too."""
    ts = row.ts.isoformat().replace("+00:00", "Z") if row.ts is not None else None
    return (
        body.get("seq") == row.seq
        and body.get("event") == row.event
        and body.get("event_key") == row.event_key
        and body.get("ts") == ts
        and body.get("grant_id") == row.grant_id
        and _ticket_uid(body) == row.ticket_uid
    )


@dataclass(frozen=True)
class ChainBreak:
    seq: int
    problem: str


def verify_chain(conn: Connection, *, batch: int = 5000) -> Iterator[ChainBreak]:
    """Recompute the chain from the first event; yields the first broken link."""
    prev_hash = "0" * 64
    expected_seq = 1
    last = 0
    while True:
        rows = conn.execute(
            select(audit_events)
            .where(audit_events.c.seq > last)
            .order_by(audit_events.c.seq)
            .limit(batch)
        ).all()
        if not rows:
            break
        for row in rows:
            if row.seq != expected_seq:
                yield ChainBreak(expected_seq, f"event {expected_seq} is missing")
                return
            if row.prev_hash != prev_hash:
                yield ChainBreak(row.seq, "prev_hash does not match the previous event's hash")
                return
            try:
                body = json.loads(row.payload)
            except ValueError:
                yield ChainBreak(row.seq, "payload is not JSON")
                return
            if body.get("prev_hash") != prev_hash or not _row_matches(row, body):
                yield ChainBreak(row.seq, "row columns do not match its hashed payload")
                return
            if _hash(prev_hash, row.payload) != row.hash:
                yield ChainBreak(row.seq, "hash does not match the payload (row edited)")
                return
            prev_hash = row.hash
            expected_seq += 1
            last = row.seq
    head = conn.execute(select(audit_head.c.seq, audit_head.c.hash)).one()
    if head.seq != last or (last and head.hash != prev_hash):
        yield ChainBreak(last + 1, "events after the last stored one were deleted")
