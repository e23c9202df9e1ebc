"""Revocation under faults: a target that is down, a broker that lost its queues.

The target PostgreSQL is reached through a TCP fault proxy, so "down" is a real
connection failure the connector has to live through, not a mock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.integration.conftest import APPROVED, DONE, Stack, wait_for
from tests.support.proxy import FaultProxy, proxied_pg_url, upstream_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def proxy(pg_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(upstream_of(pg_url)) as running:
        yield running


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack], proxy: FaultProxy, pg_url: str) -> Stack:
    built = stack_factory(extra_env={
        "JG_TEST_TARGET_DSN": proxied_pg_url(pg_url, proxy),
        "JITGATE_SWEEP_INTERVAL": "1",
        "JITGATE_STUCK_AFTER": "2",
        "JITGATE_RETRY_BASE_DELAY": "0.05",
        "JITGATE_REVOKE_RETRY_MAX_BACKOFF": "0.5",
    })
    built.start_beat()
    return built


@pytest.fixture(autouse=True)
def _target_up(proxy: FaultProxy) -> Iterator[None]:
    proxy.up()
    yield
    proxy.up()


def test_target_down_during_revoke_alerts_then_recovers_alone(
    stack: Stack, proxy: FaultProxy
) -> None:
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    stack.transition(key, APPROVED)
    wait_for(lambda: any(g.state == "active" for g in stack.grants_of(key)), what="active")
    assert stack.metric("jitgate_revoke_failed") == 0

    proxy.down()
    stack.transition(key, DONE)
    wait_for(lambda: stack.grants_of(key)[0].state == "revoke_failed", timeout=60,
             what="revoke_failed after N attempts")
    grant = stack.grants_of(key)[0]
    assert grant.attempts >= 5
    assert grant.last_error.startswith("TransientError")
    assert stack.is_member(principal), "the target really was unreachable"
    assert stack.metric("jitgate_revoke_failed") == 1
    failed = stack.audit("grant.revoke_failed", key)
    assert len(failed) == 1
    wait_for(lambda: any("not yet been able to revoke" in c for c in stack.jira.comments(key)),
             what="revoke_failed comment")
    # It keeps trying on its own, and reaches revoked once the target is back.
    attempts = grant.attempts
    wait_for(lambda: stack.grants_of(key)[0].attempts > attempts + 1, what="still retrying")

    proxy.up()
    wait_for(lambda: stack.grants_of(key)[0].state == "revoked", timeout=60,
             what="revoked after recovery")
    assert not stack.is_member(principal)
    assert stack.metric("jitgate_revoke_failed") == 0
    assert [e["reason"] for e in stack.audit("grant.revoked", key)] == ["ticket_closed"]
    assert len(stack.audit("grant.revoke_failed", key)) == 1


def test_flushed_broker_with_grants_pending_and_revoking_recovers_from_the_ledger(
    stack: Stack, proxy: FaultProxy
) -> None:
    # Two grants already active, to be revoked while the target is down.
    leaving = [stack.create_principal() for _ in range(2)]
    leaving_keys = [stack.new_ticket(principal=p) for p in leaving]
    for key in leaving_keys:
        stack.transition(key, APPROVED)
    for key in leaving_keys:
        wait_for(lambda k=key: any(g.state == "active" for g in stack.grants_of(k)),
                 what="active")

    proxy.down()
    for key in leaving_keys:
        stack.transition(key, DONE)
    arriving = [stack.create_principal() for _ in range(3)]
    arriving_keys = [stack.new_ticket(principal=p) for p in arriving]
    for key in arriving_keys:
        stack.transition(key, APPROVED)
    wait_for(lambda: all(stack.grants_of(k) and stack.grants_of(k)[0].attempts >= 1
                         for k in leaving_keys + arriving_keys),
             what="work in flight against the dead target")
    assert {stack.grants_of(k)[0].state for k in arriving_keys} == {"pending"}
    assert {stack.grants_of(k)[0].state for k in leaving_keys} <= {"revoking", "revoke_failed"}

    # The broker loses every queued message and scheduled retry.
    stack.purge_queue()
    proxy.up()

    for key in arriving_keys:
        wait_for(lambda k=key: stack.grants_of(k)[0].state == "active", timeout=60,
                 what="pending grant finished from the ledger")
    for key in leaving_keys:
        wait_for(lambda k=key: stack.grants_of(k)[0].state == "revoked", timeout=60,
                 what="revocation finished from the ledger")
    assert all(stack.is_member(p) for p in arriving)
    assert not any(stack.is_member(p) for p in leaving)
    for key in arriving_keys:
        assert len(stack.audit("grant.issued", key)) == 1
    for key in leaving_keys:
        assert len(stack.audit("grant.revoked", key)) == 1


def test_targets_check_names_an_unreachable_target(stack: Stack, proxy: FaultProxy) -> None:
    proxy.down()
    done = stack.cli("targets", "check")
    assert done.returncode == 1
    assert "warehouse: not ready (unavailable)" in done.stdout


def test_readiness_names_an_unreachable_target(stack: Stack, proxy: FaultProxy) -> None:
    from starlette.testclient import TestClient

    from worker.celery_app import create_celery
    from worker.runtime import Runtime
    from worker.webhooks.app import create_app

    proxy.down()
    client = TestClient(create_app(Runtime(stack.settings, env=stack.env),
                                   create_celery(stack.settings)))
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["problems"] == {"target:warehouse": "unavailable",
                                        "target:warehouse-b": "unavailable"}
    # The load balancer's probe: intake needs only the ledger and the broker, so a
    # target outage keeps the listener in rotation (revocations wait in the ledger).
    intake = client.get("/readyz", params={"scope": "intake"})
    assert (intake.status_code, intake.json()["problems"]) == (200, {})
    assert client.get("/readyz", params={"scope": "everything"}).status_code == 422
