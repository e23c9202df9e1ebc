"""In-process HTTP double of the ServiceNow Table API, for tests and ``jitgate demo``.

It speaks real HTTP on 127.0.0.1 so ``pysnow`` runs against it unmodified: what passes
here exercises our URL building, auth, sysparms, paging and error mapping, not a mock's
idea of them. Shapes follow /work/shared/reference/formats.md §2.3-§2.6:
``{"result": ...}`` bodies, raw values as strings (``"state": "3"``, UTC datetimes
without a zone), ``sysparm_display_value`` false/true/all (display datetimes in the
double's ``utc_offset``, as for a user in that time zone), reference fields as
``{"link", "value"}`` unless ``sysparm_exclude_reference_link``, ``Link`` and
``X-Total-Count`` paging headers, and the documented 404 error body.

Like the real instance, ``sysparm_limit`` applies *before* read ACLs (``hide()`` rows to
get short or empty pages), invalid query terms are silently ignored (and collected in
``ignored_terms`` so a test can assert there were none), and ``work_notes`` is a
journal field: written through PATCH/PUT into ``sys_journal_field``, read back as "".

Credentials: requests must carry HTTP basic auth with the configured user/password. The
double never stores or records the Authorization header.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import hashlib
import hmac
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from worker.doubles._server import HttpDouble
from worker.doubles.jira import RecordedRequest

__all__ = [
    "CONTRACT_FIELDS",
    "RecordedRequest",
    "ServiceNowDouble",
    "generate_mac",
    "servicenow_delivery",
    "sign_servicenow",
]

_API = re.compile(r"^/api/now/table/(?P<table>[a-z0-9_]+)(?:/(?P<sys_id>[^/]+))?$")
_TERM = re.compile(
    r"^(?P<field>[a-z0-9_.]+)"
    r"(?P<op>ISNOTEMPTY|ISEMPTY|NOT LIKE|LIKE|NOT IN|IN|STARTSWITH|ENDSWITH|!=|>=|<=|=|>|<)"
    r"(?P<value>.*)$",
    re.DOTALL,
)
_RAW_TIME = "%Y-%m-%d %H:%M:%S"
_MAX_BODY = 1 << 20
_TASK_TABLES = ("sc_req_item", "change_request", "sc_request")
_JOURNAL_FIELDS = ("work_notes", "comments")

# Fields the business rule in deploy/servicenow/business_rule.js sends per table;
# references go out as {"value", "display_value"} objects.
CONTRACT_FIELDS: Mapping[str, tuple[str, ...]] = {
    "sc_req_item": (
        "number",
        "short_description",
        "state",
        "stage",
        "approval",
        "active",
        "cat_item",
        "requested_for",
        "opened_by",
        "request",
        "closed_at",
    ),
    "change_request": (
        "number",
        "short_description",
        "type",
        "state",
        "approval",
        "active",
        "start_date",
        "end_date",
        "requested_by",
        "assigned_to",
    ),
    "sysapproval_approver": (
        "approver",
        "state",
        "sysapproval",
        "document_id",
        "source_table",
        "group",
    ),
}


@dataclass(frozen=True)
class _Schema:
    columns: tuple[str, ...]
    refs: Mapping[str, str] = field(default_factory=dict)  # field -> table ("task": any)
    display: str = "sys_id"
    choices: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    dates: frozenset[str] = frozenset()


_SYS_COLUMNS = (
    "sys_id",
    "sys_created_on",
    "sys_created_by",
    "sys_updated_on",
    "sys_updated_by",
    "sys_mod_count",
)
_SYS_DATES = frozenset({"sys_created_on", "sys_updated_on"})
_APPROVAL_LABELS = {
    "not requested": "Not Yet Requested",
    "requested": "Requested",
    "approved": "Approved",
    "rejected": "Rejected",
}
_SCHEMAS: Mapping[str, _Schema] = {
    "sys_user": _Schema(("user_name", "name", "email", "active"), display="name"),
    "sys_user_group": _Schema(("name",), display="name"),
    "sys_user_grmember": _Schema(
        ("user", "group"), refs={"user": "sys_user", "group": "sys_user_group"}
    ),
    "sc_cat_item": _Schema(("name",), display="name"),
    "item_option_new": _Schema(
        ("name", "question_text", "cat_item"), refs={"cat_item": "sc_cat_item"}, display="name"
    ),
    "sc_item_option": _Schema(
        ("item_option_new", "value"), refs={"item_option_new": "item_option_new"}
    ),
    "sc_item_option_mtom": _Schema(
        ("request_item", "sc_item_option"),
        refs={"request_item": "sc_req_item", "sc_item_option": "sc_item_option"},
    ),
    "sc_request": _Schema(
        ("number", "requested_for", "approval", "request_state"),
        refs={"requested_for": "sys_user"},
        display="number",
        choices={"approval": _APPROVAL_LABELS},
    ),
    "sc_req_item": _Schema(
        (
            "number",
            "short_description",
            "cat_item",
            "request",
            "requested_for",
            "opened_by",
            "state",
            "stage",
            "approval",
            "active",
            "closed_at",
            "work_notes",
            "comments",
        ),
        refs={
            "cat_item": "sc_cat_item",
            "request": "sc_request",
            "requested_for": "sys_user",
            "opened_by": "sys_user",
        },
        display="number",
        choices={
            "state": {
                "-5": "Pending",
                "1": "Open",
                "2": "Work in Progress",
                "3": "Closed Complete",
                "4": "Closed Incomplete",
                "7": "Closed Skipped",
            },
            "approval": _APPROVAL_LABELS,
        },
        dates=frozenset({"closed_at"}),
    ),
    "change_request": _Schema(
        (
            "number",
            "short_description",
            "type",
            "state",
            "approval",
            "active",
            "start_date",
            "end_date",
            "requested_by",
            "assigned_to",
            "close_code",
            "work_notes",
            "comments",
        ),
        refs={"requested_by": "sys_user", "assigned_to": "sys_user"},
        display="number",
        choices={
            "state": {
                "-5": "New",
                "-4": "Assess",
                "-3": "Authorize",
                "-2": "Scheduled",
                "-1": "Implement",
                "0": "Review",
                "3": "Closed",
                "4": "Canceled",
            },
            "approval": _APPROVAL_LABELS,
            "type": {"normal": "Normal", "standard": "Standard", "emergency": "Emergency"},
        },
        dates=frozenset({"start_date", "end_date"}),
    ),
    "sysapproval_approver": _Schema(
        ("approver", "state", "sysapproval", "document_id", "source_table", "group", "comments"),
        refs={"approver": "sys_user", "sysapproval": "task"},
        choices={
            "state": {
                **_APPROVAL_LABELS,
                "cancelled": "Cancelled",
                "not_required": "No Longer Required",
                "duplicate": "Duplicate",
            },
        },
    ),
    "sys_journal_field": _Schema(("element", "element_id", "name", "value")),
}


def generate_mac(key_b64: str, data: str) -> str:
    """``new CertificateEncryption().generateMac(key, "HmacSHA256", data)``: the key is
    given Base64-encoded, the MAC comes back Base64-encoded (formats.md §2.1)."""
    key = base64.b64decode(key_b64)
    return base64.b64encode(hmac.new(key, data.encode("utf-8"), hashlib.sha256).digest()).decode()


def sign_servicenow(secret: str, body: bytes, ts: int) -> dict[str, str]:
    """The headers the business rule sets, computed the way it computes them:
    ``generateMac(GlideStringUtil.base64Encode(secret), "HmacSHA256", ts + "." + body)``.
    ``X-Jitgate-Event-Id`` is added when the body carries table/sys_id/sys_mod_count."""
    key_b64 = base64.b64encode(secret.encode("utf-8")).decode()  # GlideStringUtil.base64Encode
    text = body.decode("utf-8")
    headers = {
        "Content-Type": "application/json",
        "X-Jitgate-Timestamp": str(ts),
        "X-Jitgate-Signature": "v1=" + generate_mac(key_b64, f"{ts}.{text}"),
    }
    with contextlib.suppress(ValueError, TypeError, KeyError):
        data = json.loads(text)
        headers["X-Jitgate-Event-Id"] = (
            f"{data['table']}:{data['sys_id']}:{int(data['sys_mod_count'])}"
        )
    return headers


def servicenow_delivery(
    payload: Mapping[str, Any], *, secret: str | None = None, ts: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """Raw body and headers of one delivery, serialized as the business rule does
    (``JSON.stringify`` with non-ASCII escaped to ``\\uXXXX``)."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    if secret is None:
        headers = {"Content-Type": "application/json"}
        data = dict(payload)
        headers["X-Jitgate-Event-Id"] = (
            f"{data['table']}:{data['sys_id']}:{int(data['sys_mod_count'])}"
        )
        return body, headers
    return body, sign_servicenow(secret, body, int(time.time()) if ts is None else ts)


class _Reply(Exception):
    """Internal: ends request handling with this status, JSON body and headers."""

    def __init__(
        self,
        status: int,
        body: Any,
        headers: Mapping[str, str] | None = None,
        raw: bytes | None = None,
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        self.raw = raw


def _error(status: int, message: str, detail: str | None = None) -> _Reply:
    return _Reply(status, {"error": {"message": message, "detail": detail}, "status": "failure"})


def _not_found() -> _Reply:
    return _error(
        404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval"
    )


@dataclass(frozen=True)
class _Cond:
    path: str
    op: str
    value: str


def _compare(op: str, actual: str, wanted: str) -> bool:
    if op == "=":
        return actual == wanted
    if op == "!=":
        return actual != wanted
    if op in (">", ">=", "<", "<="):
        a: int | str
        w: int | str
        try:
            a, w = int(actual), int(wanted)  # states and counters compare as numbers
        except ValueError:
            a, w = actual, wanted  # raw datetimes compare as text
        if isinstance(a, int) != isinstance(w, int):  # pragma: no cover - both or neither
            return False
        return bool({">": a > w, ">=": a >= w, "<": a < w, "<=": a <= w}[op])  # type: ignore[operator]
    if op == "LIKE":
        return wanted.casefold() in actual.casefold()
    if op == "NOT LIKE":
        return wanted.casefold() not in actual.casefold()
    if op == "IN":
        return actual in wanted.split(",")
    if op == "NOT IN":
        return actual not in wanted.split(",")
    if op == "STARTSWITH":
        return actual.casefold().startswith(wanted.casefold())
    if op == "ENDSWITH":
        return actual.casefold().endswith(wanted.casefold())
    if op == "ISEMPTY":
        return actual == ""
    return actual != ""  # ISNOTEMPTY


class ServiceNowDouble(HttpDouble):
    """A small, thread-safe ServiceNow instance. Context manager, or start()/stop()."""

    def __init__(
        self,
        *,
        user: str = "jitgate.integration",
        password: str = "double-password",  # noqa: S107 - a test fixture, not a secret
        utc_offset: timedelta = timedelta(hours=1),
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.user = user
        self.password = password
        self._tz = timezone(utc_offset)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._db: dict[str, dict[str, dict[str, str]]] = {t: {} for t in _SCHEMAS}
        self._hidden: set[str] = set()
        self._numbers = {"sc_request": 10000, "sc_req_item": 10000, "change_request": 30000}
        self._fail: list[tuple[int, bytes | None]] = []
        self._slow: list[float] = []
        self.down = False
        self.requests: list[RecordedRequest] = []
        self.ignored_terms: list[str] = []

    # ------------------------------------------------------------------ lifecycle

    def _base(self) -> str:
        # A request still in flight while stop() runs must not fail on the port.
        return self.url if self._server is not None else "http://127.0.0.1"

    # ------------------------------------------------------------------ faults

    def fail_next(self, n: int = 1, status: int = 503, *, body: str | None = None) -> None:
        """Answer the next ``n`` requests (any path, before auth) with ``status``; with
        ``body``, send that text as ``text/html`` instead of the JSON error object."""
        with self._lock:
            raw = body.encode() if body is not None else None
            self._fail.extend([(status, raw)] * n)

    def slow_next(self, n: int = 1, seconds: float = 2.0) -> None:
        """Delay the next ``n`` requests, e.g. to trip a client read timeout."""
        with self._lock:
            self._slow.extend([seconds] * n)

    def set_down(self, down: bool = True) -> None:
        """While down, every connection is closed without an answer."""
        self.down = down

    def clear_faults(self) -> None:
        with self._lock:
            self._fail.clear()
            self._slow.clear()
            self.down = False

    def hide(self, *sys_ids: str) -> None:
        """Deny read on these rows (ACL): lists count them against sysparm_limit and
        then drop them, single reads answer 404."""
        with self._lock:
            self._hidden.update(sys_ids)

    def reset_requests(self) -> None:
        with self._lock:
            self.requests.clear()
            self.ignored_terms.clear()

    # ------------------------------------------------------------------ test control

    def add_user(
        self, user_name: str, name: str, email: str | None = None, groups: Iterable[str] = ()
    ) -> str:
        """Create a ``sys_user`` (and membership in the named groups); returns its sys_id."""
        with self._lock:
            user_id = self._insert(
                "sys_user", user_name=user_name, name=name, email=email or "", active="true"
            )
            for group in groups:
                self._insert("sys_user_grmember", user=user_id, group=self.group_id(group))
            return user_id

    def group_id(self, name: str) -> str:
        """sys_id of the ``sys_user_group`` called ``name`` (created on first use)."""
        with self._lock:
            return self._find_or_insert("sys_user_group", name=name)

    def create_ritm(
        self,
        *,
        requested_for: str,
        cat_item_name: str,
        variables: Mapping[str, str],
        approval: str = "requested",
        state: str = "1",
        opened_by: str | None = None,
        short_description: str | None = None,
    ) -> str:
        """A requested item (with its parent request, catalog item and variables)."""
        with self._lock:
            item = self._find_or_insert("sc_cat_item", name=cat_item_name)
            request = self._insert(
                "sc_request",
                number=self._next_number("sc_request", "REQ"),
                requested_for=requested_for,
                approval=approval,
                request_state="requested",
            )
            ritm = self._insert(
                "sc_req_item",
                number=self._next_number("sc_req_item", "RITM"),
                short_description=short_description or cat_item_name,
                cat_item=item,
                request=request,
                requested_for=requested_for,
                opened_by=opened_by or requested_for,
                state=state,
                stage="waiting_for_approval",
                approval=approval,
                active="true",
            )
            for var_name, value in variables.items():
                question = self._find_or_insert("item_option_new", name=var_name, cat_item=item)
                option = self._insert("sc_item_option", item_option_new=question, value=value)
                self._insert("sc_item_option_mtom", request_item=ritm, sc_item_option=option)
            return ritm

    def create_change(
        self,
        *,
        requested_by: str,
        start: datetime,
        end: datetime,
        approval: str = "requested",
        state: str = "-3",
        change_type: str = "normal",
        short_description: str | None = None,
    ) -> str:
        with self._lock:
            return self._insert(
                "change_request",
                number=self._next_number("change_request", "CHG"),
                short_description=short_description or "Access window",
                type=change_type,
                state=state,
                approval=approval,
                active="true",
                start_date=self._raw_time(start),
                end_date=self._raw_time(end),
                requested_by=requested_by,
                assigned_to="",
                close_code="",
            )

    def add_approval(
        self, record_sys_id: str, approver_sys_id: str, state: str = "requested"
    ) -> str:
        """A ``sysapproval_approver`` row for a RITM or change; returns its sys_id."""
        with self._lock:
            table = self._task_table(record_sys_id)
            return self._insert(
                "sysapproval_approver",
                approver=approver_sys_id,
                state=state,
                sysapproval=record_sys_id,
                document_id=record_sys_id,
                source_table=table,
                group="",
            )

    def set_approval(self, approval_sys_id: str, state: str) -> None:
        self.update("sysapproval_approver", approval_sys_id, state=state)

    def update(self, table: str, sys_id: str, **raw_values: str) -> None:
        """Set raw values (bumps ``sys_mod_count`` and ``sys_updated_on``)."""
        with self._lock:
            row = self._row(table, sys_id)
            for name, value in raw_values.items():
                if name not in _SCHEMAS[table].columns:
                    raise KeyError(f"{table} has no column {name}")
                row[name] = str(value)
            self._touch(row)

    def add_work_note(self, table: str, sys_id: str, text: str) -> str:
        """A work note as if written earlier (by anyone); returns the journal sys_id."""
        with self._lock:
            row = self._row(table, sys_id)
            note = self._journal(table, sys_id, "work_notes", text)
            self._touch(row)
            return note

    def work_notes(self, sys_id: str) -> list[str]:
        with self._lock:
            return [
                j["value"]
                for j in self._db["sys_journal_field"].values()
                if j["element_id"] == sys_id and j["element"] == "work_notes"
            ]

    def record(self, table: str, sys_id: str) -> dict[str, str]:
        """A copy of the raw row."""
        with self._lock:
            return dict(self._row(table, sys_id))

    def delete(self, table: str, sys_id: str) -> None:
        with self._lock:
            self._row(table, sys_id)
            del self._db[table][sys_id]

    def webhook(self, table: str, sys_id: str) -> dict[str, Any]:
        """The contract body the business rule sends for the row's current state."""
        with self._lock:
            row = self._row(table, sys_id)
            schema = _SCHEMAS[table]
            record: dict[str, Any] = {}
            for name in CONTRACT_FIELDS[table]:
                raw = row.get(name, "")
                if name in schema.refs and raw:
                    target, ref_row = self._deref(schema.refs[name], raw)
                    shown = ref_row.get(_SCHEMAS[target].display, "") if ref_row else ""
                    record[name] = {"value": raw, "display_value": shown}
                else:
                    record[name] = raw
            body: dict[str, Any] = {
                "event": "record.updated",
                "table": table,
                "sys_id": sys_id,
                "sys_mod_count": int(row["sys_mod_count"]),
                "sys_updated_on": row["sys_updated_on"],
                "sys_updated_by": row["sys_updated_by"],
                "record": record,
            }
            if table == "sc_req_item":
                body["variables"] = self._variables(sys_id)
            if table in ("sc_req_item", "change_request"):
                body["approvals"] = [
                    {
                        "sys_id": a["sys_id"],
                        "approver": {
                            "value": a["approver"],
                            "display_value": self._display("sys_user", a["approver"]),
                        },
                        "state": a["state"],
                        "sys_updated_on": a["sys_updated_on"],
                    }
                    for a in self._db["sysapproval_approver"].values()
                    if a["sysapproval"] == sys_id
                ]
            return body

    # ------------------------------------------------------------------ storage

    def _now(self) -> datetime:
        return self._clock().astimezone(UTC)

    @staticmethod
    def _raw_time(at: datetime) -> str:
        if at.tzinfo is None:
            raise ValueError("datetimes must be timezone-aware")
        return at.astimezone(UTC).strftime(_RAW_TIME)

    def _next_number(self, table: str, prefix: str) -> str:
        self._numbers[table] += 1
        return f"{prefix}{self._numbers[table]:07d}"

    def _insert(self, table: str, **values: str) -> str:
        schema = _SCHEMAS[table]
        sys_id = uuid.uuid4().hex
        now = self._raw_time(self._now())
        row = dict.fromkeys(schema.columns, "")
        row.update({k: str(v) for k, v in values.items()})
        row.update(
            sys_id=sys_id,
            sys_created_on=now,
            sys_created_by=self.user,
            sys_updated_on=now,
            sys_updated_by=self.user,
            sys_mod_count="0",
        )
        self._db[table][sys_id] = row
        return sys_id

    def _find_or_insert(self, table: str, **values: str) -> str:
        for row in self._db[table].values():
            if all(row.get(k) == v for k, v in values.items()):
                return row["sys_id"]
        return self._insert(table, **values)

    def _touch(self, row: dict[str, str], by: str | None = None) -> None:
        row["sys_mod_count"] = str(int(row["sys_mod_count"]) + 1)
        row["sys_updated_on"] = self._raw_time(self._now())
        row["sys_updated_by"] = by or self.user

    def _row(self, table: str, sys_id: str) -> dict[str, str]:
        if table not in self._db or sys_id not in self._db[table]:
            raise KeyError(f"no {table} record {sys_id}")
        return self._db[table][sys_id]

    def _task_table(self, sys_id: str) -> str:
        for table in _TASK_TABLES:
            if sys_id in self._db[table]:
                return table
        raise KeyError(f"no task record {sys_id}")

    def _deref(self, target: str, sys_id: str) -> tuple[str, dict[str, str] | None]:
        if target == "task":
            with contextlib.suppress(KeyError):
                target = self._task_table(sys_id)
                return target, self._db[target][sys_id]
            return "sc_req_item", None
        return target, self._db[target].get(sys_id)

    def _display(self, target: str, sys_id: str) -> str:
        table, row = self._deref(target, sys_id)
        return row.get(_SCHEMAS[table].display, "") if row else ""

    def _journal(self, table: str, sys_id: str, element: str, text: str) -> str:
        return self._insert(
            "sys_journal_field", element=element, element_id=sys_id, name=table, value=text
        )

    def _variables(self, ritm: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for link in self._db["sc_item_option_mtom"].values():
            if link["request_item"] != ritm:
                continue
            option = self._db["sc_item_option"].get(link["sc_item_option"])
            if option is None:
                continue
            question = self._db["item_option_new"].get(option["item_option_new"], {})
            out[question.get("name", "")] = option["value"]
        return out

    # ------------------------------------------------------------------ queries

    def _walk(self, table: str, row: Mapping[str, str] | None, path: str) -> tuple[str, str, str]:
        """(table, field, raw value) at the end of a dot-walked ``path``."""
        parts = path.split(".")
        for part in parts[:-1]:
            target = _SCHEMAS[table].refs[part]
            raw = row.get(part, "") if row else ""
            if raw:
                table, row = self._deref(target, raw)
            else:
                table, row = ("sc_req_item" if target == "task" else target), None
        last = parts[-1]
        return table, last, (row.get(last, "") if row else "")

    @staticmethod
    def _known(table: str, path: str) -> bool:
        parts = path.split(".")
        for part in parts[:-1]:
            target = _SCHEMAS[table].refs.get(part)
            if target is None:
                return False
            table = "sc_req_item" if target == "task" else target
        return parts[-1] in (*_SYS_COLUMNS, *_SCHEMAS[table].columns)

    def _parse_query(
        self, table: str, query: str
    ) -> tuple[list[list[_Cond]], list[tuple[str, bool]]]:
        groups: list[list[_Cond]] = []
        orders: list[tuple[str, bool]] = []
        for term in query.split("^") if query else []:
            if not term or term == "EQ":
                continue
            if term.startswith("ORDERBYDESC") or term.startswith("ORDERBY"):
                desc = term.startswith("ORDERBYDESC")
                path = term[len("ORDERBYDESC") if desc else len("ORDERBY") :]
                if self._known(table, path):
                    orders.append((path, desc))
                else:
                    self.ignored_terms.append(term)
                continue
            alternative = term.startswith("OR") and bool(groups)
            match = _TERM.match(term[2:] if term.startswith("OR") else term)
            if match is None or not self._known(table, match["field"]):
                self.ignored_terms.append(term)  # ServiceNow drops it silently
                continue
            cond = _Cond(match["field"], match["op"], match["value"])
            if alternative:
                groups[-1].append(cond)
            else:
                groups.append([cond])
        return groups, orders

    def _list(self, table: str, q: Mapping[str, str]) -> _Reply:
        groups, orders = self._parse_query(table, q.get("sysparm_query", ""))
        rows = [
            row
            for row in self._db[table].values()
            if all(
                any(_compare(c.op, self._walk(table, row, c.path)[2], c.value) for c in group)
                for group in groups
            )
        ]
        for path, desc in reversed(orders):  # stable sorts: the first ORDERBY wins

            def key(row: Mapping[str, str], path: str = path) -> str:
                return self._walk(table, row, path)[2]

            rows.sort(key=key, reverse=desc)
        try:
            limit = int(q.get("sysparm_limit") or 10000)
            offset = int(q.get("sysparm_offset") or 0)
        except ValueError:
            raise _error(400, "Invalid sysparm_limit or sysparm_offset") from None
        limit, offset = max(1, limit), max(0, offset)
        total = len(rows)
        # The limit is applied before ACLs: hidden rows use up their place in the page.
        page = [r for r in rows[offset : offset + limit] if r["sys_id"] not in self._hidden]
        result = [self._render(table, r, q) for r in page]
        headers = {"X-Total-Count": str(total)}
        if q.get("sysparm_suppress_pagination_header", "false").lower() != "true":
            headers["Link"] = self._links(table, q, offset, limit, total)
        return _Reply(200, {"result": result}, headers)

    def _links(self, table: str, q: Mapping[str, str], offset: int, limit: int, total: int) -> str:
        def link(at: int, rel: str) -> str:
            params = {**q, "sysparm_limit": str(limit), "sysparm_offset": str(at)}
            return f'<{self._base()}/api/now/table/{table}?{urlencode(params)}>;rel="{rel}"'

        last = max(0, (total - 1) // limit * limit)
        links = [link(0, "first")]
        if offset > 0:
            links.append(link(max(0, offset - limit), "prev"))
        if offset + limit < total:
            links.append(link(offset + limit, "next"))
        links.append(link(last, "last"))
        return ",".join(links)

    def _render(self, table: str, row: Mapping[str, str], q: Mapping[str, str]) -> dict[str, Any]:
        mode = q.get("sysparm_display_value", "false").lower()
        exclude = q.get("sysparm_exclude_reference_link", "false").lower() == "true"
        wanted = [f.strip() for f in q.get("sysparm_fields", "").split(",") if f.strip()]
        paths = wanted or list(row)
        out: dict[str, Any] = {}
        for path in paths:
            if not self._known(table, path):
                continue  # ServiceNow leaves unknown fields out
            out[path] = self._value(*self._walk(table, row, path), mode=mode, exclude=exclude)
        return out

    def _value(self, table: str, name: str, raw: str, *, mode: str, exclude: bool) -> Any:
        schema = _SCHEMAS[table]
        if name in _JOURNAL_FIELDS:
            raw = ""  # journal fields read back empty
        target = schema.refs.get(name)
        link: str | None = None
        if target is not None and raw:
            ref_table, ref_row = self._deref(target, raw)
            shown = ref_row.get(_SCHEMAS[ref_table].display, "") if ref_row else ""
            link = f"{self._base()}/api/now/table/{ref_table}/{raw}"
        elif name in schema.choices:
            shown = schema.choices[name].get(raw, raw)
        elif raw and (name in schema.dates or name in _SYS_DATES):
            at = datetime.strptime(raw, _RAW_TIME).replace(tzinfo=UTC).astimezone(self._tz)
            shown = at.strftime(_RAW_TIME)
        else:
            shown = raw
        if mode == "all":
            both: dict[str, Any] = {"display_value": shown, "value": raw}
            if link is not None and not exclude:
                both["link"] = link
            return both
        value = shown if mode == "true" else raw
        if link is not None and not exclude:
            return {"link": link, ("display_value" if mode == "true" else "value"): value}
        return value

    def _write(self, table: str, sys_id: str, body: Any, q: Mapping[str, str]) -> _Reply:
        row = self._db[table].get(sys_id)
        if row is None or sys_id in self._hidden:
            raise _not_found()
        if not isinstance(body, dict):
            raise _error(400, "Exception while reading request", "body must be a JSON object")
        columns = _SCHEMAS[table].columns
        for name, value in body.items():
            text = value.get("value", "") if isinstance(value, dict) else value
            text = "" if text is None else str(text)
            if name in _JOURNAL_FIELDS:
                if text.strip():
                    self._journal(table, sys_id, name, text)
            elif name in columns:
                row[name] = text
            # anything else (sys_ fields, unknown columns) is ignored, as by the instance
        self._touch(row, by=self.user)
        return _Reply(200, {"result": self._render(table, row, q)})

    # ------------------------------------------------------------------ HTTP routing

    def _take_fault(self) -> tuple[tuple[int, bytes | None] | None, float]:
        with self._lock:
            fault = self._fail.pop(0) if self._fail else None
            delay = self._slow.pop(0) if self._slow else 0.0
            return fault, delay

    def _authorized(self, header: str | None) -> str | None:
        """The user name if ``header`` carries the configured basic credentials."""
        if not header or not header.startswith("Basic "):
            return None
        try:
            decoded = base64.b64decode(header[6:], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        ok_user = hmac.compare_digest(user.encode(), self.user.encode())
        ok_password = hmac.compare_digest(password.encode(), self.password.encode())
        return user if sep and ok_user and ok_password else None

    def _route(self, method: str, path: str, query: Mapping[str, list[str]], body: Any) -> _Reply:
        match = _API.match(path)
        if match is None or match["table"] not in self._db:
            raise _error(400, "Invalid table", f"Invalid table {match['table'] if match else ''}")
        table, sys_id = match["table"], match["sys_id"]
        q = {k: v[0] for k, v in query.items() if v}
        with self._lock:
            if method == "GET" and sys_id is None:
                return self._list(table, q)
            if method == "GET" and sys_id is not None:
                row = self._db[table].get(sys_id)
                if row is None or sys_id in self._hidden:
                    raise _not_found()
                return _Reply(200, {"result": self._render(table, row, q)})
            if method in ("PATCH", "PUT") and sys_id is not None:
                return self._write(table, sys_id, body, q)
        raise _error(405, "Method not Supported", f"{method} is not supported for this resource")

    def _record(self, entry: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(entry)


class _Handler(BaseHTTPRequestHandler):
    server_version = "ServiceNowDouble/1.0"
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the second waits for the
    # client's delayed ACK (~40 ms per request).
    disable_nagle_algorithm = True

    @property
    def _double(self) -> ServiceNowDouble:
        double: ServiceNowDouble = self.server.double  # type: ignore[attr-defined]
        return double

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: test output stays readable and no header can reach a log."""

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        double = self._double
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        body = self._read_body()
        auth_user = double._authorized(self.headers.get("Authorization"))

        def record(status: int | None) -> None:
            double._record(
                RecordedRequest(
                    method=method,
                    path=parts.path,
                    query={k: tuple(v) for k, v in query.items()},
                    body=copy.deepcopy(body),
                    auth_user=auth_user,
                    status=status,
                )
            )

        # After stop() a pooled keep-alive connection may still reach this handler
        # thread: answer it the way a dead server would.
        if double.down or self.server is not double._server:
            record(None)
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        fault, delay = double._take_fault()
        if delay:
            time.sleep(delay)
        try:
            if fault is not None:
                status, raw = fault
                if raw is not None:
                    raise _Reply(status, None, raw=raw)
                raise _error(status, "Service Unavailable", "double fault")
            if auth_user is None:
                raise _error(401, "User Not Authenticated", "Required to provide Auth information")
            reply = double._route(method, parts.path, query, body)
        except _Reply as exc:
            reply = exc
        record(reply.status)
        self._send(reply)

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0:
            return None
        raw = self.rfile.read(min(length, _MAX_BODY))
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")

    def _send(self, reply: _Reply) -> None:
        if reply.raw is not None:
            data, ctype = reply.raw, "text/html;charset=UTF-8"
        else:
            data, ctype = json.dumps(reply.body).encode(), "application/json;charset=UTF-8"
        self.send_response(reply.status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="Service-now"')
        if reply.status in (429, 503):
            self.send_header("Retry-After", "1")
        # The client may have given up already (read timeout): nothing to tell it.
        with contextlib.suppress(OSError):
            self.end_headers()
            self.wfile.write(data)


ServiceNowDouble.handler = _Handler
