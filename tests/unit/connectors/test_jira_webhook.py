"""Parsing of Jira webhook bodies (formats.md §1.5, §1.6, §3: J1-J4). Pure, no I/O."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from connectors.jira.webhook import JiraEvent, WebhookParseError, parse_jira_webhook

CLOUD_APPROVER = {
    "self": "https://acme.atlassian.net/rest/api/2/user?accountId=712020:aaaa-1111",
    "accountId": "712020:aaaa-1111",
    "accountType": "atlassian",
    "displayName": "Jane Approver",
    "active": True,
    "timeZone": "Europe/Berlin",
}

J1: dict[str, Any] = {
    "timestamp": 1767000000123,
    "webhookEvent": "jira:issue_updated",
    "issue_event_type_name": "issue_generic",
    "user": CLOUD_APPROVER,
    "issue": {
        "id": "10042",
        "key": "ACC-17",
        "self": "https://acme.atlassian.net/rest/api/2/issue/10042",
        "fields": {
            "status": {
                "id": "10105",
                "name": "Approved",
                "statusCategory": {"id": 4, "key": "indeterminate", "name": "In Progress"},
            },
            "issuetype": {"id": "10011", "name": "Access Request", "subtask": False},
            "project": {"id": "10000", "key": "ACC", "projectTypeKey": "service_desk"},
            "reporter": {"accountId": "5b10ac8d82e05b22cc7d4ef5", "displayName": "Sam User"},
            "assignee": None,
            "updated": "2026-01-15T10:12:44.120+0100",
            "customfield_10050": {"id": "10201", "value": "prod-db-01"},
            "customfield_10051": 4,
        },
    },
    "changelog": {
        "id": "55501",
        "items": [
            {
                "field": "status",
                "fieldtype": "jira",
                "fieldId": "status",
                "from": "10104",
                "fromString": "Waiting for approval",
                "to": "10105",
                "toString": "Approved",
            }
        ],
    },
}

J2: dict[str, Any] = {
    "timestamp": 1767000500456,
    "webhookEvent": "jira:issue_updated",
    "issue_event_type_name": "issue_updated",
    "user": {"accountId": "712020:bbbb-2222", "accountType": "atlassian", "displayName": "Ops Bot"},
    "issue": {
        "id": "10042",
        "key": "ACC-17",
        "self": "https://acme.atlassian.net/rest/api/2/issue/10042",
        "fields": {
            "status": {
                "id": "10105", "name": "Approved", "statusCategory": {"key": "indeterminate"}
            }
        },
    },
    "changelog": {
        "id": "55502",
        "items": [
            {"field": "labels", "fieldtype": "jira", "fieldId": "labels",
             "from": None, "fromString": "", "to": None, "toString": "db prod"},
            {"field": "Target system", "fieldtype": "custom", "fieldId": "customfield_10050",
             "from": "10201", "fromString": "prod-db-01", "to": "10202", "toString": "prod-db-02"},
        ],
    },
}

J3_DC: dict[str, Any] = {
    "timestamp": 1767003600000,
    "webhookEvent": "jira:issue_updated",
    "issue_event_type_name": "issue_resolved",
    "user": {
        "self": "https://jira.acme.internal/rest/api/2/user?username=jdoe",
        "name": "jdoe",
        "key": "JIRAUSER10100",
        "emailAddress": "jdoe@acme.example",
        "displayName": "John Doe",
        "active": True,
        "timeZone": "America/New_York",
    },
    "issue": {
        "id": "20411",
        "key": "OPS-881",
        "self": "https://jira.acme.internal/rest/api/2/issue/20411",
        "fields": {
            "status": {"id": "10001", "name": "Done", "statusCategory": {"id": 3, "key": "done"}},
            "resolution": {"id": "10000", "name": "Done"},
            "reporter": {"name": "sam", "key": "JIRAUSER10007"},
        },
    },
    "changelog": {
        "id": "998877",
        "items": [
            {"field": "resolution", "fieldtype": "jira", "from": None, "fromString": None,
             "to": "10000", "toString": "Done"},
            {"field": "status", "fieldtype": "jira", "from": "10105", "fromString": "Approved",
             "to": "10001", "toString": "Done"},
        ],
    },
}

J4_JSM: dict[str, Any] = {
    "timestamp": 1767001000789,
    "webhookEvent": "jira:issue_updated",
    "issue_event_type_name": "issue_generic",
    "user": {
        "accountId": "qm:1a2b:5ad6", "accountType": "customer", "displayName": "Fred Approver"
    },
    "issue": {
        "id": "10077",
        "key": "ITSM-204",
        "self": "https://acme.atlassian.net/rest/api/2/issue/10077",
        "fields": {
            "status": {"id": "10008", "name": "In Progress",
                       "statusCategory": {"key": "indeterminate"}},
            "project": {"key": "ITSM", "projectTypeKey": "service_desk"},
            "customfield_10010": {"requestType": {"id": "25", "name": "Request access"}},
            "customfield_10027": [
                {"id": "3", "name": "Manager approval", "finalDecision": "approved",
                 "canAnswerApproval": False,
                 "approvers": [{"approver": {"accountId": "qm:1a2b:5ad6",
                                             "displayName": "Fred Approver"},
                                "approverDecision": "approved"}],
                 "completedDate": {"epochMillis": 1767001000000,
                                   "iso8601": "2026-01-15T10:16:40+0100"}}
            ],
        },
    },
    "changelog": {
        "id": "55610",
        "items": [
            {"field": "status", "fieldtype": "jira", "fieldId": "status", "from": "10006",
             "fromString": "Waiting for approval", "to": "10008", "toString": "In Progress"}
        ],
    },
}


def _raw(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def test_cloud_status_change_j1() -> None:
    event = parse_jira_webhook(_raw(J1))
    assert event.webhook_event == "jira:issue_updated"
    assert event.is_issue_event and not event.is_deleted
    assert (event.issue_id, event.issue_key) == ("10042", "ACC-17")
    assert event.project_key == "ACC"
    assert event.issue_type == "Access Request"
    assert event.changelog_id == "55501"
    assert event.status_changes == (("10104", "10105"),)
    assert event.status_id == "10105"
    assert event.status_category == "indeterminate"
    assert event.timestamp == datetime(2025, 12, 29, 9, 20, 0, 123000, tzinfo=UTC)
    assert event.actor is not None and event.actor.source_id == "712020:aaaa-1111"
    assert event.actor.email is None  # hidden by Cloud privacy settings


def test_cloud_unrelated_edit_j2_has_no_status_change() -> None:
    event = parse_jira_webhook(_raw(J2))
    assert event.status_changes == ()
    assert event.changelog_id == "55502"
    assert event.project_key is None and event.issue_type is None


def test_data_center_j3_without_field_id_and_with_name_key_users() -> None:
    event = parse_jira_webhook(_raw(J3_DC))
    # fieldId absent: the status item is found by ``field``, the resolution item is not.
    assert event.status_changes == (("10105", "10001"),)
    assert event.status_category == "done"
    assert event.actor is not None
    assert event.actor.source_id == "JIRAUSER10100"
    assert event.actor.name == "jdoe"
    assert event.actor.email == "jdoe@acme.example"
    assert event.actor.matches("jdoe") and event.actor.matches("JDOE@acme.example")


def test_dc_custom_field_named_status_is_not_the_workflow_status() -> None:
    payload = json.loads(json.dumps(J3_DC))
    payload["changelog"]["items"] = [
        {"field": "status", "fieldtype": "custom", "from": None, "to": "x", "toString": "x"}
    ]
    assert parse_jira_webhook(_raw(payload)).status_changes == ()


def test_jsm_approval_j4() -> None:
    event = parse_jira_webhook(_raw(J4_JSM))
    assert event.issue_id == "10077"
    assert event.project_key == "ITSM"
    assert event.issue_type is None
    assert event.status_changes == (("10006", "10008"),)
    assert event.actor is not None and event.actor.source_id == "qm:1a2b:5ad6"


def test_numeric_ids_and_string_timestamp_are_accepted() -> None:
    # Automation's "Jira format" and some fixtures send numbers / a string timestamp.
    payload = json.loads(json.dumps(J1))
    payload["issue"]["id"] = 10042
    payload["changelog"]["id"] = 55501
    payload["timestamp"] = "1767000000123"
    event = parse_jira_webhook(_raw(payload))
    assert (event.issue_id, event.changelog_id) == ("10042", "55501")
    assert event.timestamp is not None


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b"[1, 2]", b'"text"', b"", b"null"])
def test_malformed_body_is_400(raw: bytes) -> None:
    with pytest.raises(WebhookParseError) as info:
        parse_jira_webhook(raw)
    assert info.value.status == 400


def test_issue_event_without_issue_id_is_422() -> None:
    payload = json.loads(json.dumps(J1))
    del payload["issue"]["id"]
    with pytest.raises(WebhookParseError) as info:
        parse_jira_webhook(_raw(payload))
    assert info.value.status == 422
    assert "issue.id" in info.value.reason


def test_schema_problem_names_the_field_without_echoing_input() -> None:
    payload = json.loads(json.dumps(J1))
    payload["changelog"]["items"] = "sekrit-value"
    with pytest.raises(WebhookParseError) as info:
        parse_jira_webhook(_raw(payload))
    assert info.value.status == 422
    assert info.value.reason.startswith("changelog.items")
    assert "sekrit" not in info.value.reason


def test_missing_webhook_event_is_422() -> None:
    payload = json.loads(json.dumps(J1))
    del payload["webhookEvent"]
    with pytest.raises(WebhookParseError) as info:
        parse_jira_webhook(_raw(payload))
    assert info.value.status == 422
    assert "webhookEvent" in info.value.reason


def test_non_issue_events_parse() -> None:
    comment = {
        "timestamp": 1767000000000,
        "webhookEvent": "comment_created",
        "comment": {"id": "1", "body": "hi"},
        "issue": {"id": "10042", "key": "ACC-17", "fields": {}},
    }
    event = parse_jira_webhook(_raw(comment))
    assert not event.is_issue_event
    assert event.issue_id == "10042"
    sprint = {"timestamp": 1767000000000, "webhookEvent": "sprint_started", "sprint": {"id": 5}}
    event = parse_jira_webhook(_raw(sprint))
    assert event.issue_id is None and event.status_changes == ()
    assert not event.is_issue_event


def test_deleted_event() -> None:
    payload = {"timestamp": 1767000000000, "webhookEvent": "jira:issue_deleted",
               "issue": {"id": "10042", "key": "ACC-17", "fields": {}}}
    event = parse_jira_webhook(_raw(payload))
    assert event.is_issue_event and event.is_deleted


def test_dedupe_key_precedence() -> None:
    raw = _raw(J1)
    event = parse_jira_webhook(raw)
    by_header = event.dedupe_key("8a7c9f2e-1b3d-4c5e-9f60-123456789abc", raw)
    assert by_header == "jira:delivery:8a7c9f2e-1b3d-4c5e-9f60-123456789abc"
    # No (or a blank / unusable) header: issue id + changelog id, same across redeliveries.
    assert event.dedupe_key(None, raw) == "jira:change:10042:55501"
    assert event.dedupe_key("  ", raw) == "jira:change:10042:55501"
    assert event.dedupe_key("x" * 500, raw) == "jira:change:10042:55501"
    assert parse_jira_webhook(_raw(J3_DC)).dedupe_key(None, b"") == "jira:change:20411:998877"
    # No changelog: the body hash.
    created = {"timestamp": 1, "webhookEvent": "jira:issue_created",
               "issue": {"id": "10042", "key": "ACC-17", "fields": {}}}
    raw_created = _raw(created)
    key = parse_jira_webhook(raw_created).dedupe_key(None, raw_created)
    assert key == "jira:body:" + hashlib.sha256(raw_created).hexdigest()
    # Kinds cannot collide: each has its own prefix.
    assert len({by_header.split(":")[1], "change", key.split(":")[1]}) == 3


def test_null_containers_are_tolerated() -> None:
    payload = json.loads(json.dumps(J1))
    payload["issue"]["fields"] = None
    payload["changelog"]["items"] = None
    payload["matchedWebhookIds"] = None
    event = parse_jira_webhook(_raw(payload))
    assert event.issue_id == "10042" and event.status_changes == ()
    assert event.project_key is None and event.status_id is None


def test_absurd_timestamp_is_422() -> None:
    payload = json.loads(json.dumps(J1))
    payload["timestamp"] = 10**30
    with pytest.raises(WebhookParseError) as info:
        parse_jira_webhook(_raw(payload))
    assert info.value.status == 422


def test_event_is_frozen() -> None:
    event = parse_jira_webhook(_raw(J1))
    assert isinstance(event, JiraEvent)
    with pytest.raises(ValueError, match="frozen"):
        event.issue_id = "1"  # type: ignore[misc]
