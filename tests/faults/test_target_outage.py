"""The target PostgreSQL goes down (the suite's own cluster, stopped with pg_ctl) and
comes back.

Fail safe for revocations: the revoke retries with backoff, becomes visible as
``revoke_failed`` (audit event, metric, ticket comment) and keeps trying; once the
cluster is started again it reaches ``revoked`` with nobody touching it.
Fail closed for grants: an approval arriving while the target is down grants nothing
and records no ``grant.issued`` until the target really applied it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from tests.faults.conftest import FaultStack
from tests.faults.control import PgCluster
from tests.integration.conftest import APPROVED, DONE, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    owned = PgCluster()
    yield owned
    owned.destroy()


@pytest.fixture(scope="module")
def fs(fault_stack_factory: Callable[..., FaultStack], cluster: PgCluster) -> FaultStack:
    built = fault_stack_factory({"JG_TEST_TARGET_DSN": cluster.dsn()})
    built.stack.target_dsn = cluster.dsn()  # principals and checks on our cluster
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(built.stack.role)))
    built.workers.worker()
    built.workers.beat()
    return built


@pytest.fixture(autouse=True)
def _cluster_up(cluster: PgCluster) -> Iterator[None]:
    cluster.start()
    yield
    cluster.start()


def _grant(fs: FaultStack, key: str) -> object:
    (row,) = fs.stack.grants_of(key)
    return row


def test_target_stopped_during_revoke_then_started(fs: FaultStack, cluster: PgCluster) -> None:
    stack = fs.stack
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    stack.transition(key, APPROVED)
    wait_for(lambda: stack.grants_of(key) and _grant(fs, key).state == "active", timeout=30,
             what="active")
    assert stack.is_member(principal)

    other = stack.create_principal()  # for the approval that arrives during the outage
    cluster.stop()
    stack.transition(key, DONE)
    wait_for(lambda: _grant(fs, key).state == "revoke_failed", timeout=30,
             what="revoke_failed after repeated attempts")
    failed = _grant(fs, key)
    assert failed.attempts >= 5
    assert failed.last_error.startswith("TransientError")
    assert [e["reason"] for e in stack.audit("grant.revoke_failed", key)] == ["ticket_closed"]
    assert stack.metric("jitgate_revoke_failed") >= 1
    wait_for(lambda: any("not yet been able to revoke" in c for c in stack.jira.comments(key)),
             timeout=30, what="revoke_failed comment on the ticket")
    wait_for(lambda: _grant(fs, key).attempts > failed.attempts + 1, timeout=15,
             what="still retrying on its own")

    # Meanwhile a new approval: fail closed, nothing issued while the target is down.
    late_key = stack.new_ticket(principal=other)
    stack.transition(late_key, APPROVED)
    wait_for(lambda: stack.grants_of(late_key) and _grant(fs, late_key).attempts >= 1,
             timeout=30, what="grant attempted against the dead target")
    assert _grant(fs, late_key).state == "pending"
    assert stack.audit("grant.issued", late_key) == []

    cluster.start()
    wait_for(lambda: _grant(fs, key).state == "revoked", timeout=30,
             what="revoked after the target came back")
    assert not stack.is_member(principal)
    revoked = stack.audit("grant.revoked", key)
    assert [e["reason"] for e in revoked] == ["ticket_closed"]
    assert revoked[0]["outcome"] == "applied"
    assert len(stack.audit("grant.revoke_failed", key)) == 1
    wait_for(lambda: stack.metric("jitgate_revoke_failed") == 0, timeout=15,
             what="revoke_failed gauge back to 0")

    wait_for(lambda: _grant(fs, late_key).state == "active", timeout=30,
             what="the held-back grant applied once the target is up")
    assert stack.is_member(other)
    assert len(stack.audit("grant.issued", late_key)) == 1
    fs.check([principal, other])
