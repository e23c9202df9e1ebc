"""``jitgate jira register-webhook`` end to end: the real CLI against the Jira double's
admin-webhook resource (``/rest/webhooks/1.0/webhook``) over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner, Result

from worker.cli import main
from worker.doubles.jira import JiraDouble

SECRET = "whsec-7f3c1d9e5a-never-print-me"
TOKEN = "api-token-4b2e-never-print-me"
URL = "https://jitgate.example.com/webhooks/jira"
HOOKS = "/rest/webhooks/1.0/webhook"


@pytest.fixture
def jira(monkeypatch: pytest.MonkeyPatch) -> Iterator[JiraDouble]:
    with JiraDouble(user="admin@example.com", token=TOKEN) as double:
        monkeypatch.setenv("JITGATE_JIRA_URL", double.url)
        monkeypatch.setenv("JITGATE_JIRA_USER", "admin@example.com")
        monkeypatch.setenv("JITGATE_JIRA_TOKEN", TOKEN)
        monkeypatch.setenv("JITGATE_JIRA_WEBHOOK_SECRET", SECRET)
        yield double


def _run(*args: str) -> Result:
    return CliRunner().invoke(main, ["jira", "register-webhook", *args],
                              catch_exceptions=False)


def _shown(result: Result) -> str:
    """Everything the user saw (stdout and stderr)."""
    return result.output + result.stderr


def _assert_no_secrets(result: Result) -> None:
    shown = _shown(result)
    assert SECRET not in shown
    assert TOKEN not in shown


def _writes(double: JiraDouble) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in double.requests if r.method != "GET"]


def test_registers_once_with_the_secret_then_updates_instead_of_duplicating(
    jira: JiraDouble,
) -> None:
    first = _run("--url", URL)
    assert first.exit_code == 0, _shown(first)
    _assert_no_secrets(first)
    assert "registered Jira webhook 1" in first.output
    hooks = jira.webhooks()
    assert len(hooks) == 1
    assert hooks[0]["name"] == "jitgate"
    assert hooks[0]["url"] == URL
    assert hooks[0]["events"] == ["jira:issue_created", "jira:issue_updated",
                                  "jira:issue_deleted"]
    # The example policy covers project OPS only.
    assert hooks[0]["filters"] == {"issue-related-events-section": 'project in ("OPS")'}
    assert "secret" not in hooks[0]  # write-only, as in Jira
    assert jira.webhook_secret(1) == SECRET
    assert _writes(jira) == [("POST", HOOKS)]

    jira.reset_requests()
    second = _run("--url", URL, "--events", "jira:issue_updated,jira:issue_deleted")
    assert second.exit_code == 0, _shown(second)
    _assert_no_secrets(second)
    assert "updated Jira webhook 1" in second.output
    assert len(jira.webhooks()) == 1
    assert jira.webhooks()[0]["events"] == ["jira:issue_updated", "jira:issue_deleted"]
    assert _writes(jira) == [("PUT", f"{HOOKS}/1")]
    put = next(r for r in jira.requests if r.method == "PUT")
    assert put.body["secret"] == SECRET  # re-sent on update: a rotated secret lands


def test_a_renamed_run_finds_the_registration_by_url(jira: JiraDouble) -> None:
    assert _run("--url", URL).exit_code == 0
    renamed = _run("--url", URL, "--name", "jitgate-prod")
    assert renamed.exit_code == 0, _shown(renamed)
    assert [h["name"] for h in jira.webhooks()] == ["jitgate-prod"]


def test_the_secret_file_twin_is_used(jira: JiraDouble, monkeypatch: pytest.MonkeyPatch,
                                      tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("from-a-file-0123456789\n", encoding="utf-8")
    monkeypatch.delenv("JITGATE_JIRA_WEBHOOK_SECRET")
    monkeypatch.setenv("JITGATE_JIRA_WEBHOOK_SECRET_FILE", str(path))
    result = _run("--url", URL)
    assert result.exit_code == 0, _shown(result)
    assert "from-a-file-0123456789" not in _shown(result)
    assert jira.webhook_secret(1) == "from-a-file-0123456789"


def test_dry_run_prints_the_body_redacted_and_changes_nothing(jira: JiraDouble) -> None:
    created = _run("--url", URL)
    assert created.exit_code == 0
    jira.reset_requests()
    result = _run("--url", URL, "--dry-run")
    assert result.exit_code == 0, _shown(result)
    _assert_no_secrets(result)
    assert f"would update webhook 1: PUT {HOOKS}/1" in result.output
    body = json.loads(result.output.split("\n", 1)[1])
    assert body["secret"] == "**redacted**"
    assert body["url"] == URL
    assert body["filters"] == {"issue-related-events-section": 'project in ("OPS")'}
    assert _writes(jira) == []


def test_dry_run_without_jira_still_shows_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JITGATE_JIRA_WEBHOOK_SECRET", SECRET)
    result = _run("--url", URL, "--dry-run")
    assert result.exit_code == 0, _shown(result)
    _assert_no_secrets(result)
    assert f"would register: POST {HOOKS}" in result.output
    assert "was not checked" in result.stderr


def test_jira_refusing_the_credentials_is_exit_1_with_its_message(
    jira: JiraDouble, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JITGATE_JIRA_TOKEN", "wrong-token")
    result = _run("--url", URL)
    assert result.exit_code == 1
    _assert_no_secrets(result)
    assert "wrong-token" not in _shown(result)
    assert "HTTP 401" in result.stderr
    assert "Client must be authenticated" in result.stderr  # Jira's errorMessages
    assert "JITGATE_JIRA_TOKEN" in result.stderr
    assert jira.webhooks() == []


def test_jira_rejecting_the_filter_is_exit_1_with_its_message(jira: JiraDouble) -> None:
    result = _run("--url", URL, "--jql", 'project in ("NOPE")')
    assert result.exit_code == 1
    _assert_no_secrets(result)
    assert "HTTP 400" in result.stderr
    assert "The value 'NOPE' does not exist for the field 'project'" in result.stderr
    assert jira.webhooks() == []


def test_a_user_without_admin_rights_is_told_which_permission(jira: JiraDouble) -> None:
    jira.webhook_admin = False
    result = _run("--url", URL)
    assert result.exit_code == 1
    assert "HTTP 403" in result.stderr
    assert "Administer Jira" in result.stderr
    _assert_no_secrets(result)


def test_two_registrations_with_the_name_are_not_guessed_between(jira: JiraDouble) -> None:
    for _ in range(2):
        answer = requests.post(
            jira.url + HOOKS, auth=("admin@example.com", TOKEN), timeout=5,
            json={"name": "jitgate", "url": URL, "events": ["jira:issue_updated"]},
        )
        assert answer.status_code == 201
    result = _run("--url", URL)
    assert result.exit_code == 1
    assert "2 Jira webhooks match" in result.stderr
    assert len(jira.webhooks()) == 2
    assert all(jira.webhook_secret(h) is None for h in (1, 2))


def test_a_policy_without_project_means_no_filter(
    jira: JiraDouble, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "version: 1\n"
        "targets:\n  t: {type: http, url: 'https://grants.example.com', "
        "secret: s3cr3t-s3cr3t-s3cr3t-s3cr3t}\n"
        "policies:\n"
        "  - name: any\n    source: jira\n    approved_statuses: [Approved]\n"
        "    approvers: {users: [u1]}\n    principal: {from: field, field: cf_1}\n"
        "    grants: [{target: t, role: r}]\n    duration: 1h\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("JITGATE_POLICY_PATH", str(policy))
    result = _run("--url", URL)
    assert result.exit_code == 0, _shown(result)
    assert "matches every project" in result.stderr
    assert jira.webhooks()[0]["filters"] == {"issue-related-events-section": ""}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "http://jitgate.example.com/webhooks/jira"], "must use https"),
        (["--url", "https://u:p@jitgate.example.com/webhooks/jira"], "credentials"),
        (["--url", "/webhooks/jira"], "absolute https"),
        (["--url", URL, "--events", "comment_created"], "only acts on"),
        (["--url", URL, "--name", "  "], "--name"),
    ],
)
def test_bad_options_are_exit_2_and_send_nothing(
    jira: JiraDouble, args: list[str], message: str,
) -> None:
    result = _run(*args)
    assert result.exit_code == 2, _shown(result)
    assert message in result.stderr
    assert jira.requests == []


def test_http_is_accepted_when_asked_for(jira: JiraDouble) -> None:
    result = _run("--url", "http://127.0.0.1:8080/webhooks/jira", "--allow-http")
    assert result.exit_code == 0, _shown(result)
    assert jira.webhooks()[0]["url"] == "http://127.0.0.1:8080/webhooks/jira"


def test_missing_secret_or_jira_config_is_exit_2(
    jira: JiraDouble, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JITGATE_JIRA_WEBHOOK_SECRET")
    result = _run("--url", URL)
    assert result.exit_code == 2
    assert "JITGATE_JIRA_WEBHOOK_SECRET" in result.stderr

    monkeypatch.setenv("JITGATE_JIRA_WEBHOOK_SECRET", SECRET)
    monkeypatch.delenv("JITGATE_JIRA_TOKEN")
    result = _run("--url", URL)
    assert result.exit_code == 2
    assert "JITGATE_JIRA_TOKEN" in result.stderr
    assert jira.requests == []


def test_the_secret_generated_by_up_is_used_when_none_is_configured(
    jira: JiraDouble, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "jira-webhook-secret").write_text("generated-by-up-0123456789\n", encoding="utf-8")
    monkeypatch.setenv("JITGATE_DATA_DIR", str(data))
    monkeypatch.delenv("JITGATE_JIRA_WEBHOOK_SECRET")
    result = _run("--url", URL)
    assert result.exit_code == 0, _shown(result)
    assert "generated-by-up-0123456789" not in _shown(result)
    assert jira.webhook_secret(1) == "generated-by-up-0123456789"


def test_an_empty_jql_registers_for_every_issue(jira: JiraDouble) -> None:
    result = _run("--url", URL, "--jql", "")
    assert result.exit_code == 0, _shown(result)
    assert "filter: (all issues)" in result.output
    assert jira.webhooks()[0]["filters"] == {"issue-related-events-section": ""}
