"""Group commit for the listener: many verified deliveries, one ledger transaction.

The event loop never waits on the ledger or the broker. Handlers hand a verified,
parsed delivery to one writer thread and await its answer; the writer takes whatever
has queued up meanwhile (up to ``max_batch``), checks relevance, stores the inbox rows
in one transaction, and publishes each new one only after that commit. Under load a
commit carries many deliveries, so its cost is shared instead of queueing every
request behind the previous one's round trips. The 202 still means "stored durably".
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import structlog
from sqlalchemy import select

from worker.celery_app import JitgateCelery
from worker.ledger import store
from worker.ledger.schema import LIVE_STATES, grants
from worker.runtime import Runtime

__all__ = ["Answer", "IntakeWriter", "Pending"]

log = structlog.get_logger("jitgate.webhooks")


Status = Literal["queued", "held", "duplicate", "ignored", "ledger_down"]


@dataclass(frozen=True)
class Pending:
    """A verified delivery waiting for the writer."""

    source: str
    ticket_id: str
    ticket_key: str | None
    delivery_key: str
    version: int | None
    # Some policy covers it; if not, it matters only if the ticket still holds grants.
    covered: bool


@dataclass(frozen=True)
class Answer:
    status: Status
    inbox_id: str | None = None


class IntakeWriter:
    def __init__(self, runtime: Runtime, celery: JitgateCelery, *, max_batch: int = 256) -> None:
        self.runtime = runtime
        self.celery = celery
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[Pending, Future[Answer]] | None] = (
            queue.SimpleQueue())
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, pending: Pending) -> Future[Answer]:
        self._ensure_started()
        future: Future[Answer] = Future()
        self._queue.put((pending, future))
        return future

    def stop(self, timeout: float = 10.0) -> None:
        """Answer what is queued, then end the thread (at shutdown)."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)

    def _ensure_started(self) -> None:
        # Started on first use, not at import or app creation: a forked server process
        # must own its thread.
        if self._thread is not None and self._thread.is_alive():
            return
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="jitgate-intake",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                answers = self._write([pending for pending, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every waiting request gets its answer
                log.error("webhook.ledger_unavailable", error=exc.__class__.__name__,
                          batch=len(batch))
                answers = [Answer("ledger_down")] * len(batch)
            for (_, future), answer in zip(batch, answers, strict=True):
                future.set_result(answer)
            if stop:
                return

    def _write(self, batch: list[Pending]) -> list[Answer]:
        ledger = self.runtime.ledger
        with ledger.tx() as conn:
            unsure = sorted({f"{p.source}:{p.ticket_id}" for p in batch if not p.covered})
            held: set[str] = set()
            if unsure:
                # A ticket that holds grants matters even after it left every policy.
                held = set(conn.execute(
                    select(grants.c.ticket_uid).distinct()
                    .where(grants.c.ticket_uid.in_(unsure), grants.c.state.in_(LIVE_STATES))
                ).scalars())
            keep = [p for p in batch if p.covered or f"{p.source}:{p.ticket_id}" in held]
            stored = iter(store.record_deliveries(
                conn,
                [{"source": p.source, "delivery_key": p.delivery_key, "ticket_id": p.ticket_id,
                  "ticket_key": p.ticket_key, "event_version": p.version} for p in keep],
                now=datetime.now(UTC),
            ))
            answers: list[Answer] = []
            for pending in batch:
                if pending.covered or f"{pending.source}:{pending.ticket_id}" in held:
                    inbox_id, duplicate = next(stored)
                    answers.append(Answer("duplicate" if duplicate else "queued", inbox_id))
                else:
                    answers.append(Answer("ignored"))
        # Published only after the commit: a worker must find the row it is told about.
        broker_down = False
        for index, answer in enumerate(answers):
            if answer.status != "queued":
                continue
            if not broker_down:
                try:
                    self.celery.send_task("jitgate.process_event", args=[answer.inbox_id])
                    continue
                except Exception as exc:  # noqa: BLE001 - the inbox row holds the event
                    log.warning("webhook.held", error=exc.__class__.__name__)
                    broker_down = True  # don't wait out a timeout per delivery
            answers[index] = Answer("held", answer.inbox_id)
        return answers
