"""Register jitgate's listener as a Jira admin webhook (``/rest/webhooks/1.0/webhook``).

Admin webhooks are the ones an administrator creates in System → WebHooks or through
this REST resource; they are the only Jira webhooks that carry ``X-Hub-Signature`` when
saved with a ``secret`` (formats.md §1.1). Dynamic webhooks (``/rest/api/2/webhook``) are
for Connect and OAuth 2.0 apps only, expire, and are not signed, so they are not used.

The resource (Jira Cloud and Data Center):

- ``GET  /rest/webhooks/1.0/webhook``        → a JSON array of registrations
- ``POST /rest/webhooks/1.0/webhook``        → 201 and the registration
- ``PUT  /rest/webhooks/1.0/webhook/{id}``   → 200 and the registration
- ``DELETE /rest/webhooks/1.0/webhook/{id}`` → 204

A registration is ``{name, url, events, filters: {"issue-related-events-section": JQL},
excludeBody, enabled, self, lastUpdated…}``; the ``secret`` is write-only (Jira never
shows it again). Registering is idempotent here: an existing registration with the same
name (else the same URL) is updated in place rather than duplicated, since every
duplicate would deliver each event once more (``matchedWebhookIds``).

Secrets: the webhook secret is sent only in the request body, the API token only in the
Authorization header. Neither is part of any message this module builds, and Jira's own
error text is scrubbed of the secret before it is shown.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import requests
import requests.auth
from pydantic import SecretStr

__all__ = [
    "DEFAULT_EVENTS",
    "ISSUE_EVENTS",
    "JQL_SECTION",
    "REDACTED",
    "WEBHOOK_PATH",
    "AmbiguousWebhook",
    "JiraRefused",
    "JiraWebhookAdmin",
    "Plan",
    "RegisteredWebhook",
    "WebhookConfigError",
    "WebhookSpec",
    "check_events",
    "check_url",
    "plan_registration",
    "project_jql",
    "url_notes",
]

WEBHOOK_PATH = "/rest/webhooks/1.0/webhook"
JQL_SECTION = "issue-related-events-section"
REDACTED = "**redacted**"
# The listener acts on these and answers 200 "ignored" to everything else
# (worker/webhooks/app.py): a deleted issue revokes what it held, so it is listened to.
ISSUE_EVENTS = ("jira:issue_created", "jira:issue_updated", "jira:issue_deleted")
DEFAULT_EVENTS = ISSUE_EVENTS
LISTENER_PATH = "/webhooks/jira"
# Same rule as the reconciliation poll (connectors/jira/source.py): a project key is
# checked before it goes into JQL, so no configured value can change the query.
_PROJECT_KEY = re.compile(r"[A-Z][A-Z0-9_]{0,49}")
_WEBHOOK_ID = re.compile(r"/webhook/(?P<id>[0-9]{1,18})/?$")
_MAX_SHOWN_MESSAGES = 5
_MAX_MESSAGE_LEN = 300


class WebhookConfigError(ValueError):
    """The request cannot be built from what was given; nothing was sent."""


class JiraRefused(RuntimeError):
    """Jira answered with an error (or not at all). ``messages`` are Jira's own
    ``errorMessages``/``errors`` texts, scrubbed of the webhook secret."""

    def __init__(self, what: str, status: int | None, messages: Sequence[str] = ()) -> None:
        self.what = what
        self.status = status
        self.messages = tuple(messages)
        shown = "no answer" if status is None else f"HTTP {status}"
        text = f"Jira refused to {what} ({shown})"
        if self.messages:
            text += ": " + "; ".join(self.messages)
        hint = _HINTS.get(status or 0)
        if hint:
            text += f" [{hint}]"
        super().__init__(text)


_HINTS = {
    401: "check JITGATE_JIRA_URL, JITGATE_JIRA_USER and JITGATE_JIRA_TOKEN",
    403: "the Jira user needs the 'Administer Jira' global permission to manage webhooks",
    404: "is JITGATE_JIRA_URL the site's base URL (no /rest, no /browse)?",
}


class AmbiguousWebhook(RuntimeError):
    """Several registrations share the name or URL: updating one would leave the
    others delivering duplicates, so nothing is changed."""

    def __init__(self, matches: Sequence[RegisteredWebhook]) -> None:
        self.matches = tuple(matches)
        listed = ", ".join(f"{m.id} ({m.name!r} → {m.url})" for m in matches)
        super().__init__(
            f"{len(matches)} Jira webhooks match by name or URL: {listed}; delete the extra "
            "ones in System → WebHooks (or give --name) and run this again"
        )


@dataclass(frozen=True)
class WebhookSpec:
    """What jitgate wants registered."""

    name: str
    url: str
    events: tuple[str, ...]
    jql: str

    def request_body(self, secret: SecretStr) -> dict[str, Any]:
        """The body of POST/PUT, secret included: for the wire only."""
        return {**self.redacted_body(), "secret": secret.get_secret_value()}

    def redacted_body(self) -> dict[str, Any]:
        """The same body with the secret replaced, safe to print."""
        return {
            "name": self.name,
            "url": self.url,
            "events": list(self.events),
            "filters": {JQL_SECTION: self.jql},
            "excludeBody": False,
            "secret": REDACTED,
        }


@dataclass(frozen=True)
class RegisteredWebhook:
    """One registration as Jira lists it (never with its secret)."""

    id: str
    self_url: str
    name: str
    url: str
    events: tuple[str, ...]
    jql: str
    enabled: bool

    @classmethod
    def from_json(cls, data: Any) -> RegisteredWebhook:
        if not isinstance(data, Mapping):
            raise JiraRefused("describe a webhook", None, ("an entry is not a JSON object",))
        self_url = str(data.get("self") or "")
        match = _WEBHOOK_ID.search(self_url)
        if match is None:
            raise JiraRefused("describe a webhook", None, ("an entry has no usable 'self'",))
        filters = data.get("filters")
        jql = filters.get(JQL_SECTION) if isinstance(filters, Mapping) else None
        events = data.get("events")
        return cls(
            id=match["id"],
            self_url=self_url,
            name=str(data.get("name") or ""),
            url=str(data.get("url") or ""),
            events=tuple(str(e) for e in events) if isinstance(events, list) else (),
            jql=str(jql or ""),
            enabled=bool(data.get("enabled", True)),
        )

    def matches(self, spec: WebhookSpec) -> bool:
        """Already registered exactly as wanted (the secret cannot be compared)."""
        return (
            self.name == spec.name
            and self.url == spec.url
            and sorted(self.events) == sorted(spec.events)
            and self.jql == spec.jql
            and self.enabled
        )


@dataclass(frozen=True)
class Plan:
    action: Literal["create", "update"]
    existing: RegisteredWebhook | None

    @property
    def method(self) -> str:
        return "POST" if self.existing is None else "PUT"

    @property
    def path(self) -> str:
        return WEBHOOK_PATH if self.existing is None else f"{WEBHOOK_PATH}/{self.existing.id}"


def plan_registration(existing: Iterable[RegisteredWebhook], spec: WebhookSpec) -> Plan:
    """Update the registration with the same name, else the one with the same URL,
    else create one. More than one candidate is refused (``AmbiguousWebhook``)."""
    hooks = list(existing)
    for key in (lambda h: h.name == spec.name, lambda h: _same_url(h.url, spec.url)):
        found = [h for h in hooks if key(h)]
        if len(found) > 1:
            raise AmbiguousWebhook(found)
        if found:
            return Plan("update", found[0])
    return Plan("create", None)


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


def check_url(url: str, *, allow_http: bool = False) -> str:
    """jitgate's public webhook URL, as Jira will call it. HTTPS unless allowed
    otherwise; no credentials in it (the HMAC secret is the authentication)."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise WebhookConfigError("--url is not a valid URL") from None
    del port
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise WebhookConfigError("--url must be an absolute https:// URL")
    if parts.scheme == "http" and not allow_http:
        raise WebhookConfigError(
            "--url must use https (Jira sends ticket data to it); --allow-http for a "
            "test instance"
        )
    if parts.username is not None or parts.password is not None:
        raise WebhookConfigError(
            "--url must not contain credentials: Jira signs each delivery with the secret"
        )
    if parts.fragment:
        raise WebhookConfigError("--url must not contain a #fragment")
    return text


def url_notes(url: str) -> list[str]:
    """Things worth saying about a valid URL that are not errors."""
    path = urlsplit(url).path.rstrip("/")
    if not path.endswith(LISTENER_PATH):
        return [f"--url does not end with {LISTENER_PATH}, where jitgate listens for Jira"]
    return []


def check_events(events: Iterable[str]) -> tuple[str, ...]:
    """The events to register: issue events only, each once, in the order given."""
    wanted = tuple(dict.fromkeys(e.strip() for e in events if e.strip()))
    if not wanted:
        raise WebhookConfigError("--events names no event")
    unknown = [e for e in wanted if e not in ISSUE_EVENTS]
    if unknown:
        raise WebhookConfigError(
            f"--events: jitgate only acts on {', '.join(ISSUE_EVENTS)} (not "
            f"{', '.join(unknown)})"
        )
    return wanted


def project_jql(projects: Iterable[str]) -> str:
    """``project in ("A", "B")``: the default filter, from the policies' projects.

    Inside the subset Jira accepts for webhook filters (formats.md §1.4: ``project``
    with ``IN``), so the same filter is valid for admin and dynamic webhooks. Keys are
    checked and quoted, so none can change the query.
    """
    keys = sorted({p.strip().upper() for p in projects if p.strip()})
    if not keys:
        raise WebhookConfigError("no project to filter on")
    bad = [k for k in keys if not _PROJECT_KEY.fullmatch(k)]
    if bad:
        raise WebhookConfigError(
            f"not a Jira project key: {', '.join(repr(b) for b in bad)} (give --jql)"
        )
    return "project in (" + ", ".join(f'"{k}"' for k in keys) + ")"


class JiraWebhookAdmin:
    """The admin-webhook resource of one Jira site, over ``requests``.

    Auth as ``JiraSource``: ``user`` + ``token`` is HTTP basic (Cloud: email + API
    token; DC: login + password); ``token`` alone is a DC personal access token.
    """

    def __init__(
        self,
        *,
        url: str,
        user: str | None,
        token: SecretStr | None,
        timeout: float = 15.0,
        session: requests.Session | None = None,
    ) -> None:
        base = url.strip().rstrip("/")
        if not base or token is None or not token.get_secret_value():
            raise WebhookConfigError(
                "Jira is not configured: set JITGATE_JIRA_URL, JITGATE_JIRA_USER and "
                "JITGATE_JIRA_TOKEN (or JITGATE_JIRA_TOKEN_FILE)"
            )
        self._base = base
        self._timeout = timeout
        self._session = session or requests.Session()
        self._session.headers.update({"Accept": "application/json"})
        self._scrub: tuple[str, ...] = ()
        # An explicit auth object also keeps requests from applying ~/.netrc instead.
        self._session.auth = (
            (user, token.get_secret_value()) if user else _Bearer(token)
        )

    def __repr__(self) -> str:
        return f"JiraWebhookAdmin(url={self._base!r})"

    def close(self) -> None:
        self._session.close()

    def list_webhooks(self) -> list[RegisteredWebhook]:
        data = self._request("list webhooks", "GET", WEBHOOK_PATH, ok=(200,))
        if not isinstance(data, list):
            raise JiraRefused("list webhooks", None, ("the answer is not a JSON array",))
        return [RegisteredWebhook.from_json(item) for item in data]

    def create(self, spec: WebhookSpec, secret: SecretStr) -> RegisteredWebhook:
        return self._save("create the webhook", "POST", WEBHOOK_PATH, spec, secret, ok=(200, 201))

    def update(self, webhook_id: str, spec: WebhookSpec, secret: SecretStr) -> RegisteredWebhook:
        path = f"{WEBHOOK_PATH}/{_checked_id(webhook_id)}"
        return self._save(f"update webhook {webhook_id}", "PUT", path, spec, secret, ok=(200,))

    def delete(self, webhook_id: str) -> None:
        path = f"{WEBHOOK_PATH}/{_checked_id(webhook_id)}"
        self._request(f"delete webhook {webhook_id}", "DELETE", path, ok=(200, 204))

    def register(self, spec: WebhookSpec, secret: SecretStr) -> tuple[Plan, RegisteredWebhook]:
        """Create or update (see ``plan_registration``); returns what was done."""
        plan = plan_registration(self.list_webhooks(), spec)
        if plan.existing is None:
            return plan, self.create(spec, secret)
        return plan, self.update(plan.existing.id, spec, secret)

    # ------------------------------------------------------------------ HTTP

    def _save(
        self,
        what: str,
        method: str,
        path: str,
        spec: WebhookSpec,
        secret: SecretStr,
        *,
        ok: tuple[int, ...],
    ) -> RegisteredWebhook:
        self._scrub = (secret.get_secret_value(),)
        data = self._request(what, method, path, ok=ok, body=spec.request_body(secret))
        return RegisteredWebhook.from_json(data)

    def _request(
        self,
        what: str,
        method: str,
        path: str,
        *,
        ok: tuple[int, ...],
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        error: JiraRefused
        try:
            response = self._session.request(
                method, self._base + path, json=body, timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            # The exception text can hold the URL and more; the class name is enough.
            error = JiraRefused(what, None, (f"{type(exc).__name__}: cannot reach Jira",))
        else:
            if response.status_code in ok:
                if response.status_code == 204 or not response.content:
                    return None
                try:
                    return response.json()
                except ValueError:
                    error = JiraRefused(what, response.status_code,
                                        ("the answer is not JSON",))
            else:
                error = JiraRefused(what, response.status_code, self._messages(response))
        raise error

    def _messages(self, response: requests.Response) -> list[str]:
        """Jira's ``errorMessages`` and ``errors`` (field → text); some plugins answer
        ``{"messages": [{"message": …}]}`` or ``{"message": …}``. Scrubbed, shortened."""
        try:
            data = response.json()
        except ValueError:
            return []
        found: list[str] = []
        if isinstance(data, Mapping):
            for text in data.get("errorMessages") or []:
                found.append(str(text))
            errors = data.get("errors")
            if isinstance(errors, Mapping):
                found.extend(f"{k}: {v}" for k, v in errors.items())
            for item in data.get("messages") or []:
                if isinstance(item, Mapping) and item.get("message"):
                    found.append(str(item["message"]))
            if isinstance(data.get("message"), str):
                found.append(data["message"])
        return [self._clean(m) for m in found[:_MAX_SHOWN_MESSAGES]]

    def _clean(self, text: str) -> str:
        for secret in self._scrub:
            if secret:
                text = text.replace(secret, REDACTED)
        text = " ".join(text.split())
        return text if len(text) <= _MAX_MESSAGE_LEN else text[: _MAX_MESSAGE_LEN - 1] + "…"


class _Bearer(requests.auth.AuthBase):
    """A Data Center personal access token."""

    def __init__(self, token: SecretStr) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        return request


def _checked_id(webhook_id: str) -> str:
    if not re.fullmatch(r"[0-9]{1,18}", webhook_id):
        raise WebhookConfigError(f"not a webhook id: {webhook_id!r}")
    return webhook_id
