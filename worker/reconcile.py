"""Reconciliation: the nets under the webhooks and under the targets.

``poll_sources`` asks each ticket source what changed since a stored watermark and
feeds it through the same inbox and handler as webhooks, so a lost webhook delays a
transition by at most one poll. ``reconcile_targets`` compares each managed role's
members with the ledger and reports (and, where a policy says so, repairs) drift.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Connection, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from connectors.errors import ConnectorError, TransientError
from worker import flows
from worker.ledger import audit, store
from worker.ledger.schema import LIVE_STATES, drift_findings, grants, poll_state
from worker.runtime import Runtime

__all__ = ["DriftReport", "poll_sources", "reconcile_targets"]

log = structlog.get_logger("jitgate.reconcile")

# Searches overlap the previous one: source clocks and search indexes lag a little
# (Jira's JQL search is eventually consistent); processing is idempotent anyway.
OVERLAP = timedelta(minutes=5)
FIRST_LOOKBACK = timedelta(hours=24)
LEASE = timedelta(minutes=5)


def poll_sources(rt: Runtime) -> list[str]:
    """Poll every configured source; returns inbox ids to process."""
    inbox_ids: list[str] = []
    for kind in rt.configured_sources():
        try:
            inbox_ids.extend(_poll(rt, kind))
        except ConnectorError as exc:
            _release(rt, kind, error=exc.code)
            log.warning("poll.failed", source=kind, error=exc.code)
        except ValueError as exc:  # a source refused our input before any request
            _release(rt, kind, error="invalid_input")
            log.error("poll.failed", source=kind, error="invalid_input",
                      detail=str(exc)[:200])
    return inbox_ids


def _poll(rt: Runtime, kind: str) -> list[str]:
    ledger = rt.ledger
    with ledger.tx() as conn:
        now = ledger.now(conn)
        claimed, watermark = _take_lease(conn, kind, now)
        if not claimed:
            return []  # another beat is polling this source right now
        ids = _live_ticket_ids(conn, kind)
    since = watermark - OVERLAP if watermark is not None else now - FIRST_LOOKBACK
    projects = sorted({p for pol in rt.policies.for_source(kind) for p in pol.match.project})
    tables = sorted({t for pol in rt.policies.for_source(kind) for t in pol.match.table})
    source: Any = rt.source(kind)
    if kind == "servicenow":
        changed = list(source.changed_since(since=since, tables=tables or ["sc_req_item"]))
    else:
        changed = list(source.changed_since(since=since, projects=projects, ids=ids))
    out: list[str] = []
    stamp = now.isoformat()
    for ticket_id in dict.fromkeys(changed):
        inbox_id, duplicate = store.record_delivery(
            ledger, source=kind, delivery_key=f"poll:{ticket_id}:{stamp}", ticket_id=ticket_id,
            ticket_key=None, event_version=None, now=now,
        )
        if not duplicate:
            out.append(inbox_id)
    _release(rt, kind, watermark=now)
    log.info("poll.done", source=kind, since=since.isoformat(), changed=len(out))
    return out


def _take_lease(conn: Connection, kind: str, now: datetime) -> tuple[bool, datetime | None]:
    """Claim the source for one poll: (claimed, watermark to search from)."""
    row = conn.execute(select(poll_state).where(poll_state.c.source == kind)).first()
    if row is None:
        try:
            with conn.begin_nested():
                conn.execute(insert(poll_state).values(source=kind, lease_until=now + LEASE))
        except IntegrityError:
            return False, None  # a concurrent poller created it first
        return True, None
    claimed = conn.execute(
        update(poll_state)
        .where(
            poll_state.c.source == kind,
            or_(poll_state.c.lease_until.is_(None), poll_state.c.lease_until <= now),
        )
        .values(lease_until=now + LEASE)
    )
    watermark: datetime | None = row.watermark
    return bool(claimed.rowcount), watermark


def _release(rt: Runtime, kind: str, *, watermark: datetime | None = None,
             error: str | None = None) -> None:
    values: dict[str, Any] = {"lease_until": None, "last_error": error}
    with rt.ledger.tx() as conn:
        values["last_poll_at"] = rt.ledger.now(conn)
        if watermark is not None:
            values["watermark"] = watermark
        conn.execute(update(poll_state).where(poll_state.c.source == kind).values(**values))


def _live_ticket_ids(conn: Connection, kind: str) -> list[str]:
    rows = conn.execute(
        select(grants.c.ticket_uid).where(grants.c.state.in_(LIVE_STATES)).distinct()
    ).scalars()
    prefix = f"{kind}:"
    return [uid[len(prefix):] for uid in rows if uid.startswith(prefix)]


@dataclass
class DriftReport:
    unmanaged: list[tuple[str, str, str]] = field(default_factory=list)
    missing: list[tuple[str, str, str]] = field(default_factory=list)
    repaired: int = 0
    unreachable: list[str] = field(default_factory=list)
    comment_ids: list[str] = field(default_factory=list)


def reconcile_targets(rt: Runtime) -> DriftReport:
    report = DriftReport()
    rules: dict[tuple[str, str], tuple[bool, str]] = {}
    for policy in rt.policies.policies:
        for item in policy.grants:
            enforce, missing = rules.get((item.target, item.role), (False, "reapply"))
            # The strictest policy on a shared role wins.
            rules[(item.target, item.role)] = (
                enforce or policy.drift.enforce,
                "close" if "close" in (missing, policy.drift.missing) else "reapply",
            )
    for (target, role), (enforce, on_missing) in sorted(rules.items()):
        try:
            _reconcile_role(rt, target, role, enforce=enforce, on_missing=on_missing,
                            report=report)
        except ConnectorError as exc:
            report.unreachable.append(target)
            log.warning("drift.unreachable", target=target, role=role, error=exc.code)
    return report


def _holders(rt: Runtime, target: str, role: str) -> tuple[set[str], dict[str, str]]:
    """(principals whose access may legitimately exist, active principal → grant id)."""
    with rt.ledger.tx() as conn:
        rows = conn.execute(
            select(grants.c.id, grants.c.principal, grants.c.state).where(
                grants.c.target == target, grants.c.role == role, grants.c.state.in_(LIVE_STATES)
            )
        ).all()
    return {r.principal for r in rows}, {r.principal: r.id for r in rows if r.state == "active"}


def _reconcile_role(rt: Runtime, target: str, role: str, *, enforce: bool, on_missing: str,
                    report: DriftReport) -> None:
    connector = rt.target(target)
    spec = rt.policies.targets[target]
    held_before, active_before = _holders(rt, target, role)
    members = connector.members(role=role)
    held_after, active_after = _holders(rt, target, role)
    # Read the ledger around the target so a grant or revoke in flight is not drift.
    unmanaged = members - held_before - held_after
    missing = {p: g for p, g in active_after.items() if p in active_before and p not in members}

    seen: set[tuple[str, str]] = set()
    for principal in sorted(unmanaged):
        seen.add((principal, "unmanaged"))
        action = "reported"
        if enforce and spec.principal_problem(principal) is None:
            try:
                connector.revoke(principal=principal, role=role)
                action = "revoked"
                report.repaired += 1
            except ConnectorError as exc:
                log.warning("drift.revoke_failed", target=target, role=role, error=exc.code)
        _finding(rt, target, role, principal, "unmanaged", action=action)
        report.unmanaged.append((target, role, principal))
    for principal, grant_id in sorted(missing.items()):
        seen.add((principal, "missing"))
        action = _repair_missing(rt, grant_id, on_missing, report)
        _finding(rt, target, role, principal, "missing", action=action, grant_id=grant_id)
        report.missing.append((target, role, principal))
    _resolve(rt, target, role, keep=seen)


def _repair_missing(rt: Runtime, grant_id: str, on_missing: str, report: DriftReport) -> str:
    ledger = rt.ledger
    with ledger.tx() as conn:
        row = store.lock_grant(ledger, conn, grant_id)
        if row is None or row.state != "active":
            return "reported"
        now = ledger.now(conn)
        if on_missing == "close":
            store.set_grant(conn, grant_id, state="revoking", revoke_reason="drift",
                            revoke_requested_at=now, updated_at=now)
        else:
            try:
                rt.target(row.target).grant(principal=row.principal, role=row.role,
                                            expires_at=store.latest_expiry(conn, row))
            except TransientError:
                return "reported"
            report.repaired += 1
            return "reapplied"
    # Closing goes through the normal revoke path (audit event, comment).
    result = flows.apply_grant(rt, grant_id)
    report.comment_ids.extend(result.comment_ids)
    report.repaired += 1
    return "closed"


def _finding(rt: Runtime, target: str, role: str, principal: str, kind: str, *,
             action: str, grant_id: str | None = None) -> None:
    """Record a finding once while it stays open; one drift.detected event per finding."""
    ledger = rt.ledger
    emitted: list[dict[str, Any]] = []
    with ledger.tx() as conn:
        now = ledger.now(conn)
        open_row = conn.execute(
            select(drift_findings.c.id).where(
                drift_findings.c.target == target, drift_findings.c.role == role,
                drift_findings.c.principal == principal, drift_findings.c.kind == kind,
                drift_findings.c.resolved_at.is_(None),
            )
        ).first()
        if open_row is not None and action == "reported":
            conn.execute(update(drift_findings).where(drift_findings.c.id == open_row.id)
                         .values(last_seen=now))
            return
        finding_id = str(uuid.uuid4())
        if open_row is not None:
            conn.execute(update(drift_findings).where(drift_findings.c.id == open_row.id)
                         .values(resolved_at=now, action=action, last_seen=now))
            finding_id = open_row.id
        else:
            conn.execute(insert(drift_findings).values(
                id=finding_id, target=target, role=role, principal=principal, kind=kind,
                grant_id=grant_id, action=action, first_seen=now, last_seen=now,
                resolved_at=None if action == "reported" else now,
            ))
        event = audit.append(
            ledger, conn, event="drift.detected", key=f"drift.detected:{finding_id}:{action}",
            ts=now,
            fields={"target": target, "role": role, "principal": principal, "kind": kind,
                    "action": action, "grant_id": grant_id,
                    "reason": "drift"},
        )
        if event is not None:
            emitted.append(event)
    audit.emit(emitted)
    log.warning("drift.detected", target=target, role=role, principal=principal, kind=kind,
                action=action)


def _resolve(rt: Runtime, target: str, role: str, *, keep: set[tuple[str, str]]) -> None:
    with rt.ledger.tx() as conn:
        now = rt.ledger.now(conn)
        rows = conn.execute(
            select(drift_findings.c.id, drift_findings.c.principal, drift_findings.c.kind).where(
                drift_findings.c.target == target, drift_findings.c.role == role,
                drift_findings.c.resolved_at.is_(None),
            )
        ).all()
        for row in rows:
            if (row.principal, row.kind) not in keep:
                conn.execute(update(drift_findings).where(drift_findings.c.id == row.id)
                             .values(resolved_at=now))
