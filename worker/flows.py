"""Orchestration: ticket event → re-read → decide → ledger → target → audit → comment.

Plain functions over a ``Runtime``; Celery tasks are thin wrappers around them, so
tests and the CLI call the same code. Every step is keyed and idempotent: a
redelivered task, a duplicate webhook or a second worker finds the work done.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Connection, Row, bindparam, select, update

from connectors.base import (
    BatchRevoker,
    BatchSessionTerminator,
    Identity,
    Outcome,
    SessionTerminator,
    TargetConnector,
    TicketRef,
    TicketSnapshot,
)
from connectors.errors import ConnectorError, PermanentError, TicketNotFound, TransientError
from policies.engine import Decision, Deny, Grant, Revoke, candidate_principals, decide
from worker.faults import crash_point
from worker.ledger import audit, store
from worker.ledger.schema import comments, grants
from worker.runtime import ConfigError, Runtime

__all__ = ["EventResult", "apply_grant", "post_comment", "process_event", "revoke_batch"]

log = structlog.get_logger("jitgate.flow")


@dataclass
class EventResult:
    outcome: str
    grant_ids: list[str] = field(default_factory=list)
    comment_ids: list[str] = field(default_factory=list)
    retries: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class ApplyResult:
    state: str
    retry_in: float | None = None
    comment_ids: list[str] = field(default_factory=list)
    # Grants to apply next (siblings being rolled back after a partial failure).
    also: list[str] = field(default_factory=list)


@dataclass
class _Tx:
    """One ledger transaction's working set: audit lines to emit and comments to post
    once it commits."""

    rt: Runtime
    conn: Connection
    now: datetime
    emitted: list[dict[str, Any]] = field(default_factory=list)
    comment_ids: list[str] = field(default_factory=list)
    # Batch mode (``revoke_batch``): grants revoked, audit events and comments are
    # collected and written with a few statements by ``flush``.
    revoked: list[dict[str, Any]] | None = None
    pending_audit: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    pending_comments: list[tuple[TicketRef, str, str]] = field(default_factory=list)

    def flush(self) -> None:
        if self.revoked is None:
            return
        store.mark_revoked(self.conn, self.revoked, now=self.now)
        self.emitted.extend(audit.append_many(self.rt.ledger, self.conn, self.pending_audit,
                                              ts=self.now))
        self.comment_ids.extend(store.add_comments(self.conn, self.pending_comments,
                                                   now=self.now))
        self.revoked, self.pending_audit, self.pending_comments = [], [], []


def process_event(rt: Runtime, inbox_id: str) -> EventResult:
    """Decide what a delivered event means, from the ticket as the source reports it now."""
    ledger = rt.ledger
    with ledger.tx() as conn:
        row = store.load_delivery(conn, inbox_id)
        if row is None:
            return EventResult("unknown_delivery")
        if row.processed_at is not None:
            return EventResult("already_processed")
        last = store.ticket_version(conn, row.ticket_uid)
    if row.event_version is not None and row.event_version < last:
        # A newer state of this ticket was already acted upon.
        with ledger.tx() as conn:
            store.finish_delivery(conn, inbox_id, outcome="superseded", now=ledger.now(conn))
        return EventResult("superseded")

    structlog.contextvars.bind_contextvars(ticket=row.ticket_key or row.ticket_id)
    source = rt.source(row.source)
    try:
        snapshot = source.fetch(row.ticket_id)
    except TicketNotFound:
        snapshot = _deleted(row)
    snapshot = _with_groups(rt, snapshot)
    return decide_and_apply(rt, snapshot, inbox_id=inbox_id, delivery_id=row.delivery_key)


def decide_and_apply(
    rt: Runtime, snapshot: TicketSnapshot, *, inbox_id: str | None, delivery_id: str | None
) -> EventResult:
    ledger = rt.ledger
    with ledger.tx() as conn:
        last = store.lock_ticket(ledger, conn, snapshot.ref)
        tx = _Tx(rt, conn, ledger.now(conn))
        if snapshot.version < last:
            # An older read than one we already acted on (eventual consistency): skip.
            if inbox_id is not None:
                store.finish_delivery(conn, inbox_id, outcome="stale_read", now=tx.now)
            return EventResult("stale_read")
        load = store.principal_load(conn, candidate_principals(snapshot, rt.policies),
                                    ticket_uid=snapshot.ref.uid)
        decision = decide(snapshot, store.ticket_grants(conn, snapshot.ref.uid), rt.policies,
                          tx.now, principal_load=load)
        work = _record_decision(tx, snapshot, decision, delivery_id)
        store.save_ticket(conn, snapshot, now=tx.now)
        if inbox_id is not None:
            store.finish_delivery(conn, inbox_id, outcome=_outcome(decision), now=tx.now)
    audit.emit(tx.emitted)
    log.info(
        "ticket.decided",
        outcome=_outcome(decision),
        grants=len(decision.grants),
        revokes=len(decision.revokes),
        denials=[d.rule for d in decision.denials],
        version=snapshot.version,
    )
    result = EventResult(_outcome(decision), grant_ids=work, comment_ids=tx.comment_ids)
    for grant_id in work:
        applied = apply_grant(rt, grant_id)
        result.comment_ids.extend(applied.comment_ids)
        if applied.retry_in is not None:
            result.retries.append((grant_id, applied.retry_in))
    return result


def manual_revoke(rt: Runtime, grant_id: str, *, note: str) -> ApplyResult | None:
    """Revoke one grant by hand (``jitgate revoke``); the note is kept with the grant and
    its audit event. Returns None when the grant does not exist."""
    ledger = rt.ledger
    with ledger.tx() as conn:
        row = store.lock_grant(ledger, conn, grant_id)
        if row is None:
            return None
        now = ledger.now(conn)
        if store.request_revoke(conn, grant_id, reason="manual", now=now,
                                retry_at=now + rt.stuck_after):
            store.set_grant(conn, grant_id, revoke_note=note[:500])
    return apply_grant(rt, grant_id)


def defer_delivery(rt: Runtime, inbox_id: str, *, error: str) -> float:
    """The source could not be read: record the attempt and when to try again.
    Returns the delay for the caller's one follow-up (the sweep covers a lost one)."""
    with rt.ledger.tx() as conn:
        now = rt.ledger.now(conn)
        attempts = store.delivery_attempts(conn, inbox_id) + 1
        delay = _backoff(rt, attempts)
        store.defer_delivery(conn, inbox_id, attempts=attempts, error=error[:200],
                             retry_at=now + timedelta(seconds=delay))
    return delay


def fail_delivery(rt: Runtime, inbox_id: str, *, outcome: str) -> None:
    """Close a delivery that cannot be processed (source not configured, auth refused);
    the source poll picks the ticket up again once the configuration is fixed."""
    with rt.ledger.tx() as conn:
        store.finish_delivery(conn, inbox_id, outcome=outcome[:64], now=rt.ledger.now(conn))


def _record_decision(
    tx: _Tx, snapshot: TicketSnapshot, decision: Decision, delivery_id: str | None
) -> list[str]:
    """Write the decision's actions in the caller's transaction; returns grant ids
    with target work to do."""
    conn, now = tx.conn, tx.now
    work: list[str] = []
    retry_at = now + tx.rt.stuck_after
    for action in decision.actions:
        if isinstance(action, Grant):
            grant_id = str(uuid.uuid4())
            inserted = store.insert_grant(
                conn,
                {
                    "id": grant_id,
                    "grant_key": store.grant_key(
                        ticket_uid=snapshot.ref.uid, policy=action.policy,
                        target=action.target, role=action.role, principal=action.principal,
                        approval_ref=action.approval_ref,
                    ),
                    "ticket_uid": snapshot.ref.uid,
                    "ticket_key": snapshot.ref.key,
                    "ticket_url": snapshot.ref.url,
                    "policy": action.policy,
                    "policy_digest": action.policy_digest,
                    "target": action.target,
                    "role": action.role,
                    "principal": action.principal,
                    "approval_ref": action.approval_ref,
                    "state": "pending",
                    "approver": _identity_json(action.approver),
                    "requester": _identity_json(action.requester),
                    "starts_at": action.starts_at,
                    "expires_at": action.expires_at,
                    "created_at": now,
                    # A scheduled grant is due when its window opens, not before.
                    "next_attempt_at": action.starts_at if action.starts_at > now else retry_at,
                    "delivery_id": delivery_id,
                    "updated_at": now,
                    "request_digest": action.request_digest,
                    "cap_note": "; ".join(action.notes)[:500] or None,
                },
            )
            if inserted:
                work.append(grant_id)
        elif isinstance(action, Revoke):
            if store.request_revoke(conn, action.grant_id, reason=action.reason, now=now,
                                    retry_at=retry_at):
                work.append(action.grant_id)
        elif isinstance(action, Deny):
            event = audit.append(
                tx.rt.ledger,
                conn,
                event="grant.denied",
                key=f"grant.denied:{action.key}",
                ts=now,
                fields={
                    "ticket": _ticket_json(snapshot.ref),
                    "policy": action.policy,
                    "reason": action.rule,
                    "detail": action.message,
                    "requester": _who(snapshot.requester),
                    "delivery_id": delivery_id,
                },
            )
            if event is not None:
                tx.emitted.append(event)
                comment_id = store.add_comment(
                    conn,
                    ref=snapshot.ref,
                    marker=f"[jitgate:denied:{_short(action.key)}]",
                    body=f"jitgate did not grant access: {action.message} (rule: {action.rule}).",
                    now=now,
                )
                if comment_id is not None:
                    tx.comment_ids.append(comment_id)
    return work


def apply_grant(rt: Runtime, grant_id: str) -> ApplyResult:
    """Make the target match the grant's ledger state. Safe to run any number of times."""
    ledger = rt.ledger
    with ledger.tx() as conn:
        row = store.lock_grant(ledger, conn, grant_id)
        if row is None:
            return ApplyResult("unknown")
        structlog.contextvars.bind_contextvars(grant_id=grant_id, ticket=row.ticket_key)
        tx = _Tx(rt, conn, ledger.now(conn))
        if row.state == "pending":
            result = _grant(tx, row)
        elif row.state in ("revoking", "revoke_failed"):
            result = _revoke(tx, row)
        else:
            result = ApplyResult(row.state)
    if result.state in ("active", "revoked"):
        # committed, task not yet acknowledged
        crash_point(rt.settings.crash_dir, f"{'grant' if result.state == 'active' else 'revoke'}"
                    ".after_commit")
    audit.emit(tx.emitted)
    result.comment_ids.extend(tx.comment_ids)
    for sibling in result.also:
        result.comment_ids.extend(apply_grant(rt, sibling).comment_ids)
    return result


def _grant(tx: _Tx, row: Row[Any]) -> ApplyResult:
    rt, conn, now = tx.rt, tx.conn, tx.now
    if row.starts_at > now:
        return ApplyResult("pending")  # scheduled: the sweep issues it when its window opens
    if row.expires_at <= now:
        # Never grant a window that has closed; revoke in case a crashed run applied it.
        store.set_grant(conn, row.id, state="revoking", revoke_reason="expired",
                        revoke_requested_at=now, updated_at=now)
        return _revoke(tx, row, reason="expired")
    try:
        target = _target(rt, row.target)
        crash_point(rt.settings.crash_dir, "grant.before_target")
        outcome = target.grant(
            principal=row.principal, role=row.role, expires_at=store.latest_expiry(conn, row)
        )
        crash_point(rt.settings.crash_dir, "grant.after_target")
    except TransientError as exc:
        attempts = row.attempts + 1
        delay = _backoff(rt, attempts)
        store.set_grant(conn, row.id, attempts=attempts, last_error=_error(exc),
                        next_attempt_at=now + timedelta(seconds=delay), updated_at=now)
        log.warning("grant.retry", error=exc.code, attempts=attempts, retry_in=round(delay, 1))
        return ApplyResult("pending", retry_in=delay)
    except PermanentError as exc:
        store.set_grant(conn, row.id, state="grant_failed", last_error=_error(exc),
                        attempts=row.attempts + 1, next_attempt_at=None, updated_at=now)
        _record(tx, "grant.failed", row, reason=exc.code,
                detail=str(exc)[:200])
        # All or nothing: what this approval already granted elsewhere is rolled back.
        siblings = [
            sibling for sibling in store.approval_siblings(conn, row)
            if store.request_revoke(conn, sibling, reason="partial_failure", now=now,
                                    retry_at=now + rt.stuck_after)
        ]
        _comment(tx, row, "grant.failed",
                 f"jitgate could not grant {row.role} on {row.target} to {row.principal}: "
                 f"{exc.code}. Nothing was granted"
                 + (f"; {len(siblings)} other grant(s) of this request were rolled back."
                    if siblings else "."))
        return ApplyResult("grant_failed", also=siblings)
    store.set_grant(conn, row.id, state="active", granted_at=now, attempts=row.attempts + 1,
                    last_error=None, next_attempt_at=None, updated_at=now)
    _record(tx, "grant.issued", row, outcome=outcome.value, detail=row.cap_note)
    _comment(tx, row, "grant.issued",
             f"jitgate granted {row.role} on {row.target} to {row.principal} until "
             f"{_iso(row.expires_at)} (policy {row.policy})."
             + (f" Note: {row.cap_note}." if row.cap_note else ""))
    return ApplyResult("active")


def _revoke(tx: _Tx, row: Row[Any], reason: str | None = None) -> ApplyResult:
    rt, conn = tx.rt, tx.conn
    reason = reason or row.revoke_reason or "manual"
    sessions: int | str | None = None
    try:
        if store.shared_holders(conn, row):
            outcome = "shared"  # another active ticket still needs this membership
        else:
            target = _target(rt, row.target)
            crash_point(rt.settings.crash_dir, "revoke.before_target")
            outcome = target.revoke(principal=row.principal, role=row.role).value
            crash_point(rt.settings.crash_dir, "revoke.after_target")
            sessions = _end_sessions(tx, row, target)
    except (TransientError, PermanentError) as exc:
        return _revoke_failed(tx, row, reason, exc)
    return _revoked(tx, row, reason, outcome, sessions)


def _revoke_failed(tx: _Tx, row: Row[Any], reason: str, exc: TransientError | PermanentError,
                   ) -> ApplyResult:
    # Fail safe: a revocation never gives up, it only becomes visible.
    attempts = row.attempts + 1
    delay = _backoff(tx.rt, attempts)
    values: dict[str, Any] = {
        "attempts": attempts,
        "last_error": _error(exc),
        "next_attempt_at": tx.now + timedelta(seconds=delay),
        "updated_at": tx.now,
    }
    if row.state == "active":  # straight from the expiry sweep: now it is in flight
        values.update(state="revoking", revoke_reason=reason, revoke_requested_at=tx.now)
    if attempts >= tx.rt.settings.revoke_alert_after and row.state != "revoke_failed":
        values["state"] = "revoke_failed"
        _record(tx, "grant.revoke_failed", row, reason=reason,
                detail=exc.code, attempts=attempts)
        _comment(tx, row, "grant.revoke_failed",
                 f"jitgate has not yet been able to revoke {row.role} on {row.target} "
                 f"from {row.principal} ({exc.code}); it keeps retrying.")
    store.set_grant(tx.conn, row.id, **values)
    log.warning("revoke.retry", grant_id=row.id, error=exc.code, attempts=attempts,
                retry_in=round(delay, 1))
    return ApplyResult(values.get("state", row.state), retry_in=delay)


def _revoked(tx: _Tx, row: Row[Any], reason: str, outcome: str,
             sessions: int | str | None) -> ApplyResult:
    if tx.revoked is None:
        store.set_grant(tx.conn, row.id, state="revoked", revoked_at=tx.now,
                        revoke_reason=reason, last_error=None, next_attempt_at=None,
                        updated_at=tx.now)
    else:  # batch: one executemany at the end
        tx.revoked.append({"gid": row.id, "reason": reason,
                           "requested": row.revoke_requested_at or tx.now})
    _record(tx, "grant.revoked", row, reason=reason, outcome=outcome, note=row.revoke_note,
            sessions_terminated=sessions)
    _comment(tx, row, "grant.revoked",
             f"jitgate revoked {row.role} on {row.target} from {row.principal} "
             f"(reason: {reason}).")
    return ApplyResult("revoked")


@dataclass
class BatchResult:
    selected: int = 0
    revoked: int = 0
    failed: int = 0
    comment_ids: list[str] = field(default_factory=list)
    retries: list[tuple[str, float]] = field(default_factory=list)


def revoke_batch(rt: Runtime, grant_ids: Sequence[str] = (), *, expired: int = 0
                 ) -> BatchResult:
    """Revoke many grants in one ledger transaction, with one batched call per target.

    The same rules as ``apply_grant`` (reference counting, session termination,
    fail-safe retries, one audit event and one comment per grant), in a few round trips
    instead of a dozen per grant: mass expiry is when revocation must be fastest.
    Either ``grant_ids`` (grants already ``revoking``) or ``expired=N``: up to N active
    grants past their expiry, most overdue first, revoked straight from ``active`` (a
    crash before the commit leaves them active and expired, so the next sweep redoes
    them; the target calls are idempotent). Rows another worker holds are skipped.
    """
    ledger = rt.ledger
    result = BatchResult()
    if not grant_ids and not expired:
        return result
    with ledger.tx() as conn:
        now = ledger.now(conn)
        if expired:
            stmt = (select(grants)
                    .where(grants.c.state == "active", grants.c.expires_at <= now)
                    .order_by(grants.c.expires_at).limit(expired))
        else:
            stmt = (select(grants).where(grants.c.id.in_(list(grant_ids)),
                                         grants.c.state.in_(("revoking", "revoke_failed")))
                    .order_by(grants.c.id))
        if ledger.is_postgres:
            stmt = stmt.with_for_update(skip_locked=True)
        rows = conn.execute(stmt).all()
        result.selected = len(rows)
        if not rows:
            return result
        tx = _Tx(rt, conn, now, revoked=[])
        held = store.active_memberships(conn, rows)
        live = store.live_principals_on_targets(conn, rows)
        by_target: dict[str, list[Row[Any]]] = {}
        for row in rows:
            by_target.setdefault(row.target, []).append(row)
        for name, batch in by_target.items():
            todo = [r for r in batch if (r.target, r.role, r.principal) not in held]
            outcomes = dict(zip([r.id for r in todo], _revoke_on_target(rt, name, todo),
                                strict=True))
            gone = [r for r in todo if not isinstance(outcomes[r.id], Exception)]
            sessions = _end_sessions_many(rt, name, gone, live)
            for row in batch:
                reason = "expired" if row.state == "active" else row.revoke_reason or "manual"
                out = outcomes.get(row.id, "shared")  # absent: another ticket holds it
                if isinstance(out, Exception):
                    exc = (out if isinstance(out, TransientError | PermanentError)
                           else PermanentError("target error", code=getattr(out, "code", "error")))
                    failed = _revoke_failed(tx, row, reason, exc)
                    result.failed += 1
                    if failed.retry_in is not None:
                        result.retries.append((row.id, failed.retry_in))
                else:
                    _revoked(tx, row, reason, str(out), sessions.get(row.principal))
                    result.revoked += 1
        # The revocations happened after the transaction began: stamp them with the
        # database's current time, not its transaction start.
        tx.now = ledger.current_time(conn)
        tx.flush()
    audit.emit(tx.emitted)
    result.comment_ids.extend(tx.comment_ids)
    log.info("revoke.batch", revoked=result.revoked, failed=result.failed,
             targets=len(by_target))
    return result


def _revoke_on_target(rt: Runtime, name: str, rows: list[Row[Any]]
                      ) -> list[Outcome | ConnectorError]:
    if not rows:
        return []
    try:
        target = _target(rt, name)
    except PermanentError as exc:
        return [exc] * len(rows)
    crash_point(rt.settings.crash_dir, "revoke.before_target")
    pairs = [(r.principal, r.role) for r in rows]
    if isinstance(target, BatchRevoker):
        outcomes = target.revoke_many(pairs)
    else:
        outcomes = []
        for principal, role in pairs:
            try:
                outcomes.append(target.revoke(principal=principal, role=role))
            except (TransientError, PermanentError) as exc:
                outcomes.append(exc)
    crash_point(rt.settings.crash_dir, "revoke.after_target")
    return outcomes


def _end_sessions_many(rt: Runtime, name: str, rows: list[Row[Any]],
                       live: set[tuple[str, str]]) -> dict[str, int | str]:
    """``_end_sessions`` for a batch: principals that hold nothing else on the target."""
    spec = rt.policies.targets.get(name)
    principals = sorted({r.principal for r in rows if (name, r.principal) not in live})
    if spec is None or not spec.terminate_sessions or not principals:
        return {}
    try:
        target = _target(rt, name)
        if isinstance(target, BatchSessionTerminator):
            return dict(target.terminate_sessions_many(principals))
        if isinstance(target, SessionTerminator):
            return {p: target.terminate_sessions(principal=p) for p in principals}
    except (TransientError, PermanentError) as exc:
        log.warning("revoke.sessions_not_ended", error=exc.code)
        return dict.fromkeys(principals, f"failed:{exc.code}")
    return {}


def _target(rt: Runtime, name: str) -> TargetConnector:
    """The named target; a target no longer in the policy files is a permanent error of
    this grant (visible as grant_failed / revoke_failed, with the alert), not a crash
    that would leave the grant silently in flight."""
    try:
        return rt.target(name)
    except ConfigError as exc:
        raise PermanentError(f"target {name!r}: {exc}", code="target_not_configured") from None


def _end_sessions(tx: _Tx, row: Row[Any], target: Any) -> int | str | None:
    """End the principal's live sessions once it holds nothing else on the target: an
    open connection must not outlive the access it was opened with."""
    spec = tx.rt.policies.targets.get(row.target)
    if not isinstance(target, SessionTerminator) or spec is None or not spec.terminate_sessions:
        return None
    if store.other_live_grants_on_target(tx.conn, row):
        return None  # ending sessions would also cut access the principal still holds
    try:
        return target.terminate_sessions(principal=row.principal)
    except (TransientError, PermanentError) as exc:
        # The membership is gone already; a failure here is reported, not retried.
        log.warning("revoke.sessions_not_ended", error=exc.code)
        return f"failed:{exc.code}"


def post_comment(rt: Runtime, comment_id: str) -> float | None:
    """Post an outbox comment on its ticket; idempotent through the marker. Returns the
    delay before the next try when the source was unreachable, else None."""
    return post_comments(rt, [comment_id]).get(comment_id)


def post_comments(rt: Runtime, comment_ids: Sequence[str]) -> dict[str, float]:
    """Post outbox comments; returns, for each that met an outage, the delay before its
    next try. Two ledger transactions for the lot, one source call per comment."""
    ledger = rt.ledger
    if not comment_ids:
        return {}
    with ledger.tx() as conn:
        # Claim the attempt before making it: a comment whose first claim this is cannot
        # have been posted by anyone, so the source need not be searched for its marker.
        rows = conn.execute(
            update(comments)
            .where(comments.c.id.in_(list(comment_ids)), comments.c.posted_at.is_(None),
                   comments.c.failed_at.is_(None))
            .values(attempts=comments.c.attempts + 1)
            .returning(comments)
        ).all()
    posted: list[str] = []
    delays: dict[str, float] = {}
    refused: dict[str, str] = {}
    errors: dict[str, str] = {}
    order = {cid: index for index, cid in enumerate(comment_ids)}
    for row in sorted(rows, key=lambda r: order.get(r.id, 0)):  # in the order written
        ref = TicketRef(source=row.source, id=row.ticket_id, key=row.ticket_key,
                        url=row.ticket_url)
        try:
            rt.source(row.source).comment(ref, row.body, marker=row.marker,
                                          first_try=row.attempts == 1)
        except TransientError as exc:
            delays[row.id] = _backoff(rt, row.attempts)
            errors[row.id] = _error(exc)
            log.warning("comment.retry", error=exc.code, retry_in=round(delays[row.id], 1))
        except PermanentError as exc:
            refused[row.id] = _error(exc)
            log.warning("comment.failed", error=exc.code)
        else:
            posted.append(row.id)
    with ledger.tx() as conn:
        now = ledger.now(conn)
        if posted:
            conn.execute(update(comments).where(comments.c.id == bindparam("cid"))
                         .values(posted_at=now, last_error=None),
                         [{"cid": cid} for cid in posted])
        for cid, error in refused.items():
            conn.execute(update(comments).where(comments.c.id == cid)
                         .values(failed_at=now, last_error=error))
        for cid, delay in delays.items():
            conn.execute(update(comments).where(comments.c.id == cid).values(
                last_error=errors[cid], next_attempt_at=now + timedelta(seconds=delay)))
    return delays


def _record(tx: _Tx, event: str, row: Row[Any], **extra: Any) -> None:
    fields: dict[str, Any] = {
        "ticket": {"source": row.ticket_uid.split(":", 1)[0],
                   "id": row.ticket_uid.split(":", 1)[1],
                   "key": row.ticket_key, "url": row.ticket_url},
        "grant_id": row.id,
        "principal": row.principal,
        "target": row.target,
        "role": row.role,
        "policy": row.policy,
        "policy_digest": row.policy_digest,
        "approver": _json_or_none(row.approver),
        "requester": _json_or_none(row.requester),
        "expires_at": _iso(row.expires_at),
        # When the grant became due and when its revocation did: the grant and revoke
        # latency histograms (worker.metrics) are measured from these.
        "starts_at": _iso(row.starts_at),
        "revoke_requested_at": (_iso(row.revoke_requested_at)
                                if row.revoke_requested_at is not None else None),
        "delivery_id": row.delivery_id,
        "reason": None,
        **extra,
    }
    # One event per grant and transition: a retried task cannot write it twice.
    if tx.revoked is not None:
        tx.pending_audit.append((event, f"{event}:{row.id}", fields))
        return
    stored = audit.append(tx.rt.ledger, tx.conn, event=event, key=f"{event}:{row.id}",
                          ts=tx.now, fields=fields)
    if stored is not None:
        tx.emitted.append(stored)


def _comment(tx: _Tx, row: Row[Any], event: str, body: str) -> None:
    source, ticket_id = row.ticket_uid.split(":", 1)
    ref = TicketRef(source=source, id=ticket_id, key=row.ticket_key, url=row.ticket_url)
    if tx.revoked is not None:
        tx.pending_comments.append((ref, f"[jitgate:{event}:{row.id}]", body))
        return
    comment_id = store.add_comment(tx.conn, ref=ref, marker=f"[jitgate:{event}:{row.id}]",
                                   body=body, now=tx.now)
    if comment_id is not None:
        tx.comment_ids.append(comment_id)


def _with_groups(rt: Runtime, snapshot: TicketSnapshot) -> TicketSnapshot:
    """Fill approvers' group ids when a policy in scope names approver groups."""
    kind = snapshot.ref.source
    if not any(p.approvers.groups and p.in_scope(snapshot) for p in rt.policies.for_source(kind)):
        return snapshot

    def enrich(person: Identity | None) -> Identity | None:
        if person is None:
            return None
        return person.model_copy(update={"groups": rt.groups_of(kind, person)})

    # Only the recent history can hold the approving entry; older authors need no lookup.
    transitions = tuple(
        t.model_copy(update={"author": enrich(t.author)}) for t in snapshot.transitions[-5:]
    )
    approvals = tuple(a.model_copy(update={"approver": enrich(a.approver)})
                      for a in snapshot.approvals)
    return snapshot.model_copy(
        update={"transitions": snapshot.transitions[:-5] + transitions, "approvals": approvals}
    )


def _deleted(row: Row[Any]) -> TicketSnapshot:
    ref = TicketRef(source=row.source, id=row.ticket_id, key=row.ticket_key or row.ticket_id)
    return TicketSnapshot(ref=ref, status="deleted", state="deleted",
                          version=2**62, updated_at=datetime.now(UTC))


def _outcome(decision: Decision) -> str:
    if decision.actions:
        return ",".join(sorted({a.kind for a in decision.actions}))
    return "ignored" if decision.ignored else "no_change"


def _backoff(rt: Runtime, attempts: int) -> float:
    # Exponential with jitter, so a recovering target is not hit in lockstep.
    s = rt.settings
    base: float = min(s.revoke_retry_max_backoff, s.retry_base_delay * 2.0 ** min(attempts, 20))
    return base / 2 + random.uniform(0, base / 2)  # noqa: S311 - jitter, not security


def _error(exc: Exception) -> str:
    code = getattr(exc, "code", exc.__class__.__name__)
    return f"{exc.__class__.__name__}:{code}"[:200]


def _identity_json(person: Identity | None) -> str | None:
    if person is None:
        return None
    return json.dumps(_who(person), sort_keys=True)


def _who(person: Identity | None) -> dict[str, Any] | None:
    if person is None:
        return None
    return {"id": person.source_id, "name": person.name, "display": person.display}


def _json_or_none(value: str | None) -> Any:
    return json.loads(value) if value else None


def _ticket_json(ref: TicketRef) -> dict[str, Any]:
    return {"source": ref.source, "id": ref.id, "key": ref.key, "url": ref.url}


def _short(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")
