"""The webhook listener (ASGI). A webhook is a hint: verify, store, enqueue, answer.

Order per request: size cap → content type → signature over the raw bytes → parse →
relevance → durable inbox row → publish after commit → 202. Bad input gets a 4xx
that Jira does not retry (never 409/429/5xx); only our own outages answer 503.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError

from connectors.jira.webhook import WebhookParseError, parse_jira_webhook
from worker.celery_app import JitgateCelery
from worker.ledger import store
from worker.ledger.schema import grants
from worker.runtime import ConfigError, Runtime

__all__ = ["create_app", "jira_signature_ok"]

log = structlog.get_logger("jitgate.webhooks")

_LIVE = ("pending", "active", "revoking", "revoke_failed")


def jira_signature_ok(raw: bytes, header: str | None, secrets: tuple[bytes, ...]) -> bool:
    """``X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>``; any of the
    configured secrets (current and previous, during a rotation) verifies."""
    if not header or "=" not in header:
        return False
    algo, _, sent = header.partition("=")
    if algo.strip().lower() != "sha256":
        return False
    sent = sent.strip().lower()
    if not sent.isascii():
        return False  # compare_digest refuses non-ASCII text; such a header is simply wrong
    ok = False
    for secret in secrets:
        want = hmac.new(secret, raw, hashlib.sha256).hexdigest()
        # no early exit: the time taken does not tell which secret matched
        ok |= hmac.compare_digest(want, sent)
    return ok


def _reject(status: int, reason: str, source: str, request: Request,
            headers: dict[str, str] | None = None) -> JSONResponse:
    client = request.client.host if request.client else None
    log.warning("webhook.rejected", source=source, status=status, reason=reason, client=client)
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


async def _read_capped(request: Request, cap: int) -> bytes | None:
    """The raw body, or None when it exceeds ``cap`` (checked before hashing)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(runtime: Runtime, celery: JitgateCelery) -> FastAPI:
    """Build the listener. Refuses to start without a Jira webhook secret."""
    settings = runtime.settings
    secrets = settings.jira_secrets()
    if not secrets:
        raise ConfigError(
            "JITGATE_JIRA_WEBHOOK_SECRET is not set: refusing to accept unsigned webhooks"
        )
    policies = runtime.policies  # load (and validate) now, not on the first request
    app = FastAPI(title="jitgate webhook listener", version="1", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        problems: dict[str, str] = {}
        try:
            with runtime.ledger.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            problems["ledger"] = exc.__class__.__name__
        try:
            with celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
        except Exception as exc:  # noqa: BLE001 - any broker failure means not ready
            problems["broker"] = exc.__class__.__name__
        status = 503 if problems else 200
        return JSONResponse({"ready": not problems, "problems": problems}, status_code=status)

    @app.post("/webhooks/jira", status_code=202)
    async def jira_webhook(request: Request) -> JSONResponse:
        raw = await _read_capped(request, settings.max_body_bytes)
        if raw is None:
            return _reject(413, f"body larger than {settings.max_body_bytes} bytes", "jira",
                           request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return _reject(415, "content type must be application/json", "jira", request)
        if not jira_signature_ok(raw, request.headers.get("x-hub-signature"), secrets):
            return _reject(401, "missing or invalid X-Hub-Signature", "jira", request)
        try:
            event = parse_jira_webhook(raw)
        except WebhookParseError as exc:
            return _reject(exc.status, exc.reason, "jira", request)
        if not event.is_issue_event or event.issue_id is None:
            return JSONResponse({"status": "ignored", "reason": "not an issue event"}, 200)
        uid = f"jira:{event.issue_id}"
        try:
            if not _relevant(runtime, policies.for_source("jira"), uid, event):
                return JSONResponse(
                    {"status": "ignored", "reason": "no policy covers this project/type"}, 200
                )
            delivery = event.dedupe_key(request.headers.get("x-atlassian-webhook-identifier"),
                                        raw)
            inbox_id, duplicate = store.record_delivery(
                runtime.ledger,
                source="jira",
                delivery_key=delivery,
                ticket_id=event.issue_id,
                ticket_key=event.issue_key,
                event_version=_int_or_none(event.changelog_id),
                now=datetime.now(UTC),
            )
        except SQLAlchemyError as exc:
            log.error("webhook.ledger_unavailable", error=exc.__class__.__name__)
            return JSONResponse({"error": "ledger unavailable, retry later"}, 503,
                                headers={"Retry-After": "30"})
        if duplicate:
            return JSONResponse({"status": "duplicate", "delivery": inbox_id}, 200)
        try:
            celery.send_task("jitgate.process_event", args=[inbox_id])
        except Exception as exc:  # noqa: BLE001 - broker down: the inbox row holds the event
            log.warning("webhook.held", inbox_id=inbox_id, error=exc.__class__.__name__)
            return JSONResponse({"status": "held", "delivery": inbox_id}, 202)
        log.info("webhook.queued", source="jira", inbox_id=inbox_id, ticket=event.issue_key)
        return JSONResponse({"status": "queued", "delivery": inbox_id}, 202)

    return app


def _relevant(runtime: Runtime, policies: Any, uid: str, event: Any) -> bool:
    if any(p.covers("jira", event.project_key, event.issue_type) for p in policies):
        return True
    # A ticket that holds grants matters even after it left every policy's scope.
    with runtime.ledger.engine.connect() as conn:
        held = conn.execute(
            select(grants.c.id)
            .where(grants.c.ticket_uid == uid, grants.c.state.in_(_LIVE))
            .limit(1)
        ).first()
    return held is not None


def _int_or_none(value: str | int | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
