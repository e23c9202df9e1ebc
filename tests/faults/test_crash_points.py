"""T01-T04: a worker dies at each crash point of the grant and revoke paths.

The crash is ``os._exit`` inside the Celery pool process (no cleanup, no ack), at:
before the target call, after it but before the ledger commit, after the commit but
before the ack. Late ack + reject-on-worker-lost requeues the message, and the sweep
re-drives whatever the ledger still holds as pending/revoking. Whatever the point, the
end state is the same: exactly one membership change on the target and exactly one
audit event for it. A last test SIGKILLs the whole worker (main process and children)
mid-task and brings a new one up.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import select

from tests.faults.conftest import FaultStack
from tests.faults.control import arm_crash, crashed
from tests.integration.conftest import APPROVED, DONE, wait_for
from worker.ledger.schema import comments

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fs(fault_stack_factory: Callable[..., FaultStack]) -> FaultStack:
    built = fault_stack_factory()
    built.workers.worker()
    built.workers.beat()
    return built


def _unposted_comments(fs: FaultStack) -> int:
    with fs.stack.runtime.ledger.tx() as conn:
        return len(conn.execute(select(comments.c.id).where(comments.c.posted_at.is_(None))).all())


def _state(fs: FaultStack, key: str) -> str | None:
    grants = fs.stack.grants_of(key)
    assert len(grants) <= 1, f"{key} has {len(grants)} grants"
    return grants[0].state if grants else None


# Where the crash leaves the target, and so what the re-run finds there.
GRANT_OUTCOME = {
    "grant.before_target": "applied",
    "grant.after_target": "already_present",  # T01: granted, ledger not written
    "grant.after_commit": "applied",  # T03: re-run sees "active", no target call
}
REVOKE_OUTCOME = {
    "revoke.before_target": "applied",
    "revoke.after_target": "already_absent",
    "revoke.after_commit": "applied",
}


@pytest.mark.parametrize("point", list(GRANT_OUTCOME))
def test_worker_crash_during_grant(fs: FaultStack, point: str) -> None:
    stack = fs.stack
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    arm_crash(fs.crash_dir, point)
    stack.transition(key, APPROVED)

    wait_for(crashed(fs.crash_dir, point), timeout=30, what=f"crash at {point}")
    wait_for(lambda: _state(fs, key) == "active", timeout=30,
             what="grant finished after the crash")
    assert stack.is_member(principal)
    issued = stack.audit("grant.issued", key)
    assert len(issued) == 1, issued
    assert issued[0]["outcome"] == GRANT_OUTCOME[point]
    wait_for(lambda: any("jitgate granted" in c for c in stack.jira.comments(key)),
             timeout=30, what="grant comment posted despite the crash")
    assert sum("jitgate granted" in c for c in stack.jira.comments(key)) == 1
    fs.check([principal])


@pytest.mark.parametrize("point", list(REVOKE_OUTCOME))
def test_worker_crash_during_revoke(fs: FaultStack, point: str) -> None:
    stack = fs.stack
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    stack.transition(key, APPROVED)
    wait_for(lambda: _state(fs, key) == "active", timeout=30, what="active")

    arm_crash(fs.crash_dir, point)
    stack.transition(key, DONE)
    wait_for(crashed(fs.crash_dir, point), timeout=30, what=f"crash at {point}")
    wait_for(lambda: _state(fs, key) == "revoked", timeout=30,
             what="revocation finished after the crash")
    assert not stack.is_member(principal)
    revoked = stack.audit("grant.revoked", key)
    assert len(revoked) == 1, revoked
    assert revoked[0]["outcome"] == REVOKE_OUTCOME[point]
    assert revoked[0]["reason"] == "ticket_closed"
    assert len(stack.audit("grant.issued", key)) == 1
    fs.check([principal])


def test_whole_worker_sigkilled_mid_task_is_recovered_from_the_ledger(fs: FaultStack) -> None:
    """SIGKILL to the worker's process group while it re-reads the ticket: nothing is
    acked or requeued (the message sits unacked in Redis until the visibility timeout),
    the inbox row stays unprocessed, and the sweep re-drives it on the new worker."""
    stack = fs.stack
    (old_worker,) = [p for p in fs.workers.alive() if fs.workers.is_worker(p)]
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    # Nothing else may talk to Jira meanwhile: earlier tests' comments are all posted.
    wait_for(lambda: _unposted_comments(fs) == 0, timeout=30, what="comment outbox empty")
    stack.jira.slow_next(1, seconds=2.5)
    stack.transition(key, APPROVED)
    wait_for(lambda: not stack.jira._slow, timeout=10,
             what="the worker is fetching the ticket (slowly)")
    fs.workers.kill(old_worker)
    assert old_worker.poll() is not None
    assert stack.pending_deliveries() >= 1
    assert _state(fs, key) is None  # killed before the decision was written

    fs.workers.worker()
    wait_for(lambda: _state(fs, key) == "active", timeout=30,
             what="the sweep re-drove the delivery")
    assert stack.is_member(principal)
    assert len(stack.audit("grant.issued", key)) == 1
    stack.transition(key, DONE)
    wait_for(lambda: _state(fs, key) == "revoked", timeout=30, what="revoked")
    assert not stack.is_member(principal)
    fs.check([principal])
