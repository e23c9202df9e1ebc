"""Acceptance: Jira approval → PostgreSQL grant → close → revocation, on real components."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import pytest

from tests.integration.conftest import APPROVED, DONE, Stack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack], ledger_kind: str) -> Stack:
    return stack_factory(ledger=ledger_kind)


def test_approval_grants_and_close_revokes(stack: Stack) -> None:
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)

    stack.transition(key, APPROVED)
    grant = wait_for(lambda: next((g for g in stack.grants_of(key) if g.state == "active"), None),
                     what="grant active")
    assert stack.is_member(principal)
    assert grant.principal == principal
    assert grant.role == stack.role
    assert grant.revoke_reason is None
    lifetime = grant.expires_at - grant.starts_at
    assert lifetime.total_seconds() == 8 * 3600
    issued = stack.audit("grant.issued", key)
    assert len(issued) == 1
    assert issued[0]["approver"]["id"] == stack.approver["accountId"]
    assert issued[0]["principal"] == principal
    wait_for(lambda: any("granted" in c for c in stack.jira.comments(key)), what="grant comment")

    stack.transition(key, DONE)
    wait_for(lambda: stack.grants_of(key)[0].state == "revoked", what="grant revoked")
    assert not stack.is_member(principal)
    revoked = stack.audit("grant.revoked", key)
    assert len(revoked) == 1
    assert revoked[0]["reason"] == "ticket_closed"
    assert len(stack.audit("grant.issued", key)) == 1
    wait_for(lambda: any("revoked" in c for c in stack.jira.comments(key)),
             what="revoke comment")
    assert len(stack.grants_of(key)) == 1


def test_webhook_user_is_not_the_approver(stack: Stack) -> None:
    """The webhook's `user` claims the allowed approver; the history says otherwise."""
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    outsider = stack.jira.add_user("712020:mallory", "Mallory")
    payload = stack.jira.transition(key, APPROVED, author=outsider)
    payload["user"] = stack.approver  # forged actor in the delivery
    assert stack.post(payload).status_code == 202
    denied = wait_for(lambda: stack.audit("grant.denied", key), what="denial")
    assert denied[0]["reason"] == "approver_not_allowed"
    assert stack.grants_of(key) == []
    assert not stack.is_member(principal)


@pytest.mark.parametrize(
    ("case", "rule"),
    [
        ("self_approval", "self_approval"),
        ("approver_not_allowed", "approver_not_allowed"),
        ("unknown_role", "unknown_requested_access"),
        ("reserved_principal", "principal_invalid"),
        ("injected_principal", "principal_invalid"),
    ],
)
def test_denials(stack: Stack, case: str, rule: str) -> None:
    principal = stack.create_principal()
    author = stack.approver
    requested = "warehouse-read"
    reporter = None
    if case == "self_approval":
        reporter = stack.approver  # the allowed approver asks for access and approves it
    elif case == "approver_not_allowed":
        author = stack.jira.add_user("712020:outsider", "Outsider")
    elif case == "unknown_role":
        requested = "warehouse-admin"
    elif case == "reserved_principal":
        principal = "postgres"
    elif case == "injected_principal":
        principal = 'ctr_x"; DROP ROLE postgres; --'
    key = stack.new_ticket(principal=principal, requested=requested, reporter=reporter)
    payload = stack.jira.transition(key, APPROVED, author=author)
    assert stack.post(payload, identifier="first-" + key).status_code == 202

    denied = wait_for(lambda: stack.audit("grant.denied", key), what="denial")
    assert [d["reason"] for d in denied] == [rule]
    wait_for(lambda: any("did not grant" in c for c in stack.jira.comments(key)),
             what="denial comment")
    assert stack.grants_of(key) == []
    if case != "injected_principal":
        assert not stack.is_member(principal)

    # The same delivery again is a duplicate; the same event under another delivery id
    # is re-read and decided again, and finds the denial already recorded.
    assert stack.post(payload, identifier="first-" + key).json()["status"] == "duplicate"
    assert stack.post(payload, identifier="second-" + key).status_code == 202
    wait_for(lambda: stack.pending_deliveries() == 0, what="deliveries processed")
    assert len(stack.audit("grant.denied", key)) == 1
    assert sum("did not grant" in c for c in stack.jira.comments(key)) == 1
    assert stack.grants_of(key) == []


def test_concurrent_duplicate_deliveries_grant_once(stack: Stack) -> None:
    """Jira retries and per-registration copies arrive together on several workers."""
    stack.start_worker()  # a second worker process: four consumers in all
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    payload = stack.jira.transition(key, APPROVED, author=stack.approver)
    for n in range(8):
        assert stack.post(payload, identifier=f"copy-{n}-{key}").status_code == 202
    wait_for(lambda: stack.pending_deliveries() == 0, what="deliveries processed")
    grants = stack.grants_of(key)
    assert [g.state for g in grants] == ["active"]
    assert stack.is_member(principal)
    assert len(stack.audit("grant.issued", key)) == 1
    wait_for(lambda: any("granted" in c for c in stack.jira.comments(key)), what="comment")
    assert sum("granted" in c for c in stack.jira.comments(key)) == 1


def test_grant_expires_through_the_sweep(stack: Stack) -> None:
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal, requested="warehouse-short")
    stack.transition(key, APPROVED)
    grant = wait_for(lambda: next((g for g in stack.grants_of(key) if g.state == "active"), None),
                     what="grant active")
    assert (grant.expires_at - grant.starts_at).total_seconds() == 3
    assert stack.is_member(principal)

    def swept() -> bool:
        stack.send("jitgate.sweep")
        time.sleep(0.5)
        return stack.grants_of(key)[0].state == "revoked"

    wait_for(swept, timeout=20, what="expiry revocation")
    assert not stack.is_member(principal)
    revoked = stack.audit("grant.revoked", key)
    assert [e["reason"] for e in revoked] == ["expired"]
    # The ticket is still approved: a later event must not grant that approval again.
    payload = stack.jira.edit_fields(key, {"summary": "still approved"}, author=stack.approver)
    assert stack.post(payload).status_code == 202
    wait_for(lambda: stack.pending_deliveries() == 0, what="deliveries processed")
    assert [g.state for g in stack.grants_of(key)] == ["revoked"]
    assert not stack.is_member(principal)


def test_explain_shows_the_decision_without_acting(stack: Stack) -> None:
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    stack.jira.transition(key, APPROVED, author=stack.approver)  # no webhook: nothing acts
    done = stack.cli("explain", "--source", "jira", "--ticket", key)
    assert done.returncode == 0, done.stderr
    assert "policy warehouse-read: matches; the ticket is approved" in done.stdout
    assert f"→ would grant {stack.role} on warehouse to {principal}" in done.stdout
    assert "policy warehouse-snow" not in done.stdout  # other sources are not listed
    assert stack.grants_of(key) == []
    assert not stack.is_member(principal)

    stranger = stack.jira.add_user("712020:someone", "Someone")
    other = f"OPS-{uuid.uuid4().int % 10**6}"
    stack.jira.create_issue(other, project="HR", reporter=stack.requester)
    stack.jira.transition(other, APPROVED, author=stranger)
    done = stack.cli("explain", "--ticket", other, "--json")
    report = json.loads(done.stdout)
    assert report["ignored"] == "no policy covers this ticket"
    assert report["actions"] == []
    assert all(not p["in_scope"] for p in report["policies"])

    denied = stack.new_ticket(principal=principal)
    stack.jira.transition(denied, APPROVED, author=stranger)
    done = stack.cli("explain", "--ticket", denied)
    assert "→ would deny (approver_not_allowed)" in done.stdout
