"""connectors.jira.admin: request building, planning and error text (no Jira needed,
except a tiny server that echoes the secret back in an error)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import SecretStr

from connectors.jira.admin import (
    REDACTED,
    AmbiguousWebhook,
    JiraRefused,
    JiraWebhookAdmin,
    RegisteredWebhook,
    WebhookConfigError,
    WebhookSpec,
    check_events,
    check_url,
    plan_registration,
    project_jql,
)

SPEC = WebhookSpec(name="jitgate", url="https://jg.example.com/webhooks/jira",
                   events=("jira:issue_updated",), jql='project in ("OPS")')


def _hook(hook_id: str, name: str, url: str) -> RegisteredWebhook:
    return RegisteredWebhook(id=hook_id, self_url=f"https://x/rest/webhooks/1.0/webhook/{hook_id}",
                             name=name, url=url, events=(), jql="", enabled=True)


def test_project_jql_is_sorted_quoted_and_checked() -> None:
    assert project_jql(["sec", "OPS", "SEC"]) == 'project in ("OPS", "SEC")'
    with pytest.raises(WebhookConfigError, match="not a Jira project key"):
        project_jql(['OPS") OR project is not EMPTY OR ("'])
    with pytest.raises(WebhookConfigError):
        project_jql([])


@pytest.mark.parametrize("url", ["https://jg.example.com/webhooks/jira",
                                 "https://jg.example.com:8443/webhooks/jira?tenant=a"])
def test_check_url_accepts_https(url: str) -> None:
    assert check_url(f"  {url} ") == url


@pytest.mark.parametrize(
    "url",
    ["http://jg.example.com/webhooks/jira", "ftp://jg.example.com/", "jg.example.com/x",
     "https://user:pw@jg.example.com/", "https://jg.example.com:99999/", "https:///x",
     "https://jg.example.com/#frag"],
)
def test_check_url_refuses(url: str) -> None:
    with pytest.raises(WebhookConfigError):
        check_url(url)


def test_check_url_allows_http_when_told() -> None:
    assert check_url("http://127.0.0.1:8080/webhooks/jira", allow_http=True)


def test_check_events_dedupes_and_keeps_to_issue_events() -> None:
    assert check_events(["jira:issue_updated", " jira:issue_updated", ""]) == (
        "jira:issue_updated",)
    with pytest.raises(WebhookConfigError, match="only acts on"):
        check_events(["jira:issue_updated", "sprint_started"])
    with pytest.raises(WebhookConfigError):
        check_events(["", " "])


def test_plan_prefers_the_name_then_the_url() -> None:
    by_name = _hook("7", "jitgate", "https://old.example.com/webhooks/jira")
    by_url = _hook("8", "other", SPEC.url + "/")
    assert plan_registration([by_url, by_name], SPEC).existing == by_name
    assert plan_registration([by_url], SPEC).existing == by_url
    plan = plan_registration([_hook("9", "x", "https://else/")], SPEC)
    assert (plan.action, plan.method, plan.path) == ("create", "POST", "/rest/webhooks/1.0/webhook")
    with pytest.raises(AmbiguousWebhook, match="2 Jira webhooks"):
        plan_registration([_hook("1", "jitgate", "a"), _hook("2", "jitgate", "b")], SPEC)


def test_bodies_carry_the_secret_only_on_the_wire() -> None:
    secret = SecretStr("wire-only-secret")
    assert SPEC.request_body(secret)["secret"] == "wire-only-secret"
    assert SPEC.redacted_body()["secret"] == REDACTED
    assert "wire-only-secret" not in json.dumps(SPEC.redacted_body())
    assert SPEC.request_body(secret)["filters"] == {
        "issue-related-events-section": 'project in ("OPS")'}


def test_registration_json_is_read_from_jiras_shape() -> None:
    hook = RegisteredWebhook.from_json({
        "name": "jitgate", "url": SPEC.url, "excludeBody": False, "enabled": True,
        "events": ["jira:issue_updated"],
        "filters": {"issue-related-events-section": 'project in ("OPS")'},
        "self": "https://site.example.com/rest/webhooks/1.0/webhook/12",
        "lastUpdatedUser": "557058:abc", "lastUpdatedDisplayName": "Admin",
        "lastUpdated": 1370425457000,
    })
    assert hook.id == "12"
    assert hook.matches(SPEC)
    with pytest.raises(JiraRefused):
        RegisteredWebhook.from_json({"name": "no self"})


def test_unconfigured_jira_is_a_config_error() -> None:
    with pytest.raises(WebhookConfigError, match="JITGATE_JIRA_URL"):
        JiraWebhookAdmin(url="", user="u", token=SecretStr("t"))
    with pytest.raises(WebhookConfigError):
        JiraWebhookAdmin(url="https://x", user="u", token=None)


class _Echo(BaseHTTPRequestHandler):
    """Answers every write with Jira's error shape, quoting the body back."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._send(200, [])

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self._send(400, {"errorMessages": [f"cannot save {raw}"],
                         "errors": {"secret": json.loads(raw)["secret"]}})

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def echo_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_secret_quoted_back_by_jira_is_scrubbed(echo_url: str) -> None:
    admin = JiraWebhookAdmin(url=echo_url, user="u", token=SecretStr("t"))
    with pytest.raises(JiraRefused) as caught:
        admin.register(SPEC, SecretStr("echoed-secret-value"))
    admin.close()
    assert caught.value.status == 400
    assert "echoed-secret-value" not in str(caught.value)
    assert REDACTED in str(caught.value)


def test_an_unreachable_jira_names_no_url_detail() -> None:
    admin = JiraWebhookAdmin(url="http://127.0.0.1:9", user="u", token=SecretStr("t"),
                             timeout=2)
    with pytest.raises(JiraRefused, match="cannot reach Jira") as caught:
        admin.list_webhooks()
    assert caught.value.status is None
