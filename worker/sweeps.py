"""Periodic sweep: expiry and re-driving work from the ledger (the broker is a doorbell).

Expired grants are revoked straight from ``active`` in chunks (``flows.revoke_batch``):
one ledger transaction and one batched target call per chunk.

Every step selects through a partial index and in bounded batches, and on PostgreSQL
with ``FOR UPDATE SKIP LOCKED``, so two beats (or a beat and a CronJob) at once only
split the work between them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Connection, Table, and_, delete, or_, select, update

from worker import flows
from worker.ledger import store
from worker.ledger.schema import comments, grants, inbox, tickets
from worker.runtime import Runtime

__all__ = ["SweepReport", "run"]

log = structlog.get_logger("jitgate.sweep")

BATCH = 500
REVOKE_CHUNK = 200


@dataclass
class SweepReport:
    expired: int = 0
    stale: int = 0
    redriven: int = 0
    redeliver: list[str] = field(default_factory=list)
    comment_ids: list[str] = field(default_factory=list)
    retries: list[tuple[str, float]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "expired": self.expired,
            "stale": self.stale,
            "redriven": self.redriven,
            "redelivered": len(self.redeliver),
            "comments": len(self.comment_ids),
        }


def run(rt: Runtime) -> SweepReport:
    report = SweepReport()
    ledger = rt.ledger
    # Mass expiry: revoke expired grants chunk by chunk while full chunks come back,
    # within a budget well under the task's soft time limit (the next sweep goes on).
    deadline = time.monotonic() + min(60.0, rt.settings.task_soft_time_limit / 2)
    while True:
        batch = flows.revoke_batch(rt, expired=REVOKE_CHUNK)
        report.expired += batch.selected
        report.comment_ids.extend(batch.comment_ids)
        report.retries.extend(batch.retries)
        if batch.selected < REVOKE_CHUNK or time.monotonic() > deadline:
            break
    stale = _stale(rt)
    report.stale = len(stale)
    _revoke(rt, report, stale)
    revoked = set(stale)
    with ledger.tx() as conn:
        now = ledger.now(conn)
        due = [g for g in store.due_work(conn, now=now, stuck_after=rt.stuck_after, limit=BATCH)
               if g not in revoked]
        stuck = now - rt.stuck_after
        report.redeliver = _claim(conn, inbox, now, rt.stuck_after, list(
            conn.execute(
                select(inbox.c.id, inbox.c.attempts)
                .where(
                    inbox.c.processed_at.is_(None),
                    or_(
                        and_(inbox.c.attempts == 0, inbox.c.received_at <= stuck),
                        # deferred: its own follow-up is overdue (lost)
                        and_(inbox.c.attempts > 0, inbox.c.next_attempt_at <= stuck),
                    ),
                )
                .order_by(inbox.c.received_at)
                .limit(BATCH)
                .with_for_update(skip_locked=ledger.is_postgres)
            )
        ))
        report.comment_ids += _claim(conn, comments, now, rt.stuck_after, list(
            conn.execute(
                select(comments.c.id, comments.c.attempts)
                .where(
                    comments.c.posted_at.is_(None),
                    comments.c.failed_at.is_(None),
                    or_(
                        and_(comments.c.attempts == 0, comments.c.created_at <= stuck),
                        and_(comments.c.attempts > 0, comments.c.next_attempt_at <= stuck),
                    ),
                )
                .limit(BATCH)
                .with_for_update(skip_locked=ledger.is_postgres)
            )
        ))
    report.redriven = len(due)
    _forget_old_deliveries(rt)
    for grant_id in due:
        result = flows.apply_grant(rt, grant_id)
        report.comment_ids.extend(result.comment_ids)
        if result.retry_in is not None:
            report.retries.append((grant_id, result.retry_in))
    if report.expired or report.stale or report.redriven or report.redeliver:
        log.info("sweep.done", **report.counts())
    return report


def _revoke(rt: Runtime, report: SweepReport, grant_ids: list[str]) -> None:
    """Revoke in chunks: each chunk is one ledger transaction holding its rows' locks
    and one batched call per target, short enough not to stall other writers."""
    for start in range(0, len(grant_ids), REVOKE_CHUNK):
        result = flows.revoke_batch(rt, grant_ids[start:start + REVOKE_CHUNK])
        report.comment_ids.extend(result.comment_ids)
        report.retries.extend(result.retries)


def _stale(rt: Runtime) -> list[str]:
    """Revoke (reason ``stale``) active grants whose ticket has not changed for the
    policy's ``stale_after``: an abandoned request does not keep its access."""
    ledger = rt.ledger
    out: list[str] = []
    with ledger.tx() as conn:
        now = ledger.now(conn)
        for policy in rt.policies.policies:
            stmt = (
                select(grants.c.id)
                .join(tickets, tickets.c.uid == grants.c.ticket_uid)
                .where(
                    grants.c.state == "active",
                    grants.c.policy == policy.name,
                    tickets.c.updated_at <= now - policy.stale_after,
                )
                .limit(BATCH)
            )
            if ledger.is_postgres:
                stmt = stmt.with_for_update(of=grants, skip_locked=True)
            for grant_id in conn.execute(stmt).scalars():
                if store.request_revoke(conn, grant_id, reason="stale", now=now,
                                        retry_at=now + rt.stuck_after):
                    out.append(grant_id)
    return out


def _forget_old_deliveries(rt: Runtime) -> None:
    """Drop processed inbox rows past the dedupe retention: the table stays small, and
    a replay after that is harmless because the ticket is re-read before any action."""
    ledger = rt.ledger
    with ledger.tx() as conn:
        cutoff = ledger.now(conn) - timedelta(seconds=rt.settings.dedupe_retention)
        old = select(inbox.c.id).where(
            inbox.c.processed_at.is_not(None), inbox.c.received_at < cutoff
        ).limit(BATCH)
        conn.execute(delete(inbox).where(inbox.c.id.in_(old.scalar_subquery())))


def _claim(conn: Connection, table: Table, now: datetime, stuck: timedelta,
           rows: list[Any]) -> list[str]:
    """Mark rows the sweep re-publishes as having a follow-up in flight, due again only
    after a growing wait: behind a long queue, a row waiting its turn is re-published
    O(log n) times, not once per sweep (which would grow the queue it waits in)."""
    for row in rows:
        wait = stuck * (2 ** min(int(row.attempts), 6))
        conn.execute(update(table).where(table.c.id == row.id).values(
            attempts=table.c.attempts + 1, next_attempt_at=now + wait))
    return [str(row.id) for row in rows]
