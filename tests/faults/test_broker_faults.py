"""T07, T09: the broker loses its queues, the broker is down when webhooks arrive.

Redis is only a doorbell (DESIGN.md principle 2): the ledger's inbox and grant rows are
enough to finish every transition, so a Redis that comes back empty costs time, never
an event. The Redis here is the suite's own (``RedisServer``, no persistence), so a
restart really loses everything.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from tests.faults.conftest import FaultStack
from tests.faults.control import RedisServer
from tests.integration.conftest import APPROVED, DONE, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fs(fault_stack_factory: Callable[..., FaultStack]) -> FaultStack:
    built = fault_stack_factory()
    built.workers.worker()
    built.workers.beat()
    return built


def _state(fs: FaultStack, key: str) -> str | None:
    grants = fs.stack.grants_of(key)
    assert len(grants) <= 1, f"{key} has {len(grants)} grants"
    return grants[0].state if grants else None


def _active_ticket(fs: FaultStack) -> tuple[str, str]:
    principal = fs.stack.create_principal()
    key = fs.stack.new_ticket(principal=principal)
    fs.stack.transition(key, APPROVED)
    return principal, key


def test_redis_restarted_and_flushed_with_work_queued(
    fs: FaultStack, fault_redis: RedisServer
) -> None:
    """T07: deliveries queued for stopped workers are lost with Redis; the sweep
    re-publishes them from the inbox and every grant reaches its terminal state."""
    stack = fs.stack
    leaving = [_active_ticket(fs) for _ in range(2)]
    for _, key in leaving:
        wait_for(lambda k=key: _state(fs, k) == "active", timeout=30, what="active")

    fs.workers.stop_all()  # nobody consumes: the next deliveries stay queued
    for _, key in leaving:
        stack.transition(key, DONE)
    arriving = []
    for _ in range(3):
        principal = stack.create_principal()
        key = stack.new_ticket(principal=principal)
        stack.transition(key, APPROVED)
        arriving.append((principal, key))
    assert fault_redis.queued(stack.settings.queue) >= 5  # (plus comment posts)
    assert stack.pending_deliveries() == 5

    fault_redis.restart()  # crash without persistence...
    fault_redis.flushall()  # ...and an operator's FLUSHALL for good measure
    assert fault_redis.queued(stack.settings.queue) == 0

    started = time.monotonic()
    fs.workers.worker()
    fs.workers.beat()
    for principal, key in arriving:
        wait_for(lambda k=key: _state(fs, k) == "active", timeout=45,
                 what="grant finished from the ledger")
        assert stack.is_member(principal)
        assert len(stack.audit("grant.issued", key)) == 1
    for principal, key in leaving:
        wait_for(lambda k=key: _state(fs, k) == "revoked", timeout=45,
                 what="revocation finished from the ledger")
        assert not stack.is_member(principal)
        assert [e["reason"] for e in stack.audit("grant.revoked", key)] == ["ticket_closed"]
    assert time.monotonic() - started < 45
    wait_for(lambda: stack.pending_deliveries() == 0, timeout=30, what="inbox drained")
    fs.check([p for p, _ in leaving + arriving])


def test_webhooks_while_redis_is_down_are_held_then_published(
    fs: FaultStack, fault_redis: RedisServer
) -> None:
    """T09. Behaviour chosen: the listener stores the delivery in the ledger's inbox
    (a durable row, committed first) and answers **202 {"status": "held"}** when it
    cannot publish to the broker; it does not answer 503. Jira would retry a 5xx, but
    only for a while, whereas the inbox row keeps the event for as long as Redis is
    down. Once Redis is back, the periodic sweep re-publishes every unprocessed inbox
    row older than ``stuck_after``, so no event is lost and none is doubled (the
    provider's delivery id still deduplicates retries while Redis is down)."""
    stack = fs.stack
    fs.workers.stop_all()
    fs.workers.worker()
    fs.workers.beat()
    principal_closed, closed_key = _active_ticket(fs)
    wait_for(lambda: _state(fs, closed_key) == "active", timeout=30, what="active")

    fault_redis.stop()
    arriving = []
    for _ in range(3):
        principal = stack.create_principal()
        key = stack.new_ticket(principal=principal)
        payload = stack.jira.transition(key, APPROVED, author=stack.approver)
        identifier = str(uuid.uuid4())
        began = time.monotonic()
        response = stack.post(payload, identifier=identifier)
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "held"
        assert time.monotonic() - began < 10, "answer fast even with the broker down"
        # The sender's retry of the same delivery is recognised, not stored twice.
        again = stack.post(payload, identifier=identifier)
        assert again.status_code == 200
        assert again.json()["status"] == "duplicate"
        arriving.append((principal, key))
    close = stack.post(stack.jira.transition(closed_key, DONE, author=stack.approver))
    assert close.status_code == 202
    assert close.json()["status"] == "held"
    assert stack.pending_deliveries() == 4
    assert stack.client.get("/readyz").status_code != 200

    time.sleep(3)  # Redis stays down across several sweep intervals
    assert stack.pending_deliveries() == 4
    assert all(_state(fs, k) is None for _, k in arriving)

    fault_redis.start()  # back, and empty
    # A worker that holds an unacked message when Redis goes away can exit (kombu 5.7:
    # "Unrecoverable error: AttributeError ... 'hostname'" from Channel.close ->
    # restore_unacked); like its supervisor (systemd Restart=always) we start it again.
    for principal, key in arriving:
        wait_for(lambda k=key: fs.workers.respawn_dead() >= 0 and _state(fs, k) == "active",
                 timeout=60,
                 what="held delivery published by the sweep and processed")
        assert stack.is_member(principal)
        assert len(stack.audit("grant.issued", key)) == 1
    wait_for(lambda: fs.workers.respawn_dead() >= 0 and _state(fs, closed_key) == "revoked",
             timeout=60,
             what="held close processed")
    assert not stack.is_member(principal_closed)
    wait_for(lambda: stack.pending_deliveries() == 0, timeout=30, what="inbox drained")
    fs.check([principal_closed, *(p for p, _ in arriving)])

