"""Jira (Cloud and Data Center) as a ticket source, through the pycontribs ``jira`` client.

The webhook only says *which* issue changed; this module re-reads the issue and its
full status history so that decisions rest on what Jira reports, including who moved
the issue into each status and when (formats.md §1.9).

Errors are mapped by HTTP status to the typed connector errors. ``JIRAError``'s own
text includes the request headers (the Authorization header among them), so it is
never chained, formatted or logged: mapped errors are raised outside the ``except``
block and carry only fixed text, the operation name and the status code.
"""

from __future__ import annotations

import functools
import json
import math
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import quote

import requests
import structlog
from jira import JIRA
from jira.exceptions import JIRAError
from pydantic import SecretStr

from connectors.base import Approval, FieldChange, Identity, StatusChange, TicketRef, TicketSnapshot
from connectors.errors import (
    ConnectorError,
    PermanentError,
    SourceNotConfigured,
    TicketNotFound,
    TransientError,
)
from connectors.jira.identity import jira_identity

log = structlog.get_logger("jitgate.jira")

__all__ = ["Deployment", "JiraSource", "parse_jira_datetime"]

Deployment = Literal["auto", "cloud", "datacenter"]
_T = TypeVar("_T")

# Numeric issue id or an issue key. Anything else would be spliced into a REST path
# by the client library unescaped, so it is refused before any request.
_TICKET_ID = re.compile(r"^(?:\d{1,18}|[A-Za-z][A-Za-z0-9_]{0,254}-\d{1,18})$")
_TRANSIENT_STATUSES = frozenset({408, 409, 425, 429})
# JSM "Approvals" custom field type (schema.custom in GET /field); matched by suffix
# because the plugin prefix has varied between JSM versions.
_SD_APPROVALS_SUFFIX = ":sd-approvals"
_APPROVER_DECISIONS: Mapping[str, Literal["approved", "rejected", "pending"]] = {
    "approved": "approved",
    "declined": "rejected",
    "pending": "pending",
}
_CHANGELOG_PAGE = 100  # Cloud's maximum page size for GET issue/{id}/changelog
_COMMENT_PAGE = 100
_APPROVAL_PAGE = 50  # servicedeskapi's default `limit`
# Answers of the JSM approval endpoint meaning "no JSM request here / not visible to
# this API user": the Approvals field is then the only record there is.
_APPROVALS_UNAVAILABLE = frozenset({403, 404})
_MAX_PAGES = 1000  # a server that never says "last page" must not loop forever
# Reconciliation search: everything that goes into JQL is checked against these
# (ASCII only, whole string) so no configured or stored value can change the query.
_PROJECT_KEY = re.compile(r"[A-Z][A-Z0-9_]{0,49}")
_ISSUE_ID = re.compile(r"[0-9]{1,18}")
_IDS_PER_QUERY = 100


def parse_jira_datetime(value: Any) -> datetime | None:
    """Parse Jira's ``2026-01-15T10:12:44.120+0100`` (also ``Z`` / ``+01:00``) into an
    aware datetime; ``None`` for anything else, naive values included."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _history_order(history: Mapping[str, Any]) -> int:
    try:
        return int(str(history.get("id")))
    except ValueError:
        return -1


def _is_status_item(item: Mapping[str, Any]) -> bool:
    field_id = item.get("fieldId")
    if field_id is not None:
        return bool(field_id == "status")
    # DC omits fieldId; ``field`` is then the system field id, or a custom field's NAME.
    return item.get("field") == "status" and item.get("fieldtype") != "custom"


def _opt_str(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)


def _jsm_date(value: Any) -> datetime | None:
    """A servicedeskapi DateDTO (``{iso8601, epochMillis, ...}``) as an aware datetime."""
    if not isinstance(value, Mapping):
        return None
    parsed = parse_jira_datetime(value.get("iso8601"))
    if parsed is not None:
        return parsed
    millis = value.get("epochMillis")
    if isinstance(millis, int) and not isinstance(millis, bool):
        try:
            return datetime.fromtimestamp(millis / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    return None


def _approval_records(steps: Sequence[Any]) -> tuple[Approval, ...]:
    """One ``Approval`` per approver of each JSM approval step (servicedeskapi
    Approval DTO, which is also the Approvals field's element shape)."""
    out: list[Approval] = []
    for step in steps:
        if not isinstance(step, Mapping):
            continue
        step_id = _opt_str(step.get("id")) or "?"
        completed = _jsm_date(step.get("completedDate"))
        for entry in step.get("approvers") or []:
            if not isinstance(entry, Mapping):
                continue
            who = jira_identity(entry.get("approver"))
            if who is None:
                continue
            # Unknown decisions read as pending: never as approved.
            decision = _APPROVER_DECISIONS.get(str(entry.get("approverDecision")), "pending")
            out.append(
                Approval(
                    approval_id=f"{step_id}:{who.source_id}",
                    approver=who,
                    decision=decision,
                    at=completed if decision != "pending" else None,
                )
            )
    return tuple(out)


def _looks_like_approvals(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, dict) and "approvers" in v for v in value)
    )


class _QueryRejected(PermanentError):
    """Internal: Jira answered a search with 400 (the JQL names something it refuses)."""


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _status_error(status: int | None, what: str, *, not_found: bool) -> ConnectorError:
    if status is None or status >= 500 or status in _TRANSIENT_STATUSES:
        shown = "no response" if status is None else f"HTTP {status}"
        return TransientError(f"jira: {what} failed ({shown})")
    if status in (401, 403):
        return PermanentError(
            f"jira: {what} was refused (HTTP {status}): check the Jira user and API token",
            code="source_auth",
        )
    if status == 404 and not_found:
        return TicketNotFound(f"jira: {what}: issue not found (HTTP 404)")
    return PermanentError(f"jira: {what} was rejected (HTTP {status})", code="source_error")


def _settle_environment(session: requests.Session, url: str) -> None:
    """Read the proxy and CA-bundle variables once, at connect, instead of on every
    request (requests walks the whole environment per call: about half a millisecond
    each, two calls per approval). Same behaviour for a process whose environment does
    not change while it runs, which a service's does not."""
    settled = session.merge_environment_settings(url, {}, None, None, None)
    session.proxies.update(settled["proxies"])
    session.verify = settled["verify"]
    session.trust_env = False


class JiraSource:
    """``SourceConnector`` for Jira Cloud and Data Center.

    ``user`` + ``token``: HTTP basic auth (Cloud: email + API token; DC: login +
    password). ``token`` without ``user``: a DC personal access token (bearer).
    No I/O happens until the first call; the client is then created once and reused.
    """

    kind: ClassVar[str] = "jira"

    def __init__(
        self,
        *,
        url: str,
        user: str | None,
        token: SecretStr | str | None,
        timeout: float = 10.0,
        deployment: Deployment = "auto",
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._url = url.strip().rstrip("/")
        self._user = user or None
        self._token: SecretStr | None = (
            SecretStr(token) if isinstance(token, str) else token
        )
        if self._token is not None and not self._token.get_secret_value():
            self._token = None
        self._timeout = timeout
        self._deployment: Deployment = deployment
        self._lock = threading.Lock()
        self._jira: JIRA | None = None
        self._approval_fields: frozenset[str] | None = None
        self._clock = clock or (lambda: datetime.now(UTC))

    def __repr__(self) -> str:
        # Never the token: reprs end up in logs and tracebacks.
        return (
            f"JiraSource(url={self._url!r}, user={self._user!r}, "
            f"deployment={self._deployment!r})"
        )

    @property
    def server(self) -> str:
        return self._url

    # ------------------------------------------------------------------ client

    def _client(self) -> JIRA:
        with self._lock:
            if self._jira is None:
                self._jira = self._call("connect", self._connect)
            return self._jira

    def _connect(self) -> JIRA:
        if not self._url or self._token is None:
            raise SourceNotConfigured("jira: url and token must be configured")
        secret = self._token.get_secret_value()
        auth: dict[str, Any] = (
            {"basic_auth": (self._user, secret)} if self._user else {"token_auth": secret}
        )
        client = JIRA(
            server=self._url,
            options={"check_update": False},
            timeout=self._timeout,
            # ResilientSession would otherwise sleep 20-60 s between attempts on a
            # connection error or 503; retries belong to the worker's backoff.
            max_retries=0,
            # serverInfo tells Cloud from DC, which changes user look-ups; skip the
            # round trip when the operator said which one it is.
            get_server_info=self._deployment == "auto",
            # The library sets its logger level either way; CRITICAL keeps its retry and
            # debug dumps (response headers and bodies) out of our logs.
            logging=False,
            **auth,
        )
        if self._deployment != "auto":
            client.deploymentType = "Cloud" if self._deployment == "cloud" else "Server"
        _settle_environment(client._session, self._url)
        return client

    def _is_cloud(self, client: JIRA) -> bool:
        if self._deployment != "auto":
            return self._deployment == "cloud"
        return client.deploymentType == "Cloud"

    def _call(self, what: str, fn: Callable[[], _T], *, not_found: bool = False) -> _T:
        error: ConnectorError
        try:
            return fn()
        except ConnectorError:
            raise
        except JIRAError as exc:
            error = _status_error(exc.status_code, what, not_found=not_found)
        except requests.RequestException as exc:
            error = TransientError(f"jira: {what} failed ({type(exc).__name__})")
        except (KeyError, TypeError, ValueError):
            # A proxy's HTML error page or a truncated body: the library fails to
            # read it as JSON. Worth retrying; the content is not shown.
            error = TransientError(f"jira: {what} returned an unreadable response")
        # Raised here, outside the handler, so the JIRAError (whose str() dumps request
        # headers) is not attached as __context__.
        raise error

    def _get(self, what: str, path: str, params: dict[str, Any], *, not_found: bool) -> Any:
        """GET a REST resource the library has no wrapper for (changelog pages,
        user groups), through its session so auth, timeout and retries stay the same."""
        client = self._client()
        return self._call(
            what, functools.partial(client._get_json, path, params=params), not_found=not_found
        )

    def close(self) -> None:
        """Release pooled connections; the next call reconnects."""
        with self._lock:
            if self._jira is not None:
                self._jira._session.close()
                self._jira = None

    # ------------------------------------------------------------------ protocol

    def fetch(self, ticket_id: str) -> TicketSnapshot:
        if not _TICKET_ID.match(ticket_id):
            raise TicketNotFound("jira: not an issue id or key")
        client = self._client()
        # The JSON, not the library's Issue resource: only the raw fields are used, and
        # building the resource tree cost more than the request.
        raw = self._get(f"fetch {ticket_id}", f"issue/{ticket_id}", {"expand": "changelog"},
                        not_found=True)
        if not isinstance(raw, dict):
            raise PermanentError("jira: issue response is not an object", code="source_invalid")
        issue_id = _opt_str(raw.get("id"))
        key = _opt_str(raw.get("key"))
        fields = raw.get("fields")
        if not issue_id or not key or not isinstance(fields, dict):
            raise PermanentError(
                "jira: issue response lacks id, key or fields", code="source_invalid"
            )

        status = fields.get("status") or {}
        status_id = _opt_str(status.get("id"))
        if not status_id:
            raise PermanentError("jira: issue response lacks a status id", code="source_invalid")
        category = (status.get("statusCategory") or {}).get("key")
        updated_at = parse_jira_datetime(fields.get("updated")) or parse_jira_datetime(
            fields.get("created")
        )
        if updated_at is None:
            raise PermanentError(
                "jira: issue response lacks an updated time", code="source_invalid"
            )

        histories = self._histories(issue_id, raw.get("changelog"))
        versions = [_history_order(h) for h in histories]
        project = fields.get("project") or {}
        issue_type = fields.get("issuetype") or {}
        summary = fields.get("summary")
        return TicketSnapshot(
            ref=TicketRef(source=self.kind, id=issue_id, key=key, url=f"{self._url}/browse/{key}"),
            status=status_id,
            status_name=_opt_str(status.get("name")),
            state="closed" if category == "done" else "open",
            version=max([v for v in versions if v >= 0], default=0),
            updated_at=updated_at,
            project=_opt_str(project.get("key")),
            issue_type=_opt_str(issue_type.get("name")),
            requester=jira_identity(fields.get("reporter")),
            transitions=self._transitions(histories),
            field_changes=self._field_changes(histories),
            approvals=self._approvals(client, issue_id, fields),
            fields=fields,
            summary=summary if isinstance(summary, str) else None,
        )

    def comment(self, ref: TicketRef, body: str, *, marker: str, first_try: bool = False,
                ) -> bool:
        if not marker.strip():
            raise ValueError("comment marker must not be empty")
        if not _TICKET_ID.match(ref.id):
            raise TicketNotFound("jira: not an issue id or key")
        client = self._client()
        issue_id = ref.id
        start = 0
        for _ in range(0 if first_try else _MAX_PAGES):
            page = self._get(
                f"list comments on {issue_id}",
                f"issue/{issue_id}/comment",
                {"startAt": start, "maxResults": _COMMENT_PAGE, "orderBy": "created"},
                not_found=True,
            )
            if not isinstance(page, dict):
                raise TransientError(f"jira: comments of {issue_id} came back malformed")
            comments = page.get("comments") or []
            for existing in comments:
                text = existing.get("body") if isinstance(existing, dict) else None
                if isinstance(text, str) and marker in text:
                    return False
            start += len(comments)
            total = page.get("total")
            if not comments or not isinstance(total, int) or start >= total:
                break
        # The marker goes on its own last line: easy to grep for and unlikely to be
        # reflowed by the wiki renderer.
        text = body if marker in body else f"{body.rstrip()}\n\n{marker}"
        url = client._get_url(f"issue/{issue_id}/comment")
        # What add_comment sends, without parsing the answer into a resource we discard.
        self._call(
            f"comment on {issue_id}",
            lambda: client._session.post(url, data=json.dumps({"body": text})),
            not_found=True,
        )
        return True

    def check(self) -> None:
        """Raise ``TransientError`` if Jira cannot be used now. An auth failure is
        reported as TransientError too (readiness only), keeping code ``source_auth``."""
        try:
            client = self._client()
            self._call("check", client.myself)
        except TransientError:
            raise
        except ConnectorError as exc:
            message, code = str(exc), exc.code
        else:
            return
        raise TransientError(message, code=code)

    def user_groups(self, identity: Identity) -> tuple[str, ...]:
        """Group ids (Cloud ``groupId``; DC has only names) of a user, for approver-group
        checks. An unknown user has no groups."""
        client = self._client()
        what = "look up user groups"
        if self._is_cloud(client):
            try:
                groups = self._get(
                    what, "user/groups", {"accountId": identity.source_id}, not_found=True
                )
            except TicketNotFound:
                return ()
            items = groups if isinstance(groups, list) else []
            return tuple(
                str(g.get("groupId") or g.get("name"))
                for g in items
                if isinstance(g, dict) and (g.get("groupId") or g.get("name"))
            )
        lookups = [{"key": identity.source_id}]
        if identity.name:
            lookups.append({"username": identity.name})
        for params in lookups:
            try:
                user = self._get(what, "user", {**params, "expand": "groups"}, not_found=True)
            except TicketNotFound:
                continue
            group_obj = user.get("groups") if isinstance(user, dict) else None
            found = group_obj.get("items") if isinstance(group_obj, dict) else None
            return tuple(
                str(g["name"]) for g in found or [] if isinstance(g, dict) and g.get("name")
            )
        return ()

    # ------------------------------------------------------------------ reconciliation

    def changed_since(
        self, *, since: datetime, projects: Sequence[str], ids: Sequence[str] = ()
    ) -> list[str]:
        """Ids of the issues in ``projects`` or in ``ids`` updated at or after ``since``
        (``ids``: tickets holding grants, so one moved out of the projects, or no longer
        matching a webhook filter, is still seen). The cost of a poll follows what
        changed, not how many grants are live.

        The window is the relative ``updated >= -Nm`` with N rounded up plus one
        minute, not a date literal: literals have minute resolution and are read in the
        API user's profile time zone. Because N is measured on our clock and applied to
        Jira's "now", clock skew between us and Jira cancels out as long as ``since``
        was taken on our clock (e.g. when the previous poll started). The overlap
        returns some issues twice across polls; processing is idempotent.

        One search covers the projects; ``ids`` go in separate ``id in (...)`` searches
        of at most 100. Jira rejects a whole query (400) that names an id it cannot see,
        so a rejected chunk is retried id by id, and an id still rejected (deleted, or
        no longer visible) is returned anyway: the caller's re-read then reports it as
        not found instead of the poll failing for every other ticket.
        """
        if since.tzinfo is None or since.utcoffset() is None:
            raise ValueError("since must be timezone-aware")
        keys = self._checked(projects, _PROJECT_KEY, "project key")
        wanted = self._checked(ids, _ISSUE_ID, "issue id")
        if not keys and not wanted:
            return []
        found: dict[str, None] = {}  # insertion-ordered set
        elapsed = (self._clock() - since).total_seconds()
        window = f"updated >= -{max(0, math.ceil(elapsed / 60)) + 1}m"
        if keys:
            found.update(dict.fromkeys(self._search_projects(keys, window)))
        for chunk in _chunks(wanted, _IDS_PER_QUERY):
            found.update(dict.fromkeys(self._search_ids(chunk, window)))
        return list(found)

    @staticmethod
    def _checked(values: Sequence[str], pattern: re.Pattern[str], what: str) -> list[str]:
        # A bare string is a Sequence[str] too: "OPS" must not become O, P, S.
        if isinstance(values, str):
            raise ValueError(f"jira: expected a sequence of {what}s, not a string")
        out: dict[str, None] = {}
        for value in values:
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise ValueError(f"jira: not a valid {what}: {repr(value)[:60]}")
            out[value] = None
        return list(out)

    def _search_projects(self, keys: Sequence[str], window: str) -> list[str]:
        """Jira rejects a whole query naming a project that does not exist (or that the
        API user cannot see); one bad key in a policy must not stop polling the rest,
        so a rejected query is split, and a project still rejected alone is skipped."""
        quoted = ", ".join(f'"{k}"' for k in keys)
        try:
            return self._search(f"project in ({quoted}) AND {window}")
        except _QueryRejected:
            if len(keys) == 1:
                log.warning("jira.poll_project_rejected", project=keys[0])
                return []
        out: list[str] = []
        for key in keys:
            out.extend(self._search_projects([key], window))
        return out

    def _search_ids(self, chunk: Sequence[str], window: str) -> list[str]:
        try:
            return self._search(f"id in ({', '.join(chunk)}) AND {window}")
        except _QueryRejected:
            if len(chunk) == 1:
                return list(chunk)
        out: list[str] = []
        for issue_id in chunk:
            out.extend(self._search_ids([issue_id], window))
        return out

    def _search(self, jql: str) -> list[str]:
        """All pages of a JQL search, as issue ids. Cloud: ``search/jql`` (token paging);
        DC still serves the old ``search`` (offset paging), which Cloud answers with 410."""
        client = self._client()

        def run() -> Any:
            try:
                if self._is_cloud(client):
                    return client.enhanced_search_issues(
                        jql, nextPageToken=None, maxResults=0, fields=["updated"]
                    )
                return client.search_issues(jql, startAt=0, maxResults=0, fields=["updated"])
            except JIRAError as exc:
                if exc.status_code != 400:
                    raise
            # Outside the handler: the JIRAError must not ride along as __context__.
            raise _QueryRejected("jira: search was rejected (HTTP 400)", code="source_error")

        issues = self._call("search issues", run)
        if issues is None:
            # The library's @cloud_api methods return None instead of calling.
            raise PermanentError("jira: search is not available", code="source_error")
        out: list[str] = []
        for issue in issues:
            raw = getattr(issue, "raw", None)
            issue_id = _opt_str(raw.get("id")) if isinstance(raw, dict) else None
            if not issue_id or not _ISSUE_ID.fullmatch(issue_id):
                raise TransientError("jira: search result came back malformed")
            out.append(issue_id)
        return out

    # ------------------------------------------------------------------ history

    def _histories(self, issue_id: str, embedded: Any) -> list[dict[str, Any]]:
        page = embedded if isinstance(embedded, dict) else {}
        histories = [h for h in page.get("histories") or [] if isinstance(h, dict)]
        total = page.get("total")
        truncated = (isinstance(total, int) and total > len(histories)) or bool(page.get("startAt"))
        if truncated:
            histories = self._all_histories(issue_id)
        unique = {str(h.get("id")): h for h in histories}
        return sorted(unique.values(), key=_history_order)

    def _all_histories(self, issue_id: str) -> list[dict[str, Any]]:
        """Page ``GET issue/{id}/changelog`` (oldest first) to the end."""
        out: list[dict[str, Any]] = []
        start = 0
        for _ in range(_MAX_PAGES):
            page = self._get(
                f"read changelog of {issue_id}",
                f"issue/{issue_id}/changelog",
                {"startAt": start, "maxResults": _CHANGELOG_PAGE},
                not_found=True,
            )
            if not isinstance(page, dict):
                raise TransientError(f"jira: changelog of {issue_id} came back malformed")
            values = [v for v in page.get("values") or [] if isinstance(v, dict)]
            out.extend(values)
            start += len(values)
            total = page.get("total")
            if (
                not values
                or page.get("isLast") is True
                or (page.get("isLast") is None and isinstance(total, int) and start >= total)
            ):
                return out
        raise TransientError(f"jira: changelog of {issue_id} did not end after {_MAX_PAGES} pages")

    @staticmethod
    def _transitions(histories: list[dict[str, Any]]) -> tuple[StatusChange, ...]:
        changes: list[StatusChange] = []
        for history in histories:
            at = parse_jira_datetime(history.get("created"))
            history_id = _opt_str(history.get("id"))
            if at is None or not history_id:
                continue  # cannot be ordered or attributed; never evidence of approval
            author = jira_identity(history.get("author"))
            for item in history.get("items") or []:
                if not isinstance(item, dict) or not _is_status_item(item):
                    continue
                to_status = _opt_str(item.get("to"))
                if not to_status:
                    continue
                changes.append(
                    StatusChange(
                        history_id=history_id,
                        author=author,
                        at=at,
                        from_status=_opt_str(item.get("from")),
                        to_status=to_status,
                        to_name=_opt_str(item.get("toString")),
                    )
                )
        return tuple(changes)

    @staticmethod
    def _field_changes(histories: list[dict[str, Any]]) -> tuple[FieldChange, ...]:
        out: list[FieldChange] = []
        for history in histories:
            at = parse_jira_datetime(history.get("created"))
            history_id = _opt_str(history.get("id"))
            if at is None or not history_id:
                continue
            for item in history.get("items") or []:
                if not isinstance(item, dict) or _is_status_item(item):
                    continue
                # fieldId is stable (custom field names are renamable); DC may lack it
                name = _opt_str(item.get("fieldId")) or _opt_str(item.get("field"))
                if name:
                    out.append(FieldChange(history_id=history_id, field=name, at=at))
        return tuple(out)

    # ------------------------------------------------------------------ JSM approvals

    def _approval_field_ids(self, client: JIRA) -> frozenset[str]:
        if self._approval_fields is None:
            listed = self._call("list fields", client.fields)
            if not isinstance(listed, list):
                raise TransientError("jira: field list came back malformed")
            self._approval_fields = frozenset(
                str(f["id"])
                for f in listed
                if isinstance(f, dict)
                and "id" in f
                and str((f.get("schema") or {}).get("custom") or "").endswith(_SD_APPROVALS_SUFFIX)
            )
        return self._approval_fields

    def _field_approval_steps(self, client: JIRA, fields: Mapping[str, Any]) -> list[Any]:
        """Approval steps held in the JSM Approvals custom field(s) of an issue."""
        candidates = {k: v for k, v in fields.items() if _looks_like_approvals(v)}
        if not candidates:
            return []  # no JSM approvals on this issue: spare the /field round trip
        # Only the real JSM field counts: its values are written by JSM, not by users.
        wanted = self._approval_field_ids(client)
        return [step for k, v in candidates.items() if k in wanted for step in v]

    def _approvals(
        self, client: JIRA, issue_id: str, fields: Mapping[str, Any]
    ) -> tuple[Approval, ...]:
        """JSM approval decisions, read from the Service Desk API (formats.md §1.7).

        The endpoint is authoritative; the Approvals field (a copy JSM keeps on the
        issue) is used only when the endpoint cannot be read (403/404), so decisions
        never come from a webhook's claims or from a field copied by a user.
        """
        project = fields.get("project")
        service_desk = isinstance(project, Mapping) and (
            project.get("projectTypeKey") == "service_desk"
        )
        field_steps: list[Any] | None = None
        if not service_desk:
            field_steps = self._field_approval_steps(client, fields)
            if not field_steps:
                return ()  # not JSM: the endpoint would only answer 404
        steps = self._endpoint_approval_steps(client, issue_id)
        if steps is None:
            steps = (
                field_steps
                if field_steps is not None
                else self._field_approval_steps(client, fields)
            )
        return _approval_records(steps)

    def _endpoint_approval_steps(self, client: JIRA, issue_id: str) -> list[Any] | None:
        """All pages of ``GET /rest/servicedeskapi/request/{id}/approval``; ``None``
        when the endpoint is unavailable for this issue (not a JSM request, or the API
        user may not see it)."""
        # The library has no wrapper; its session carries our auth and timeout (set on
        # the session at connect, so no per-call timeout) and raises JIRAError.
        url = f"{self._url}/rest/servicedeskapi/request/{quote(issue_id, safe='')}/approval"
        what = f"read approvals of {issue_id}"
        unavailable = object()

        def get_page(start: int) -> Any:
            try:
                response = client._session.get(
                    url, params={"start": start, "limit": _APPROVAL_PAGE}
                )
            except JIRAError as exc:
                if exc.status_code not in _APPROVALS_UNAVAILABLE:
                    raise
            else:
                return response.json()
            # Outside the handler: the JIRAError must not ride along as __context__.
            return unavailable

        out: list[Any] = []
        start = 0
        for _ in range(_MAX_PAGES):
            page = self._call(what, functools.partial(get_page, start))
            if page is unavailable:
                return None
            if not isinstance(page, dict):
                raise TransientError(f"jira: approvals of {issue_id} came back malformed")
            values = page.get("values")
            if not isinstance(values, list):
                raise TransientError(f"jira: approvals of {issue_id} came back malformed")
            out.extend(values)
            start += len(values)
            # Only an explicit ``isLastPage: false`` asks for more: a missing flag must
            # not turn into an endless walk.
            if not values or page.get("isLastPage") is not False:
                return out
        raise TransientError(f"jira: approvals of {issue_id} did not end after {_MAX_PAGES} pages")
