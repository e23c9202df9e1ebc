"""Acceptance for ServiceNow: RITMs and change requests through the same pipeline,
with a real worker process, Redis, PostgreSQL and the Table API double."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from tests.integration.conftest import Stack, wait_for
from worker.doubles.servicenow import servicenow_delivery
from worker.ledger.schema import inbox

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack]) -> Stack:
    built = stack_factory(extra_env={"JITGATE_SWEEP_INTERVAL": "1", "JITGATE_STUCK_AFTER": "2"})
    built.start_beat()
    return built


def _grants(stack: Stack, number: str) -> list[object]:
    return stack.grants_of(number)


def _stored_deliveries(stack: Stack) -> int:
    """Inbox rows stored from ServiceNow webhooks. Not "unprocessed rows": the worker and
    beat (polls) of earlier tests may still be working those off meanwhile."""
    with stack.runtime.ledger.tx() as conn:
        return int(conn.execute(select(func.count()).select_from(inbox)
                                .where(inbox.c.delivery_key.like("servicenow:%"))).scalar_one())


def _ritm(stack: Stack, principal: str, *, requester: str | None = None) -> tuple[str, str]:
    requested_for = requester or stack.snow.add_user(f"contractor.{uuid.uuid4().hex[:6]}",
                                                     "Contractor")
    sys_id = stack.snow.create_ritm(requested_for=requested_for,
                                    cat_item_name="Warehouse access",
                                    variables={"db_user": principal})
    return sys_id, stack.snow.record("sc_req_item", sys_id)["number"]


def _approve(stack: Stack, sys_id: str, approver: str | None = None) -> None:
    stack.snow.add_approval(sys_id, approver or stack.snow_approver, state="approved")
    stack.snow.update("sc_req_item", sys_id, approval="approved", stage="request_approved")


def test_ritm_approved_granted_then_closed_revoked(stack: Stack) -> None:
    principal = stack.create_principal()
    sys_id, number = _ritm(stack, principal)
    _approve(stack, sys_id)
    stack.snow_event("sc_req_item", sys_id)

    grant = wait_for(lambda: next((g for g in _grants(stack, number) if g.state == "active"),
                                  None), what="grant active")
    assert grant.ticket_uid == f"servicenow:sc_req_item/{sys_id}"
    assert stack.is_member(principal)
    issued = stack.audit("grant.issued", number)
    assert len(issued) == 1
    assert issued[0]["approver"]["name"] == "jane.approver"
    wait_for(lambda: any("granted" in n for n in stack.snow.work_notes(sys_id)),
             what="work note on grant")

    stack.snow.update("sc_req_item", sys_id, state="3", active="false", stage="complete")
    stack.snow_event("sc_req_item", sys_id)
    wait_for(lambda: _grants(stack, number)[0].state == "revoked", what="revoked")
    assert not stack.is_member(principal)
    assert [e["reason"] for e in stack.audit("grant.revoked", number)] == ["ticket_closed"]
    wait_for(lambda: any("revoked" in n for n in stack.snow.work_notes(sys_id)),
             what="work note on revoke")


def test_ritm_rejected_is_denied(stack: Stack) -> None:
    principal = stack.create_principal()
    sys_id, number = _ritm(stack, principal)
    stack.snow.add_approval(sys_id, stack.snow_approver, state="rejected")
    stack.snow.update("sc_req_item", sys_id, approval="rejected")
    stack.snow_event("sc_req_item", sys_id)
    denied = wait_for(lambda: stack.audit("grant.denied", number), what="denial")
    assert [d["reason"] for d in denied] == ["request_rejected"]
    assert _grants(stack, number) == []
    assert not stack.is_member(principal)
    wait_for(lambda: any("did not grant" in n for n in stack.snow.work_notes(sys_id)),
             what="work note on denial")


def test_requester_approving_their_own_ritm_is_denied(stack: Stack) -> None:
    principal = stack.create_principal()
    # Jane is an allowed approver, but here she asks for access for herself.
    sys_id, number = _ritm(stack, principal, requester=stack.snow_approver)
    _approve(stack, sys_id, approver=stack.snow_approver)
    stack.snow_event("sc_req_item", sys_id)
    denied = wait_for(lambda: stack.audit("grant.denied", number), what="denial")
    assert [d["reason"] for d in denied] == ["self_approval"]
    assert _grants(stack, number) == []
    assert not stack.is_member(principal)


def test_out_of_order_close_before_approval_ends_without_access(stack: Stack) -> None:
    principal = stack.create_principal()
    sys_id, number = _ritm(stack, principal)
    _approve(stack, sys_id)
    approved = stack.snow.webhook("sc_req_item", sys_id)
    stack.snow.update("sc_req_item", sys_id, state="3", active="false")
    closed = stack.snow.webhook("sc_req_item", sys_id)
    assert closed["sys_mod_count"] > approved["sys_mod_count"]

    assert stack.post_snow(closed).status_code == 202
    assert stack.post_snow(approved).status_code == 202
    wait_for(lambda: stack.pending_deliveries() == 0, what="both processed")
    assert _grants(stack, number) == []
    assert stack.audit("grant.issued", number) == []
    assert not stack.is_member(principal)


def test_change_window_granted_at_start_and_revoked_at_end(stack: Stack) -> None:
    principal = stack.create_principal()
    requester = stack.snow.add_user(principal, "Window Contractor")
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    end = start + timedelta(seconds=4)
    sys_id = stack.snow.create_change(requested_by=requester, start=start, end=end)
    number = stack.snow.record("change_request", sys_id)["number"]
    stack.snow.add_approval(sys_id, stack.snow_approver, state="approved")
    stack.snow.update("change_request", sys_id, approval="approved", state="-2")
    stack.snow_event("change_request", sys_id)

    grant = wait_for(lambda: next(iter(_grants(stack, number)), None), what="grant recorded")
    assert grant.state == "pending"
    assert grant.starts_at == start
    assert grant.expires_at == end
    assert not stack.is_member(principal)

    active = wait_for(lambda: _grants(stack, number)[0].state == "active", timeout=20,
                      what="granted when the window opens")
    assert active
    granted_at = _grants(stack, number)[0].granted_at
    assert granted_at >= start
    assert stack.is_member(principal)

    wait_for(lambda: _grants(stack, number)[0].state == "revoked", timeout=20,
             what="revoked when the window ends")
    final = _grants(stack, number)[0]
    assert final.revoke_reason == "expired"
    assert final.revoked_at >= end
    assert not stack.is_member(principal)


def test_change_window_is_capped_by_max_duration(stack: Stack) -> None:
    principal = stack.create_principal()
    requester = stack.snow.add_user(principal, "Long Window")
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    sys_id = stack.snow.create_change(requested_by=requester, start=start,
                                      end=start + timedelta(days=3))
    number = stack.snow.record("change_request", sys_id)["number"]
    stack.snow.add_approval(sys_id, stack.snow_approver, state="approved")
    stack.snow.update("change_request", sys_id, approval="approved", state="-2")
    stack.snow_event("change_request", sys_id)
    grant = wait_for(lambda: next(iter(_grants(stack, number)), None), what="grant recorded")
    assert grant.expires_at - grant.starts_at == timedelta(hours=4)
    assert grant.state == "pending"


def test_ritm_closed_while_listener_was_down_is_revoked_after_one_poll(stack: Stack) -> None:
    principal = stack.create_principal()
    sys_id, number = _ritm(stack, principal)
    _approve(stack, sys_id)
    stack.snow_event("sc_req_item", sys_id)
    wait_for(lambda: any(g.state == "active" for g in _grants(stack, number)), what="active")
    stack.snow.update("sc_req_item", sys_id, state="3", active="false")  # no delivery
    stack.send("jitgate.poll_sources")
    wait_for(lambda: _grants(stack, number)[0].state == "revoked", what="revoked after poll")
    assert _grants(stack, number)[0].revoke_reason == "ticket_closed"
    assert not stack.is_member(principal)


@pytest.mark.parametrize("case", ["stale", "wrong_secret", "hex_mac", "missing", "future"])
def test_bad_signatures_are_refused_and_nothing_is_enqueued(stack: Stack, case: str) -> None:
    sys_id, _number = _ritm(stack, "ctr_nobody")
    payload = stack.snow.webhook("sc_req_item", sys_id)
    stored = _stored_deliveries(stack)
    now = int(time.time())
    body, headers = servicenow_delivery(payload, secret="snow-webhook-secret-7c21", ts=now)
    if case == "stale":
        body, headers = servicenow_delivery(payload, secret="snow-webhook-secret-7c21",
                                            ts=now - 600)
    elif case == "future":
        body, headers = servicenow_delivery(payload, secret="snow-webhook-secret-7c21",
                                            ts=now + 600)
    elif case == "wrong_secret":
        body, headers = servicenow_delivery(payload, secret="not-the-secret", ts=now)
    elif case == "hex_mac":
        import base64

        raw = base64.b64decode(headers["X-Jitgate-Signature"].removeprefix("v1="))
        headers["X-Jitgate-Signature"] = "v1=" + raw.hex()
    elif case == "missing":
        del headers["X-Jitgate-Signature"]
    response = stack.client.post("/webhooks/servicenow", content=body, headers=headers)
    assert response.status_code == 401, response.text
    assert _stored_deliveries(stack) == stored


def test_signed_as_the_business_rule_signs_is_accepted(stack: Stack) -> None:
    sys_id, _number = _ritm(stack, "ctr_nobody")
    response = stack.post_snow(stack.snow.webhook("sc_req_item", sys_id))
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
    again = stack.post_snow(stack.snow.webhook("sc_req_item", sys_id))
    assert again.json()["status"] == "duplicate"

