"""The invariants of reliability.md §2.4, checked against the ledger and a real target.

S1 nothing on a target that the ledger does not hold active; S2 no target grant without
a verified approval recorded first; S3 exactly one audit event per effective target
change, and an intact audit chain; L1 every expired grant revoked or revoke_failed
within the bound; L2 nothing stuck in a transient state past the threshold.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import select

from worker.ledger.audit import verify_chain
from worker.ledger.db import Ledger
from worker.ledger.schema import audit_events, grants


def target_members(dsn: str, role: str) -> set[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT u.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
            "JOIN pg_roles u ON u.oid = m.member WHERE r.rolname = %s", (role,),
        ).fetchall()
    return {name for (name,) in rows}


def violations(
    ledger: Ledger,
    *,
    target_dsn: str,
    roles: Iterable[str],
    principals: Iterable[str] | None = None,
    expiry_bound: timedelta = timedelta(seconds=30),
    stuck_bound: timedelta = timedelta(seconds=60),
    now: datetime | None = None,
) -> list[str]:
    """Every broken invariant, as text (empty: all hold). ``principals`` limits S1 to
    the names a scenario created (other tests may share the server)."""
    now = now or datetime.now(UTC)
    found: list[str] = []
    with ledger.tx() as conn:
        rows = conn.execute(select(grants)).all()
        events = [json.loads(r.payload) for r in conn.execute(
            select(audit_events.c.payload).order_by(audit_events.c.seq))]
        broken = next(iter(verify_chain(conn)), None)
    if broken is not None:
        found.append(f"S3: audit chain broken at {broken.seq}: {broken.problem}")

    scope = set(principals) if principals is not None else None
    for role in roles:
        held = {r.principal for r in rows if r.role == role and r.state == "active"}
        for member in target_members(target_dsn, role):
            if (scope is None or member in scope) and member not in held:
                found.append(f"S1: {member} is a member of {role} without an active grant")

    per_grant: dict[str, Counter[str]] = {}
    for event in events:
        grant_id = event.get("grant_id")
        if grant_id:
            per_grant.setdefault(grant_id, Counter())[event["event"]] += 1
    for row in rows:
        counts = per_grant.get(row.id, Counter())
        if row.granted_at is not None:
            if not row.approver:
                found.append(f"S2: grant {row.id} applied without a recorded approver")
            if row.granted_at < row.created_at:
                found.append(f"S2: grant {row.id} applied before it was approved")
        for event in ("grant.issued", "grant.revoked", "grant.failed"):
            if counts[event] > 1:
                found.append(f"S3: grant {row.id} has {counts[event]} {event} events")
        if (row.granted_at is not None) != (counts["grant.issued"] == 1):
            found.append(f"S3: grant {row.id} granted_at/grant.issued disagree")
        if (row.state == "revoked") != (counts["grant.revoked"] == 1):
            found.append(f"S3: grant {row.id} state {row.state} vs grant.revoked events")
        if row.expires_at <= now - expiry_bound and row.state not in (
            "revoked", "revoke_failed", "grant_failed"
        ):
            found.append(f"L1: grant {row.id} expired at {row.expires_at} but is {row.state}")
        if (row.state in ("pending", "revoking") and row.starts_at <= now - stuck_bound
                and row.updated_at <= now - stuck_bound):
            found.append(f"L2: grant {row.id} stuck in {row.state} since {row.updated_at}")
    return found


def audit_events_of(ledger: Ledger, grant_id: str) -> list[dict[str, Any]]:
    with ledger.tx() as conn:
        payloads = conn.execute(select(audit_events.c.payload).where(
            audit_events.c.grant_id == grant_id).order_by(audit_events.c.seq)).scalars()
        return [json.loads(p) for p in payloads]
