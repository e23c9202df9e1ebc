"""Pure parsing of Jira webhook bodies (Cloud admin webhooks and Data Center).

No I/O and no decisions here: the result is a hint that tells the worker which issue
to re-read. Signature checks and size caps happen before this runs, on the raw bytes.
Models ignore unknown keys because Jira adds fields freely and custom fields differ per
site; only what routing and deduplication need is validated.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.base import Identity
from connectors.errors import WebhookParseError
from connectors.jira.identity import jira_identity

__all__ = [
    "JiraEvent",
    "WebhookChangelog",
    "WebhookChangelogItem",
    "WebhookIssue",
    "WebhookParseError",
    "WebhookPayload",
    "parse_jira_webhook",
]

# Header values are attacker-influenced (the HMAC covers only the body), so bound them
# before they become part of a database key.
_MAX_IDENTIFIER_LEN = 200
_MAX_REASON_LEN = 200
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Permissive(BaseModel):
    # Jira Automation's "Jira format" sends numeric ids as JSON numbers: accept both.
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True, populate_by_name=True)


class WebhookNamed(_Permissive):
    """Status / issue type / project reference; ``key`` only on projects and categories."""

    id: str | None = None
    key: str | None = None
    name: str | None = None


class WebhookStatus(WebhookNamed):
    status_category: WebhookNamed | None = Field(default=None, alias="statusCategory")


class WebhookFields(_Permissive):
    status: WebhookStatus | None = None
    issuetype: WebhookNamed | None = None
    project: WebhookNamed | None = None


class WebhookIssue(_Permissive):
    id: str | None = None
    key: str | None = None
    self_url: str | None = Field(default=None, alias="self")
    fields: WebhookFields | None = None


class WebhookChangelogItem(_Permissive):
    field: str | None = None
    fieldtype: str | None = None
    # Cloud only; older DC payloads lack it (formats.md §1.6).
    field_id: str | None = Field(default=None, alias="fieldId")
    from_value: str | None = Field(default=None, alias="from")
    from_string: str | None = Field(default=None, alias="fromString")
    to_value: str | None = Field(default=None, alias="to")
    to_string: str | None = Field(default=None, alias="toString")

    @property
    def is_status(self) -> bool:
        if self.field_id is not None:
            return self.field_id == "status"
        # Without fieldId, ``field`` is the NAME for custom fields: a custom field
        # called "status" must not pass for the workflow status.
        return self.field == "status" and self.fieldtype != "custom"


class WebhookChangelog(_Permissive):
    id: str | None = None
    items: list[WebhookChangelogItem] | None = None


class WebhookPayload(_Permissive):
    """The issue-event body (formats.md §1.5); also accepts other event kinds."""

    timestamp: int | None = None
    webhook_event: str = Field(alias="webhookEvent", min_length=1)
    issue_event_type_name: str | None = None
    # Users stay raw dicts: their shape differs between Cloud and DC and one function
    # (jira_identity) owns that difference.
    user: dict[str, Any] | None = None
    issue: WebhookIssue | None = None
    changelog: WebhookChangelog | None = None
    matched_webhook_ids: list[int] | None = Field(default=None, alias="matchedWebhookIds")


class JiraEvent(BaseModel):
    """What a Jira delivery says, normalized. A hint only: the worker re-reads the issue
    before any decision, so nothing here is trusted for authorization."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    webhook_event: str
    issue_event_type_name: str | None = None
    issue_id: str | None = None
    issue_key: str | None = None
    # ``issue.self`` (REST URL): tells which site sent it when several are configured.
    issue_self: str | None = None
    project_key: str | None = None
    issue_type: str | None = None
    status_id: str | None = None
    status_category: str | None = None
    changelog_id: str | None = None
    # (from status id, to status id) for every status item of this delivery.
    status_changes: tuple[tuple[str | None, str], ...] = ()
    timestamp: datetime | None = None
    # The webhook actor, for logs only: it is often an automation or app user and is
    # never the approver of record (approvals come from the re-read history).
    actor: Identity | None = None
    matched_webhook_ids: tuple[int, ...] = ()

    @property
    def is_issue_event(self) -> bool:
        return self.webhook_event.startswith("jira:issue_")

    @property
    def is_deleted(self) -> bool:
        return self.webhook_event == "jira:issue_deleted"

    def dedupe_key(self, header_identifier: str | None, raw: bytes) -> str:
        """Key that is equal for redeliveries of one event.

        Precedence (formats.md §4.1): ``X-Atlassian-Webhook-Identifier`` (stable across
        Cloud retries) → ``issue.id:changelog.id`` (also present on DC) → sha256 of the
        raw body. Each kind has its own prefix so values of one kind can never equal a
        value of another.
        """
        ident = (header_identifier or "").strip()
        if ident and len(ident) <= _MAX_IDENTIFIER_LEN and ident.isprintable():
            return f"jira:delivery:{ident}"
        if self.issue_id and self.changelog_id:
            return f"jira:change:{self.issue_id}:{self.changelog_id}"
        return f"jira:body:{hashlib.sha256(raw).hexdigest()}"


def _reason(exc: ValidationError) -> str:
    # Name the field and pydantic's message; never echo the input value.
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = ".".join(str(part) for part in first["loc"]) or "body"
    return f"{loc}: {first['msg']}"[:_MAX_REASON_LEN]


def _timestamp(ms: int | None) -> datetime | None:
    if ms is None:
        return None
    try:
        # Integer arithmetic: a float division can lose the millisecond.
        return _EPOCH + timedelta(milliseconds=ms)
    except (OverflowError, ValueError):
        raise WebhookParseError(422, "timestamp: out of range") from None


def parse_jira_webhook(raw: bytes) -> JiraEvent:
    """Parse a Jira webhook body. Raises ``WebhookParseError`` (400 or 422)."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise WebhookParseError(400, "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise WebhookParseError(400, "body is not a JSON object")
    try:
        payload = WebhookPayload.model_validate(data)
    except ValidationError as exc:
        raise WebhookParseError(422, _reason(exc)) from None

    issue = payload.issue
    if payload.webhook_event.startswith("jira:issue_") and (issue is None or not issue.id):
        raise WebhookParseError(422, "issue.id: required for jira:issue_* events")

    changelog = payload.changelog
    changes = tuple(
        (item.from_value, item.to_value)
        for item in ((changelog.items or ()) if changelog else ())
        if item.is_status and item.to_value is not None
    )
    fields = issue.fields if issue else None
    status = fields.status if fields else None
    return JiraEvent(
        webhook_event=payload.webhook_event,
        issue_event_type_name=payload.issue_event_type_name,
        issue_id=issue.id if issue else None,
        issue_key=issue.key if issue else None,
        issue_self=issue.self_url if issue else None,
        project_key=fields.project.key if fields and fields.project else None,
        issue_type=fields.issuetype.name if fields and fields.issuetype else None,
        status_id=status.id if status else None,
        status_category=(
            status.status_category.key if status and status.status_category else None
        ),
        changelog_id=changelog.id if changelog else None,
        status_changes=changes,
        timestamp=_timestamp(payload.timestamp),
        actor=jira_identity(payload.user),
        matched_webhook_ids=tuple(payload.matched_webhook_ids or ()),
    )
