"""A grant whose target was removed from the policy files must not sit in flight
unseen: its revocation fails visibly (``revoke_failed``, with the alert) and its
grant fails once, on both the single and the batched path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from worker import flows
from worker.ledger.db import migrate
from worker.ledger.schema import grants
from worker.runtime import Runtime
from worker.settings import Settings


@pytest.fixture
def rt(tmp_path: Path) -> Runtime:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'l.db'}", data_dir=tmp_path,
                        revoke_alert_after=2, retry_base_delay=0.01)
    runtime = Runtime(settings, env={})
    migrate(runtime.ledger.engine)
    return runtime


def _grant(rt: Runtime, grant_id: str, state: str, *, expires_in: timedelta) -> None:
    now = datetime.now(UTC)
    with rt.ledger.tx() as conn:
        conn.execute(insert(grants).values(
            id=grant_id, grant_key=grant_id.ljust(64, "0"), ticket_uid=f"jira:{grant_id}",
            ticket_key=f"OPS-{grant_id}", policy="gone-policy", policy_digest="d",
            target="gone", role="analytics_ro", principal="ctr_someone",
            approval_ref="a", state=state, starts_at=now - timedelta(hours=1),
            expires_at=now + expires_in, created_at=now, updated_at=now,
            revoke_reason="ticket_closed" if state == "revoking" else None))


def _row(rt: Runtime, grant_id: str) -> object:
    with rt.ledger.tx() as conn:
        return conn.execute(select(grants).where(grants.c.id == grant_id)).one()


def test_single_path_revocation_becomes_revoke_failed(rt: Runtime) -> None:
    _grant(rt, "1", "revoking", expires_in=timedelta(hours=1))
    first = flows.apply_grant(rt, "1")
    assert first.retry_in is not None and first.state == "revoking"
    assert "target_not_configured" in str(_row(rt, "1").last_error)  # type: ignore[attr-defined]
    assert flows.apply_grant(rt, "1").state == "revoke_failed"
    rt.close()


def test_batched_expiry_moves_it_in_flight_then_revoke_failed(rt: Runtime) -> None:
    _grant(rt, "2", "active", expires_in=-timedelta(seconds=1))
    batch = flows.revoke_batch(rt, expired=100)
    assert (batch.selected, batch.revoked, batch.failed) == (1, 0, 1)
    row = _row(rt, "2")
    assert (row.state, row.revoke_reason) == ("revoking", "expired")  # type: ignore[attr-defined]
    assert flows.revoke_batch(rt, expired=100).selected == 0  # no longer "active"
    assert flows.revoke_batch(rt, ["2"]).failed == 1
    assert _row(rt, "2").state == "revoke_failed"  # type: ignore[attr-defined]
    rt.close()


def test_grant_on_a_removed_target_fails_once(rt: Runtime) -> None:
    _grant(rt, "3", "pending", expires_in=timedelta(hours=1))
    assert flows.apply_grant(rt, "3").state == "grant_failed"
    assert "target_not_configured" in str(_row(rt, "3").last_error)  # type: ignore[attr-defined]
    rt.close()
