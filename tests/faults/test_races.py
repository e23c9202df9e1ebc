"""T35 and delivery faults: two workers and two beats racing over the same tickets;
duplicate, out-of-order and late-replayed webhook deliveries.

Every operation is keyed (DESIGN.md principle 4): whatever the number of copies of a
delivery, of a task or of a scheduler, each ticket gets one grant row, one target
change per transition, one audit event and one ticket comment per transition.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from tests.faults.conftest import FaultStack
from tests.integration.conftest import APPROVED, DONE, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fs(fault_stack_factory: Callable[..., FaultStack]) -> FaultStack:
    built = fault_stack_factory()
    for _ in range(2):
        built.workers.worker()
    for _ in range(2):
        built.workers.beat()
    return built


def _states(fs: FaultStack, key: str) -> list[str]:
    return [g.state for g in fs.stack.grants_of(key)]


def _comments(fs: FaultStack, key: str, text: str) -> int:
    return sum(text in c for c in fs.stack.jira.comments(key))


def test_two_workers_two_beats_many_duplicates_one_effect_each(fs: FaultStack) -> None:
    """T35: approve and close three tickets, each delivery posted many times (new
    delivery ids, as several Jira webhooks or a replaying proxy would), plus extra
    apply_grant and sweep tasks thrown in, on two workers and two beats."""
    stack = fs.stack
    tickets = []
    for _ in range(3):
        principal = stack.create_principal()
        tickets.append((principal, stack.new_ticket(principal=principal)))

    def storm(payloads: list[dict[str, object]]) -> None:
        for _ in range(6):
            for payload in payloads:
                assert stack.post(payload).status_code == 202
        for _ in range(4):
            stack.send("jitgate.sweep")

    approvals = [stack.jira.transition(k, APPROVED, author=stack.approver) for _, k in tickets]
    storm(approvals)
    for _, key in tickets:
        wait_for(lambda k=key: _states(fs, k) == ["active"], timeout=30, what="active")
        for grant in stack.grants_of(key):
            for _ in range(3):
                stack.send("jitgate.apply_grant", grant.id)

    closes = [stack.jira.transition(k, DONE, author=stack.approver) for _, k in tickets]
    storm(closes)
    for principal, key in tickets:
        wait_for(lambda k=key: _states(fs, k) == ["revoked"], timeout=30, what="revoked")
        assert not stack.is_member(principal)
    wait_for(lambda: stack.pending_deliveries() == 0, timeout=30, what="inbox drained")
    for _, key in tickets:
        wait_for(lambda k=key: _comments(fs, k, "jitgate revoked") >= 1, timeout=30,
                 what="revoke comment")
        assert len(stack.audit("grant.issued", key)) == 1
        assert len(stack.audit("grant.revoked", key)) == 1
        assert _comments(fs, key, "jitgate granted") == 1
        assert _comments(fs, key, "jitgate revoked") == 1
    fs.check([p for p, _ in tickets])


def test_duplicate_delivery_is_answered_once(fs: FaultStack) -> None:
    stack = fs.stack
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    payload = stack.jira.transition(key, APPROVED, author=stack.approver)
    identifier = str(uuid.uuid4())
    first = stack.post(payload, identifier=identifier)
    assert first.status_code == 202
    for _ in range(3):
        again = stack.post(payload, identifier=identifier)
        assert again.status_code == 200
        assert again.json() == {"status": "duplicate", "delivery": first.json()["delivery"]}
    wait_for(lambda: _states(fs, key) == ["active"], timeout=30, what="active")
    assert len(stack.audit("grant.issued", key)) == 1
    stack.transition(key, DONE)
    wait_for(lambda: _states(fs, key) == ["revoked"], timeout=30, what="revoked")
    fs.check([principal])


def test_out_of_order_close_before_approval_grants_nothing(fs: FaultStack) -> None:
    """Approved then closed in Jira, but the close is delivered first: the ticket is
    re-read (closed) for both deliveries, so no access is ever granted."""
    stack = fs.stack
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    approved = stack.jira.transition(key, APPROVED, author=stack.approver)
    closed = stack.jira.transition(key, DONE, author=stack.approver)
    assert stack.post(closed).status_code in (200, 202)
    assert stack.post(approved).status_code in (200, 202)
    wait_for(lambda: stack.pending_deliveries() == 0, timeout=30, what="both processed")
    assert _states(fs, key) == []
    assert not stack.is_member(principal)
    assert stack.audit("grant.issued", key) == []
    fs.check([principal])


def test_out_of_order_approval_after_close_of_a_live_grant(fs: FaultStack) -> None:
    """Approved (delivered, granted), closed; the close arrives, then a delayed copy of
    the approval: access is revoked and stays revoked."""
    stack = fs.stack
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    approved = stack.jira.transition(key, APPROVED, author=stack.approver)
    assert stack.post(approved).status_code == 202
    wait_for(lambda: _states(fs, key) == ["active"], timeout=30, what="active")
    closed = stack.jira.transition(key, DONE, author=stack.approver)
    assert stack.post(closed).status_code == 202
    assert stack.post(approved).status_code in (200, 202)  # late copy, new delivery id
    wait_for(lambda: _states(fs, key) == ["revoked"], timeout=30, what="revoked")
    wait_for(lambda: stack.pending_deliveries() == 0, timeout=30, what="processed")
    assert _states(fs, key) == ["revoked"]
    assert not stack.is_member(principal)
    fs.check([principal])


def test_late_replay_after_the_lifecycle_changes_nothing(fs: FaultStack) -> None:
    """Replays of the approval long after the close, with its original delivery id (a
    duplicate) and with a fresh one (an attacker or a provider's late retry): the
    ticket says closed, so nothing is granted again."""
    stack = fs.stack
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    approved = stack.jira.transition(key, APPROVED, author=stack.approver)
    identifier = str(uuid.uuid4())
    assert stack.post(approved, identifier=identifier).status_code == 202
    wait_for(lambda: _states(fs, key) == ["active"], timeout=30, what="active")
    stack.transition(key, DONE)
    wait_for(lambda: _states(fs, key) == ["revoked"], timeout=30, what="revoked")
    wait_for(lambda: stack.pending_deliveries() == 0, timeout=30, what="processed")

    assert stack.post(approved, identifier=identifier).status_code == 200
    for _ in range(3):
        assert stack.post(approved).status_code in (200, 202)
    wait_for(lambda: stack.pending_deliveries() == 0, timeout=30, what="replays processed")
    assert _states(fs, key) == ["revoked"]
    assert not stack.is_member(principal)
    assert len(stack.audit("grant.issued", key)) == 1
    assert len(stack.audit("grant.revoked", key)) == 1
    fs.check([principal])
