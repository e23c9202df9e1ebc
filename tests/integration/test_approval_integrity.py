"""Only a real, authorized approval of the request as it stands can grant access."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete

from tests.integration.conftest import APPROVED, DONE, Stack, wait_for
from worker.doubles.jira import IN_PROGRESS, jira_delivery
from worker.ledger.schema import inbox

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack]) -> Stack:
    return stack_factory()


def _active(stack: Stack, key: str) -> object:
    return wait_for(lambda: next((g for g in stack.grants_of(key) if g.state == "active"), None),
                    what=f"{key} active")


def test_edit_after_approval_suspends_until_approved_again(stack: Stack) -> None:
    principal = stack.create_principal()
    other = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    stack.transition(key, APPROVED)
    _active(stack, key)

    # Approved for one contractor, then edited to name another.
    payload = stack.jira.edit_fields(key, {"customfield_10071": other}, author=stack.requester)
    assert stack.post(payload).status_code == 202
    wait_for(lambda: stack.grants_of(key)[0].state == "revoked", what="suspended")
    assert stack.grants_of(key)[0].revoke_reason == "request_changed"
    assert [d["reason"] for d in stack.audit("grant.denied", key)] == [
        "request_changed_after_approval"
    ]
    assert not stack.is_member(principal)
    assert not stack.is_member(other)
    assert len(stack.grants_of(key)) == 1

    # A fresh approval of the edited request grants it.
    stack.transition(key, IN_PROGRESS)
    stack.transition(key, APPROVED)
    wait_for(lambda: any(g.state == "active" and g.principal == other
                         for g in stack.grants_of(key)), what="re-approved grant")
    assert stack.is_member(other)
    assert not stack.is_member(principal)


def test_edit_between_approval_and_processing_is_caught_from_the_history(stack: Stack) -> None:
    """Approved small, edited large before the worker saw the approval: no grant."""
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal, requested="warehouse-capped")
    approval = stack.jira.transition(key, APPROVED, author=stack.approver)
    stack.jira.edit_fields(key, {"customfield_10072": "24h"}, author=stack.requester)
    assert stack.post(approval).status_code == 202
    denied = wait_for(lambda: stack.audit("grant.denied", key), what="denial")
    assert [d["reason"] for d in denied] == ["request_changed_after_approval"]
    assert stack.grants_of(key) == []


def test_requested_duration_beyond_the_maximum_is_cut_and_said(stack: Stack) -> None:
    principal = stack.create_principal()
    key = f"OPS-{uuid.uuid4().int % 10**6}"
    stack.jira.create_issue(key, reporter=stack.requester, fields={
        "customfield_10070": {"value": "warehouse-capped"},
        "customfield_10071": principal,
        "customfield_10072": "72h",
    })
    stack.transition(key, APPROVED)
    grant = _active(stack, key)
    assert grant.expires_at - grant.starts_at == timedelta(hours=24)
    wait_for(lambda: any("cut to" in c for c in stack.jira.comments(key)), what="cap comment")
    issued = stack.audit("grant.issued", key)[0]
    assert "at most 1d" in issued["detail"]


def test_contract_end_caps_the_grant_and_an_ended_contract_denies(stack: Stack) -> None:
    principal = stack.create_principal()
    soon = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    key = f"OPS-{uuid.uuid4().int % 10**6}"
    stack.jira.create_issue(key, reporter=stack.requester, fields={
        "customfield_10070": {"value": "warehouse-capped"},
        "customfield_10071": principal,
        "customfield_10073": soon.isoformat(),
    })
    stack.transition(key, APPROVED)
    grant = _active(stack, key)
    assert grant.expires_at == soon

    ended = f"OPS-{uuid.uuid4().int % 10**6}"
    stack.jira.create_issue(ended, reporter=stack.requester, fields={
        "customfield_10070": {"value": "warehouse-capped"},
        "customfield_10071": principal,
        "customfield_10073": "2020-01-31",
    })
    stack.transition(ended, APPROVED)
    denied = wait_for(lambda: stack.audit("grant.denied", ended), what="denial")
    assert [d["reason"] for d in denied] == ["contract_ended"]


def test_replayed_old_delivery_cannot_resurrect_access(stack: Stack) -> None:
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    approval = stack.jira.transition(key, APPROVED, author=stack.approver)
    body, headers = jira_delivery(approval, secret="test-webhook-secret-3f9a",
                                  identifier=f"orig-{key}")
    assert stack.client.post("/webhooks/jira", content=body, headers=headers).status_code == 202
    _active(stack, key)
    stack.transition(key, DONE)
    wait_for(lambda: stack.grants_of(key)[0].state == "revoked", what="revoked")

    # Long after, the dedupe memory of that delivery is gone and it is replayed as is.
    with stack.runtime.ledger.tx() as conn:
        conn.execute(delete(inbox).where(inbox.c.ticket_key == key))
    replay = stack.client.post("/webhooks/jira", content=body, headers=headers)
    assert replay.status_code == 202
    wait_for(lambda: stack.pending_deliveries() == 0, what="replay processed")
    assert [g.state for g in stack.grants_of(key)] == ["revoked"]
    assert not stack.is_member(principal)
    assert len(stack.audit("grant.issued", key)) == 1


def test_hostile_ticket_text_cannot_split_log_lines(stack: Stack) -> None:
    forged = '\n{"event": "grant.issued", "principal": "mallory", "level": "info"}\r\n'
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal, summary="please" + forged + "thanks")
    stack.jira.edit_fields(key, {"customfield_10071": principal + forged},
                           author=stack.requester)
    stack.transition(key, APPROVED)
    denied = wait_for(lambda: stack.audit("grant.denied", key), what="denial")
    assert denied[0]["reason"] == "principal_invalid"
    lines = [ln for ln in stack.worker_logs().splitlines() if ln.strip()]
    for line in lines:
        record = json.loads(line)  # every line is exactly one JSON object
        assert record.get("principal") != "mallory"


def test_flood_on_one_source_does_not_starve_the_other(stack: Stack) -> None:
    from starlette.testclient import TestClient

    from worker.celery_app import create_celery
    from worker.runtime import Runtime
    from worker.webhooks.app import create_app

    settings = stack.settings.model_copy(update={"rate_limit_per_source": 1.0,
                                                 "rate_limit_burst": 5})
    client = TestClient(create_app(Runtime(settings, env=stack.env), create_celery(settings)))
    junk = json.dumps({"webhookEvent": "jira:issue_updated"}).encode()
    answers = [client.post("/webhooks/jira", content=junk,
                           headers={"Content-Type": "application/json"}).status_code
               for _ in range(20)]
    assert answers.count(401) == 5
    assert answers.count(429) == 15
    limited = client.post("/webhooks/jira", content=junk,
                          headers={"Content-Type": "application/json"})
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    # ServiceNow still gets through (and is judged on its own merits).
    snow = client.post("/webhooks/servicenow", content=b"{}",
                       headers={"Content-Type": "application/json"})
    assert snow.status_code == 401


IN_REVIEW = ("10006", "Waiting for approval", "indeterminate")
RESOLVED = ("10008", "In Progress", "indeterminate")  # what JSM moves to on approval
DBA = ("grp-dba-0001", "dba")


def _jsm_ticket(stack: Stack, principal: str, *, requested: str, approvers: list[dict],
                required: int = 1) -> tuple[str, str]:
    key = f"ITSM-{uuid.uuid4().int % 10**6}"
    stack.jira.create_issue(key, project="ITSM", issue_type="Get access",
                            project_type="service_desk", reporter=stack.requester,
                            fields={"customfield_10070": {"value": requested},
                                    "customfield_10071": principal},
                            status=IN_REVIEW)
    approval = stack.jira.add_jsm_approval(key, "DBA approval", approvers, required=required)
    return key, approval


def _jsm_transition(stack: Stack, key: str) -> None:
    # JSM runs the approval's transition as an automation user, not as the approver.
    bot = stack.jira.add_user("557058:automation", "Automation for Jira")
    stack.transition(key, RESOLVED, author=bot)


def test_jsm_approval_by_a_group_member_grants(stack: Stack) -> None:
    member = stack.jira.add_user("712020:dba-member", "Dora DBA", groups=[DBA])
    principal = stack.create_principal()
    key, approval = _jsm_ticket(stack, principal, requested="warehouse-read", approvers=[member])
    stack.jira.decide_jsm_approval(key, approval, member["accountId"], "approve")
    _jsm_transition(stack, key)
    _active(stack, key)
    assert stack.is_member(principal)
    assert stack.audit("grant.issued", key)[0]["approver"]["id"] == member["accountId"]


def test_jsm_approval_by_an_outsider_is_denied(stack: Stack) -> None:
    outsider = stack.jira.add_user("712020:not-dba", "Oscar Outsider")
    principal = stack.create_principal()
    key, approval = _jsm_ticket(stack, principal, requested="warehouse-read",
                                approvers=[outsider])
    stack.jira.decide_jsm_approval(key, approval, outsider["accountId"], "approve")
    _jsm_transition(stack, key)
    denied = wait_for(lambda: stack.audit("grant.denied", key), what="denial")
    assert [d["reason"] for d in denied] == ["approver_not_allowed"]
    assert stack.grants_of(key) == []


def test_n_of_m_approvals(stack: Stack) -> None:
    first = stack.jira.add_user("712020:dba-a", "DBA A", groups=[DBA])
    second = stack.jira.add_user("712020:dba-b", "DBA B", groups=[DBA])
    principal = stack.create_principal()

    short, approval = _jsm_ticket(stack, principal, requested="warehouse-admin",
                                  approvers=[first, second], required=1)
    stack.jira.decide_jsm_approval(short, approval, first["accountId"], "approve")
    _jsm_transition(stack, short)
    denied = wait_for(lambda: stack.audit("grant.denied", short), what="denial")
    assert [d["reason"] for d in denied] == ["insufficient_approvals"]
    assert stack.grants_of(short) == []

    enough, approval = _jsm_ticket(stack, principal, requested="warehouse-admin",
                                   approvers=[first, second], required=2)
    stack.jira.decide_jsm_approval(enough, approval, first["accountId"], "approve")
    stack.jira.decide_jsm_approval(enough, approval, second["accountId"], "approve")
    _jsm_transition(stack, enough)
    _active(stack, enough)
    issued = stack.audit("grant.issued", enough)[0]
    assert issued["principal"] == principal
