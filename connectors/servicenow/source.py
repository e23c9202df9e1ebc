"""ServiceNow as a ticket source, through ``pysnow`` behind a thin adapter of ours.

The webhook only says *which* record changed; this module re-reads the record, its
``sysapproval_approver`` rows and (for requested items) its catalog variables through
the Table API, so decisions rest on what ServiceNow reports (formats.md §2.3-§2.5).

pysnow is used for what it does well (session, basic auth, URL building, response
parsing) and nothing else:

- a fresh ``Resource`` per request, because pysnow keeps sysparms on the resource
  object and they leak into later calls on it (formats.md §2.5);
- every sysparm is set explicitly as a lowercase string (pysnow would send Python's
  ``False``/``True`` for booleans);
- pagination is ours: ``sysparm_limit`` is applied *before* ACL filtering, so a page can
  come back short, or empty, while more rows exist (formats.md §4.15). The offset
  advances by the page size, never by the number of rows received, and paging ends on
  an empty page only.

Raw values are the truth (``state`` ``"3"``, UTC datetimes, reference sys_ids); display
values are used only as labels (``status_name``, ``cat_item_name``).

Errors are mapped by HTTP status to the typed connector errors. Mapped errors are raised
outside the ``except`` block and carry only fixed text, the operation and the status
code, so no driver exception (request URL, session, headers) is chained or shown.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

import pysnow
import requests
from pydantic import SecretStr
from pysnow.exceptions import InvalidUsage, PysnowException

from connectors.base import Approval, Identity, TicketRef, TicketSnapshot, TicketState
from connectors.errors import (
    ConnectorError,
    PermanentError,
    SourceNotConfigured,
    TicketNotFound,
    TransientError,
)
from connectors.servicenow.values import (
    DEFAULT_CLOSED_STATES,
    SUPPORTED_TABLES,
    SYS_ID,
    format_servicenow_datetime,
    parse_servicenow_datetime,
    reference_value,
)

__all__ = ["ServiceNowSource", "split_ticket_id"]

_T = TypeVar("_T")
Decision = Literal["approved", "rejected", "pending"]

# The beneficiary: grants go to the person the item is *for*, not who typed it in.
_REQUESTER_FIELD: Mapping[str, str] = {
    "sc_req_item": "requested_for",
    "change_request": "requested_by",
}
_TICKET_ID = re.compile(r"^(?P<table>[a-z_]{1,80})/(?P<sys_id>[0-9a-f]{32})$")
# Rows that no longer take part in the decision (the OOTB "Moot Approvals Upon
# Cancellation" rule flips open approvals to not_required).
_EXCLUDED_APPROVAL_STATES = frozenset({"cancelled", "not_required", "duplicate"})
_DECISIONS: Mapping[str, Decision] = {"approved": "approved", "rejected": "rejected"}
_TRANSIENT_STATUSES = frozenset({408, 425, 429})
_USER_BATCH = 100  # sys_ids per sys_idIN query: keeps the URL well below proxy limits
_MAX_PAGES = 10_000  # a server that never sends an empty page must not loop forever

_APPROVAL_FIELDS = (
    "sys_id",
    "approver",
    "state",
    "sysapproval",
    "document_id",
    "source_table",
    "sys_updated_on",
)
_USER_FIELDS = ("sys_id", "user_name", "email", "name")
_VARIABLE_NAME = "sc_item_option.item_option_new.name"
_VARIABLE_VALUE = "sc_item_option.value"


def split_ticket_id(ticket_id: str) -> tuple[str, str]:
    """``"sc_req_item/<sys_id>"`` → (table, sys_id); ``TicketNotFound`` for anything
    else, before any request (the parts are spliced into URLs and encoded queries)."""
    match = _TICKET_ID.match(ticket_id)
    if match is None or match["table"] not in SUPPORTED_TABLES:
        raise TicketNotFound(
            "servicenow: not a ticket id of the form <sc_req_item|change_request>/<sys_id>"
        )
    return match["table"], match["sys_id"]


def _label(value: Any) -> str | None:
    if isinstance(value, dict):
        shown = value.get("display_value")
        return str(shown) if shown not in (None, "") else None
    return None


def _text(value: Any) -> str | None:
    raw = reference_value(value).strip()
    return raw or None


def _status_error(status: int | None, what: str, *, not_found: bool) -> ConnectorError:
    if status is None or status >= 500 or status in _TRANSIENT_STATUSES:
        shown = "no response" if status is None else f"HTTP {status}"
        return TransientError(f"servicenow: {what} failed ({shown})")
    if status in (401, 403):
        return PermanentError(
            f"servicenow: {what} was refused (HTTP {status}): check the ServiceNow user, "
            "its password and its roles",
            code="source_auth",
        )
    if status == 404 and not_found:
        return TicketNotFound(f"servicenow: {what}: record not found (HTTP 404)")
    return PermanentError(f"servicenow: {what} was rejected (HTTP {status})", code="source_error")


def _ticket_state(state: str, approval: str, closed: frozenset[str]) -> tuple[TicketState, bool]:
    """(normalized state, final). Closed states win over the approval: an approved but
    closed item must end access (issue 3 §4)."""
    if state in closed:
        return "closed", True
    if approval == "approved":
        return "approved", False
    if approval == "rejected":
        return "rejected", True
    return "open", False


class ServiceNowSource:
    """``SourceConnector`` for ServiceNow requested items and change requests.

    Ticket ids are ``"<table>/<sys_id>"``. ``user`` + ``password``: HTTP basic auth of
    an integration user (roles: read on the tables below, write ``work_notes``; its
    time zone should be UTC because encoded-query date literals follow it). No I/O
    happens until the first call; the pysnow client (one pooled session) is then created
    once, and a fresh resource is made for every request.
    """

    kind: ClassVar[str] = "servicenow"

    def __init__(
        self,
        *,
        url: str,
        user: str | None,
        password: SecretStr | str | None,
        timeout: float = 10.0,
        closed_states: Mapping[str, frozenset[str]] | None = None,
        page_size: int = 200,
    ) -> None:
        self._url = url.strip().rstrip("/")
        self._user = user or None
        self._password: SecretStr | None = (
            SecretStr(password) if isinstance(password, str) else password
        )
        if self._password is not None and not self._password.get_secret_value():
            self._password = None
        self._timeout = timeout
        if page_size < 1:
            raise ValueError("page_size must be positive")
        self._page_size = page_size
        merged = dict(DEFAULT_CLOSED_STATES)
        for table, states in (closed_states or {}).items():
            if table not in SUPPORTED_TABLES:
                raise ValueError(f"closed_states: unsupported table {table!r}")
            merged[table] = frozenset(str(s) for s in states)
        self._closed: Mapping[str, frozenset[str]] = merged
        self._lock = threading.Lock()
        self._snow: pysnow.Client | None = None
        self._base_path = "/api/now"

    def __repr__(self) -> str:
        # Never the password: reprs end up in logs and tracebacks.
        return f"ServiceNowSource(url={self._url!r}, user={self._user!r})"

    @property
    def server(self) -> str:
        return self._url

    # ------------------------------------------------------------------ adapter

    def _client(self) -> Any:
        with self._lock:
            if self._snow is None:
                self._snow = self._call("connect", self._connect)
            return self._snow

    def _connect(self) -> Any:
        if not self._url or not self._user or self._password is None:
            raise SourceNotConfigured("servicenow: url, user and password must be configured")
        parts = urlsplit(self._url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
            raise SourceNotConfigured("servicenow: url must look like https://host[:port]")
        # An instance behind a path prefix (reverse proxy) keeps the prefix.
        self._base_path = f"{parts.path.rstrip('/')}/api/now"
        return pysnow.Client(
            host=parts.netloc,
            user=self._user,
            password=self._password.get_secret_value(),
            use_ssl=parts.scheme == "https",
        )

    def _call(self, what: str, fn: Callable[[], _T], *, not_found: bool = False) -> _T:
        error: ConnectorError
        try:
            return fn()
        except ConnectorError:
            raise
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            error = _status_error(status, what, not_found=not_found)
        except requests.exceptions.JSONDecodeError:
            error = TransientError(f"servicenow: {what} returned an unreadable response")
        except requests.RequestException as exc:
            error = TransientError(f"servicenow: {what} failed ({type(exc).__name__})")
        except InvalidUsage:
            error = SourceNotConfigured(f"servicenow: {what}: client configuration rejected")
        except (PysnowException, KeyError, TypeError, ValueError):
            # A proxy's HTML page, a body without "result": worth retrying, not shown.
            error = TransientError(f"servicenow: {what} returned an unreadable response")
        # Raised here, outside the handler: nothing of the driver exception is attached.
        raise error

    def _send(
        self,
        what: str,
        table: str,
        params: Mapping[str, str],
        *,
        method: str = "GET",
        sys_id: str | None = None,
        payload: Mapping[str, Any] | None = None,
        not_found: bool = False,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One Table API request: (result rows, ``X-Total-Count`` header)."""
        client = self._client()

        def go() -> tuple[list[dict[str, Any]], str | None]:
            # Fresh resource: sysparms set on one must never reach another request.
            resource = client.resource(
                api_path=f"/table/{table}", base_path=self._base_path, timeout=self._timeout
            )
            resource.parameters.add_custom(
                {
                    "sysparm_display_value": "false",
                    "sysparm_exclude_reference_link": "true",
                    "sysparm_suppress_pagination_header": "false",
                    **params,
                }
            )
            extra: dict[str, Any] = {} if payload is None else {"json": dict(payload)}
            response = resource.request(
                method, path_append=f"/{sys_id}" if sys_id else None, **extra
            )
            rows = response.all()
            total = response.headers.get("X-Total-Count")
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ValueError("result is not a list of records")
            return rows, total if isinstance(total, str) else None

        return self._call(what, go, not_found=not_found)

    def _rows(
        self, what: str, table: str, *, query: str, fields: Sequence[str]
    ) -> Iterator[dict[str, Any]]:
        """Every row matching ``query``, paged with sysparm_limit/sysparm_offset.

        A page may be short or empty because ACLs filter after the limit, so the offset
        advances by the page size and paging stops only at an empty page that the
        server's ``X-Total-Count`` (when sent) does not contradict.
        """
        offset = 0
        for _ in range(_MAX_PAGES):
            rows, total = self._send(
                what,
                table,
                {
                    "sysparm_query": query,
                    "sysparm_fields": ",".join(fields),
                    "sysparm_limit": str(self._page_size),
                    "sysparm_offset": str(offset),
                },
            )
            yield from rows
            offset += self._page_size
            if not rows and not (total is not None and total.isdigit() and offset < int(total)):
                return
        raise TransientError(f"servicenow: {what} did not end after {_MAX_PAGES} pages")

    def close(self) -> None:
        """Release pooled connections; the next call reconnects."""
        with self._lock:
            if self._snow is not None:
                self._snow.close()
                self._snow = None

    # ------------------------------------------------------------------ protocol

    def fetch(self, ticket_id: str) -> TicketSnapshot:
        table, sys_id = split_ticket_id(ticket_id)
        rows, _ = self._send(
            f"fetch {ticket_id}",
            table,
            # all: raw values stay the truth, display values come along as labels.
            {"sysparm_display_value": "all"},
            sys_id=sys_id,
            not_found=True,
        )
        if len(rows) != 1:
            raise TicketNotFound(f"servicenow: fetch {ticket_id}: record not found")
        record = rows[0]
        values = {str(k): reference_value(v) for k, v in record.items()}
        if values.get("sys_id") != sys_id:
            raise PermanentError(
                "servicenow: record response lacks its sys_id", code="source_invalid"
            )
        number = values.get("number") or sys_id
        updated_at = parse_servicenow_datetime(values.get("sys_updated_on"))
        mod_count = values.get("sys_mod_count", "")
        if updated_at is None or not mod_count.isdigit():
            raise PermanentError(
                "servicenow: record lacks sys_updated_on or sys_mod_count",
                code="source_invalid",
            )

        approval = values.get("approval", "")
        state, final = _ticket_state(values.get("state", ""), approval, self._closed[table])
        requester_id = values.get(_REQUESTER_FIELD[table], "")
        approval_rows = self._approval_rows(table, sys_id)
        wanted = {requester_id} | {reference_value(r.get("approver")) for r in approval_rows}
        people = self._users(wanted)

        fields: dict[str, Any] = dict(values)
        if table == "sc_req_item":
            if values.get("cat_item"):
                fields["cat_item_name"] = _label(record.get("cat_item")) or ""
            fields.update(self._variables(sys_id))

        window: tuple[datetime, datetime] | None = None
        if table == "change_request":
            start = parse_servicenow_datetime(values.get("start_date"))
            end = parse_servicenow_datetime(values.get("end_date"))
            # Kept even when end <= start: the policy engine denies an empty window,
            # which is safer than falling back to a default duration.
            window = (start, end) if start is not None and end is not None else None

        summary = values.get("short_description") or None
        return TicketSnapshot(
            ref=TicketRef(
                source=self.kind,
                id=f"{table}/{sys_id}",
                key=number,
                url=f"{self._url}/nav_to.do?uri={table}.do?sys_id={sys_id}",
            ),
            status=approval,
            status_name=_label(record.get("approval")),
            state=state,
            version=int(mod_count),
            updated_at=updated_at,
            project=table,
            issue_type=(values.get("type") or None) if table == "change_request" else None,
            requester=people.get(requester_id) if requester_id else None,
            approvals=self._approvals(approval_rows, people),
            fields=fields,
            summary=summary,
            final=final,
            window=window,
        )

    def comment(self, ref: TicketRef, body: str, *, marker: str, first_try: bool = False,
                ) -> bool:
        """Write a work note unless one carrying ``marker`` exists. ``work_notes`` reads
        back empty, so the check goes to ``sys_journal_field`` (formats.md §4.17)."""
        if not marker.strip():
            raise ValueError("comment marker must not be empty")
        if any(c in marker for c in "^\r\n"):
            # '^' separates encoded-query terms; a line break cannot be matched by LIKE.
            raise ValueError("comment marker must not contain '^' or line breaks")
        table, sys_id = split_ticket_id(ref.id)
        existing = [] if first_try else self._rows(
            f"list work notes of {ref.id}",
            "sys_journal_field",
            query=(
                f"element=work_notes^element_id={sys_id}^name={table}"
                f"^valueLIKE{marker}^ORDERBYsys_id"
            ),
            fields=("sys_id", "value"),
        )
        # LIKE is re-checked here: an instance may drop a query term it finds invalid.
        if any(marker in reference_value(row.get("value")) for row in existing):
            return False
        text = body if marker in body else f"{body.rstrip()}\n\n{marker}"
        self._send(
            f"write work note on {ref.id}",
            table,
            {"sysparm_fields": "sys_id"},
            method="PATCH",
            sys_id=sys_id,
            payload={"work_notes": text},
            not_found=True,
        )
        return True

    def check(self) -> None:
        """Raise ``TransientError`` if ServiceNow cannot be used now. An auth failure is
        reported as TransientError too (readiness only), keeping code ``source_auth``."""
        try:
            self._send("check", "sys_user", {"sysparm_limit": "1", "sysparm_fields": "sys_id"})
        except TransientError:
            raise
        except ConnectorError as exc:
            message, code = str(exc), exc.code
        else:
            return
        raise TransientError(message, code=code)

    # ------------------------------------------------------------------ extras

    def user_groups(self, identity: Identity) -> tuple[str, ...]:
        """Group sys_ids of a user (``sys_user_grmember``), for approver-group checks.
        An unknown user has no groups."""
        user_id = identity.source_id
        if not SYS_ID.match(user_id):
            return ()
        rows = self._rows(
            "look up user groups",
            "sys_user_grmember",
            query=f"user={user_id}^ORDERBYsys_id",
            fields=("group",),
        )
        return tuple(dict.fromkeys(g for r in rows if (g := reference_value(r.get("group")))))

    def changed_since(self, since: datetime, tables: Iterable[str] = SUPPORTED_TABLES) -> list[str]:
        """Ticket ids updated at or after ``since`` (oldest first per table; a naive
        ``since`` is taken as UTC), for the reconciliation poll. Callers should overlap
        windows by a few minutes: offset paging over a moving order can skip a record
        updated mid-scan, which the next poll then sees (its ``sys_updated_on`` is newer)."""
        literal = format_servicenow_datetime(since)
        out: dict[str, None] = {}
        for table in tables:
            if table not in SUPPORTED_TABLES:
                raise ValueError(f"unsupported table {table!r}")
            for row in self._rows(
                f"list {table} changed since {literal}",
                table,
                query=f"sys_updated_on>={literal}^ORDERBYsys_updated_on^ORDERBYsys_id",
                fields=("sys_id", "sys_updated_on"),
            ):
                row_id = reference_value(row.get("sys_id"))
                if SYS_ID.match(row_id):
                    out[f"{table}/{row_id}"] = None
        return list(out)

    # ------------------------------------------------------------------ details

    def _approval_rows(self, table: str, sys_id: str) -> list[dict[str, Any]]:
        rows = self._rows(
            f"read approvals of {table}/{sys_id}",
            "sysapproval_approver",
            query=f"sysapproval={sys_id}^ORdocument_id={sys_id}^ORDERBYsys_id",
            fields=_APPROVAL_FIELDS,
        )
        out: dict[str, dict[str, Any]] = {}
        for row in rows:
            # Re-checked here: a dropped query term would otherwise return other rows.
            via_task = reference_value(row.get("sysapproval")) == sys_id
            via_document = reference_value(row.get("document_id")) == sys_id and reference_value(
                row.get("source_table")
            ) in ("", table)
            row_id = reference_value(row.get("sys_id"))
            if row_id and (via_task or via_document):
                out[row_id] = row
        return list(out.values())

    @staticmethod
    def _approvals(
        rows: Iterable[Mapping[str, Any]], people: Mapping[str, Identity]
    ) -> tuple[Approval, ...]:
        out: list[Approval] = []
        for row in rows:
            state = reference_value(row.get("state"))
            approver_id = reference_value(row.get("approver"))
            if state in _EXCLUDED_APPROVAL_STATES or not approver_id:
                continue  # moot rows, and group rows no person has answered yet
            out.append(
                Approval(
                    approval_id=reference_value(row.get("sys_id")),
                    approver=people.get(approver_id) or Identity(source_id=approver_id),
                    # requested / not requested / anything unknown: never approved.
                    decision=_DECISIONS.get(state, "pending"),
                    at=parse_servicenow_datetime(reference_value(row.get("sys_updated_on"))),
                )
            )
        return tuple(out)

    def _users(self, sys_ids: Iterable[str]) -> dict[str, Identity]:
        """sys_id → Identity through ``sys_user``; a user the integration user cannot
        read stays an Identity with only its sys_id."""
        wanted = sorted({s for s in sys_ids if SYS_ID.match(s)})
        found: dict[str, Identity] = {s: Identity(source_id=s) for s in wanted}
        for start in range(0, len(wanted), _USER_BATCH):
            batch = wanted[start : start + _USER_BATCH]
            for row in self._rows(
                "look up users",
                "sys_user",
                query=f"sys_idIN{','.join(batch)}^ORDERBYsys_id",
                fields=_USER_FIELDS,
            ):
                user_id = reference_value(row.get("sys_id"))
                if user_id in found:
                    found[user_id] = Identity(
                        source_id=user_id,
                        name=_text(row.get("user_name")),
                        email=_text(row.get("email")),
                        display=_text(row.get("name")),
                    )
        return found

    def _variables(self, sys_id: str) -> dict[str, str]:
        """Catalog variables of a requested item: they are not columns, they live in
        ``sc_item_option_mtom`` (formats.md §2.3)."""
        out: dict[str, str] = {}
        for row in self._rows(
            f"read variables of sc_req_item/{sys_id}",
            "sc_item_option_mtom",
            query=f"request_item={sys_id}^ORDERBYsys_id",
            fields=(_VARIABLE_NAME, _VARIABLE_VALUE),
        ):
            name = reference_value(row.get(_VARIABLE_NAME)).strip()
            if name:
                out[f"variables.{name}"] = reference_value(row.get(_VARIABLE_VALUE))
        return out
