"""Metrics and notifications on real components: /metrics sums the counters of the web
process and of the Celery prefork children; a local HTTP receiver plays the Slack
incoming webhook (filtered messages, retried 5xx, and a dead receiver that must not
hold up a revocation)."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import APPROVED, DONE, Stack, wait_for
from worker.doubles.jira import jira_delivery

pytestmark = pytest.mark.integration

# The path of an incoming-webhook URL is its credential: it must show nowhere.
HOOK_PATH = "/services/T0/B0/SENTINEL" + uuid.uuid4().hex

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class _Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        server: Any = self.server
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
        with server.lock:
            status = server.script.pop(0) if server.script else 200
            server.received.append((self.path, status, body))
        self.send_response(status)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


class Receiver:
    """A Slack-compatible incoming webhook on 127.0.0.1; ``script`` holds the statuses of
    the next answers (then 200)."""

    def __init__(self) -> None:
        self.server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
        self.server.lock, self.server.script, self.server.received = threading.Lock(), [], []
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{HOOK_PATH}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.running = True

    def script(self, *statuses: int) -> None:
        with self.server.lock:
            self.server.script[:] = list(statuses)

    def received(self) -> list[tuple[str, int, dict[str, Any]]]:
        with self.server.lock:
            return list(self.server.received)

    def texts(self, status: int = 200) -> list[str]:
        return [body["text"] for _, code, body in self.received() if code == status]

    def stop(self) -> None:
        if self.running:
            self.server.shutdown()
            self.server.server_close()  # the port now refuses connections
            self.running = False


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    yield hook
    hook.stop()


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack], receiver: Receiver) -> Stack:
    return stack_factory(extra_env={
        "JITGATE_NOTIFY_WEBHOOK_URL": receiver.url,
        # grant.denied is left out: the filter is checked with a denial below
        "JITGATE_NOTIFY_EVENTS": "grant.issued,grant.revoked,grant.revoke_failed",
        "JITGATE_NOTIFY_MAX_ATTEMPTS": "3",
        "JITGATE_NOTIFY_TIMEOUT": "2",
        "JITGATE_RETRY_BASE_DELAY": "0.1",
    })


def scrape(stack: Stack) -> Samples:
    response = stack.client.get("/metrics")
    assert response.status_code == 200, response.text
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def grant_and_close(stack: Stack, principal: str, *, identifier: str | None = None) -> str:
    key = stack.new_ticket(principal=principal)
    approve = stack.jira.transition(key, APPROVED, author=stack.approver)
    assert stack.post(approve, identifier=identifier).status_code == 202
    wait_for(lambda: any(g.state == "active" for g in stack.grants_of(key)), what="grant")
    stack.transition(key, DONE)
    wait_for(lambda: stack.grants_of(key)[0].state == "revoked", timeout=30, what="revoked")
    return key


def test_metrics_count_a_flow_in_the_web_and_the_workers(
    stack: Stack, receiver: Receiver
) -> None:
    before = scrape(stack)
    assert "jitgate_revoke_failed" in {name for name, _ in before}  # ledger gauges stay

    key = stack.new_ticket(principal=stack.create_principal())
    approve = stack.jira.transition(key, APPROVED, author=stack.approver)
    forged, headers = jira_delivery(approve, secret="not-the-secret", identifier="forged")
    assert stack.client.post("/webhooks/jira", content=forged,
                             headers=headers).status_code == 401
    delivery = "approve-" + key
    assert stack.post(approve, identifier=delivery).status_code == 202
    assert stack.post(approve, identifier=delivery).json()["status"] == "duplicate"
    wait_for(lambda: any(g.state == "active" for g in stack.grants_of(key)), what="grant")
    stack.transition(key, DONE)
    wait_for(lambda: stack.grants_of(key)[0].state == "revoked", timeout=30, what="revoked")

    def delta(name: str, **labels: str) -> float:
        return value(scrape(stack), name, **labels) - value(before, name, **labels)

    # web process: answers and rejections
    assert delta("jitgate_webhooks_rejected_total", source="jira", reason="bad_signature") == 1
    assert delta("jitgate_webhooks_received_total", source="jira", outcome="accepted") == 2
    assert delta("jitgate_webhooks_received_total", source="jira", outcome="duplicate") == 1
    # worker processes: counted from the audit events they committed and their tasks
    wait_for(lambda: delta("jitgate_decisions_total", outcome="revoked") == 1,
             timeout=10, what="revocation counted")
    assert delta("jitgate_decisions_total", outcome="issued") == 1
    target = {"target": "warehouse"}
    assert delta("jitgate_grant_latency_seconds_count", **target) == 1
    assert delta("jitgate_revoke_latency_seconds_count", **target, reason="ticket_closed") == 1
    after = scrape(stack)
    # approval → grant and close → revoke take seconds here, not minutes
    assert after[("jitgate_grant_latency_seconds_bucket",
                  frozenset({**target, "le": "60.0"}.items()))] == after[
        ("jitgate_grant_latency_seconds_count", frozenset(target.items()))]
    wait_for(lambda: total(scrape(stack), "jitgate_events_processed_total")
             - total(before, "jitgate_events_processed_total") >= 2,
             timeout=10, what="events counted")
    # the worker's prefork children wrote their own files next to the web process's
    files = list(stack.settings.metrics_path.glob("*.db"))
    pids = {int(path.stem.rsplit("_", 1)[1]) for path in files}
    assert pids - {os.getpid()}, files
    # this flow's notifications are out before the next test scripts the receiver
    wait_for(lambda: [t for t in receiver.texts() if key in t and "Revoked" in t],
             timeout=20, what="revoke notification")


def test_filtered_notifications_arrive_and_5xx_is_retried(
    stack: Stack, receiver: Receiver
) -> None:
    # A denial first: grant.denied is not in JITGATE_NOTIFY_EVENTS.
    denied = stack.new_ticket(principal=stack.create_principal(), reporter=stack.approver)
    stack.transition(denied, APPROVED)
    wait_for(lambda: stack.audit("grant.denied", denied), what="denial")

    receiver.script(500, 500)  # the next message is answered 500 twice, then 200
    seen = len(receiver.received())
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    stack.transition(key, APPROVED)

    def mine(word: str) -> list[str]:
        return [t for t in receiver.texts() if key in t and word in t]

    issued = wait_for(lambda: mine("Granted"), timeout=20, what="grant notification")
    # the message met 500, 500 and was delivered by the third attempt
    assert [code for _, code, _ in receiver.received()[seen:]] == [500, 500, 200]
    stack.transition(key, DONE)
    revoked = wait_for(lambda: mine("Revoked"), timeout=20, what="revoke notification")
    assert len(mine("Granted")) == 1 and len(revoked) == 1
    assert f"Granted `{stack.role}` on `warehouse` to `{principal}` until " in issued[0]
    assert "approved by Jane Approver" in issued[0]
    assert f"Revoked `{stack.role}` on `warehouse` from `{principal}`" in revoked[0]
    assert "reason: ticket_closed" in revoked[0]
    assert all(path == HOOK_PATH for path, _, _ in receiver.received())
    assert not [t for t in receiver.texts() if denied in t or "Denied" in t]
    samples = scrape(stack)
    assert value(samples, "jitgate_notifications_total",
                 event="grant.issued", outcome="retry") >= 2
    assert value(samples, "jitgate_notifications_total",
                 event="grant.revoked", outcome="sent") >= 1


def test_a_dead_receiver_does_not_delay_revocation(stack: Stack, receiver: Receiver) -> None:
    receiver.stop()
    started = time.monotonic()
    key = grant_and_close(stack, stack.create_principal())
    # grant and revocation went through while every notification failed to connect
    assert time.monotonic() - started < 30
    assert stack.grants_of(key)[0].revoke_reason == "ticket_closed"
    wait_for(lambda: value(scrape(stack), "jitgate_notifications_total",
                           event="grant.revoked", outcome="failed") >= 1,
             timeout=20, what="notification given up after its attempts")
    logs = stack.worker_logs()
    assert '"notify.retry"' in logs and '"notify.failed"' in logs
    assert HOOK_PATH not in logs  # the URL is never logged
    assert HOOK_PATH not in stack.client.get("/metrics").text
