"""A delivery waiting behind a long queue is re-published with growing waits, not on
every sweep (which would flood the very queue it waits in)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, select, update

from worker import sweeps
from worker.ledger.db import migrate
from worker.ledger.schema import inbox
from worker.runtime import Runtime
from worker.settings import Settings


def test_redelivery_waits_grow(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'l.db'}", data_dir=tmp_path,
                        stuck_after=60)
    rt = Runtime(settings, env={})
    migrate(rt.ledger.engine)
    long_ago = datetime.now(UTC) - timedelta(minutes=10)
    with rt.ledger.tx() as conn:
        conn.execute(insert(inbox).values(
            id="d1", source="jira", delivery_key="k1", ticket_uid="jira:1", ticket_id="1",
            received_at=long_ago))

    assert sweeps.run(rt).redeliver == ["d1"]
    assert sweeps.run(rt).redeliver == []  # its copy is in flight: not again
    with rt.ledger.tx() as conn:
        row = conn.execute(select(inbox).where(inbox.c.id == "d1")).one()
        assert row.attempts == 1
        first_wait = row.next_attempt_at - datetime.now(UTC)
        assert timedelta(seconds=50) < first_wait <= timedelta(seconds=60)
        # that copy is now long overdue
        conn.execute(update(inbox).values(next_attempt_at=long_ago))
    assert sweeps.run(rt).redeliver == ["d1"]
    with rt.ledger.tx() as conn:
        row = conn.execute(select(inbox).where(inbox.c.id == "d1")).one()
    assert row.attempts == 2
    assert row.next_attempt_at - datetime.now(UTC) > timedelta(seconds=110)  # doubled
    rt.close()
