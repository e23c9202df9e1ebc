"""In-process reference receiver for the generic HTTP target, for tests and ``jitgate demo``.

It implements the receiver side of connectors/http/README.md over real HTTP on
127.0.0.1: signature and timestamp checks (401 on a bad, missing or stale signature),
``request_id`` deduplication, memberships in memory, and fault injection
(``fail_next``) to exercise the target's retries. Every request is recorded, with
whether its signature verified.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from connectors.http import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from worker.doubles._server import HttpDouble

__all__ = ["HTTPTargetDouble", "TargetCall", "verify_signature"]

_MAX_BODY = 64 * 1024


def verify_signature(
    secret: bytes,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    tolerance: float = 300,
    now: float | None = None,
) -> bool:
    """The receiver's check: a fresh timestamp and a matching HMAC, compared in constant
    time. Anyone implementing a receiver can copy this function."""
    if not timestamp or not signature or not timestamp.isdigit():
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


@dataclass(frozen=True)
class TargetCall:
    """One request as the receiver saw it."""

    method: str
    path: str
    query: Mapping[str, tuple[str, ...]]
    body: Any
    headers: Mapping[str, str]
    timestamp: str | None
    signature_valid: bool
    status: int
    at: float


@dataclass(frozen=True)
class _Fault:
    status: int
    retry_after: str | None


class HTTPTargetDouble(HttpDouble):
    """A small, thread-safe receiver. Use as a context manager or start()/stop().

    ``strict_principals``: grants to principals never added answer 404
    ``principal_missing`` (like a real system with its own user list)."""

    def __init__(
        self,
        secret: str,
        *,
        roles: Iterable[str] = (),
        principals: Iterable[str] = (),
        strict_principals: bool = True,
        base_path: str = "/jitgate",
        tolerance: float = 300,
    ) -> None:
        self._secret = secret.encode()
        self._base_path = base_path.rstrip("/")
        self._tolerance = tolerance
        self.strict_principals = strict_principals
        self._lock = threading.RLock()
        self._roles: dict[str, set[str]] = {role: set() for role in roles}
        self._principals = set(principals)
        self._seen: dict[str, tuple[int, dict[str, Any]]] = {}
        self._faults: deque[_Fault] = deque()
        self.requests: list[TargetCall] = []

    # -- lifecycle ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self._base_path}"

    # -- state ----------------------------------------------------------------------

    def add_role(self, role: str) -> str:
        with self._lock:
            self._roles.setdefault(role, set())
        return role

    def add_principal(self, principal: str) -> str:
        with self._lock:
            self._principals.add(principal)
        return principal

    def add_member(self, principal: str, role: str) -> None:
        with self._lock:
            self._roles[role].add(principal)

    def members(self, role: str) -> frozenset[str]:
        with self._lock:
            return frozenset(self._roles.get(role, ()))

    def is_member(self, principal: str, role: str) -> bool:
        return principal in self.members(role)

    def fail_next(
        self, n: int = 1, status: int = 503, retry_after: str | float | None = None
    ) -> None:
        """Answer the next ``n`` correctly signed requests with ``status``."""
        header = None if retry_after is None else str(retry_after)
        with self._lock:
            self._faults.extend(_Fault(status, header) for _ in range(n))

    # -- the protocol ---------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self._answer(handler, 413, {"error": "too_large"})
            return
        raw = handler.rfile.read(length) if length else b""
        timestamp = handler.headers.get(TIMESTAMP_HEADER)
        valid = verify_signature(
            self._secret, timestamp, handler.headers.get(SIGNATURE_HEADER), raw,
            tolerance=self._tolerance,
        )
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        status, answer, extra = self._route(handler.command, parts.path, parts.query, body, valid)
        with self._lock:
            self.requests.append(
                TargetCall(
                    method=handler.command,
                    path=parts.path.removeprefix(self._base_path),
                    query={k: tuple(v) for k, v in parse_qs(parts.query).items()},
                    body=body,
                    headers=dict(handler.headers.items()),
                    timestamp=timestamp,
                    signature_valid=valid,
                    status=status,
                    at=time.monotonic(),
                )
            )
        self._answer(handler, status, answer, extra)

    def _route(
        self, method: str, path: str, query: str, body: Any, valid: bool
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        if not valid:
            return 401, {"error": "bad_signature"}, {}
        with self._lock:
            if self._faults:
                fault = self._faults.popleft()
                extra = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                return fault.status, {"error": "injected"}, extra
        if not path.startswith(self._base_path + "/"):
            return 404, {"error": "not_found"}, {}
        endpoint = path.removeprefix(self._base_path)
        if method == "GET" and endpoint == "/health":
            return 200, {"status": "ok"}, {}
        if method == "GET" and endpoint == "/members":
            role = parse_qs(query).get("role", [""])[0]
            with self._lock:
                if role not in self._roles:
                    return 404, {"error": "role_missing"}, {}
                return 200, {"members": sorted(self._roles[role])}, {}
        if method == "POST" and endpoint in {"/grant", "/revoke"}:
            status, answer = self._change(endpoint.removeprefix("/"), body)
            return status, answer, {}
        return 404, {"error": "not_found"}, {}

    def _change(self, action: str, body: Any) -> tuple[int, dict[str, Any]]:
        fields = ["principal", "role", "request_id"] + (["expires_at"] if action == "grant" else [])
        if not isinstance(body, dict) or body.get("action") != action or not all(
            isinstance(body.get(f), str) and body.get(f) for f in fields
        ):
            return 400, {"error": "bad_request"}
        principal, role, request_id = body["principal"], body["role"], body["request_id"]
        with self._lock:
            if request_id in self._seen:  # a retry of a call we already answered
                return self._seen[request_id]
            members = self._roles.get(role)
            if members is None:
                result: tuple[int, dict[str, Any]] = (404, {"error": "role_missing"})
            elif action == "grant" and self.strict_principals and principal not in self._principals:
                result = (404, {"error": "principal_missing"})
            elif action == "grant":
                outcome = "already_present" if principal in members else "applied"
                members.add(principal)
                result = (200, {"outcome": outcome})
            else:
                outcome = "applied" if principal in members else "already_absent"
                members.discard(principal)
                result = (200, {"outcome": outcome})
            self._seen[request_id] = result
            return result

    @staticmethod
    def _answer(
        handler: BaseHTTPRequestHandler,
        status: int,
        answer: Mapping[str, Any],
        extra: Mapping[str, str] | None = None,
    ) -> None:
        data = json.dumps(answer).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (extra or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.double._handle(self)  # type: ignore[attr-defined]

    def do_POST(self) -> None:
        self.server.double._handle(self)  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        return  # keep test output clean


HTTPTargetDouble.handler = _Handler
