"""Notifications to a Slack-compatible incoming webhook, from committed audit events.

The audit observer only filters and enqueues (``jitgate.notify`` with the events'
``seq``); the task re-reads the events from the ledger and posts one message per batch.
So a slow or dead receiver never holds up a grant or a revocation, a mass expiry
becomes a few messages instead of thousands, and the broker carries no event text.

Delivery is best effort, like every hook in this kind of tool: transient failures
(connection errors, timeouts, 5xx, 429 with its ``Retry-After``) are retried up to
``JITGATE_NOTIFY_MAX_ATTEMPTS`` in all, a 4xx is not retried, and a message lost with
the broker is not re-sent. The ledger and the ticket comment stay the record.

The webhook URL is a credential (its path is the key): it is never logged, never put
in an exception message, and never part of a message body.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import structlog
from sqlalchemy import select

from worker import metrics
from worker.ledger.audit import AUDIT_EVENTS
from worker.ledger.schema import audit_events
from worker.runtime import ConfigError, Runtime
from worker.settings import Settings

__all__ = [
    "BATCH",
    "TASK",
    "Filter",
    "Notifier",
    "Outcome",
    "deliver",
    "message",
    "retry_after",
]

log = structlog.get_logger("jitgate.notify")

TASK = "jitgate.notify"
# Events per message (and per task): Slack allows 50 blocks a message.
BATCH = 20
_MAX_DELAY = 300.0


def _names(raw: str) -> frozenset[str]:
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class Filter:
    """Which events are sent. ``targets``/``policies`` narrow only the events that
    carry that field (a drift finding has a target but no policy); empty: all."""

    events: frozenset[str]
    targets: frozenset[str] = frozenset()
    policies: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> Filter:
        events = _names(settings.notify_events)
        unknown = sorted(events - AUDIT_EVENTS)
        if unknown:
            raise ConfigError(
                f"JITGATE_NOTIFY_EVENTS: unknown event(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(AUDIT_EVENTS))}"
            )
        return cls(events=events, targets=_names(settings.notify_targets),
                   policies=_names(settings.notify_policies))

    def wants(self, event: Mapping[str, Any]) -> bool:
        if event.get("event") not in self.events:
            return False
        target, policy = event.get("target"), event.get("policy")
        if self.targets and target is not None and target not in self.targets:
            return False
        return not (self.policies and policy is not None and policy not in self.policies)


SendTask = Callable[..., Any]


class Notifier:
    """The audit observer: picks the wanted events and enqueues their delivery."""

    def __init__(self, wanted: Filter, send_task: SendTask) -> None:
        self.filter = wanted
        self.send_task = send_task

    @classmethod
    def from_settings(cls, settings: Settings, send_task: SendTask) -> Notifier | None:
        """None when no webhook URL is configured; ConfigError on a bad filter or URL."""
        wanted = Filter.from_settings(settings)  # checked even when off: fail at start
        url = settings.notify_webhook_url
        if url is None or not url.get_secret_value().strip():
            return None
        if not url.get_secret_value().strip().lower().startswith(("https://", "http://")):
            raise ConfigError("JITGATE_NOTIFY_WEBHOOK_URL must be an http(s) URL")
        return cls(wanted, send_task)

    def __call__(self, events: Sequence[Mapping[str, Any]]) -> None:
        chosen = [e for e in events if self.filter.wants(e) and isinstance(e.get("seq"), int)]
        for start in range(0, len(chosen), BATCH):
            chunk = chosen[start:start + BATCH]
            try:
                self.send_task(TASK, args=[[e["seq"] for e in chunk]])
            except Exception as exc:  # noqa: BLE001 - broker down: the change stands
                log.warning("notify.enqueue_failed", error=exc.__class__.__name__,
                            events=len(chunk))
                for event in chunk:
                    metrics.notification(str(event["event"]), "enqueue_failed")


# ------------------------------------------------------------------------ delivery


@dataclass(frozen=True)
class Outcome:
    outcome: str  # sent | retry | failed | rejected | missing | disabled
    retry_in: float | None = None


def deliver(rt: Runtime, seqs: Sequence[int], *, attempt: int = 1) -> Outcome:
    """Post the events ``seqs`` as one message. ``retry_in`` is set when the caller
    should try again (attempt ``attempt + 1``) after that many seconds."""
    settings = rt.settings
    secret = settings.notify_webhook_url
    url = secret.get_secret_value().strip() if secret is not None else ""
    if not url:
        return Outcome("disabled")
    events = _load(rt, seqs)
    if not events:
        return Outcome("missing")
    names = [str(e["event"]) for e in events]
    hint: str | None = None
    try:
        response = httpx.post(url, json=message(events), timeout=settings.notify_timeout)
    except httpx.TransportError as exc:  # refused, reset, DNS, timeouts
        error = exc.__class__.__name__
    except Exception as exc:  # noqa: BLE001 - e.g. an invalid URL: retrying cannot help
        # Class name only: httpx messages may contain the URL, which is the secret.
        log.error("notify.failed", error=exc.__class__.__name__, events=len(events))
        _count(names, "failed")
        return Outcome("failed")
    else:
        status, hint = response.status_code, response.headers.get("retry-after")
        if 200 <= status < 300:
            log.info("notify.sent", events=len(events), attempt=attempt)
            _count(names, "sent")
            return Outcome("sent")
        error = f"http_{status}"
        if status != 429 and status < 500:
            # The receiver refuses this message (bad URL path, revoked hook, payload):
            # sending it again gets the same answer.
            log.error("notify.rejected", status=status, events=len(events))
            _count(names, "rejected")
            return Outcome("rejected")
    if attempt >= settings.notify_max_attempts:
        log.error("notify.failed", error=error, attempts=attempt, events=len(events))
        _count(names, "failed")
        return Outcome("failed")
    hinted = retry_after(hint)  # 429 and 503 say when; honoured, within the cap
    delay = min(hinted if hinted is not None else _backoff(settings.retry_base_delay, attempt),
                _MAX_DELAY)
    log.warning("notify.retry", error=error, attempt=attempt, retry_in=round(delay, 1))
    _count(names, "retry")
    return Outcome("retry", retry_in=delay)


def _count(names: Iterable[str], outcome: str) -> None:
    for name in names:
        metrics.notification(name, outcome)


def _backoff(base: float, attempt: int) -> float:
    # Exponential with jitter, like the target retries.
    full: float = min(_MAX_DELAY, base * 2.0 ** min(attempt, 16))
    return full / 2 + random.uniform(0, full / 2)  # noqa: S311 - jitter, not security


def retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    reference = now or datetime.now(when.tzinfo)
    return max(0.0, (when - reference).total_seconds())


def _load(rt: Runtime, seqs: Sequence[int]) -> list[dict[str, Any]]:
    wanted = [int(s) for s in seqs][:BATCH]
    with rt.ledger.tx() as conn:
        rows = conn.execute(
            select(audit_events.c.payload).where(audit_events.c.seq.in_(wanted))
            .order_by(audit_events.c.seq)
        ).all()
    out: list[dict[str, Any]] = []
    for row in rows:
        try:
            out.append(json.loads(row.payload))
        except ValueError:
            continue
    return out


# ------------------------------------------------------------------------- message

_ICONS = {
    "grant.issued": ":white_check_mark:",
    "grant.extended": ":hourglass_flowing_sand:",
    "grant.revoked": ":lock:",
    "grant.revoke_failed": ":rotating_light:",
    "grant.denied": ":no_entry_sign:",
    "grant.failed": ":x:",
    "drift.detected": ":warning:",
}


def message(events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A Slack message: ``text`` (what every Slack-compatible receiver shows, and
    Slack's notification text) and one section block per event."""
    lines = [line(event) for event in events]
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}
              for text in lines]
    return {"text": "\n".join(lines), "blocks": blocks}


def line(event: Mapping[str, Any]) -> str:
    """One human-readable line: what happened, to whom, where, until when, why."""
    name = str(event.get("event", ""))
    icon = _ICONS.get(name, ":information_source:")
    ticket = _ticket(event.get("ticket"))
    who = _code(event.get("principal"))
    what = f"{_code(event.get('role'))} on {_code(event.get('target'))}"
    policy = f"policy {_esc(event.get('policy'))}" if event.get("policy") else None
    reason = _esc(event.get("reason")) if event.get("reason") else None
    if name == "grant.issued":
        text = f"Granted {what} to {who} until {_time(event.get('expires_at'))}"
        approver = _person(event.get("approver"))
        extra = [policy, f"approved by {approver}" if approver else None]
    elif name == "grant.extended":
        text = f"Extended {what} for {who} until {_time(event.get('expires_at'))}"
        extra = [policy]
    elif name == "grant.revoked":
        text = f"Revoked {what} from {who}"
        extra = [f"reason: {reason}" if reason else None, policy]
    elif name == "grant.revoke_failed":
        text = (f"Revocation of {what} from {who} keeps failing "
                f"({_esc(event.get('detail'))}, {_esc(event.get('attempts'))} attempts); "
                "still retrying, the access is still held")
        extra = [f"reason: {reason}" if reason else None, policy]
    elif name == "grant.failed":
        text = f"Could not grant {what} to {who}"
        extra = [f"error: {reason}" if reason else None, policy]
    elif name == "grant.denied":
        text = f"Denied {ticket or 'a request'}: {_esc(event.get('detail') or reason)}"
        extra = [f"rule: {reason}" if reason else None, policy]
        ticket = None  # already named
    elif name == "drift.detected":
        kind = _esc(event.get("kind"))
        text = (f"Drift on {_code(event.get('target'))}: {who} in {_code(event.get('role'))} "
                f"({kind}, action: {_esc(event.get('action'))})")
        extra = []
    else:
        text = _esc(name)
        extra = [f"reason: {reason}" if reason else None]
    parts = [f"{icon} {text}"]
    if ticket:
        parts.append(f"— {ticket}")
    details = [e for e in extra if e]
    if details:
        parts.append(f"({'; '.join(details)})")
    return " ".join(parts)


def _esc(value: Any) -> str:
    """Slack mrkdwn control characters: ticket text cannot become a link or @channel."""
    text = "" if value is None else str(value)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")[:300]


def _code(value: Any) -> str:
    return f"`{_esc(value).replace('`', chr(39))}`" if value not in (None, "") else "`?`"


def _time(value: Any) -> str:
    if not isinstance(value, str):
        return "?"
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return _esc(value)
    return parsed.strftime("%Y-%m-%d %H:%M UTC")


def _person(value: Any) -> str | None:
    if isinstance(value, Mapping):
        name = value.get("display") or value.get("name") or value.get("id")
        return _esc(name) if name else None
    return None


def _ticket(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return None
    key = value.get("key") or value.get("id")
    if not key:
        return None
    url = value.get("url")
    if isinstance(url, str) and url.startswith(("https://", "http://")) \
            and not any(c in url for c in "<>| \n"):
        return f"<{url}|{_esc(key)}>"
    return _esc(key)
