"""Revocation that cannot be forgotten: expiry, staleness, polling, drift, refcounts,
manual revoke, and racing sweeps — with real worker and beat processes."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import update

from tests.integration.conftest import APPROVED, DONE, Stack, wait_for
from worker.ledger.schema import grants, tickets

pytestmark = pytest.mark.integration

FAST = {
    "JITGATE_SWEEP_INTERVAL": "1",
    "JITGATE_STUCK_AFTER": "2",
    "JITGATE_RETRY_BASE_DELAY": "0.05",
    "JITGATE_REVOKE_RETRY_MAX_BACKOFF": "0.5",
}


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack]) -> Stack:
    built = stack_factory(extra_env=FAST)
    built.start_beat()
    return built


def _active(stack: Stack, key: str) -> object:
    return wait_for(
        lambda: next((g for g in stack.grants_of(key) if g.state == "active"), None),
        what=f"{key} active",
    )


def test_expiry_revokes_within_sweep_interval(stack: Stack) -> None:
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal, requested="warehouse-short")
    stack.transition(key, APPROVED)
    _active(stack, key)
    assert stack.is_member(principal)
    grant = wait_for(lambda: next((g for g in stack.grants_of(key) if g.state == "revoked"), None),
                     timeout=20, what="expiry")
    assert grant.revoke_reason == "expired"
    # sweep interval (1 s) + task latency; generous for a shared 2-core machine
    assert grant.revoked_at - grant.expires_at < timedelta(seconds=5)
    assert not stack.is_member(principal)
    assert [e["reason"] for e in stack.audit("grant.revoked", key)] == ["expired"]


def test_stale_ticket_is_revoked(stack: Stack) -> None:
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    stack.transition(key, APPROVED)
    grant = _active(stack, key)
    # The ticket has not changed for longer than stale_after (72 h by default).
    with stack.runtime.ledger.tx() as conn:
        conn.execute(update(tickets).where(tickets.c.uid == grant.ticket_uid)
                     .values(updated_at=datetime.now(UTC) - timedelta(hours=73)))
    wait_for(lambda: stack.grants_of(key)[0].state == "revoked", what="stale revocation")
    assert stack.grants_of(key)[0].revoke_reason == "stale"
    assert not stack.is_member(principal)


def test_reference_counting_keeps_a_shared_role_until_the_last_ticket_ends(stack: Stack) -> None:
    principal = stack.create_principal()
    first = stack.new_ticket(principal=principal)
    second = stack.new_ticket(principal=principal)
    stack.transition(first, APPROVED)
    stack.transition(second, APPROVED)
    _active(stack, first)
    _active(stack, second)

    stack.transition(first, DONE)
    wait_for(lambda: stack.grants_of(first)[0].state == "revoked", what="first revoked")
    assert stack.is_member(principal), "the second ticket still needs the role"
    assert stack.audit("grant.revoked", first)[0]["outcome"] == "shared"

    stack.transition(second, DONE)
    wait_for(lambda: stack.grants_of(second)[0].state == "revoked", what="second revoked")
    assert not stack.is_member(principal)
    assert stack.audit("grant.revoked", second)[0]["outcome"] == "applied"


def test_close_missed_by_the_listener_is_caught_by_one_poll(stack: Stack) -> None:
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    stack.transition(key, APPROVED)
    _active(stack, key)
    stack.jira.transition(key, DONE, author=stack.approver)  # the webhook never arrives
    stack.send("jitgate.poll_sources")
    wait_for(lambda: stack.grants_of(key)[0].state == "revoked", what="revoked after poll")
    assert stack.grants_of(key)[0].revoke_reason == "ticket_closed"
    assert not stack.is_member(principal)


def _grant_directly(stack: Stack, principal: str) -> None:
    with psycopg.connect(stack.target_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(stack.role),
                                                    sql.Identifier(principal)))


def _revoke_directly(stack: Stack, principal: str) -> None:
    with psycopg.connect(stack.target_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(stack.role),
                                                       sql.Identifier(principal)))


def _drift(stack: Stack, principal: str) -> list[dict[str, object]]:
    return [e for e in stack.audit("drift.detected") if e["principal"] == principal]


def test_drift_is_reported_and_repaired_where_enforced(stack: Stack) -> None:
    # Someone granted the managed role by hand, outside any ticket.
    intruder = stack.create_principal()
    _grant_directly(stack, intruder)
    # A service account outside the target's principal pattern: reported, never touched.
    service = f"svc_{stack.token}_{uuid.uuid4().hex[:4]}"
    with psycopg.connect(stack.target_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(service)))
    _grant_directly(stack, service)
    # A ledger-active grant whose membership vanished from the target.
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    stack.transition(key, APPROVED)
    _active(stack, key)
    _revoke_directly(stack, principal)

    stack.send("jitgate.reconcile_targets")
    wait_for(lambda: _drift(stack, intruder) and _drift(stack, principal)
             and _drift(stack, service), what="drift findings")
    def seen(who: str) -> list[tuple[object, object]]:
        return [(e["kind"], e["action"]) for e in _drift(stack, who)]

    assert seen(intruder) == [("unmanaged", "revoked")]
    assert seen(service) == [("unmanaged", "reported")]
    assert seen(principal) == [("missing", "reapplied")]
    assert not stack.is_member(intruder)
    assert stack.is_member(service)
    assert stack.is_member(principal)
    assert stack.metric("jitgate_drift_open") >= 1  # the service account stays reported

    # Reported once while it lasts, not on every pass.
    stack.send("jitgate.reconcile_targets")
    stack.send("jitgate.reconcile_targets")
    wait_for(lambda: stack.queue_length() == 0, what="reconcile drained")
    assert len(_drift(stack, service)) == 1


def test_manual_revoke_requires_a_reason(stack: Stack) -> None:
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    stack.transition(key, APPROVED)
    grant = _active(stack, key)

    refused = stack.cli("revoke", grant.id)
    assert refused.returncode == 2
    assert "--reason" in refused.stderr
    assert stack.cli("revoke", grant.id, "--reason", "   ").returncode == 2
    assert stack.is_member(principal)

    done = stack.cli("revoke", grant.id, "--reason", "contractor left early")
    assert done.returncode == 0, done.stderr
    assert stack.grants_of(key)[0].state == "revoked"
    assert not stack.is_member(principal)
    event = stack.audit("grant.revoked", key)[0]
    assert (event["reason"], event["note"]) == ("manual", "contractor left early")
    assert stack.cli("revoke", "no-such-grant", "--reason", "x").returncode == 1


def test_permanent_grant_failure_is_recorded_once_without_retries(stack: Stack) -> None:
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal, requested="warehouse-missing-role")
    stack.transition(key, APPROVED)
    grant = wait_for(lambda: next((g for g in stack.grants_of(key) if g.state == "grant_failed"),
                                  None), what="grant_failed")
    assert grant.last_error == "PermanentError:role_missing"
    failed = stack.audit("grant.failed", key)
    assert [e["reason"] for e in failed] == ["role_missing"]
    wait_for(lambda: any("could not grant" in c for c in stack.jira.comments(key)),
             what="failure comment")
    # No retry storm: several sweep intervals later it was still tried once.
    time.sleep(3)
    assert stack.grants_of(key)[0].attempts == 1
    assert stack.grants_of(key)[0].state == "grant_failed"
    assert len(stack.audit("grant.failed", key)) == 1


def test_multi_target_grant_is_all_or_nothing(stack: Stack) -> None:
    """The second target refuses: the first target's grant is rolled back."""
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal, requested="warehouse-multi")
    stack.transition(key, APPROVED)
    wait_for(lambda: {g.state for g in stack.grants_of(key)} == {"grant_failed", "revoked"},
             what="failure and rollback")
    by_target = {g.target: g for g in stack.grants_of(key)}
    assert by_target["warehouse-b"].state == "grant_failed"
    assert by_target["warehouse"].state == "revoked"
    assert by_target["warehouse"].revoke_reason == "partial_failure"
    assert not stack.is_member(principal)
    failed = stack.audit("grant.failed", key)
    assert len(failed) == 1
    assert failed[0]["target"] == "warehouse-b"
    wait_for(lambda: any("rolled back" in c for c in stack.jira.comments(key)),
             what="comment saying why")


def test_revoke_ends_sessions_opened_before_it(stack: Stack) -> None:
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    stack.transition(key, APPROVED)
    _active(stack, key)
    info = psycopg.conninfo.conninfo_to_dict(stack.target_dsn)
    info["user"] = principal
    session = psycopg.connect(**info, autocommit=True)
    session.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(stack.role)))

    stack.transition(key, DONE)
    wait_for(lambda: stack.grants_of(key)[0].state == "revoked", what="revoked")
    assert stack.audit("grant.revoked", key)[0]["sessions_terminated"] == 1
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    session.close()


def test_targets_check_reports_readiness(stack: Stack) -> None:
    done = stack.cli("targets", "check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warehouse: ok" in done.stdout
    assert "warehouse-b: ok" in done.stdout


def test_status_and_worker_liveness(stack: Stack) -> None:
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    stack.transition(key, APPROVED)
    _active(stack, key)
    done = stack.cli("status", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["grants"]["active"] >= 1
    assert isinstance(report["queue_depth"], int)
    assert "oldest_revoke_failed" in report
    human = stack.cli("status")
    assert "grants:" in human.stdout and "queue depth:" in human.stdout
    alive = stack.cli("alive")
    assert alive.returncode == 0, alive.stderr
    stale = stack.cli("alive", "--max-age", "0")
    assert stale.returncode == 1


def test_mass_expiry_revokes_in_batches_keeping_every_rule(stack: Stack) -> None:
    """Many grants expiring at one instant go through the batched path (one ledger
    transaction and one target call per chunk): every one is revoked on the target
    with one audit event and one ticket comment, a membership another ticket still
    needs is kept, live sessions of principals left with nothing are ended, and the
    audit chain stays intact."""
    principals = [stack.create_principal() for _ in range(12)]
    keys = [stack.new_ticket(principal=p) for p in principals]
    sharing = stack.new_ticket(principal=principals[0])  # a second ticket, same role
    for key in [*keys, sharing]:
        stack.transition(key, APPROVED)
    ids = [str(_active(stack, key).id) for key in keys]  # type: ignore[attr-defined]
    _active(stack, sharing)
    info = psycopg.conninfo.conninfo_to_dict(stack.target_dsn)
    info["user"] = principals[1]
    session = psycopg.connect(**info, autocommit=True)

    with stack.runtime.ledger.tx() as conn:  # all at once, as the benchmark does
        conn.execute(update(grants).where(grants.c.id.in_(ids))
                     .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    for key in keys:
        wait_for(lambda k=key: stack.grants_of(k)[0].state == "revoked", what=f"{key} expired")

    assert stack.is_member(principals[0]), "the sharing ticket still needs the role"
    assert not any(stack.is_member(p) for p in principals[1:])
    assert stack.grants_of(sharing)[0].state == "active"
    events = {e["ticket"]["key"]: e for e in stack.audit("grant.revoked")
              if e["ticket"]["key"] in keys}
    assert sorted(events) == sorted(keys)
    assert all(e["reason"] == "expired" for e in events.values())
    assert events[keys[0]]["outcome"] == "shared"
    assert {events[k]["outcome"] for k in keys[1:]} == {"applied"}
    assert events[keys[1]]["sessions_terminated"] == 1
    with pytest.raises(psycopg.OperationalError):
        session.execute("SELECT 1")
    session.close()
    for key in keys:
        wait_for(lambda k=key: any("revoked" in c for c in stack.jira.comments(k)),
                 what=f"{key} comment")
        assert sum("revoked" in c for c in stack.jira.comments(key)) == 1
    assert stack.cli("audit", "verify").returncode == 0
