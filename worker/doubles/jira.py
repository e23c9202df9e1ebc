"""In-process HTTP double of the Jira Cloud REST API (v2), for tests and ``jitgate demo``.

It speaks real HTTP on 127.0.0.1 so the real ``jira`` client library runs against it
unmodified: what passes here exercises our URL building, auth, paging and error
mapping, not a mock's idea of them. Shapes follow /work/shared/reference/formats.md
§1.5/§1.9 and §3 (J1/J2). State is changed through the Python API (``create_issue``,
``transition`` …), which also returns the webhook payload Jira would send.

JSM approvals: issues of ``service_desk`` projects are requests of the Service Desk API
(``/rest/servicedeskapi/request/{idOrKey}/approval``, formats.md §1.7); approval steps
are added and answered through ``add_jsm_approval`` / ``decide_jsm_approval``, which
keep the issue's Approvals custom field in step, as JSM does.

Search is Cloud's ``search/jql`` (token paging, the small JQL subset in ``_Jql``); the
removed ``search`` answers 410 as Cloud does since CHANGE-2046.

Admin webhooks: ``GET``/``POST /rest/webhooks/1.0/webhook`` and ``GET``/``PUT``/``DELETE
/rest/webhooks/1.0/webhook/{id}``, in the webhooks plugin's shape (``self``, ``name``,
``url``, ``events``, ``filters: {"issue-related-events-section": jql}``, ``excludeBody``,
``enabled``, ``lastUpdated…``); the ``secret`` is write-only, as in Jira. The filter is
checked on save with the same small JQL subset as search (unknown project: 400).

Credentials: requests must carry HTTP basic auth with the configured user/token. The
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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlsplit

from worker.doubles._server import HttpDouble

__all__ = [
    "CATEGORY_IDS",
    "DONE",
    "IN_PROGRESS",
    "SD_APPROVALS_TYPE",
    "TO_DO",
    "JiraDouble",
    "RecordedRequest",
    "Status",
    "jira_delivery",
    "sign_jira",
]

Status = tuple[str, str, str]  # (status id, status name, statusCategory key)
TO_DO: Status = ("10000", "To Do", "new")
IN_PROGRESS: Status = ("3", "In Progress", "indeterminate")
DONE: Status = ("10001", "Done", "done")
CATEGORY_IDS: Mapping[str, tuple[int, str, str]] = {
    "new": (2, "To Do", "blue-gray"),
    "indeterminate": (4, "In Progress", "yellow"),
    "done": (3, "Done", "green"),
}
SD_APPROVALS_TYPE = "com.atlassian.servicedesk.approvals-plugin:sd-approvals"

_API = re.compile(r"^/rest/api/(?P<version>2|3|latest)(?P<rest>/.*)$")
_ISSUE = re.compile(r"^/issue/(?P<ref>[^/]+)$")
_CHANGELOG = re.compile(r"^/issue/(?P<ref>[^/]+)/changelog$")
_COMMENT = re.compile(r"^/issue/(?P<ref>[^/]+)/comment$")
_SD_APPROVALS = re.compile(
    r"^/rest/servicedeskapi/request/(?P<ref>[^/]+)/approval(?:/(?P<approval>[^/]+))?$"
)
_SD_DECISIONS = {"approve": "approved", "decline": "declined"}
# Admin webhooks (System → WebHooks, or this REST resource of the webhooks plugin).
_WEBHOOKS = re.compile(r"^/rest/webhooks/1\.0/webhook(?:/(?P<id>[^/]+))?/?$")
_WEBHOOK_JQL = "issue-related-events-section"
# Event names the admin webhook resource knows (Cloud's webhook page).
_WEBHOOK_EVENTS = frozenset({
    "jira:issue_created", "jira:issue_updated", "jira:issue_deleted",
    "comment_created", "comment_updated", "comment_deleted",
    "worklog_created", "worklog_updated", "worklog_deleted",
    "attachment_created", "attachment_deleted", "issuelink_created", "issuelink_deleted",
    "issue_property_set", "issue_property_deleted",
    "jira:version_created", "jira:version_updated", "jira:version_deleted",
    "jira:version_released", "jira:version_unreleased", "jira:version_moved",
    "project_created", "project_updated", "project_deleted",
    "user_created", "user_updated", "user_deleted",
    "sprint_created", "sprint_updated", "sprint_deleted", "sprint_started", "sprint_closed",
    "board_created", "board_updated", "board_deleted", "board_configuration_changed",
    "option_voting_changed", "option_watching_changed", "option_unassigned_issues_changed",
    "option_subtasks_changed", "option_attachments_changed", "option_issuelinks_changed",
    "option_timetracking_changed",
})
_MAX_BODY = 1 << 20
_SEARCH_GONE = (
    "The requested API has been removed. Please migrate to the /rest/api/3/search/jql API."
)
_UNBOUNDED = (
    "Unbounded JQL queries are not allowed here. Please add a search restriction to your query."
)


def sign_jira(secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature`` value Jira sends: ``sha256=<hex HMAC-SHA256(secret, body)>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def jira_delivery(
    payload: Mapping[str, Any],
    *,
    secret: str | None = None,
    identifier: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Raw body and headers of one Cloud admin-webhook delivery (formats.md §1.2)."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "X-Atlassian-Webhook-Flow": "Primary",
    }
    if identifier is not None:
        headers["X-Atlassian-Webhook-Identifier"] = identifier
    if secret is not None:
        headers["X-Hub-Signature"] = sign_jira(secret, body)
    return body, headers


def _jira_time(at: datetime) -> str:
    """Jira's REST form: milliseconds and a ``+HHMM`` offset."""
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}" + at.strftime("%z")


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the double saw it; the credentials are reduced to the user name."""

    method: str
    path: str
    query: Mapping[str, tuple[str, ...]]
    body: Any
    auth_user: str | None
    status: int | None  # None: the double dropped the connection (down)


@dataclass
class _User:
    account_id: str
    display: str
    email: str | None
    groups: list[tuple[str, str]]  # (groupId, name)


@dataclass
class _Issue:
    id: str
    key: str
    project: str
    issue_type: str
    status: Status
    reporter: dict[str, Any]
    summary: str
    created: str
    updated: str
    custom: dict[str, Any]
    resolution: dict[str, Any] | None = None
    histories: list[dict[str, Any]] = field(default_factory=list)
    comments: list[dict[str, Any]] = field(default_factory=list)
    approvals: list[_JsmApproval] = field(default_factory=list)


@dataclass
class _Webhook:
    id: int
    name: str
    url: str
    events: list[str]
    jql: str
    exclude_body: bool
    enabled: bool
    secret: str | None  # write-only: stored, never rendered
    updated_ms: int


@dataclass
class _JsmApproval:
    id: str
    name: str
    approvers: list[dict[str, Any]]  # [{"approver": user, "approverDecision": ...}]
    required: int
    created: datetime
    completed: datetime | None = None
    final: str = "pending"


class _Reply(Exception):
    """Internal: ends request handling with this status and JSON body."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _error(status: int, *messages: str) -> _Reply:
    return _Reply(status, {"errorMessages": list(messages), "errors": {}})


def _sd_error(status: int, message: str) -> _Reply:
    """The Service Desk API's own error shape (not Jira's ``errorMessages``)."""
    return _Reply(status, {"errorMessage": message,
                           "i18nErrorMessage": {"i18nKey": "sd.error", "parameters": []}})


class JiraDouble(HttpDouble):
    """A small, thread-safe Jira Cloud site. Use as a context manager or start()/stop()."""

    def __init__(
        self,
        *,
        user: str = "jitgate@example.com",
        token: str = "double-api-token",  # noqa: S107 - a test fixture, not a secret
        embedded_changelog_max: int = 100,
        changelog_page_max: int = 100,
        utc_offset: timedelta = timedelta(hours=1),
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.user = user
        self.token = token
        self.embedded_changelog_max = embedded_changelog_max
        self.changelog_page_max = changelog_page_max
        self.search_page_max = 100  # Cloud allows more with few fields; small forces paging
        self.approval_page_max = 50  # servicedeskapi's default limit; small forces paging
        self.approvals_field_id = "customfield_10027"  # used unless one is registered
        self._tz = timezone(utc_offset)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._issues: dict[str, _Issue] = {}  # by id
        self._keys: dict[str, str] = {}  # key -> id
        self._users: dict[str, _User] = {}
        self._fields: dict[str, tuple[str, str]] = {}  # custom field id -> (name, type)
        self._next_issue = 10000
        self._next_history = 10100
        self._next_comment = 10500
        # Projects JQL may name; an unknown one makes Jira reject the whole query.
        self._projects: set[str] = {"OPS"}
        self._project_types: dict[str, str] = {}  # key -> projectTypeKey (default software)
        self._next_approval = 1
        self._webhooks: dict[int, _Webhook] = {}
        self._next_webhook = 1
        # False: the API user lacks "Administer Jira", so the webhook resource answers 403.
        self.webhook_admin = True
        # (status, path prefix or None for any path) of the next failing requests
        self._fail: list[tuple[int, str | None]] = []
        self._slow: list[float] = []
        self.down = False
        self.requests: list[RecordedRequest] = []
        self.bot = {
            "accountId": "557058:jitgate-bot",
            "accountType": "app",
            "displayName": "jitgate",
            "emailAddress": user,
            "active": True,
            "timeZone": "UTC",
        }

    # ------------------------------------------------------------------ lifecycle

    # ------------------------------------------------------------------ faults

    def fail_next(self, n: int = 1, status: int = 503, *, path: str | None = None) -> None:
        """Answer the next ``n`` requests (before auth) with ``status``; with ``path``,
        only requests whose path starts with it (e.g. ``/rest/servicedeskapi/``)."""
        with self._lock:
            self._fail.extend([(status, path)] * n)

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

    # ------------------------------------------------------------------ test control

    def add_user(
        self,
        account_id: str,
        display: str,
        email: str | None = None,
        groups: Iterable[tuple[str, str]] = (),
    ) -> dict[str, Any]:
        """Register a Cloud user; returns its user object (usable as ``author``)."""
        with self._lock:
            self._users[account_id] = _User(account_id, display, email, list(groups))
            return self._user_json(account_id)

    def add_field(self, field_id: str, name: str, custom_type: str) -> None:
        """Declare a custom field for ``GET /field`` (e.g. ``SD_APPROVALS_TYPE``)."""
        with self._lock:
            self._fields[field_id] = (name, custom_type)

    def create_issue(
        self,
        key: str,
        *,
        project: str = "OPS",
        issue_type: str = "Access Request",
        reporter: Mapping[str, Any],
        fields: Mapping[str, Any] | None = None,
        status: Status = TO_DO,
        summary: str | None = None,
        project_type: str | None = None,
    ) -> str:
        """Create an issue; returns its id. ``project_type`` (``software``,
        ``service_desk``, ``business``) sets the project's type; projects are
        ``software`` unless told otherwise."""
        with self._lock:
            if key in self._keys:
                raise ValueError(f"issue {key} exists")
            if project_type is not None:
                self._project_types[project] = project_type
            issue_id = str(self._next_issue)
            self._next_issue += 1
            now = self._now()
            self._issues[issue_id] = _Issue(
                id=issue_id,
                key=key,
                project=project,
                issue_type=issue_type,
                status=status,
                reporter=self._complete_user(reporter),
                summary=summary or f"Access request {key}",
                created=now,
                updated=now,
                custom=copy.deepcopy(dict(fields or {})),
            )
            self._keys[key] = issue_id
            self._projects.add(project)
            for field_id in fields or {}:
                self._fields.setdefault(field_id, (field_id, "com.atlassian.jira:textfield"))
            return issue_id

    def created_event(self, key: str) -> dict[str, Any]:
        """The ``jira:issue_created`` payload for an existing issue."""
        with self._lock:
            issue = self._issue(key)
            return {
                "timestamp": self._ms(),
                "webhookEvent": "jira:issue_created",
                "issue_event_type_name": "issue_created",
                "user": copy.deepcopy(issue.reporter),
                "issue": self._issue_json(issue, changelog=None),
            }

    def transition(
        self, key: str, to_status: Status, *, author: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Move an issue to ``to_status`` as ``author``; returns the J1 webhook payload."""
        with self._lock:
            issue = self._issue(key)
            items: list[dict[str, Any]] = []
            old = issue.status
            if to_status[2] == "done" and old[2] != "done":
                issue.resolution = {"id": "10000", "name": "Done"}
                items.append(self._item("resolution", "jira", "resolution", from_raw=None,
                                        from_text=None, to_raw="10000", to_text="Done"))
            elif to_status[2] != "done" and old[2] == "done" and issue.resolution:
                items.append(self._item("resolution", "jira", "resolution",
                                        from_raw=issue.resolution["id"],
                                        from_text=issue.resolution["name"],
                                        to_raw=None, to_text=None))
                issue.resolution = None
            items.append(self._item("status", "jira", "status", from_raw=old[0],
                                    from_text=old[1], to_raw=to_status[0],
                                    to_text=to_status[1]))
            issue.status = to_status
            return self._change(issue, items, author, "issue_generic")

    def edit_fields(
        self, key: str, fields: Mapping[str, Any], *, author: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Set fields (custom ids or ``summary``) as ``author``; returns the J2 payload."""
        with self._lock:
            issue = self._issue(key)
            items: list[dict[str, Any]] = []
            for field_id, new in fields.items():
                if field_id == "summary":
                    old: Any = issue.summary
                    issue.summary = str(new)
                    name, kind = "summary", "jira"
                else:
                    old = issue.custom.get(field_id)
                    issue.custom[field_id] = copy.deepcopy(new)
                    self._fields.setdefault(field_id, (field_id, "com.atlassian.jira:textfield"))
                    name, kind = self._fields[field_id][0], "custom"
                old_raw, old_text = self._field_change(old)
                new_raw, new_text = self._field_change(new)
                items.append(self._item(name, kind, field_id, from_raw=old_raw,
                                        from_text=old_text, to_raw=new_raw, to_text=new_text))
            return self._change(issue, items, author, "issue_updated")

    def delete_issue(self, key: str) -> dict[str, Any]:
        """Delete an issue; returns the ``jira:issue_deleted`` payload."""
        with self._lock:
            issue = self._issue(key)
            payload = {
                "timestamp": self._ms(),
                "webhookEvent": "jira:issue_deleted",
                "issue_event_type_name": "issue_deleted",
                "user": copy.deepcopy(self.bot),
                "issue": self._issue_json(issue, changelog=None),
            }
            del self._issues[issue.id]
            for alias in [k for k, v in self._keys.items() if v == issue.id]:
                del self._keys[alias]
            return payload

    def add_project(self, key: str) -> None:
        """Make a project known (one with issues is known already)."""
        with self._lock:
            self._projects.add(key)

    def move_issue(
        self,
        key: str,
        project: str,
        *,
        author: Mapping[str, Any],
        new_key: str | None = None,
    ) -> dict[str, Any]:
        """Move an issue to ``project`` (new key; the old one still resolves, as in
        Jira); returns the ``issue_moved`` payload."""
        with self._lock:
            issue = self._issue(key)
            if new_key is None:
                number = 1 + sum(1 for k in self._keys if k.startswith(f"{project}-"))
                new_key = f"{project}-{number}"
            if new_key in self._keys:
                raise ValueError(f"issue {new_key} exists")
            old_project, old_key = issue.project, issue.key
            items = [
                self._item("project", "jira", "project",
                           from_raw=self._project_id(old_project), from_text=old_project,
                           to_raw=self._project_id(project), to_text=project),
                self._item("Key", "jira", "issuekey", from_raw=None, from_text=old_key,
                           to_raw=None, to_text=new_key),
            ]
            issue.project, issue.key = project, new_key
            self._keys[new_key] = issue.id
            self._projects.add(project)
            return self._change(issue, items, author, "issue_moved")

    def add_jsm_approval(
        self,
        key: str,
        name: str,
        approvers: Iterable[Mapping[str, Any]],
        *,
        required: int = 1,
    ) -> str:
        """Open a JSM approval step on a service desk issue; returns its id. The step is
        approved once ``required`` approvers approved, declined by any decline."""
        with self._lock:
            issue = self._issue(key)
            if self._project_type(issue.project) != "service_desk":
                raise ValueError(f"{key} is not in a service desk project")
            people = [self._complete_user(a) for a in approvers]
            if not people or not 1 <= required <= len(people):
                raise ValueError("need approvers and 1 <= required <= len(approvers)")
            approval = _JsmApproval(
                id=str(self._next_approval),
                name=name,
                approvers=[{"approver": p, "approverDecision": "pending"} for p in people],
                required=required,
                created=self._now_dt(),
            )
            self._next_approval += 1
            issue.approvals.append(approval)
            self._sync_approvals_field(issue)
            return approval.id

    def decide_jsm_approval(
        self, key: str, approval_id: str, approver_account_id: str, decision: str
    ) -> None:
        """Record ``approver_account_id``'s ``approve``/``decline`` on a pending step.
        Like JSM, no webhook of its own: the workflow transition that follows is one."""
        with self._lock:
            issue = self._issue(key)
            approval = next((a for a in issue.approvals if a.id == approval_id), None)
            if approval is None:
                raise KeyError(approval_id)
            if decision not in _SD_DECISIONS:
                raise ValueError("decision must be 'approve' or 'decline'")
            if approval.final != "pending":
                raise ValueError(f"approval {approval_id} is already {approval.final}")
            entry = next(
                (e for e in approval.approvers
                 if e["approver"].get("accountId") == approver_account_id),
                None,
            )
            if entry is None or entry["approverDecision"] != "pending":
                raise ValueError(f"{approver_account_id} cannot answer approval {approval_id}")
            entry["approverDecision"] = _SD_DECISIONS[decision]
            decisions = [e["approverDecision"] for e in approval.approvers]
            if "declined" in decisions:
                approval.final = "declined"
            elif decisions.count("approved") >= approval.required:
                approval.final = "approved"
            if approval.final != "pending":
                approval.completed = self._now_dt()
            issue.updated = self._now()
            self._sync_approvals_field(issue)

    def add_comment(self, key: str, body: str) -> str:
        """Post a comment as the API user (as if added earlier); returns its id."""
        with self._lock:
            reply = self._add_comment(self._issue(key), {"body": body})
            return str(reply.body["id"])

    def comments(self, key: str) -> list[str]:
        with self._lock:
            return [str(c["body"]) for c in self._issue(key).comments]

    def issue_id(self, key: str) -> str:
        with self._lock:
            return self._issue(key).id

    def webhooks(self) -> list[dict[str, Any]]:
        """Registered admin webhooks, as ``GET /rest/webhooks/1.0/webhook`` lists them."""
        with self._lock:
            return [self._webhook_json(h) for h in self._webhooks.values()]

    def webhook_secret(self, webhook_id: int | str) -> str | None:
        """The secret a webhook was saved with (Jira never shows it; tests may)."""
        with self._lock:
            return self._webhooks[int(webhook_id)].secret

    def reset_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # ------------------------------------------------------------------ rendering

    def _now_dt(self) -> datetime:
        return self._clock().astimezone(self._tz)

    def _now(self) -> str:
        return _jira_time(self._now_dt())

    def _ms(self) -> int:
        return int(self._now_dt().timestamp() * 1000)

    def _base(self) -> str:
        return self.url if self._server is not None else "http://127.0.0.1"

    def _issue(self, ref: str) -> _Issue:
        issue_id = self._keys.get(ref, ref)
        issue = self._issues.get(issue_id)
        if issue is None:
            raise KeyError(ref)
        return issue

    def _user_json(self, account_id: str) -> dict[str, Any]:
        user = self._users[account_id]
        out: dict[str, Any] = {
            "self": f"{self._base()}/rest/api/2/user?accountId={account_id}",
            "accountId": account_id,
            "accountType": "atlassian",
            "displayName": user.display,
            "active": True,
            "timeZone": "Europe/Berlin",
        }
        if user.email:
            out["emailAddress"] = user.email
        return out

    def _project_type(self, project: str) -> str:
        return self._project_types.get(project, "software")

    def _sd_date(self, at: datetime) -> dict[str, Any]:
        local = at.astimezone(self._tz)
        return {
            "iso8601": local.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "jira": _jira_time(local),
            "friendly": local.strftime("%d/%b/%y %I:%M %p"),
            "epochMillis": int(local.timestamp() * 1000),
        }

    def _approval_json(self, issue: _Issue, approval: _JsmApproval) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": approval.id,
            "name": approval.name,
            "finalDecision": approval.final,
            # The API user is never an approver here.
            "canAnswerApproval": False,
            "approvers": copy.deepcopy(approval.approvers),
            "createdDate": self._sd_date(approval.created),
            "_links": {"self": f"{self._base()}/rest/servicedeskapi/request/{issue.id}"
                               f"/approval/{approval.id}"},
        }
        if approval.completed is not None:
            out["completedDate"] = self._sd_date(approval.completed)
        return out

    def _sync_approvals_field(self, issue: _Issue) -> None:
        """Mirror the steps into the Approvals custom field, as JSM does (no changelog
        entry: JSM maintains the field itself)."""
        field_id = next(
            (f for f, (_, kind) in sorted(self._fields.items()) if kind == SD_APPROVALS_TYPE),
            None,
        )
        if field_id is None:
            field_id = self.approvals_field_id
            self._fields[field_id] = ("Approvals", SD_APPROVALS_TYPE)
        issue.custom[field_id] = [self._approval_json(issue, a) for a in issue.approvals]

    def _complete_user(self, user: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(user)
        account_id = out.get("accountId")
        if account_id:
            out.setdefault("self", f"{self._base()}/rest/api/2/user?accountId={account_id}")
        out.setdefault("accountType", "atlassian")
        out.setdefault("active", True)
        return out

    def _status_json(self, status: Status) -> dict[str, Any]:
        status_id, name, category = status
        cat_id, cat_name, colour = CATEGORY_IDS[category]
        base = self._base()
        return {
            "self": f"{base}/rest/api/2/status/{status_id}",
            "description": "",
            "iconUrl": f"{base}/images/icons/statuses/generic.png",
            "name": name,
            "id": status_id,
            "statusCategory": {
                "self": f"{base}/rest/api/2/statuscategory/{cat_id}",
                "id": cat_id,
                "key": category,
                "colorName": colour,
                "name": cat_name,
            },
        }

    def _issue_json(self, issue: _Issue, *, changelog: dict[str, Any] | None) -> dict[str, Any]:
        base = self._base()
        fields: dict[str, Any] = {
            "summary": issue.summary,
            "status": self._status_json(issue.status),
            "issuetype": {"id": "10011", "name": issue.issue_type, "subtask": False},
            "project": {
                "self": f"{base}/rest/api/2/project/{issue.project}",
                "id": self._project_id(issue.project),
                "key": issue.project,
                "name": issue.project,
                "projectTypeKey": self._project_type(issue.project),
            },
            "reporter": copy.deepcopy(issue.reporter),
            "creator": copy.deepcopy(issue.reporter),
            "assignee": None,
            "resolution": copy.deepcopy(issue.resolution),
            "created": issue.created,
            "updated": issue.updated,
            "labels": [],
        }
        fields.update(copy.deepcopy(issue.custom))
        out: dict[str, Any] = {
            "expand": "renderedFields,names,schema,operations,editmeta,changelog",
            "id": issue.id,
            "self": f"{base}/rest/api/2/issue/{issue.id}",
            "key": issue.key,
            "fields": fields,
        }
        if changelog is not None:
            out["changelog"] = changelog
        return out

    @staticmethod
    def _project_id(key: str) -> str:
        return str(10000 + sum(map(ord, key)))

    @staticmethod
    def _item(
        field_name: str,
        fieldtype: str,
        field_id: str,
        *,
        from_raw: str | None,
        from_text: str | None,
        to_raw: str | None,
        to_text: str | None,
    ) -> dict[str, Any]:
        return {
            "field": field_name,
            "fieldtype": fieldtype,
            "fieldId": field_id,
            "from": from_raw,
            "fromString": from_text,
            "to": to_raw,
            "toString": to_text,
        }

    @staticmethod
    def _field_change(value: Any) -> tuple[str | None, str | None]:
        """(raw id, display text) the way Jira's changelog shows a field value."""
        if value is None:
            return None, None
        if isinstance(value, dict):
            if "accountId" in value:
                return str(value["accountId"]), str(value.get("displayName", ""))
            if "value" in value:
                return _opt(value.get("id")), str(value["value"])
            return _opt(value.get("id")), str(value.get("name", ""))
        if isinstance(value, list):
            return None, " ".join(str(v) for v in value)
        return None, str(value)

    def _change(
        self,
        issue: _Issue,
        items: list[dict[str, Any]],
        author: Mapping[str, Any],
        event_type: str,
    ) -> dict[str, Any]:
        history_id = str(self._next_history)
        self._next_history += 1
        now = self._now()
        author_obj = self._complete_user(author)
        issue.histories.append(
            {"id": history_id, "author": author_obj, "created": now, "items": items}
        )
        issue.updated = now
        return {
            "timestamp": self._ms(),
            "webhookEvent": "jira:issue_updated",
            "issue_event_type_name": event_type,
            "user": copy.deepcopy(author_obj),
            "issue": self._issue_json(issue, changelog=None),
            "changelog": {"id": history_id, "items": copy.deepcopy(items)},
        }

    # ------------------------------------------------------------------ HTTP routing

    def _take_fault(self, path: str) -> tuple[int | None, float]:
        with self._lock:
            status = None
            for i, (code, prefix) in enumerate(self._fail):
                if prefix is None or path.startswith(prefix):
                    status = code
                    del self._fail[i]
                    break
            delay = self._slow.pop(0) if self._slow else 0.0
            return status, delay

    def _authorized(self, header: str | None) -> str | None:
        """The user name if ``header`` carries the configured basic credentials."""
        if not header or not header.startswith("Basic "):
            return None
        try:
            decoded = base64.b64decode(header[6:], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, token = decoded.partition(":")
        ok_user = hmac.compare_digest(user.encode(), self.user.encode())
        ok_token = hmac.compare_digest(token.encode(), self.token.encode())
        return user if sep and ok_user and ok_token else None

    def _route(self, method: str, path: str, query: Mapping[str, list[str]], body: Any) -> Any:
        q = {k: v[0] for k, v in query.items() if v}
        if wh := _WEBHOOKS.match(path):
            with self._lock:
                return self._webhook_route(method, wh["id"], body)
        if (sd := _SD_APPROVALS.match(path)) and method == "GET":
            with self._lock:
                return self._sd_approvals(sd["ref"], sd["approval"], q)
        match = _API.match(path)
        if match is None:
            raise _error(404, "No resource found for this path.")
        rest = match["rest"]
        if rest in ("/search", "/search/"):
            raise _error(410, _SEARCH_GONE)
        if rest == "/search/jql" and method in ("GET", "POST"):
            params = body if method == "POST" else self._search_query(query)
            with self._lock:
                return self._search(params)
        if match["version"] == "3":
            raise _error(404, "No resource found for this path.")  # only search speaks v3 here
        with self._lock:
            if method == "GET" and rest == "/serverInfo":
                return self._server_info()
            if method == "GET" and rest == "/myself":
                return copy.deepcopy(self.bot)
            if method == "GET" and rest == "/field":
                return self._field_list()
            if method == "GET" and rest == "/user/groups":
                user = self._find_user(q.get("accountId"))
                return [self._group_json(g) for g in user.groups]
            if method == "GET" and rest == "/user":
                user = self._find_user(q.get("accountId"))
                out = self._user_json(user.account_id)
                if "groups" in q.get("expand", "").split(","):
                    groups = [self._group_json(g) for g in user.groups]
                    out["groups"] = {"size": len(groups), "items": groups}
                return out
            if (m := _ISSUE.match(rest)) and method == "GET":
                issue = self._find_issue(m["ref"])
                changelog = None
                if "changelog" in q.get("expand", "").split(","):
                    changelog = self._embedded_changelog(issue)
                return self._issue_json(issue, changelog=changelog)
            if (m := _CHANGELOG.match(rest)) and method == "GET":
                return self._changelog_page(self._find_issue(m["ref"]), q)
            if (m := _COMMENT.match(rest)) and method == "GET":
                return self._comment_page(self._find_issue(m["ref"]), q)
            if (m := _COMMENT.match(rest)) and method == "POST":
                return self._add_comment(self._find_issue(m["ref"]), body)
        raise _error(404, "No resource found for this path.")

    # ------------------------------------------------------------------ admin webhooks

    def _webhook_route(self, method: str, ref: str | None, body: Any) -> Any:
        if not self.webhook_admin:
            raise _error(403, "You are not authorized to perform this action. "
                              "Administrator privileges are required.")
        if ref is None:
            if method == "GET":
                return [self._webhook_json(h) for h in self._webhooks.values()]
            if method == "POST":
                hook = self._webhook_from(body, None)
                self._webhooks[hook.id] = hook
                return _Reply(201, self._webhook_json(hook))
            raise _error(405, "Method not allowed.")
        hook_id = int(ref) if ref.isdigit() else -1
        if hook_id not in self._webhooks:
            raise _error(404, f"Webhook with id {ref} does not exist.")
        if method == "GET":
            return self._webhook_json(self._webhooks[hook_id])
        if method == "PUT":
            hook = self._webhook_from(body, self._webhooks[hook_id])
            self._webhooks[hook_id] = hook
            return self._webhook_json(hook)
        if method == "DELETE":
            del self._webhooks[hook_id]
            return _Reply(204, None)
        raise _error(405, "Method not allowed.")

    def _webhook_from(self, body: Any, old: _Webhook | None) -> _Webhook:
        """Validate a registration body (a PUT replaces the registration; a secret
        left out of a PUT is kept, as the edit page keeps it)."""
        if not isinstance(body, dict):
            raise _error(400, "Invalid request payload. Refer to the REST API documentation.")
        errors: dict[str, str] = {}
        name, url = body.get("name"), body.get("url")
        if not isinstance(name, str) or not name.strip():
            errors["name"] = "The name is required."
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            errors["url"] = "The URL must be an absolute http(s) URL."
        events = body.get("events", [])
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            errors["events"] = "Events must be a list of event names."
        else:
            unknown = [e for e in events if e not in _WEBHOOK_EVENTS]
            if unknown:
                errors["events"] = f"Unknown events: {', '.join(unknown)}."
        filters = body.get("filters") or {}
        jql = filters.get(_WEBHOOK_JQL, "") if isinstance(filters, dict) else None
        if not isinstance(jql, str):
            errors["filters"] = "Filters must map a section to a JQL string."
        secret = body.get("secret", old.secret if old else None)
        if secret is not None and not isinstance(secret, str):
            errors["secret"] = "The secret must be a string."  # noqa: S105 - a message
        if errors or not isinstance(jql, str):
            raise _Reply(400, {"errorMessages": [], "errors": errors})
        if jql.strip():
            # Jira validates the filter on save: one unknown project refuses it.
            _Jql(jql, now=self._now_dt(), tz=self._tz, issue_ids=set(self._issues),
                 projects=self._projects)
        if old is None:
            hook_id, self._next_webhook = self._next_webhook, self._next_webhook + 1
        else:
            hook_id = old.id
        return _Webhook(
            id=hook_id, name=str(name), url=str(url), events=list(events), jql=jql,
            exclude_body=bool(body.get("excludeBody", False)),
            enabled=bool(body.get("enabled", True)), secret=secret or None,
            updated_ms=self._ms(),
        )

    def _webhook_json(self, hook: _Webhook) -> dict[str, Any]:
        return {
            "name": hook.name,
            "url": hook.url,
            "excludeBody": hook.exclude_body,
            "filters": {_WEBHOOK_JQL: hook.jql},
            "events": list(hook.events),
            "enabled": hook.enabled,
            "self": f"{self._base()}/rest/webhooks/1.0/webhook/{hook.id}",
            "lastUpdatedUser": self.bot["accountId"],
            "lastUpdatedDisplayName": self.bot["displayName"],
            "lastUpdated": hook.updated_ms,
        }

    def _server_info(self) -> dict[str, Any]:
        return {
            "baseUrl": self._base(),
            "displayUrl": self._base(),
            "version": "1001.0.0-SNAPSHOT",
            "versionNumbers": [1001, 0, 0],
            "deploymentType": "Cloud",
            "buildNumber": 100280,
            "buildDate": "2026-01-01T00:00:00.000+0000",
            "serverTime": self._now(),
            "scmInfo": "0" * 40,
            "serverTitle": "Jira (double)",
        }

    def _field_list(self) -> list[dict[str, Any]]:
        system = [
            ("summary", "Summary", "string"),
            ("status", "Status", "status"),
            ("issuetype", "Issue Type", "issuetype"),
            ("project", "Project", "project"),
            ("reporter", "Reporter", "user"),
            ("updated", "Updated", "datetime"),
        ]
        out: list[dict[str, Any]] = [
            {"id": fid, "key": fid, "name": name, "custom": False, "orderable": True,
             "navigable": True, "searchable": True, "clauseNames": [fid],
             "schema": {"type": kind, "system": fid}}
            for fid, name, kind in system
        ]
        for fid, (name, custom_type) in sorted(self._fields.items()):
            number = fid.removeprefix("customfield_")
            out.append(
                {"id": fid, "key": fid, "name": name, "custom": True, "orderable": True,
                 "navigable": True, "searchable": True,
                 "clauseNames": [f"cf[{number}]", name],
                 "schema": {"type": "any", "custom": custom_type,
                            "customId": int(number) if number.isdigit() else 0}}
            )
        return out

    def _find_user(self, account_id: str | None) -> _User:
        user = self._users.get(account_id or "")
        if user is None:
            raise _error(
                404,
                "Specified user does not exist or you do not have the permission to see it.",
            )
        return user

    def _group_json(self, group: tuple[str, str]) -> dict[str, Any]:
        group_id, name = group
        return {
            "name": name,
            "groupId": group_id,
            "self": f"{self._base()}/rest/api/2/group?groupId={group_id}",
        }

    def _find_issue(self, ref: str) -> _Issue:
        try:
            return self._issue(ref)
        except KeyError:
            raise _error(
                404, "Issue does not exist or you do not have permission to see it."
            ) from None

    def _sd_approvals(
        self, ref: str, approval_id: str | None, q: Mapping[str, str]
    ) -> dict[str, Any]:
        issue = self._issues.get(self._keys.get(ref, ref))
        # A non-JSM issue is no "request": the Service Desk API does not know it.
        if issue is None or self._project_type(issue.project) != "service_desk":
            raise _sd_error(404, "The request could not be found or you do not have "
                                 "permission to view it.")
        if approval_id is not None:
            approval = next((a for a in issue.approvals if a.id == approval_id), None)
            if approval is None:
                raise _sd_error(404, "The approval could not be found.")
            return self._approval_json(issue, approval)
        try:
            start = max(0, int(q.get("start", "0")))
            limit = max(1, min(self.approval_page_max, int(q.get("limit", "50"))))
        except ValueError:
            raise _sd_error(400, "start and limit must be integers.") from None
        values = [self._approval_json(issue, a) for a in issue.approvals[start : start + limit]]
        base = f"{self._base()}/rest/servicedeskapi/request/{issue.id}/approval"
        last = start + len(values) >= len(issue.approvals)
        links: dict[str, str] = {
            "base": self._base(),
            "context": "",
            "self": f"{base}?start={start}&limit={limit}",
        }
        if not last:
            links["next"] = f"{base}?start={start + limit}&limit={limit}"
        if start > 0:
            links["prev"] = f"{base}?start={max(0, start - limit)}&limit={limit}"
        return {"_expands": [], "size": len(values), "start": start, "limit": limit,
                "isLastPage": last, "values": values, "_links": links}

    def _embedded_changelog(self, issue: _Issue) -> dict[str, Any]:
        page = issue.histories[: self.embedded_changelog_max]
        return {
            "startAt": 0,
            "maxResults": self.embedded_changelog_max,
            "total": len(issue.histories),
            "histories": copy.deepcopy(page),
        }

    @staticmethod
    def _paging(q: Mapping[str, str], cap: int) -> tuple[int, int]:
        try:
            start = max(0, int(q.get("startAt", "0")))
            size = max(1, min(cap, int(q.get("maxResults", str(cap)))))
        except ValueError:
            raise _error(400, "startAt and maxResults must be integers.") from None
        return start, size

    def _changelog_page(self, issue: _Issue, q: Mapping[str, str]) -> dict[str, Any]:
        start, size = self._paging(q, self.changelog_page_max)
        values = issue.histories[start : start + size]
        total = len(issue.histories)
        out: dict[str, Any] = {
            "self": f"{self._base()}/rest/api/2/issue/{issue.key}/changelog"
                    f"?maxResults={size}&startAt={start}",
            "maxResults": size,
            "startAt": start,
            "total": total,
            "isLast": start + len(values) >= total,
            "values": copy.deepcopy(values),
        }
        if not out["isLast"]:
            out["nextPage"] = (
                f"{self._base()}/rest/api/2/issue/{issue.key}/changelog"
                f"?maxResults={size}&startAt={start + size}"
            )
        return out

    def _comment_page(self, issue: _Issue, q: Mapping[str, str]) -> dict[str, Any]:
        start, size = self._paging(q, 5000)
        ordered = issue.comments
        if q.get("orderBy") == "-created":
            ordered = list(reversed(ordered))
        return {
            "startAt": start,
            "maxResults": size,
            "total": len(issue.comments),
            "comments": copy.deepcopy(ordered[start : start + size]),
        }

    def _add_comment(self, issue: _Issue, body: Any) -> _Reply:
        text = body.get("body") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise _Reply(
                400, {"errorMessages": [], "errors": {"comment": "Comment body can not be empty!"}}
            )
        comment_id = str(self._next_comment)
        self._next_comment += 1
        now = self._now()
        comment = {
            "self": f"{self._base()}/rest/api/2/issue/{issue.id}/comment/{comment_id}",
            "id": comment_id,
            "author": copy.deepcopy(self.bot),
            "body": text,
            "updateAuthor": copy.deepcopy(self.bot),
            "created": now,
            "updated": now,
            "jsdPublic": True,
        }
        issue.comments.append(comment)
        return _Reply(201, copy.deepcopy(comment))

    # ------------------------------------------------------------------ search

    @staticmethod
    def _search_query(query: Mapping[str, list[str]]) -> dict[str, Any]:
        """GET parameters in the POST body's shape (``fields`` may repeat)."""
        out: dict[str, Any] = {k: v[0] for k, v in query.items() if v}
        if "fields" in query:
            out["fields"] = list(query["fields"])
        return out

    @staticmethod
    def _page_token(jql: str, offset: int) -> str:
        # Opaque to clients; bound to the query so a token cannot be replayed on another.
        digest = hashlib.sha256(jql.encode()).hexdigest()[:16]
        return base64.urlsafe_b64encode(f"{offset}:{digest}".encode()).decode()

    def _page_offset(self, jql: str, token: Any) -> int:
        if token is None:
            return 0
        try:
            offset = base64.urlsafe_b64decode(str(token)).decode().partition(":")[0]
            if self._page_token(jql, int(offset)) == token:
                return int(offset)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            pass
        raise _error(400, "The provided next page token is invalid or expired.")

    def _search(self, params: Any) -> dict[str, Any]:
        if not isinstance(params, dict):
            raise _error(400, "Invalid request payload. Refer to the REST API documentation.")
        jql = params.get("jql")
        if not isinstance(jql, str) or not jql.strip():
            raise _error(400, _UNBOUNDED)
        try:
            size = int(params.get("maxResults", 50))
        except (TypeError, ValueError):
            raise _error(400, "maxResults must be an integer.") from None
        size = max(1, min(self.search_page_max, size))
        offset = self._page_offset(jql, params.get("nextPageToken"))
        raw_fields = params.get("fields") or []
        if isinstance(raw_fields, str):
            raw_fields = [raw_fields]
        wanted = {f.strip() for item in raw_fields for f in str(item).split(",") if f.strip()}

        matches = _Jql(
            jql, now=self._now_dt(), tz=self._tz,
            issue_ids=set(self._issues), projects=self._projects,
        ).matching(self._issues.values())
        page = matches[offset : offset + size]
        is_last = offset + len(page) >= len(matches)
        out: dict[str, Any] = {"issues": [self._search_hit(i, wanted) for i in page],
                               "isLast": is_last}
        if not is_last:
            out["nextPageToken"] = self._page_token(jql, offset + len(page))
        return out

    def _search_hit(self, issue: _Issue, wanted: set[str]) -> dict[str, Any]:
        if not wanted:
            return {"id": issue.id}  # search/jql returns ids only unless fields are asked for
        full = self._issue_json(issue, changelog=None)
        every = bool(wanted & {"*all", "*navigable"})
        return {
            "expand": full["expand"],
            "id": issue.id,
            "self": full["self"],
            "key": issue.key,
            "fields": {k: v for k, v in full["fields"].items() if every or k in wanted},
        }

    def _record(self, entry: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(entry)


_JQL_TOKEN = re.compile(
    r"""\s*(?:(?P<op>>=|[(),])|"(?P<dq>(?:[^"\\]|\\.)*)"|'(?P<sq>(?:[^'\\]|\\.)*)'"""
    r"""|(?P<word>[A-Za-z0-9_.:/+\-]+))"""
)
_RELATIVE = re.compile(r"-(?P<n>[0-9]{1,9})(?P<unit>[mhdw])")
_ABSOLUTE = re.compile(
    r"(?P<date>[0-9]{4}[/-][0-9]{2}[/-][0-9]{2})(?: (?P<time>[0-9]{2}:[0-9]{2}))?"
)
_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1),
          "d": timedelta(days=1), "w": timedelta(weeks=1)}
_Token = tuple[str, str]  # (kind: op | str | word, text)
_Predicate = Callable[["_Issue"], bool]


class _Jql:
    """The JQL subset ``JiraSource.changed_since`` emits, evaluated the way Cloud does:
    ``project in (...)``, ``id in (...)``, ``updated >= -Nm|h|d|w`` and
    ``updated >= "yyyy/MM/dd[ HH:mm]"`` (the site's zone, minute resolution), joined by
    AND (binding tighter) and OR, with parentheses. Field names and keywords ignore case.
    Anything else, and any project or issue id Jira does not know, is a 400: a real site
    rejects the whole query for one unknown value, it does not drop the clause.
    """

    def __init__(
        self,
        text: str,
        *,
        now: datetime,
        tz: tzinfo,
        issue_ids: set[str],
        projects: set[str],
    ) -> None:
        self._now = now
        self._tz = tz
        self._issue_ids = issue_ids
        self._projects = projects
        self._tokens = self._tokenize(text)
        self._pos = 0
        self._predicate = self._or()
        if self._pos != len(self._tokens):
            self._fail(f"Expecting AND or OR but got '{self._tokens[self._pos][1]}'.")

    def matching(self, issues: Iterable[_Issue]) -> list[_Issue]:
        return sorted((i for i in issues if self._predicate(i)), key=lambda i: int(i.id))

    @staticmethod
    def _fail(detail: str) -> NoReturn:
        raise _error(400, f"Error in the JQL Query: {detail}")

    @classmethod
    def _tokenize(cls, text: str) -> list[_Token]:
        tokens: list[_Token] = []
        pos = 0
        while text[pos:].strip():
            m = _JQL_TOKEN.match(text, pos)
            if m is None:
                cls._fail(f"The character '{text[pos:].lstrip()[0]}' is not allowed here.")
            pos = m.end()
            if m["op"] is not None:
                tokens.append(("op", m["op"]))
            elif m["word"] is not None:
                tokens.append(("word", m["word"]))
            else:
                quoted = m["dq"] if m["dq"] is not None else m["sq"]
                tokens.append(("str", re.sub(r"\\(.)", r"\1", quoted)))
        return tokens

    def _peek(self) -> _Token | None:
        return self._tokens[self._pos] if self._pos < len(self._tokens) else None

    def _next(self, expected: str) -> _Token:
        token = self._peek()
        if token is None:
            self._fail(f"Expecting {expected} but reached the end of the query.")
        self._pos += 1
        return token

    def _keyword(self, word: str) -> bool:
        token = self._peek()
        if token is not None and token[0] == "word" and token[1].upper() == word:
            self._pos += 1
            return True
        return False

    def _expect_op(self, op: str) -> None:
        kind, text = self._next(f"'{op}'")
        if (kind, text) != ("op", op):
            self._fail(f"Expecting '{op}' but got '{text}'.")

    def _or(self) -> _Predicate:
        parts = [self._and()]
        while self._keyword("OR"):
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else (lambda i: any(p(i) for p in parts))

    def _and(self) -> _Predicate:
        parts = [self._factor()]
        while self._keyword("AND"):
            parts.append(self._factor())
        return parts[0] if len(parts) == 1 else (lambda i: all(p(i) for p in parts))

    def _factor(self) -> _Predicate:
        token = self._peek()
        if token == ("op", "("):
            self._pos += 1
            inner = self._or()
            self._expect_op(")")
            return inner
        kind, name = self._next("a field name")
        field_name = name.lower()
        if kind == "op" or field_name not in ("project", "id", "updated"):
            self._fail(f"Field '{name}' does not exist or you do not have permission to view it.")
        if field_name == "updated":
            self._expect_op(">=")
            return self._updated_since(self._next("a date")[1])
        if not self._keyword("IN"):
            self._fail(f"Expecting 'in' after '{name}' (only 'in' is supported here).")
        values = self._list()
        if field_name == "project":
            for value in values:
                if value not in self._projects:
                    self._fail(f"The value '{value}' does not exist for the field 'project'.")
            wanted = set(values)
            return lambda i: i.project in wanted
        for value in values:
            if value not in self._issue_ids:
                self._fail(f"An issue with key '{value}' does not exist for field 'id'.")
        wanted = set(values)
        return lambda i: i.id in wanted

    def _list(self) -> list[str]:
        self._expect_op("(")
        values: list[str] = []
        while True:
            kind, text = self._next("a value")
            if kind == "op":
                self._fail(f"Expecting a value but got '{text}'.")
            values.append(text)
            kind, text = self._next("',' or ')'")
            if (kind, text) == ("op", ")"):
                return values
            if (kind, text) != ("op", ","):
                self._fail(f"Expecting ',' or ')' but got '{text}'.")

    def _updated_since(self, value: str) -> _Predicate:
        if m := _RELATIVE.fullmatch(value):
            cutoff = self._now - int(m["n"]) * _UNITS[m["unit"]]
        elif m := _ABSOLUTE.fullmatch(value):
            # Literals are wall-clock minutes in the searching user's zone.
            text = m["date"].replace("-", "/") + " " + (m["time"] or "00:00")
            cutoff = datetime.strptime(text, "%Y/%m/%d %H:%M").replace(tzinfo=self._tz)
        else:
            self._fail(f"Date value '{value}' for field 'updated' is invalid.")
        return lambda i: datetime.fromisoformat(i.updated) >= cutoff


def _opt(value: Any) -> str | None:
    return None if value is None else str(value)


class _Handler(BaseHTTPRequestHandler):
    server_version = "JiraDouble/1.0"
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the second waits for the
    # client's delayed ACK (~40 ms per request), which no real Jira adds.
    disable_nagle_algorithm = True

    @property
    def _double(self) -> JiraDouble:
        double: JiraDouble = self.server.double  # type: ignore[attr-defined]
        return double

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: test output stays readable and no header can reach a log."""

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        double = self._double
        parts = urlsplit(self.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        body = self._read_body()
        auth_user = double._authorized(self.headers.get("Authorization"))

        def record(status: int | None) -> None:
            double._record(RecordedRequest(
                method=method,
                path=parts.path,
                query={k: tuple(v) for k, v in query.items()},
                body=body,
                auth_user=auth_user,
                status=status,
            ))

        # After stop() (or a restart) a pooled keep-alive connection may still reach
        # this handler thread: answer it the way a dead server would.
        if double.down or self.server is not double._server:
            record(None)
            self.close_connection = True
            # Drop without a status line: the client sees a reset, as when Jira is down.
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        fault, delay = double._take_fault(parts.path)
        if delay:
            time.sleep(delay)
        try:
            if fault is not None:
                if parts.path.startswith("/rest/servicedeskapi/"):
                    raise _sd_error(fault, "Injected failure (double fault).")
                raise _error(fault, "Service temporarily unavailable (double fault).")
            if auth_user is None:
                raise _error(401, "Client must be authenticated to access this resource.")
            result = double._route(method, parts.path, query, body)
            reply = result if isinstance(result, _Reply) else _Reply(200, result)
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
        # 204 has no body at all (a keep-alive client would read one as the next answer).
        data = b"" if reply.status == 204 else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        if reply.status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="protected-area"')
        if reply.status in (429, 503):
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(data)


JiraDouble.handler = _Handler
