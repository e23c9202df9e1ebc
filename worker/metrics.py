"""Prometheus metrics derived from the ledger at scrape time.

Reading the ledger (not per-process counters) makes the gauges correct however many
web or worker processes run, and makes ``jitgate_revoke_failed`` impossible to miss:
it counts rows, so it stays above zero until every such grant is revoked.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from worker.ledger.schema import drift_findings, grants, poll_state
from worker.runtime import Runtime

__all__ = ["render"]


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
    return bytes(generate_latest(registry))
