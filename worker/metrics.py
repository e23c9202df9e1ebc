"""Prometheus metrics: gauges read from the ledger, counters from every process.

Gauges are derived from the ledger at scrape time: that makes them correct however
many web or worker processes run, and makes ``jitgate_revoke_failed`` impossible to
miss (it counts rows, so it stays above zero until every such grant is revoked).

Counters and histograms (webhooks, decisions, latencies, notifications) happen in
whichever process did the work: the web process, or one of the Celery prefork
children. They use prometheus_client's multiprocess mode: each process writes its
own mmap file into ``Settings.metrics_path`` and ``/metrics`` sums the files. There
are deliberately no live gauges among them, so the files of dead processes stay
correct (their counts happened) and need no clean-up while jitgate runs; ``jitgate
up`` empties the folder before it starts its processes.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from worker.ledger.schema import drift_findings, grants, poll_state
from worker.runtime import Runtime

__all__ = [
    "DECISION_OUTCOMES",
    "LATENCY_BUCKETS",
    "answer_outcome",
    "clear_dir",
    "configure",
    "event_outcome",
    "event_processed",
    "grant_latency",
    "notification",
    "observe_audit",
    "rejection_reason",
    "render",
    "revoke_latency",
    "webhook_answered",
    "webhook_rejected",
]

log = structlog.get_logger("jitgate.metrics")

# Seconds to minutes: a grant is expected within seconds of the approval, a revocation
# within a sweep interval (15 s) of the expiry; the top buckets show outages.
LATENCY_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                   1800.0, 3600.0)

# audit event → jitgate_decisions_total{outcome}
DECISION_OUTCOMES = {
    "grant.issued": "issued",
    "grant.denied": "denied",
    "grant.failed": "failed",
    "grant.revoked": "revoked",
    "grant.revoke_failed": "revoke_failed",
    "grant.extended": "extended",
    "ticket.ignored": "ignored",
}


class LedgerCollector(Collector):
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ledger = self.runtime.ledger
        with ledger.tx() as conn:
            now = ledger.now(conn)
            by_state = conn.execute(
                select(grants.c.state, grants.c.target, func.count())
                .group_by(grants.c.state, grants.c.target)
            ).all()
            oldest_failed: datetime | None = conn.execute(
                select(func.min(grants.c.updated_at)).where(grants.c.state == "revoke_failed")
            ).scalar()
            overdue = conn.execute(
                select(func.count()).where(grants.c.state == "active", grants.c.expires_at < now)
            ).scalar_one()
            drift = conn.execute(
                select(func.count()).where(drift_findings.c.resolved_at.is_(None))
            ).scalar_one()
            polls = conn.execute(select(poll_state.c.source, poll_state.c.last_poll_at)).all()

        states = GaugeMetricFamily("jitgate_grants", "Grants in the ledger by state and target",
                                   labels=["state", "target"])
        failed = 0
        for state, target, count in by_state:
            states.add_metric([state, target], count)
            failed += count if state == "revoke_failed" else 0
        yield states
        yield GaugeMetricFamily(
            "jitgate_revoke_failed",
            "Grants whose revocation keeps failing (alert when > 0); still being retried",
            value=failed,
        )
        yield GaugeMetricFamily(
            "jitgate_revoke_failed_oldest_seconds",
            "Age of the oldest revoke_failed grant's last attempt",
            value=(now - oldest_failed).total_seconds() if oldest_failed is not None else 0,
        )
        yield GaugeMetricFamily(
            "jitgate_grants_overdue", "Active grants past their expiry, not yet picked up",
            value=overdue,
        )
        yield GaugeMetricFamily("jitgate_drift_open", "Open drift findings", value=drift)
        lag = GaugeMetricFamily("jitgate_poll_lag_seconds", "Seconds since the last source poll",
                                labels=["source"])
        for source, last in polls:
            if last is not None:
                lag.add_metric([source], (now - last).total_seconds())
        yield lag


def render(runtime: Runtime) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(runtime))
    directory = runtime.settings.metrics_path
    if directory.is_dir():
        # Reads every process's file, its own included; our counters are in no registry.
        MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return bytes(generate_latest(registry))


# ---------------------------------------------------------------- process counters


@dataclass(frozen=True)
class _Instruments:
    directory: Path
    webhooks_received: Counter
    webhooks_rejected: Counter
    events_processed: Counter
    decisions: Counter
    grant_latency: Histogram
    revoke_latency: Histogram
    drift_findings: Counter
    notifications: Counter


_current: _Instruments | None = None
_lock = threading.Lock()


def configure(directory: Path) -> bool:
    """Write this process's counters under ``directory`` (created if needed). Call once
    at process start, before any fork (Celery's prefork children inherit it and each
    opens its own file on first use). False when the folder is unusable: the process
    then counts nothing rather than fail to start over a metric.

    prometheus_client picks its value class when ``prometheus_client.values`` is first
    imported, from ``PROMETHEUS_MULTIPROC_DIR``; our setting is read later than that,
    so the class is chosen here and the metric objects are created only afterwards (an
    object keeps the value class it was created with)."""
    global _current  # noqa: PLW0603 - one set of instruments per process
    directory = directory.resolve()
    with _lock:
        if _current is not None and _current.directory == directory:
            return True
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("metrics.dir_unusable", path=str(directory), error=exc.strerror)
            _current = None
            return False
        # The mmap files are opened under this variable's value, at first use per pid.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)  # noqa: TID251 - for the library
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        _current = _instruments(directory)
    return True


def clear_dir(directory: Path) -> None:
    """Delete the metric files: only before any process that writes them starts
    (``jitgate up``); a running process would keep writing to a deleted file."""
    if directory.is_dir():
        for path in directory.glob("*.db"):
            path.unlink(missing_ok=True)


def _instruments(directory: Path) -> _Instruments:
    # registry=None: the objects are only written here; /metrics reads the files.
    return _Instruments(
        directory=directory,
        webhooks_received=Counter(
            "jitgate_webhooks_received", "Authenticated webhook deliveries by what became "
            "of them (accepted, duplicate, ignored, held, unavailable)",
            ["source", "outcome"], registry=None),
        webhooks_rejected=Counter(
            "jitgate_webhooks_rejected", "Webhook deliveries refused with a 4xx, by reason",
            ["source", "reason"], registry=None),
        events_processed=Counter(
            "jitgate_events_processed", "Ticket events processed by the workers, by outcome",
            ["outcome"], registry=None),
        decisions=Counter(
            "jitgate_decisions", "Audited decisions and transitions (issued, denied, failed, "
            "revoked, revoke_failed, extended, ignored)", ["outcome"], registry=None),
        grant_latency=Histogram(
            "jitgate_grant_latency_seconds", "From the approval (or the scheduled window's "
            "start) to the grant committed", ["target"], buckets=LATENCY_BUCKETS,
            registry=None),
        revoke_latency=Histogram(
            "jitgate_revoke_latency_seconds", "From when a revocation became due (expiry, or "
            "the close/rejection seen) to the revocation committed", ["target", "reason"],
            buckets=LATENCY_BUCKETS, registry=None),
        drift_findings=Counter(
            "jitgate_drift_findings", "Drift findings recorded by reconciliation",
            ["target", "kind"], registry=None),
        notifications=Counter(
            "jitgate_notifications", "Notification deliveries per event (sent, retry, "
            "failed, rejected, enqueue_failed, missing)", ["event", "outcome"],
            registry=None),
    )


_REJECT_REASONS = {
    400: "bad_payload",
    413: "too_large",
    415: "unsupported_media",
    422: "bad_payload",
    429: "rate_limited",
}


def rejection_reason(status: int, message: str) -> str:
    """A bounded label for a refused delivery (the message is free text)."""
    if status == 401:
        lowered = message.lower()
        if "timestamp" in lowered:
            return "bad_timestamp"
        if "basic" in lowered:
            return "bad_credentials"
        return "bad_signature"
    return _REJECT_REASONS.get(status, f"http_{status}")


def webhook_rejected(source: str, status: int, message: str) -> None:
    if _current is not None:
        _current.webhooks_rejected.labels(source, rejection_reason(status, message)).inc()


_ANSWERS = {"queued": "accepted", "held": "held", "duplicate": "duplicate",
            "ignored": "ignored"}


def answer_outcome(status: int, body: bytes) -> str | None:
    """What an answer that was not a rejection says became of the delivery; None for
    rejections (counted where they are made)."""
    if status == 503:
        return "unavailable"
    if status not in (200, 202):
        return None
    try:
        said = json.loads(body).get("status")
    except (ValueError, AttributeError):
        return "other"
    return _ANSWERS.get(said, "other") if isinstance(said, str) else "other"


def webhook_answered(source: str, status: int, body: bytes) -> None:
    if _current is None:
        return
    outcome = answer_outcome(status, body)
    if outcome is not None:
        _current.webhooks_received.labels(source, outcome).inc()


def event_outcome(result: object) -> str:
    """``process_event``'s result as a bounded label: ``deferred:<code>`` and
    ``error:<code>`` keep their kind only; anything but a string was an exception."""
    if not isinstance(result, str):
        return "exception"
    return result.split(":", 1)[0][:40] or "unknown"


def event_processed(result: object) -> None:
    if _current is not None:
        _current.events_processed.labels(event_outcome(result)).inc()


def notification(event: str, outcome: str) -> None:
    if _current is not None:
        _current.notifications.labels(event, outcome).inc()


def observe_audit(events: Sequence[Mapping[str, Any]]) -> None:
    """Audit observer: decisions, latencies and drift, from the committed events."""
    current = _current
    if current is None:
        return
    for event in events:
        name = str(event.get("event"))
        outcome = DECISION_OUTCOMES.get(name)
        if outcome is not None:
            current.decisions.labels(outcome).inc()
        target = str(event.get("target") or "")
        if name == "grant.issued":
            latency = grant_latency(event)
            if latency is not None:
                current.grant_latency.labels(target).observe(latency)
        elif name == "grant.revoked":
            latency = revoke_latency(event)
            if latency is not None:
                current.revoke_latency.labels(target, str(event.get("reason") or "")).observe(
                    latency)
        elif name == "drift.detected":
            current.drift_findings.labels(target, str(event.get("kind") or "")).inc()


def grant_latency(event: Mapping[str, Any]) -> float | None:
    """Seconds from the grant's start (the approval time the source recorded, or the
    opening of a scheduled window) to its commit. Clamped at 0: the source's clock
    and the database's may disagree by a little."""
    start, done = _when(event.get("starts_at")), _when(event.get("ts"))
    if start is None or done is None:
        return None
    return max(0.0, (done - start).total_seconds())


def revoke_latency(event: Mapping[str, Any]) -> float | None:
    """Seconds from when the revocation became due to its commit: the expiry, or
    earlier when jitgate learned of a close, rejection or manual revoke."""
    done = _when(event.get("ts"))
    due = [t for t in (_when(event.get("expires_at")),
                       _when(event.get("revoke_requested_at"))) if t is not None]
    if done is None or not due:
        return None
    return max(0.0, (done - min(due)).total_seconds())


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
