"""The webhook listener (ASGI). A webhook is a hint: verify, store, enqueue, answer.

Order per request: size cap → content type → signature over the raw bytes → parse →
relevance → durable inbox row → publish after commit → 202. Bad input gets a 4xx
that Jira does not retry (never 409/429/5xx); only our own outages answer 503.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from connectors.errors import ConnectorError, WebhookParseError
from connectors.jira.webhook import parse_jira_webhook
from connectors.servicenow.webhook import parse_servicenow_webhook, verify_servicenow
from worker import observers
from worker.celery_app import JitgateCelery
from worker.metrics import render, webhook_answered, webhook_rejected
from worker.runtime import ConfigError, Runtime
from worker.webhooks.intake import IntakeWriter, Pending

__all__ = ["create_app", "jira_signature_ok"]

log = structlog.get_logger("jitgate.webhooks")



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
    webhook_rejected(source, status, reason)
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


@dataclass(frozen=True)
class _Delivery:
    """What intake needs from a verified, parsed delivery of any source."""

    source: str
    ticket_id: str
    ticket_key: str | None
    delivery_key: str
    version: int | None
    project: str | None
    issue_type: str | None


class _Bucket:
    """Token bucket: ``rate`` requests per second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> float:
        """0 when a request may pass, else seconds until one may."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return 0.0
            return (1 - self.tokens) / self.rate


class _Listener:
    """The listener's handlers, over one runtime and one Celery app."""

    def __init__(self, runtime: Runtime, celery: JitgateCelery) -> None:
        settings = runtime.settings
        self.runtime = runtime
        self.celery = celery
        self.settings = settings
        self.jira_secrets = settings.jira_secrets()
        self.snow_secrets = settings.servicenow_secrets()
        self.snow_basic = settings.servicenow_basic_auth()
        if not self.jira_secrets and not self.snow_secrets and self.snow_basic is None:
            raise ConfigError(
                "JITGATE_JIRA_WEBHOOK_SECRET is not set (nor JITGATE_SERVICENOW_WEBHOOK_SECRET):"
                " refusing to accept unsigned webhooks"
            )
        self.policies = runtime.policies  # load (and validate) now, not on the first request
        self._checked_at = -1e9
        self._dependency_problems: dict[str, str] = {}
        self.writer = IntakeWriter(runtime, celery)
        self.buckets = {
            source: _Bucket(settings.rate_limit_per_source, settings.rate_limit_burst)
            for source in ("jira", "servicenow")
        }

    def _dependencies(self) -> dict[str, str]:
        """Sources and targets that cannot be reached, checked at most every 30 s so a
        readiness probe does not become load on Jira or the databases."""
        now = time.monotonic()
        if now - self._checked_at < 30:
            return self._dependency_problems
        problems: dict[str, str] = {}
        for kind in self.runtime.configured_sources():
            try:
                self.runtime.source(kind).check()
            except ConnectorError as exc:
                problems[f"source:{kind}"] = exc.code
        for name in self.policies.targets:
            try:
                self.runtime.target(name).check()
            except (ConnectorError, ConfigError) as exc:
                problems[f"target:{name}"] = getattr(exc, "code", "misconfigured")
        self._checked_at, self._dependency_problems = now, problems
        return problems

    async def readyz(self, scope: Literal["all", "intake"] = "all") -> JSONResponse:
        """``scope=all`` (default): ledger, broker and every source and target.
        ``scope=intake``: only what taking webhooks in needs (ledger and broker), for a
        load balancer's probe: a target outage must not take every listener out of
        rotation, since intake goes on and revocations wait in the ledger."""
        problems = await run_in_threadpool(self._problems, scope == "all")
        status = 503 if problems else 200
        return JSONResponse({"ready": not problems, "scope": scope, "problems": problems},
                            status_code=status)

    def _problems(self, dependencies: bool) -> dict[str, str]:
        # In a thread: connecting to a broker that is down takes seconds, which must not
        # stall the event loop that answers webhooks.
        problems: dict[str, str] = dict(self._dependencies()) if dependencies else {}
        try:
            with self.runtime.ledger.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            problems["ledger"] = exc.__class__.__name__
        try:
            with self.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
        except Exception as exc:  # noqa: BLE001 - any broker failure means not ready
            problems["broker"] = exc.__class__.__name__
        return problems

    async def metrics(self) -> Response:
        try:
            body = await run_in_threadpool(render, self.runtime)  # ledger queries
        except SQLAlchemyError as exc:
            log.error("metrics.ledger_unavailable", error=exc.__class__.__name__)
            return Response("ledger unavailable\n", status_code=503, media_type="text/plain")
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def _body(self, request: Request, source: str) -> bytes | JSONResponse:
        wait = self.buckets[source].take()
        if wait:
            # Checked first: a flood must not cost us a body read or an HMAC each.
            return _reject(429, "rate limited, retry later", source, request,
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})
        cap = self.settings.max_body_bytes
        raw = await _read_capped(request, cap)
        if raw is None:
            return _reject(413, f"body larger than {cap} bytes", source, request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return _reject(415, "content type must be application/json", source, request)
        return raw

    async def jira(self, request: Request) -> JSONResponse:
        raw = await self._body(request, "jira")
        if isinstance(raw, JSONResponse):
            return raw
        signature = request.headers.get("x-hub-signature")
        if not jira_signature_ok(raw, signature, self.jira_secrets):
            return _reject(401, "missing or invalid X-Hub-Signature", "jira", request)
        try:
            event = parse_jira_webhook(raw)
        except WebhookParseError as exc:
            return _reject(exc.status, exc.reason, "jira", request)
        if not event.is_issue_event or event.issue_id is None:
            return JSONResponse({"status": "ignored", "reason": "not an issue event"}, 200)
        identifier = request.headers.get("x-atlassian-webhook-identifier")
        return await self.intake(_Delivery(
            source="jira",
            ticket_id=event.issue_id,
            ticket_key=event.issue_key,
            delivery_key=event.dedupe_key(identifier, raw),
            version=_int_or_none(event.changelog_id),
            project=event.project_key,
            issue_type=event.issue_type,
        ))

    async def servicenow(self, request: Request) -> JSONResponse:
        raw = await self._body(request, "servicenow")
        if isinstance(raw, JSONResponse):
            return raw
        problem = verify_servicenow(
            raw, request.headers, self.snow_secrets, now=time.time(),
            tolerance=self.settings.servicenow_webhook_tolerance, basic_auth=self.snow_basic,
        )
        if problem is not None:
            return _reject(401, problem, "servicenow", request)
        try:
            event = parse_servicenow_webhook(raw, request.headers.get("x-jitgate-event-id"))
        except WebhookParseError as exc:
            return _reject(exc.status, exc.reason, "servicenow", request)
        return await self.intake(_Delivery(
            source="servicenow",
            ticket_id=event.ticket_id,
            ticket_key=event.number,
            delivery_key=f"servicenow:{event.event_id}",
            version=event.ticket_version,
            project=event.table,
            issue_type=None,
        ))

    async def intake(self, delivery: _Delivery) -> JSONResponse:
        """Relevance → durable inbox row → publish after commit, by the group-commit
        writer; this coroutine only waits for its answer."""
        covered = any(p.covers(delivery.source, delivery.project, delivery.issue_type)
                      for p in self.policies.for_source(delivery.source))
        answer = await asyncio.wrap_future(self.writer.submit(Pending(
            source=delivery.source, ticket_id=delivery.ticket_id,
            ticket_key=delivery.ticket_key, delivery_key=delivery.delivery_key,
            version=delivery.version, covered=covered,
        )))
        if answer.status == "ledger_down":
            return JSONResponse({"error": "ledger unavailable, retry later"}, 503,
                                headers={"Retry-After": "30"})
        if answer.status == "ignored":
            return JSONResponse({"status": "ignored", "reason": "no policy covers this ticket"},
                                200)
        if answer.status == "duplicate":
            return JSONResponse({"status": "duplicate", "delivery": answer.inbox_id}, 200)
        if answer.status == "queued":
            log.info("webhook.queued", source=delivery.source, inbox_id=answer.inbox_id,
                     ticket=delivery.ticket_key)
        return JSONResponse({"status": answer.status, "delivery": answer.inbox_id}, 202)


_JSON_BODY = {"content": {"application/json": {"schema": {"type": "object"}}}, "required": True}


def _header(name: str, description: str, *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": required, "description": description,
            "schema": {"type": "string"}}


def _answers(*extra: int) -> dict[str, Any]:
    reasons = {
        200: "duplicate delivery, or an event no policy covers",
        202: "stored and queued (or held while the broker is down)",
        400: "not a JSON object",
        401: "missing or invalid signature",
        413: "body too large",
        415: "not application/json",
        422: "JSON that does not fit the payload schema",
        429: "rate limited; Retry-After says when to retry",
        503: "the ledger is unreachable; retry later",
    }
    codes = sorted({200, 202, 400, 401, 413, 415, 429, 503, *extra})
    return {str(code): {"description": reasons[code]} for code in codes}


_JIRA_DOC: dict[str, Any] = {
    "requestBody": {**_JSON_BODY, "description": "A Jira issue event (webhookEvent, issue, "
                    "changelog), Cloud or Data Center shape."},
    "parameters": [
        _header("X-Hub-Signature", "sha256=<hex HMAC-SHA256(secret, raw body)>", required=True),
        _header("X-Atlassian-Webhook-Identifier", "delivery id, unchanged across retries"),
    ],
    "responses": _answers(422),
}
_SERVICENOW_DOC: dict[str, Any] = {
    "requestBody": {**_JSON_BODY, "description": "jitgate's ServiceNow contract: table, "
                    "sys_id, sys_mod_count, sys_updated_on, record (raw values)."},
    "parameters": [
        _header("X-Jitgate-Event-Id", "<table>:<sys_id>:<sys_mod_count>", required=True),
        _header("X-Jitgate-Timestamp", "epoch seconds, within the configured tolerance"),
        _header("X-Jitgate-Signature",
                "v1=<base64 HMAC-SHA256(secret, timestamp + '.' + raw body)>"),
        _header("Authorization", "HTTP Basic, for senders that cannot sign (if configured)"),
    ],
    "responses": _answers(422),
}


def create_app(runtime: Runtime, celery: JitgateCelery) -> FastAPI:
    """Build the listener. Refuses to start when no source has a webhook secret: an
    endpoint without one would have to accept unsigned deliveries."""
    listener = _Listener(runtime, celery)
    observers.install(runtime.settings, celery.send_task)  # metrics files, audit observers
    app = FastAPI(title="jitgate webhook listener", version="1", docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json", on_shutdown=[listener.writer.stop])

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_api_route("/readyz", listener.readyz, methods=["GET"])
    app.add_api_route("/metrics", listener.metrics, methods=["GET"])
    app.add_api_route("/webhooks/jira", _counted("jira", listener.jira), methods=["POST"],
                      status_code=202,
                      openapi_extra=_JIRA_DOC, summary="Jira issue events")
    app.add_api_route("/webhooks/servicenow", _counted("servicenow", listener.servicenow),
                      methods=["POST"],
                      status_code=202, openapi_extra=_SERVICENOW_DOC,
                      summary="ServiceNow record events (jitgate's published contract)")
    return app


_Handler = Callable[[Request], Awaitable[JSONResponse]]


def _counted(source: str, handler: _Handler) -> _Handler:
    """Count every answer of a webhook route by what it says became of the delivery
    (rejections are counted in ``_reject``): metrics stay out of the intake path."""

    @functools.wraps(handler)  # keeps the name (operationId) and docstring
    async def endpoint(request: Request) -> JSONResponse:
        response = await handler(request)
        webhook_answered(source, response.status_code, bytes(response.body))
        return response

    return endpoint


def _int_or_none(value: str | int | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
