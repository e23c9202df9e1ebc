"""T06: a task outlives the broker's visibility timeout and is delivered a second time
while the first copy still runs.

Setting: worker A allows long tasks (visibility 60 s, time limits 30/40 s); worker B
shares the broker with a visibility timeout of 10 s (reliability.md R4: the shortest
value wins). The target's wire is frozen (``FaultProxy.pause``) while A is inside its
target call, holding the grant's ledger row lock. After 10 s B starts, restores A's
unacknowledged message and runs it, and a third copy (an apply_grant task, as a retry
would send) waits on the grant's row lock. When the wire thaws, A's GRANT lands and
commits; every other copy then finds the grant active: one target change, one audit
event.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

from tests.faults.conftest import FaultStack
from tests.integration.conftest import APPROVED, wait_for
from tests.support.proxy import FaultProxy, proxied_pg_url, upstream_of

pytestmark = pytest.mark.integration

LONG = {
    "JITGATE_VISIBILITY_TIMEOUT": "60",
    "JITGATE_TASK_SOFT_TIME_LIMIT": "30",
    "JITGATE_TASK_TIME_LIMIT": "40",
}


@pytest.fixture(scope="module")
def proxy(pg_url: str) -> Iterator[FaultProxy]:
    with FaultProxy(upstream_of(pg_url)) as running:
        yield running


@pytest.fixture(scope="module")
def fs(fault_stack_factory: Callable[..., FaultStack], proxy: FaultProxy,
       pg_url: str) -> FaultStack:
    return fault_stack_factory({"JG_TEST_TARGET_DSN": proxied_pg_url(pg_url, proxy)})


def _grants(fs: FaultStack, key: str) -> list[str]:
    return [g.state for g in fs.stack.grants_of(key)]


def _task_lines(log: str, name: str) -> list[dict[str, object]]:
    out = []
    for line in log.splitlines():
        if line.startswith("{") and name in line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def test_task_past_visibility_timeout_runs_twice_with_one_effect(
    fs: FaultStack, proxy: FaultProxy
) -> None:
    stack = fs.stack
    slow = fs.workers.worker(concurrency=1, env=LONG)

    # Warm up: A's only pool process opens (and keeps) its target connection.
    warm = stack.create_principal()
    warm_key = stack.new_ticket(principal=warm)
    stack.transition(warm_key, APPROVED)
    wait_for(lambda: _grants(fs, warm_key) == ["active"], timeout=30, what="warm-up grant")

    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    proxy.pause()
    try:
        posted = time.monotonic()
        stack.transition(key, APPROVED)
        # A decided (pending grant committed) and is now stuck inside target.grant().
        wait_for(lambda: _grants(fs, key) == ["pending"], timeout=15, what="pending grant")
        time.sleep(max(0.0, posted + 10.5 - time.monotonic()))
        assert slow.poll() is None and _grants(fs, key) == ["pending"]

        restorer = fs.workers.worker()  # visibility timeout 10 s: restores A's message
        wait_for(lambda: any("already_processed" in str(e.get("event"))
                             for e in _task_lines(fs.workers.log_of(restorer),
                                                  "jitgate.process_event")),
                 timeout=20, what="the redelivered copy ran on worker B")
        # ...while the first copy was still inside the target call.
        assert _grants(fs, key) == ["pending"]
        assert not stack.is_member(principal)
        # A third copy of the work, as a retry follow-up would send it: it reaches
        # apply_grant and waits on the grant's row lock that A holds.
        (grant_id,) = [g.id for g in stack.grants_of(key)]
        stack.send("jitgate.apply_grant", grant_id)
        wait_for(lambda: "jitgate.apply_grant[" in fs.workers.log_of(restorer), timeout=10,
                 what="B received the apply_grant copy")
        time.sleep(1)
        assert not _task_lines(fs.workers.log_of(restorer), "apply_grant[") or not any(
            "succeeded" in str(e["event"]) for e in
            _task_lines(fs.workers.log_of(restorer), "apply_grant[")), "it must wait"
    finally:
        proxy.resume()

    wait_for(lambda: _grants(fs, key) == ["active"], timeout=30, what="granted once thawed")
    assert stack.is_member(principal)
    issued = stack.audit("grant.issued", key)
    assert len(issued) == 1, issued
    assert issued[0]["outcome"] == "applied"  # the only target change
    received = [e for e in _task_lines(fs.workers.log_of(slow), "process_event[")
                if str(e.get("event", "")).endswith("received")]
    assert received, "worker A ran the first copy"
    task_id = str(received[-1]["event"]).split("[", 1)[1].split("]", 1)[0]
    assert task_id in fs.workers.log_of(restorer), "B ran the same message (same task id)"
    # The copy that waited on the row lock finds the grant active: a no-op.
    wait_for(lambda: any("apply_grant[" in str(e["event"]) and "succeeded" in str(e["event"])
                         and "'active'" in str(e["event"])
                         for e in _task_lines(fs.workers.log_of(restorer), "apply_grant[")),
             timeout=15, what="the waiting apply_grant copy finished as a no-op")
    assert len(stack.audit("grant.issued", key)) == 1
    fs.check([warm, principal])
