"""Process metrics (multiprocess files), the audit observer hook, and notification
formatting, filtering and delivery against a real local HTTP receiver."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from worker import metrics, notify, observers
from worker.ledger import audit
from worker.ledger.db import migrate
from worker.runtime import ConfigError, Runtime
from worker.settings import Settings

HOOK_PATH = "/services/T000/B000/SENTINELhookpath"
T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


@pytest.fixture
def metrics_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process counts into a fresh folder; the process-wide state is put back."""
    monkeypatch.setattr(metrics, "_current", None)
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    folder = tmp_path / "metrics"
    assert metrics.configure(folder)
    return folder


def _samples(folder: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(folder: Path, name: str, **labels: str) -> float:
    return _samples(folder).get((name, tuple(sorted(labels.items()))), 0.0)


# ------------------------------------------------------------------------- metrics


def test_counters_of_forked_children_add_up(metrics_dir: Path) -> None:
    """Celery prefork: configured before the fork, each child writes its own file."""
    metrics.webhook_rejected("jira", 401, "missing or invalid X-Hub-Signature")
    children = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:  # child: count, then leave without running pytest's teardown
            try:
                metrics.webhook_rejected("jira", 401, "missing or invalid X-Hub-Signature")
                metrics.event_processed("grant")
            finally:
                os._exit(0)
        children.append(pid)
    for pid in children:
        assert os.waitpid(pid, 0)[1] == 0
    assert _value(metrics_dir, "jitgate_webhooks_rejected_total",
                  source="jira", reason="bad_signature") == 3
    assert _value(metrics_dir, "jitgate_events_processed_total", outcome="grant") == 2
    # the children are gone; what they counted stays (the files are per pid)
    assert len(list(metrics_dir.glob("counter_*.db"))) == 3


def test_configure_is_idempotent_and_survives_an_unusable_folder(
    metrics_dir: Path, tmp_path: Path
) -> None:
    metrics.webhook_answered("jira", 202, b'{"status":"queued","delivery":"x"}')
    assert metrics.configure(metrics_dir)  # same folder: same instruments, same counts
    metrics.webhook_answered("jira", 202, b'{"status":"queued","delivery":"y"}')
    assert _value(metrics_dir, "jitgate_webhooks_received_total",
                  source="jira", outcome="accepted") == 2
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert not metrics.configure(blocker / "metrics")
    metrics.webhook_answered("jira", 202, b'{"status":"queued"}')  # counts nothing, no error


@pytest.mark.parametrize(
    ("status", "message", "reason"),
    [
        (401, "missing or invalid X-Hub-Signature", "bad_signature"),
        (401, "stale X-Jitgate-Timestamp", "bad_timestamp"),
        (401, "invalid basic credentials", "bad_credentials"),
        (413, "body larger than 1024 bytes", "too_large"),
        (415, "content type must be application/json", "unsupported_media"),
        (400, "not JSON", "bad_payload"),
        (422, "bad shape", "bad_payload"),
        (429, "rate limited, retry later", "rate_limited"),
        (404, "what", "http_404"),
    ],
)
def test_rejection_reasons_are_bounded_labels(status: int, message: str, reason: str) -> None:
    assert metrics.rejection_reason(status, message) == reason


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (202, b'{"status":"queued","delivery":"1"}', "accepted"),
        (202, b'{"status":"held","delivery":"1"}', "held"),
        (200, b'{"status":"duplicate","delivery":"1"}', "duplicate"),
        (200, b'{"status":"ignored","reason":"no policy"}', "ignored"),
        (503, b'{"error":"ledger unavailable"}', "unavailable"),
        (401, b'{"error":"bad"}', None),
        (200, b"not json", "other"),
    ],
)
def test_answer_outcomes(status: int, body: bytes, outcome: str | None) -> None:
    assert metrics.answer_outcome(status, body) == outcome


def test_event_outcomes_keep_their_kind_only() -> None:
    assert metrics.event_outcome("grant,revoke") == "grant,revoke"
    assert metrics.event_outcome("deferred:source_unavailable") == "deferred"
    assert metrics.event_outcome("error:auth_refused") == "error"
    assert metrics.event_outcome(RuntimeError("x")) == "exception"


def _event(name: str, seq: int = 1, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "seq": seq, "event": name, "ts": "2026-11-29T10:00:30Z",
        "ticket": {"source": "jira", "id": "10042", "key": "OPS-12",
                   "url": "https://jira.example.com/browse/OPS-12"},
        "grant_id": "g-1", "principal": "ctr_bob", "target": "warehouse",
        "role": "analytics_ro", "policy": "warehouse-read",
        "approver": {"id": "5b10", "name": "jane", "display": "Jane Approver"},
        "expires_at": "2026-11-29T18:00:00Z", "starts_at": "2026-11-29T10:00:00Z",
        "revoke_requested_at": None, "reason": None,
    }
    base.update(fields)
    return base


def test_latencies_come_from_the_event_times() -> None:
    assert metrics.grant_latency(_event("grant.issued")) == 30
    # clock skew between the source and the database: never negative
    assert metrics.grant_latency(_event("grant.issued", ts="2026-11-29T09:59:59Z")) == 0
    closed = _event("grant.revoked", ts="2026-11-29T11:00:02Z", reason="ticket_closed",
                    revoke_requested_at="2026-11-29T11:00:00Z")
    assert metrics.revoke_latency(closed) == 2
    expired = _event("grant.revoked", ts="2026-11-29T18:00:12Z", reason="expired",
                     revoke_requested_at="2026-11-29T18:00:10Z")
    assert metrics.revoke_latency(expired) == 12  # from the expiry, not the sweep
    assert metrics.revoke_latency(_event("grant.revoked", ts=None)) is None


def test_audit_observer_counts_decisions_latencies_and_drift(metrics_dir: Path) -> None:
    metrics.observe_audit([
        _event("grant.issued", 1),
        _event("grant.denied", 2, reason="self_approval"),
        _event("grant.revoked", 3, ts="2026-11-29T11:00:02Z", reason="ticket_closed",
               revoke_requested_at="2026-11-29T11:00:00Z"),
        _event("drift.detected", 4, kind="unmanaged", action="revoked"),
    ])
    assert _value(metrics_dir, "jitgate_decisions_total", outcome="issued") == 1
    assert _value(metrics_dir, "jitgate_decisions_total", outcome="denied") == 1
    assert _value(metrics_dir, "jitgate_decisions_total", outcome="revoked") == 1
    assert _value(metrics_dir, "jitgate_drift_findings_total",
                  target="warehouse", kind="unmanaged") == 1
    assert _value(metrics_dir, "jitgate_grant_latency_seconds_count", target="warehouse") == 1
    assert _value(metrics_dir, "jitgate_grant_latency_seconds_sum", target="warehouse") == 30
    assert _value(metrics_dir, "jitgate_grant_latency_seconds_bucket",
                  target="warehouse", le="30.0") == 1
    assert _value(metrics_dir, "jitgate_grant_latency_seconds_bucket",
                  target="warehouse", le="15.0") == 0
    assert _value(metrics_dir, "jitgate_revoke_latency_seconds_sum",
                  target="warehouse", reason="ticket_closed") == 2


def test_a_failing_observer_never_reaches_the_caller(metrics_dir: Path) -> None:
    seen: list[str] = []

    def broken(events: Any) -> None:
        raise RuntimeError("https://hooks.example.com/secret")

    audit.subscribe("test-broken", broken)
    audit.subscribe("test-seen", lambda events: seen.extend(e["event"] for e in events))
    try:
        audit.emit([_event("grant.issued")])
    finally:
        audit.unsubscribe("test-broken")
        audit.unsubscribe("test-seen")
    assert seen == ["grant.issued"]
    audit.emit([_event("grant.issued")])  # unsubscribed: not seen again
    assert seen == ["grant.issued"]


# ------------------------------------------------------------------- notifications


def _settings(tmp_path: Path, **values_: Any) -> Settings:
    return Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'l.sqlite3'}",
                    **values_)


def test_filter_defaults_events_targets_and_policies(tmp_path: Path) -> None:
    default = notify.Filter.from_settings(_settings(tmp_path))
    assert default.events == {"grant.revoke_failed", "drift.detected", "grant.issued",
                              "grant.revoked", "grant.denied"}
    assert not default.wants(_event("grant.failed"))
    narrow = notify.Filter.from_settings(_settings(
        tmp_path, notify_events=" grant.issued , drift.detected", notify_targets="warehouse",
        notify_policies="warehouse-read"))
    assert narrow.wants(_event("grant.issued"))
    assert not narrow.wants(_event("grant.issued", target="crm"))
    assert not narrow.wants(_event("grant.issued", policy="other"))
    # a drift finding carries no policy: the policy filter does not apply to it
    drift = _event("drift.detected", kind="unmanaged", action="reported")
    del drift["policy"]
    assert narrow.wants(drift)
    assert not narrow.wants(_event("grant.revoked"))


def test_bad_notification_settings_refuse_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"grant\.isued"):
        notify.Filter.from_settings(_settings(tmp_path, notify_events="grant.isued"))
    with pytest.raises(ConfigError, match="http"):
        notify.Notifier.from_settings(
            _settings(tmp_path, notify_webhook_url="hooks.example.com/x"), print)
    assert notify.Notifier.from_settings(_settings(tmp_path), print) is None


def test_the_webhook_url_is_a_secret_with_a_file_twin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"https://hooks.example.com{HOOK_PATH}"
    (tmp_path / "hook").write_text(url + "\n")
    monkeypatch.setenv("JITGATE_NOTIFY_WEBHOOK_URL_FILE", str(tmp_path / "hook"))
    settings = Settings()
    assert settings.notify_webhook_url is not None
    assert settings.notify_webhook_url.get_secret_value() == url
    assert "SENTINEL" not in repr(settings)


def test_messages_say_who_what_where_until_and_why() -> None:
    issued = notify.line(_event("grant.issued"))
    assert issued.startswith(":white_check_mark: Granted `analytics_ro` on `warehouse` "
                             "to `ctr_bob` until 2026-11-29 18:00 UTC")
    assert "<https://jira.example.com/browse/OPS-12|OPS-12>" in issued
    assert "approved by Jane Approver" in issued and "policy warehouse-read" in issued
    revoked = notify.line(_event("grant.revoked", reason="ticket_closed"))
    assert "Revoked `analytics_ro` on `warehouse` from `ctr_bob`" in revoked
    assert "reason: ticket_closed" in revoked
    failing = notify.line(_event("grant.revoke_failed", reason="expired",
                                 detail="target_unreachable", attempts=5))
    assert "keeps failing (target_unreachable, 5 attempts)" in failing
    denied = notify.line(_event("grant.denied", reason="self_approval",
                                detail="the requester cannot approve their own request"))
    assert "Denied <https://jira.example.com/browse/OPS-12|OPS-12>: the requester" in denied
    assert "rule: self_approval" in denied
    drift = notify.line({"seq": 9, "event": "drift.detected", "target": "warehouse",
                         "role": "analytics_ro", "principal": "ctr_eve", "kind": "unmanaged",
                         "action": "revoked"})
    assert drift == (":warning: Drift on `warehouse`: `ctr_eve` in `analytics_ro` "
                     "(unmanaged, action: revoked)")
    body = notify.message([_event("grant.issued"), _event("grant.revoked", 2)])
    assert body["text"].count("\n") == 1
    assert [b["type"] for b in body["blocks"]] == ["section", "section"]


def test_ticket_text_cannot_inject_slack_markup() -> None:
    denied = notify.line(_event(
        "grant.denied", reason="invalid_requested_duration",
        detail="cannot read the requested duration '<!channel> <https://evil|click> & x'",
        ticket={"source": "jira", "id": "1", "key": "OPS-1", "url": "javascript:alert(1)"}))
    assert "<!channel>" not in denied and "<https://evil" not in denied
    assert "&lt;!channel&gt;" in denied and "&amp;" in denied
    assert "javascript:" not in denied  # not a link: only the key is shown


# ---------------------------------------------------------- delivery (real receiver)


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        server: Any = self.server
        length = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(length))
        with server.lock:
            status, headers = server.script.pop(0) if server.script else (200, {})
            server.received.append((self.path, status, body))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Any]:
    server: Any = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.lock, server.script, server.received = threading.Lock(), [], []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}{HOOK_PATH}"
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def runtime(tmp_path: Path, receiver: Any) -> Iterator[Runtime]:
    rt = Runtime(_settings(tmp_path, notify_webhook_url=receiver.url, notify_max_attempts=3,
                           retry_base_delay=0.01))
    migrate(rt.ledger.engine)
    yield rt
    rt.close()


def _store(rt: Runtime, *events: dict[str, Any]) -> list[int]:
    seqs = []
    with rt.ledger.tx() as conn:
        for event in events:
            fields = {k: v for k, v in event.items() if k not in ("seq", "event", "ts")}
            stored = audit.append(rt.ledger, conn, event=event["event"],
                                  key=f"{event['event']}:{event['grant_id']}:{len(seqs)}",
                                  ts=T0 + timedelta(seconds=len(seqs)), fields=fields)
            assert stored is not None
            seqs.append(stored["seq"])
    return seqs


def test_delivery_posts_one_message_per_batch(
    runtime: Runtime, receiver: Any, metrics_dir: Path
) -> None:
    seqs = _store(runtime, _event("grant.issued"), _event("grant.revoked", reason="expired"))
    assert notify.deliver(runtime, seqs) == notify.Outcome("sent")
    [(path, status, body)] = receiver.received
    assert path == HOOK_PATH and status == 200
    assert "Granted `analytics_ro`" in body["text"] and "reason: expired" in body["text"]
    assert HOOK_PATH not in json.dumps(body)
    assert _value(metrics_dir, "jitgate_notifications_total",
                  event="grant.issued", outcome="sent") == 1


def test_transient_failures_retry_within_bounds_and_refusals_do_not(
    runtime: Runtime, receiver: Any, metrics_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    [seq] = _store(runtime, _event("grant.issued"))
    receiver.script[:] = [(500, {}), (429, {"Retry-After": "7"}), (503, {})]
    first = notify.deliver(runtime, [seq], attempt=1)
    assert first.outcome == "retry" and first.retry_in is not None and first.retry_in < 1
    assert notify.deliver(runtime, [seq], attempt=2) == notify.Outcome("retry", retry_in=7.0)
    assert notify.deliver(runtime, [seq], attempt=3) == notify.Outcome("failed")  # max 3
    receiver.script[:] = [(404, {})]
    assert notify.deliver(runtime, [seq], attempt=1) == notify.Outcome("rejected")
    assert _value(metrics_dir, "jitgate_notifications_total",
                  event="grant.issued", outcome="retry") == 2
    assert _value(metrics_dir, "jitgate_notifications_total",
                  event="grant.issued", outcome="rejected") == 1
    assert HOOK_PATH not in capsys.readouterr().out


def test_a_receiver_that_is_down_is_retried_not_raised(tmp_path: Path) -> None:
    rt = Runtime(_settings(tmp_path, notify_webhook_url=f"http://127.0.0.1:9{HOOK_PATH}",
                           notify_timeout=2))
    migrate(rt.ledger.engine)
    try:
        [seq] = _store(rt, _event("grant.revoked", reason="expired"))
        result = notify.deliver(rt, [seq])
    finally:
        rt.close()
    assert result.outcome == "retry"


def test_retry_after_reads_seconds_and_dates() -> None:
    now = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    assert notify.retry_after("12") == 12
    assert notify.retry_after("Sun, 29 Nov 2026 10:00:30 GMT", now=now) == 30
    assert notify.retry_after("soon") is None
    assert notify.retry_after(None) is None


def test_the_observer_enqueues_seqs_in_batches(tmp_path: Path, metrics_dir: Path) -> None:
    sent: list[tuple[str, Any]] = []
    settings = _settings(tmp_path, notify_webhook_url="https://hooks.example.com/x")
    observers.install(settings, lambda name, args: sent.append((name, args)))
    try:
        events = [_event("grant.revoked", seq=i, reason="expired") for i in range(1, 46)]
        audit.emit([*events, _event("grant.failed", seq=99)])  # not in the default filter
    finally:
        audit.unsubscribe("notify")
        audit.unsubscribe("metrics")
    assert [name for name, _ in sent] == [notify.TASK] * 3
    assert [len(args[0]) for _, args in sent] == [20, 20, 5]
    assert sent[0][1][0][:3] == [1, 2, 3]
    assert _value(metrics_dir, "jitgate_decisions_total", outcome="revoked") == 45


def test_an_unreachable_broker_does_not_fail_the_emit(tmp_path: Path, metrics_dir: Path) -> None:
    def down(name: str, args: Any) -> None:
        raise ConnectionError("redis://:brokerpassword@broker:6379")

    observers.install(_settings(tmp_path, notify_webhook_url="https://hooks.example.com/x"),
                      down)
    try:
        audit.emit([_event("grant.revoked", reason="expired")])
    finally:
        audit.unsubscribe("notify")
        audit.unsubscribe("metrics")
    assert _value(metrics_dir, "jitgate_notifications_total",
                  event="grant.revoked", outcome="enqueue_failed") == 1
