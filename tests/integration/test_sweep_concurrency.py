"""Two sweepers (and a beat) racing over 1,000 expired grants: each is revoked exactly
once — one target change and one audit event per grant. Its own stack, so the burst
of follow-up work does not delay other tests' workers."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import insert

from tests.integration.conftest import Stack, wait_for
from worker import sweeps
from worker.ledger import store
from worker.ledger.schema import grants
from worker.runtime import Runtime

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack]) -> Stack:
    built = stack_factory(extra_env={"JITGATE_SWEEP_INTERVAL": "1"})
    built.start_beat()
    return built


def test_two_concurrent_sweeps_revoke_each_expired_grant_once(stack: Stack) -> None:
    count = 1000
    names = [f"ctr_{stack.token}_b{i:04d}" for i in range(count)]
    with psycopg.connect(stack.target_dsn, autocommit=True) as conn, conn.transaction():
        for name in names:
            conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(stack.role),
                                                        sql.Identifier(name)))
    past = datetime.now(UTC) - timedelta(minutes=1)
    ticket = f"jira:9{uuid.uuid4().int % 10**9}"
    rows = [
        {"id": str(uuid.uuid4()), "ticket_uid": ticket, "ticket_key": "BULK-1",
         "policy": "warehouse-read", "policy_digest": "sha256:test", "target": "warehouse",
         "role": stack.role, "principal": name, "approval_ref": "h1", "state": "active",
         "starts_at": past - timedelta(hours=1), "expires_at": past, "created_at": past,
         "granted_at": past, "updated_at": past,
         "grant_key": store.grant_key(ticket_uid=ticket, policy="warehouse-read",
                                      target="warehouse", role=stack.role, principal=name,
                                      approval_ref="h1")}
        for name in names
    ]
    with stack.runtime.ledger.tx() as conn:
        conn.execute(insert(grants), rows)

    errors: list[BaseException] = []

    def sweeper() -> None:
        runtime = Runtime(stack.settings, env=stack.env)
        try:
            while sweeps.run(runtime).expired:
                pass
        except BaseException as exc:
            errors.append(exc)
        finally:
            runtime.close()

    threads = [threading.Thread(target=sweeper) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not errors
    # (the stack's own beat may have joined in: still exactly once)
    wait_for(lambda: all(g.state == "revoked" for g in stack.grants_of("BULK-1")),
             timeout=60, what="all revoked")
    events = stack.audit("grant.revoked", "BULK-1")
    assert len(events) == count
    assert len({e["grant_id"] for e in events}) == count
    assert sum(e["outcome"] == "applied" for e in events) == count
    with psycopg.connect(stack.target_dsn) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
            "WHERE r.rolname = %s AND m.member IN (SELECT oid FROM pg_roles "
            "WHERE rolname LIKE %s)", (stack.role, f"ctr_{stack.token}_b%"),
        ).fetchone()
    assert left == (0,)
