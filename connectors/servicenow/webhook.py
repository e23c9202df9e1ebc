"""The ServiceNow webhook contract jitgate publishes: verification and pure parsing.

ServiceNow has no standard webhook, so the customer's business rule
(``deploy/servicenow/business_rule.js``) sends ours (DESIGN.md, issue 3 §1)::

    X-Jitgate-Event-Id:  <table>:<sys_id>:<sys_mod_count>
    X-Jitgate-Timestamp: <epoch seconds>
    X-Jitgate-Signature: v1=<base64 HMAC-SHA256(key, timestamp + "." + raw body)>

The HMAC key is the UTF-8 bytes of the configured secret text. The business rule
passes ``GlideStringUtil.base64Encode(secret)`` to ``CertificateEncryption.generateMac``,
which takes its key Base64-encoded, decodes it, and returns the MAC Base64-encoded
(formats.md §2.1): both sides therefore MAC with the same raw key bytes.

A delivery is a hint only: the worker re-reads the record through the Table API before
any decision, so nothing here is trusted for authorization.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from connectors.errors import WebhookParseError
from connectors.servicenow.values import (
    SUPPORTED_TABLES,
    SYS_ID,
    parse_servicenow_datetime,
    reference_value,
)

__all__ = [
    "APPROVAL_TABLE",
    "EVENT_ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "ServiceNowEvent",
    "WebhookParseError",
    "parse_servicenow_webhook",
    "servicenow_mac",
    "verify_servicenow",
]

EVENT_ID_HEADER = "X-Jitgate-Event-Id"
TIMESTAMP_HEADER = "X-Jitgate-Timestamp"
SIGNATURE_HEADER = "X-Jitgate-Signature"
APPROVAL_TABLE = "sysapproval_approver"
_EVENT_TABLES = frozenset({*SUPPORTED_TABLES, APPROVAL_TABLE})

_MAC_LEN = hashlib.sha256().digest_size
_HEX_MAC = re.compile(r"^[0-9a-fA-F]{64}$")
_EPOCH_SECONDS = re.compile(r"^\d{1,12}$")
_MAX_REASON_LEN = 200
_MAX_HEADER_LEN = 200


# ---------------------------------------------------------------------- verification


def servicenow_mac(key: bytes, timestamp: str, raw: bytes) -> str:
    """``base64(HMAC-SHA256(key, timestamp + "." + raw))``, the ``v1`` signature."""
    mac = hmac.new(key, timestamp.encode("ascii") + b"." + raw, hashlib.sha256).digest()
    return base64.b64encode(mac).decode("ascii")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # Frameworks differ in header case (Starlette lower-cases, a dict may not).
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value.strip()
    return None


def _basic_ok(header: str, user: str, password: bytes) -> bool:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    sent_user, sep, sent_password = decoded.partition(b":")
    # Both compared, always: the time taken does not tell which part was wrong.
    ok_user = hmac.compare_digest(sent_user, user.encode())
    ok_password = hmac.compare_digest(sent_password, password)
    return bool(sep) and ok_user and ok_password


def verify_servicenow(
    raw: bytes,
    headers: Mapping[str, str],
    secrets: tuple[bytes, ...],
    *,
    now: float,
    tolerance: float = 300.0,
    basic_auth: tuple[str, bytes] | None = None,
) -> str | None:
    """``None`` when the delivery is authentic, else a short reason for a 401.

    A ``v1`` signature is checked against every configured secret (current and previous
    during a rotation); its timestamp must lie within ``tolerance`` seconds of ``now``
    (replays of old deliveries fail). Without a signature header, HTTP Basic
    ``Authorization`` is accepted when ``basic_auth=(user, password)`` is configured
    (senders that cannot run a script). A present but bad signature never falls back
    to Basic auth. Reasons are fixed text: they never echo what was sent.
    """
    signature = _header(headers, SIGNATURE_HEADER)
    if not signature:
        authorization = _header(headers, "Authorization")
        if basic_auth is None:
            return f"missing {SIGNATURE_HEADER}"
        if not authorization:
            return f"missing {SIGNATURE_HEADER} or Authorization"
        user, password = basic_auth
        if not user or not password:
            return "basic auth is not configured"
        return None if _basic_ok(authorization, user, password) else "invalid basic credentials"
    keys = tuple(s for s in secrets if s)
    if not keys:
        return "no webhook secret is configured"

    timestamp = _header(headers, TIMESTAMP_HEADER)
    if not timestamp:
        return f"missing {TIMESTAMP_HEADER}"
    if not _EPOCH_SECONDS.match(timestamp):
        return f"invalid {TIMESTAMP_HEADER} (epoch seconds expected)"
    if abs(now - int(timestamp)) > tolerance:
        return f"stale {TIMESTAMP_HEADER}"

    version, sep, value = signature.partition("=")
    if not sep or version.strip() != "v1":
        return "unsupported signature version (v1=<base64> expected)"
    value = value.strip()
    if _HEX_MAC.match(value):
        # Valid base64 too, but 48 bytes: name the usual mistake instead.
        return "signature is hex-encoded; v1 must be base64"
    try:
        sent = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return "signature is not base64"
    if len(sent) != _MAC_LEN:
        return "signature has the wrong length"

    message = timestamp.encode("ascii") + b"." + raw
    ok = False
    for key in keys:
        want = hmac.new(key, message, hashlib.sha256).digest()
        # no early exit: the time taken does not tell which secret matched
        ok |= hmac.compare_digest(want, sent)
    return None if ok else "invalid signature"


# ---------------------------------------------------------------------- parsing


class _Payload(BaseModel):
    """The published body. Unknown keys are ignored: customers may add labels."""

    model_config = ConfigDict(extra="ignore")

    table: str = Field(min_length=1, max_length=80)
    sys_id: str
    sys_mod_count: int = Field(ge=0)
    sys_updated_on: str
    record: dict[str, Any]
    changed: list[str] | None = None
    variables: dict[str, Any] | None = None
    approvals: list[dict[str, Any]] | None = None
    event: str | None = None

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        if value not in _EVENT_TABLES:
            raise ValueError(f"must be one of {', '.join(sorted(_EVENT_TABLES))}")
        return value

    @field_validator("sys_id")
    @classmethod
    def _sys_id(cls, value: str) -> str:
        if not SYS_ID.match(value):
            raise ValueError("must be a 32-character lowercase hex sys_id")
        return value

    @field_validator("sys_mod_count", mode="before")
    @classmethod
    def _count(cls, value: Any) -> Any:
        # getValue() yields strings ("7"); JSON numbers are fine too; booleans are not.
        if isinstance(value, bool):
            raise ValueError("must be an integer")
        return value

    @field_validator("sys_updated_on")
    @classmethod
    def _updated(cls, value: str) -> str:
        if parse_servicenow_datetime(value) is None:
            raise ValueError("must be a datetime like 2026-01-15 09:12:44 (UTC)")
        return value


class ServiceNowEvent(BaseModel):
    """What a ServiceNow delivery says, normalized. A hint only.

    ``table``/``sys_id``/``ticket_id`` name the *ticket* to re-read. For a
    ``sysapproval_approver`` row that is the approved record (``record.sysapproval``, or
    ``record.source_table`` + ``document_id``), so an approval decision re-reads the
    RITM or change it belongs to. ``source_table``/``source_sys_id``/``sys_mod_count``
    describe the delivered row itself, and ``event_id``
    (``<source_table>:<source_sys_id>:<sys_mod_count>``) is the dedupe key: equal for
    redeliveries of one update, distinct for every update of every row.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    table: str
    sys_id: str
    ticket_id: str
    number: str | None = None
    sys_mod_count: int
    updated_at: datetime
    event_id: str
    cat_item: str | None = None
    source_table: str
    source_sys_id: str
    changed: tuple[str, ...] = ()
    # Raw values from the body, for logs and relevance checks only.
    state: str | None = None
    approval: str | None = None

    @property
    def is_approval_row(self) -> bool:
        return self.source_table == APPROVAL_TABLE

    @property
    def ticket_version(self) -> int | None:
        """The ticket's ``sys_mod_count`` when the delivery is the ticket itself; an
        approval row's count orders nothing on the ticket."""
        return None if self.is_approval_row else self.sys_mod_count


def _reason(exc: ValidationError) -> str:
    # Name the field and pydantic's message; never echo the input value.
    first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
    loc = ".".join(str(part) for part in first["loc"]) or "body"
    return f"{loc}: {first['msg']}"[:_MAX_REASON_LEN]


def _opt(value: Any) -> str | None:
    text = reference_value(value).strip()
    return text or None


def _approved_record(record: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """(table, sys_id, number) of the record an approval row approves."""
    task = record.get("sysapproval")
    sys_id = _opt(task) or _opt(record.get("document_id"))
    if sys_id is None:
        raise WebhookParseError(422, "record.sysapproval: required for sysapproval_approver")
    if not SYS_ID.match(sys_id):
        raise WebhookParseError(422, "record.sysapproval: not a sys_id")
    table = _opt(record.get("source_table"))
    if table is None:
        raise WebhookParseError(422, "record.source_table: required for sysapproval_approver")
    if table not in SUPPORTED_TABLES:
        raise WebhookParseError(422, "record.source_table: not a supported table")
    number = task.get("display_value") if isinstance(task, Mapping) else None
    return table, sys_id, number if isinstance(number, str) and number else None


def _check_event_id(header: str | None, expected: tuple[str, str, int]) -> None:
    if header is None or not header.strip():
        return  # optional: the body carries the same three values
    parts = header.strip().split(":")
    if (
        len(header) > _MAX_HEADER_LEN
        or len(parts) != 3
        or parts[0] != expected[0]
        or parts[1] != expected[1]
        or not parts[2].isdigit()
        or int(parts[2]) != expected[2]
    ):
        raise WebhookParseError(422, f"{EVENT_ID_HEADER} does not match the body")


def parse_servicenow_webhook(raw: bytes, event_id_header: str | None) -> ServiceNowEvent:
    """Parse a delivery of the published contract. Raises ``WebhookParseError``: 400 for
    bytes that are not a JSON object, 422 for a body that does not fit the contract or
    disagrees with ``X-Jitgate-Event-Id``."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise WebhookParseError(400, "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise WebhookParseError(400, "body is not a JSON object")
    try:
        payload = _Payload.model_validate(data)
    except ValidationError as exc:
        raise WebhookParseError(422, _reason(exc)) from None
    updated_at = parse_servicenow_datetime(payload.sys_updated_on)
    if updated_at is None:  # pragma: no cover - the validator guarantees it
        raise WebhookParseError(422, "sys_updated_on: unreadable")
    _check_event_id(event_id_header, (payload.table, payload.sys_id, payload.sys_mod_count))

    record = payload.record
    if payload.table == APPROVAL_TABLE:
        table, sys_id, number = _approved_record(record)
        state, approval, cat_item = _opt(record.get("state")), None, None
    else:
        table, sys_id, number = payload.table, payload.sys_id, _opt(record.get("number"))
        state, approval = _opt(record.get("state")), _opt(record.get("approval"))
        cat_item = _opt(record.get("cat_item")) if table == "sc_req_item" else None
        if cat_item is not None and not SYS_ID.match(cat_item):
            raise WebhookParseError(422, "record.cat_item: not a sys_id")
    return ServiceNowEvent(
        table=table,
        sys_id=sys_id,
        ticket_id=f"{table}/{sys_id}",
        number=number[:_MAX_HEADER_LEN] if number else None,
        sys_mod_count=payload.sys_mod_count,
        updated_at=updated_at,
        event_id=f"{payload.table}:{payload.sys_id}:{payload.sys_mod_count}",
        cat_item=cat_item,
        source_table=payload.table,
        source_sys_id=payload.sys_id,
        changed=tuple(c for c in payload.changed or () if isinstance(c, str)),
        state=state[:_MAX_HEADER_LEN] if state else None,
        approval=approval[:_MAX_HEADER_LEN] if approval else None,
    )
