"""Celery tasks: thin, take ids, retry only on transient errors.

The logic lives in ``worker.flows`` and ``worker.sweeps``; a task loads nothing but
the runtime, calls one function and fans out the follow-up work it reports.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task, shared_task

from connectors.errors import PermanentError, TransientError
from worker import flows, notify, reconcile, sweeps

__all__ = [
    "apply_grant",
    "notify_events",
    "poll_sources",
    "post_comment",
    "post_comments",
    "process_event",
    "reconcile_targets",
    "sweep",
]

log = structlog.get_logger("jitgate.tasks")

# Short countdowns only (well below the visibility timeout); long waits belong to the
# ledger's next_attempt_at, which the sweep honours.
_MAX_COUNTDOWN = 300.0


# Comments go out in chunks: a mass expiry writes thousands, and one message each would
# put thousands of tasks ahead of the next ticket event or sweep.
_COMMENT_CHUNK = 25


def _follow_up(comment_ids: list[str], retries: list[tuple[str, float]]) -> None:
    if len(comment_ids) == 1:
        post_comment.delay(comment_ids[0])
    elif comment_ids:
        for start in range(0, len(comment_ids), _COMMENT_CHUNK):
            post_comments.delay(comment_ids[start:start + _COMMENT_CHUNK])
    for grant_id, delay in retries:
        apply_grant.apply_async((grant_id,), countdown=min(delay, _MAX_COUNTDOWN))


def _post_now(rt: Any, comment_ids: list[str]) -> None:
    """Post a ticket event's few comments in the task that wrote them: the comment is
    part of answering the ticket, and a message per comment would double the broker
    traffic of an approval. One that meets an outage gets its own follow-up."""
    for comment_id, delay in flows.post_comments(rt, comment_ids).items():
        post_comment.apply_async((comment_id,), countdown=min(delay, _MAX_COUNTDOWN))


@shared_task(bind=True, name="jitgate.process_event")  # type: ignore[untyped-decorator]
def process_event(self: Task[Any, Any], inbox_id: str) -> str:
    """Re-read the ticket of one delivery and act on what it says now."""
    rt = self.app.runtime
    try:
        result = flows.process_event(rt, inbox_id)
    except TransientError as exc:
        # One follow-up per failure, timed by the ledger's backoff; the sweep only steps
        # in if that follow-up is lost. The delivery stays unprocessed until it works.
        delay = flows.defer_delivery(rt, inbox_id, error=exc.code)
        log.warning("event.retry", inbox_id=inbox_id, error=exc.code, retry_in=round(delay, 1))
        process_event.apply_async((inbox_id,), countdown=min(delay, _MAX_COUNTDOWN))
        return f"deferred:{exc.code}"
    except PermanentError as exc:
        flows.fail_delivery(rt, inbox_id, outcome=f"error:{exc.code}")
        log.error("event.failed", inbox_id=inbox_id, error=exc.code)
        return f"error:{exc.code}"
    _follow_up([], result.retries)
    _post_now(rt, result.comment_ids)
    return result.outcome


@shared_task(bind=True, name="jitgate.apply_grant")  # type: ignore[untyped-decorator]
def apply_grant(self: Task[Any, Any], grant_id: str) -> str:
    """Bring a target in line with one grant's ledger state (grant or revoke)."""
    result = flows.apply_grant(self.app.runtime, grant_id)
    retries = [(grant_id, result.retry_in)] if result.retry_in is not None else []
    _follow_up([], retries)
    _post_now(self.app.runtime, result.comment_ids)
    return result.state


@shared_task(bind=True, name="jitgate.post_comment")  # type: ignore[untyped-decorator]
def post_comment(self: Task[Any, Any], comment_id: str) -> str:
    """Post one outbox comment; on an outage, one follow-up at the ledger's backoff."""
    delay = flows.post_comment(self.app.runtime, comment_id)
    if delay is None:
        return "done"
    post_comment.apply_async((comment_id,), countdown=min(delay, _MAX_COUNTDOWN))
    return "deferred"


@shared_task(bind=True, name="jitgate.post_comments")  # type: ignore[untyped-decorator]
def post_comments(self: Task[Any, Any], comment_ids: list[str]) -> str:
    """Post several outbox comments; each one that meets an outage gets its own
    follow-up, as with ``post_comment``."""
    deferred = flows.post_comments(self.app.runtime, comment_ids)
    for comment_id, delay in deferred.items():
        post_comment.apply_async((comment_id,), countdown=min(delay, _MAX_COUNTDOWN))
    return f"done:{len(comment_ids) - len(deferred)},deferred:{len(deferred)}"


@shared_task(bind=True, name="jitgate.sweep")  # type: ignore[untyped-decorator]
def sweep(self: Task[Any, Any]) -> dict[str, int]:
    """Expire grants and re-drive work the broker may have lost, from the ledger."""
    report = sweeps.run(self.app.runtime)
    for inbox_id in report.redeliver:
        process_event.delay(inbox_id)
    _follow_up(report.comment_ids, report.retries)
    return report.counts()


@shared_task(bind=True, name="jitgate.poll_sources")  # type: ignore[untyped-decorator]
def poll_sources(self: Task[Any, Any]) -> int:
    """Ask each ticket source what changed since the last poll (lost webhooks)."""
    inbox_ids = reconcile.poll_sources(self.app.runtime)
    for inbox_id in inbox_ids:
        process_event.delay(inbox_id)
    return len(inbox_ids)


@shared_task(bind=True, name="jitgate.reconcile_targets")  # type: ignore[untyped-decorator]
def reconcile_targets(self: Task[Any, Any]) -> dict[str, int]:
    """Compare managed roles on every target with the ledger; report and repair drift."""
    report = reconcile.reconcile_targets(self.app.runtime)
    _follow_up(report.comment_ids, [])
    return {"unmanaged": len(report.unmanaged), "missing": len(report.missing),
            "repaired": report.repaired, "unreachable": len(report.unreachable)}


@shared_task(bind=True, name=notify.TASK)  # type: ignore[untyped-decorator]
def notify_events(self: Task[Any, Any], seqs: list[int], attempt: int = 1) -> str:
    """Post audit events (by seq) to the notification webhook; a bounded number of
    follow-ups on transient failures, none on a refusal."""
    result = notify.deliver(self.app.runtime, seqs, attempt=attempt)
    if result.retry_in is not None:
        notify_events.apply_async((seqs, attempt + 1),
                                  countdown=min(result.retry_in, _MAX_COUNTDOWN))
    return result.outcome
