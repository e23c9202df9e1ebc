"""The raw limit of ingest: the same uvicorn serving an ASGI endpoint that only reads
the body and answers 202 (no signature, no parsing, no ledger, no publish)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"19")]
_BODY = b'{"status":"queued"}'


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = bool(message.get("more_body"))
    status = 202 if scope["method"] == "POST" else 200
    await send({"type": "http.response.start", "status": status, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})


def _framework_floor() -> Any:
    """The same body-reading endpoint as a FastAPI route, the framework jitgate's
    listener is built on: how much of the gap to the bare endpoint is the framework's
    alone (reported for information; the target ratio is to the bare endpoint)."""
    api = FastAPI()

    @api.post("/webhooks/jira", status_code=202)
    async def accept(request: Request) -> Response:
        await request.body()
        return Response(_BODY, status_code=202, media_type="application/json")

    return api


fastapi_app = _framework_floor()
