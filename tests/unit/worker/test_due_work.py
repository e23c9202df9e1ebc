"""The sweep re-drives work from the ledger without doubling a live retry chain."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert

from worker.ledger import store
from worker.ledger.db import Ledger
from worker.ledger.schema import grants

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
STUCK = timedelta(seconds=60)


def _grant(ledger: Ledger, *, state: str, attempts: int, next_at: datetime | None,
           starts_at: datetime = NOW - timedelta(hours=1),
           updated_at: datetime = NOW) -> str:
    grant_id = str(uuid.uuid4())
    with ledger.tx() as conn:
        conn.execute(insert(grants).values(
            id=grant_id, grant_key=uuid.uuid4().hex, ticket_uid="jira:1", ticket_key="OPS-1",
            policy="p", policy_digest="d", target="t", role="r", principal="ctr_x",
            approval_ref="h1", state=state, starts_at=starts_at,
            expires_at=NOW + timedelta(hours=8), created_at=NOW - timedelta(hours=1),
            attempts=attempts, next_attempt_at=next_at, updated_at=updated_at,
        ))
    return grant_id


def test_due_work_takes_fresh_and_overdue_work_but_not_live_retries(ledger: Ledger) -> None:
    fresh_due = _grant(ledger, state="pending", attempts=0, next_at=NOW - timedelta(seconds=1))
    fresh_later = _grant(ledger, state="pending", attempts=0, next_at=NOW + timedelta(minutes=1))
    scheduled = _grant(ledger, state="pending", attempts=0, next_at=NOW + timedelta(hours=1),
                       starts_at=NOW + timedelta(hours=1))
    retry_live = _grant(ledger, state="revoking", attempts=3,
                        next_at=NOW - timedelta(seconds=5))
    retry_lost = _grant(ledger, state="revoke_failed", attempts=9,
                        next_at=NOW - timedelta(minutes=5))
    orphan = _grant(ledger, state="revoking", attempts=0, next_at=None,
                    updated_at=NOW - timedelta(minutes=5))
    done = _grant(ledger, state="active", attempts=1, next_at=None)
    with ledger.tx() as conn:
        due = set(store.due_work(conn, now=NOW, stuck_after=STUCK, limit=100))
    assert due == {fresh_due, retry_lost, orphan}
    assert not due & {fresh_later, scheduled, retry_live, done}
