"""Generic HTTP target: grants and revocations become signed calls to the user's own API.

For systems nobody has written a plugin for: the receiver implements four endpoints under
the configured base ``url`` and verifies our signature (connectors/http/README.md is the
receiver's guide).

Requests::

    POST {url}/grant    {"action": "grant", "principal": ..., "role": ...,
                         "expires_at": "<ISO 8601 UTC>", "request_id": "<uuid4>"}
    POST {url}/revoke   {"action": "revoke", "principal": ..., "role": ..., "request_id": ...}
    GET  {url}/members?role=<role>      -> {"members": ["ctr_bob", ...]}
    GET  {url}/health                   -> any 2xx

Every request carries ``X-Jitgate-Timestamp: <epoch seconds>`` and
``X-Jitgate-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>`` where body
is the exact bytes sent (empty for GET). ``action`` binds a signed body to its endpoint,
so a captured grant cannot be replayed against /revoke or the other way round. The
``request_id`` stays the same over the retries of one call, for the receiver's own
deduplication; timestamp and signature are fresh on each attempt.

Answers: 200/201 ``{"outcome": "applied" | "already_present" | "already_absent"}``;
404 ``{"error": "role_missing" | "principal_missing"}``; 401/403 permission denied; other
4xx permanent; 408, 429, 5xx and transport errors are retried within the call (up to
``max_attempts``, exponential backoff with jitter, ``Retry-After`` honoured up to
``max_retry_after``) and then raised as ``TransientError``.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

import httpx
from pydantic import BaseModel, Field, HttpUrl, SecretStr, field_validator

from connectors.base import Outcome
from connectors.errors import PermanentError, TransientError

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "HTTPTarget",
    "HTTPTargetConfig",
    "parse_retry_after",
    "sign",
]

TIMESTAMP_HEADER: Final = "X-Jitgate-Timestamp"
SIGNATURE_HEADER: Final = "X-Jitgate-Signature"

# RFC 9110 field-name token.
_HEADER_NAME: Final = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Ours, or set by httpx from the request itself; a static value would break the contract.
_RESERVED: Final = frozenset(
    {"x-jitgate-timestamp", "x-jitgate-signature", "content-type", "content-length",
     "host", "transfer-encoding", "connection"}
)
# ``headers`` is plain configuration, echoed in diagnostics; credentials go in ``secret``.
_CREDENTIAL_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "cookie"})
_RETRY_STATUSES: Final = frozenset({408, 429})
_MAX_RESPONSE_BYTES: Final = 1 << 20


class HTTPTargetConfig(BaseModel, frozen=True, extra="forbid", hide_input_in_errors=True):
    """Options of a ``type: http`` target. ``hide_input_in_errors`` keeps the secret out
    of ``ValidationError`` text."""

    url: HttpUrl
    secret: SecretStr
    timeout: float = Field(default=10, gt=0)
    max_attempts: int = Field(default=5, ge=1, le=20)
    max_retry_after: float = Field(default=60, ge=0)
    # First backoff delay and its ceiling (seconds); doubled per attempt, with jitter.
    backoff_initial: float = Field(default=0.5, ge=0)
    backoff_max: float = Field(default=10, ge=0)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _plain_base(cls, value: HttpUrl) -> HttpUrl:
        if value.username or value.password:
            raise ValueError("must not carry credentials; the HMAC secret authenticates us")
        if value.query or value.fragment:
            raise ValueError("must be a base URL without query or fragment")
        return value

    @field_validator("secret")
    @classmethod
    def _strong_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value().encode()) < 16:
            raise ValueError("must be at least 16 bytes")
        return value

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            lowered = name.lower()
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if lowered in _RESERVED:
                raise ValueError(f"{name!r} is set by jitgate itself")
            if lowered in _CREDENTIAL_HEADERS:
                raise ValueError(f"{name!r} would carry a credential; headers are not secret")
            if any(c in text for c in "\r\n\x00"):
                raise ValueError(f"value of {name!r} contains CR, LF or NUL")
        return value


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Jitgate-Signature`` value for one request."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date);
    None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


class _Retry(Exception):
    """One attempt failed in a way worth repeating."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class HTTPTarget:
    """Calls a receiver's HTTP API. One lazily created ``httpx.Client`` per instance
    (thread-safe, connection pooling); retries happen inside each call."""

    kind: ClassVar[str] = "http"

    def __init__(
        self,
        config: HTTPTargetConfig,
        *,
        name: str,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self._config = config
        self._base = str(config.url).rstrip("/")
        self._sleep = sleep
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None

    @classmethod
    def from_options(cls, name: str, options: dict[str, Any]) -> HTTPTarget:
        return cls(HTTPTargetConfig.model_validate(options), name=name)

    def __repr__(self) -> str:
        return f"HTTPTarget(name={self.name!r}, url={self._base!r})"

    # -- TargetConnector -------------------------------------------------------------

    def grant(self, *, principal: str, role: str, expires_at: datetime) -> Outcome:
        if expires_at.utcoffset() is None:
            raise PermanentError("expires_at must be timezone-aware", code="invalid_expiry")
        payload = {
            "action": "grant",
            "principal": principal,
            "role": role,
            "expires_at": expires_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "request_id": str(uuid.uuid4()),
        }
        body = self._call("grant", "POST", "/grant", payload=payload)
        return self._outcome(body, {Outcome.APPLIED, Outcome.ALREADY_PRESENT}, "grant")

    def revoke(self, *, principal: str, role: str) -> Outcome:
        payload = {
            "action": "revoke",
            "principal": principal,
            "role": role,
            "request_id": str(uuid.uuid4()),
        }
        try:
            body = self._call("revoke", "POST", "/revoke", payload=payload)
        except PermanentError as exc:
            # No such role or principal on the receiver: nothing to take away.
            if exc.code in {"role_missing", "principal_missing"}:
                return Outcome.ALREADY_ABSENT
            raise
        return self._outcome(body, {Outcome.APPLIED, Outcome.ALREADY_ABSENT}, "revoke")

    def members(self, *, role: str) -> frozenset[str]:
        body = self._call("members", "GET", "/members", params={"role": role})
        found = body.get("members")
        if not isinstance(found, list) or not all(isinstance(m, str) for m in found):
            raise self._invalid("members", 'expected {"members": [string, ...]}')
        return frozenset(found)

    def check(self) -> None:
        self._call("check", "GET", "/health", allow_empty=True)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- internals -------------------------------------------------------------------

    def _outcome(self, body: Mapping[str, Any], allowed: set[Outcome], action: str) -> Outcome:
        try:
            outcome: Outcome | None = Outcome(str(body.get("outcome")))
        except ValueError:
            outcome = None
        if outcome not in allowed:
            wanted = " | ".join(sorted(o.value for o in allowed))
            raise self._invalid(action, f'expected {{"outcome": {wanted}}}')
        assert outcome is not None
        return outcome

    def _invalid(self, action: str, what: str) -> PermanentError:
        return PermanentError(
            f"http target {self.name!r}: {action} got an unusable answer ({what})",
            code="invalid_response",
        )

    def _call(
        self,
        action: str,
        method: str,
        path: str,
        *,
        payload: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        allow_empty: bool = False,
    ) -> dict[str, Any]:
        """One logical call: attempts with backoff until an answer that is not worth
        retrying, or ``max_attempts``. The body is serialised once, so every attempt
        sends (and signs) the same bytes with the same ``request_id``."""
        cfg = self._config
        body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        last = "no attempt made"
        for attempt in range(1, cfg.max_attempts + 1):
            try:
                return self._attempt(
                    action, method, path, body=body, params=params, allow_empty=allow_empty
                )
            except _Retry as retry:
                last = retry.reason
                if attempt == cfg.max_attempts:
                    break
                self._sleep(self._delay(attempt, retry.retry_after))
        raise TransientError(
            f"http target {self.name!r}: {action} failed after {cfg.max_attempts} "
            f"attempt(s); last: {last}"
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        cfg = self._config
        if retry_after is not None:
            return min(retry_after, cfg.max_retry_after)
        ceiling = min(cfg.backoff_max, cfg.backoff_initial * (1 << (attempt - 1)))
        # Equal jitter: at least half the step, so retries spread without collapsing to 0.
        jitter: float = random.uniform(0, ceiling / 2)  # noqa: S311 - not cryptographic
        return ceiling / 2 + jitter

    def _attempt(
        self,
        action: str,
        method: str,
        path: str,
        *,
        body: bytes,
        params: Mapping[str, str] | None,
        allow_empty: bool,
    ) -> dict[str, Any]:
        timestamp = str(int(time.time()))
        secret = self._config.secret.get_secret_value().encode()
        headers = {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(secret, timestamp, body)}
        if body:
            headers["Content-Type"] = "application/json"
        try:
            response = self._http().request(
                method, self._base + path, content=body or None, params=params, headers=headers
            )
        except httpx.TransportError as exc:
            # Class name only: httpx messages can quote the URL and socket details.
            raise _Retry(type(exc).__name__) from None
        status = response.status_code
        if status >= 500 or status in _RETRY_STATUSES:
            raise _Retry(
                f"HTTP {status}", parse_retry_after(response.headers.get("Retry-After"))
            )
        prefix = f"http target {self.name!r}: {action} failed (HTTP {status})"
        if status in {401, 403}:
            raise PermanentError(
                f"{prefix}: the receiver refused our signature or permissions",
                code="permission_denied",
            )
        document = _json_object(response)
        if status == 404:
            error = document.get("error") if document else None
            if error in {"role_missing", "principal_missing"}:
                raise PermanentError(f"{prefix}: {error.replace('_', ' ')}", code=error)
            raise PermanentError(f"{prefix}: not found", code="not_found")
        if not 200 <= status < 300:
            raise PermanentError(prefix, code=f"http_{status}")
        if document is None:
            if allow_empty:
                return {}
            raise self._invalid(action, "expected a JSON object")
        return document

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                self._client = httpx.Client(
                    timeout=self._config.timeout,
                    headers={"User-Agent": "jitgate", **self._config.headers},
                    # A redirect would send our signed request somewhere we were not told.
                    follow_redirects=False,
                )
            return self._client


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    if len(response.content) > _MAX_RESPONSE_BYTES:
        return None
    try:
        document = response.json()
    except ValueError:
        return None
    return document if isinstance(document, dict) else None
