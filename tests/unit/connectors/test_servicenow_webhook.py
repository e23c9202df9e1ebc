"""The ServiceNow webhook contract: signature verification and parsing (formats.md §2.1,
§2.2, §2.6 S1-S3; issue 3). Pure, no I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from connectors.jira.webhook import WebhookParseError as JiraWebhookParseError
from connectors.servicenow.webhook import (
    ServiceNowEvent,
    WebhookParseError,
    parse_servicenow_webhook,
    servicenow_mac,
    verify_servicenow,
)
from worker.doubles.servicenow import sign_servicenow

SECRET = "7d0c5e1f9a3b48c2-shared"  # the text in x_jitgate.webhook_secret and JITGATE_*
KEYS = (SECRET.encode(),)
NOW = 1767000000
RITM = "9c1f0d6e2b7a4c3d8e5f6a7b8c9d0e12"
USER = "68160000aaaabbbbccccddddeeeeffff"
CAT = "b7d00000111122223333444455556666"
CHG = "1e770000aaaa1111bbbb2222cccc3390"
APPROVAL = "ab120000cdef3456abcd7890ef012345"

S1: dict[str, Any] = {
    "event": "record.updated",
    "table": "sc_req_item",
    "sys_id": RITM,
    "sys_mod_count": 7,
    "sys_updated_on": "2026-01-15 09:12:44",
    "sys_updated_by": "jane.approver",
    "changed": ["approval", "stage"],
    "record": {
        "number": "RITM0012345",
        "state": "1",
        "stage": "request_approved",
        "approval": "approved",
        "active": "true",
        "cat_item": {"value": CAT, "display_value": "Prod DB read access"},
        "requested_for": {"value": USER, "display_value": "Sam User",
                          "user_name": "sam.user", "email": "sam@acme.example"},
        "opened_by": {"value": USER},
        "request": {"value": "a4c20000a4c20000a4c20000a4c20000", "display_value": "REQ0010001"},
    },
    "variables": {"duration_hours": "4", "target_system": "prod-db-01"},
    "approvals": [
        {"sys_id": APPROVAL, "approver": {"value": "4f0e0000", "display_value": "Jane Approver"},
         "state": "approved", "sys_updated_on": "2026-01-15 09:12:40"}
    ],
}
S2: dict[str, Any] = {
    "event": "record.updated",
    "table": "sc_req_item",
    "sys_id": RITM,
    "sys_mod_count": 12,
    "sys_updated_on": "2026-01-15 13:30:02",
    "changed": ["state", "stage", "active"],
    "record": {"number": "RITM0012345", "state": "3", "stage": "complete",
               "approval": "approved", "active": "false", "closed_at": "2026-01-15 13:30:02",
               "requested_for": {"value": USER}},
}
S3: dict[str, Any] = {
    "event": "record.updated",
    "table": "change_request",
    "sys_id": CHG,
    "sys_mod_count": "21",  # getValue() yields strings
    "sys_updated_on": "2026-02-02 17:05:10",
    "record": {"number": "CHG0030999", "type": "normal", "state": "-2", "approval": "approved",
               "start_date": "2026-02-03 01:00:00", "end_date": "2026-02-03 03:00:00",
               "requested_by": USER},
}
APPROVAL_ROW: dict[str, Any] = {
    "event": "record.updated",
    "table": "sysapproval_approver",
    "sys_id": APPROVAL,
    "sys_mod_count": 2,
    "sys_updated_on": "2026-01-15 09:12:40",
    "record": {
        "approver": {"value": "4f0e0000", "display_value": "Jane Approver"},
        "state": "approved",
        "sysapproval": {"value": RITM, "display_value": "RITM0012345"},
        "document_id": RITM,
        "source_table": "sc_req_item",
    },
}


# ---------------------------------------------------------------------- the business rule


def _generate_mac(key_b64: str, data: str) -> str:
    """ServiceNow's ``CertificateEncryption.generateMac(key, "HmacSHA256", data)``:
    Base64-encoded key in, Base64-encoded MAC out (formats.md §2.1)."""
    mac = hmac.new(base64.b64decode(key_b64), data.encode("utf-8"), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def _business_rule(payload: dict[str, Any], secret: str, ts: int) -> tuple[bytes, dict[str, str]]:
    """What business_rule.js does: JSON.stringify, ASCII-escape, then
    ``generateMac(GlideStringUtil.base64Encode(secret), "HmacSHA256", ts + "." + text)``."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=True)
    key_b64 = base64.b64encode(secret.encode("utf-8")).decode()
    headers = {
        "Content-Type": "application/json",
        "X-Jitgate-Event-Id": f"{payload['table']}:{payload['sys_id']}:{payload['sys_mod_count']}",
        "X-Jitgate-Timestamp": str(ts),
        "X-Jitgate-Signature": "v1=" + _generate_mac(key_b64, f"{ts}.{text}"),
    }
    return text.encode("utf-8"), headers


def _raw(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


# ---------------------------------------------------------------------- signature


def test_mac_computed_like_the_business_rule_verifies() -> None:
    payload = json.loads(json.dumps(S1))
    payload["record"]["short_description"] = "Zugriff für Jürgen ✓ 🔑"  # non-ASCII, astral
    body, headers = _business_rule(payload, SECRET, NOW)
    assert body.isascii()
    assert verify_servicenow(body, headers, KEYS, now=NOW) is None
    # Our helpers agree with the emulation, byte for byte.
    assert headers["X-Jitgate-Signature"] == "v1=" + servicenow_mac(KEYS[0], str(NOW), body)
    assert sign_servicenow(SECRET, body, NOW) == headers
    assert json.loads(body)["record"]["short_description"].endswith("🔑")


def test_key_is_the_secret_text_not_its_base64_form() -> None:
    # Storing the Base64 form in the property (and encoding it again) must not verify.
    body = _raw(S1)
    double_encoded = base64.b64encode(SECRET.encode()).decode()
    _, headers = _business_rule(S1, double_encoded, NOW)
    headers["X-Jitgate-Signature"] = "v1=" + _generate_mac(
        base64.b64encode(double_encoded.encode()).decode(), f"{NOW}.{body.decode()}"
    )
    assert verify_servicenow(body, headers, KEYS, now=NOW) == "invalid signature"


def test_previous_secret_verifies_during_rotation() -> None:
    body, headers = _business_rule(S1, "old-secret", NOW)
    assert verify_servicenow(body, headers, (b"new-secret", b"old-secret"), now=NOW) is None
    assert verify_servicenow(body, headers, (b"new-secret",), now=NOW) == "invalid signature"


@pytest.mark.parametrize("skew", [-300, 0, 299, 300])
def test_timestamp_within_tolerance(skew: int) -> None:
    body, headers = _business_rule(S1, SECRET, NOW)
    assert verify_servicenow(body, headers, KEYS, now=NOW + skew) is None


@pytest.mark.parametrize("skew", [-301, 301, 86400])
def test_stale_timestamp_is_rejected(skew: int) -> None:
    body, headers = _business_rule(S1, SECRET, NOW)
    assert verify_servicenow(body, headers, KEYS, now=NOW + skew) == "stale X-Jitgate-Timestamp"
    assert verify_servicenow(body, headers, KEYS, now=NOW + skew, tolerance=10**6) is None


def _tamper(headers: dict[str, str], **changes: str | None) -> dict[str, str]:
    out = dict(headers)
    for name, value in changes.items():
        key = name.replace("_", "-")
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def test_rejection_reasons() -> None:
    body, good = _business_rule(S1, SECRET, NOW)
    mac = good["X-Jitgate-Signature"].removeprefix("v1=")
    hex_mac = base64.b64decode(mac).hex()
    cases: list[tuple[dict[str, str], bytes, str]] = [
        (_tamper(good, X_Jitgate_Signature=None), body, "missing X-Jitgate-Signature"),
        (_tamper(good, X_Jitgate_Signature=""), body, "missing X-Jitgate-Signature"),
        (_tamper(good, X_Jitgate_Timestamp=None), body, "missing X-Jitgate-Timestamp"),
        (_tamper(good, X_Jitgate_Timestamp="2026-01-15T09:00:00Z"), body,
         "invalid X-Jitgate-Timestamp (epoch seconds expected)"),
        # Milliseconds (a common slip) are not seconds.
        (_tamper(good, X_Jitgate_Timestamp=str(NOW * 1000)), body,
         "invalid X-Jitgate-Timestamp (epoch seconds expected)"),
        (_tamper(good, X_Jitgate_Timestamp=str(NOW - 3600)), body, "stale X-Jitgate-Timestamp"),
        (_tamper(good, X_Jitgate_Signature="v1=" + hex_mac), body,
         "signature is hex-encoded; v1 must be base64"),
        (_tamper(good, X_Jitgate_Signature="sha256=" + hex_mac), body,
         "unsupported signature version (v1=<base64> expected)"),
        (_tamper(good, X_Jitgate_Signature=mac), body,
         "unsupported signature version (v1=<base64> expected)"),
        (_tamper(good, X_Jitgate_Signature="v1=not*base64"), body, "signature is not base64"),
        (_tamper(good, X_Jitgate_Signature="v1=" + mac[:20] + "=="), body,
         "signature has the wrong length"),
        (good, body + b" ", "invalid signature"),
        (good, body.replace(b'"approved"', b'"rejected"', 1), "invalid signature"),
        # The timestamp is signed: moving it forward (a replay) breaks the MAC.
        (_tamper(good, X_Jitgate_Timestamp=str(NOW + 1)), body, "invalid signature"),
    ]
    for headers, raw, reason in cases:
        assert verify_servicenow(raw, headers, KEYS, now=NOW) == reason, reason
    wrong_secret = _business_rule(S1, "not-the-secret", NOW)[1]
    assert verify_servicenow(body, wrong_secret, KEYS, now=NOW) == "invalid signature"
    assert verify_servicenow(body, good, (), now=NOW) == "no webhook secret is configured"
    assert verify_servicenow(body, good, (b"",), now=NOW) == "no webhook secret is configured"


def test_header_lookup_is_case_insensitive() -> None:
    body, headers = _business_rule(S1, SECRET, NOW)
    lower = {k.lower(): v for k, v in headers.items()}
    upper = {k.upper(): f" {v} " for k, v in headers.items()}
    assert verify_servicenow(body, lower, KEYS, now=NOW) is None
    assert verify_servicenow(body, upper, KEYS, now=NOW) is None


def test_reasons_never_echo_what_was_sent() -> None:
    body, headers = _business_rule(S1, SECRET, NOW)
    probe = "v1=PROBE-sekrit"
    reason = verify_servicenow(body, _tamper(headers, X_Jitgate_Signature=probe), KEYS, now=NOW)
    assert reason is not None and "PROBE" not in reason and "sekrit" not in reason


# ---------------------------------------------------------------------- basic auth


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "application/json"}


BASIC = ("svc.servicenow", b"basic-pass-31f0")


def test_basic_auth_alternative() -> None:
    body = _raw(S1)
    ok = _basic("svc.servicenow", "basic-pass-31f0")
    assert verify_servicenow(body, ok, KEYS, now=NOW, basic_auth=BASIC) is None
    lower = {"authorization": ok["Authorization"].replace("Basic", "basic")}
    assert verify_servicenow(body, lower, KEYS, now=NOW, basic_auth=BASIC) is None
    # Works without any HMAC secret configured too.
    assert verify_servicenow(body, ok, (), now=NOW, basic_auth=BASIC) is None
    for headers in (
        _basic("svc.servicenow", "wrong"),
        _basic("someone", "basic-pass-31f0"),
        _basic("svc.servicenow", ""),
        {"Authorization": "Basic !!!"},
        {"Authorization": "Bearer abc"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
    ):
        assert verify_servicenow(body, headers, KEYS, now=NOW, basic_auth=BASIC) == (
            "invalid basic credentials"
        )
    assert verify_servicenow(body, {}, KEYS, now=NOW, basic_auth=BASIC) == (
        "missing X-Jitgate-Signature or Authorization"
    )


def test_basic_auth_only_when_configured_and_never_overrides_a_bad_signature() -> None:
    body, headers = _business_rule(S1, "not-the-secret", NOW)
    ok = _basic("svc.servicenow", "basic-pass-31f0")
    assert verify_servicenow(body, ok, KEYS, now=NOW) == "missing X-Jitgate-Signature"
    both = {**headers, **ok}
    assert verify_servicenow(body, both, KEYS, now=NOW, basic_auth=BASIC) == "invalid signature"
    assert verify_servicenow(body, ok, KEYS, now=NOW, basic_auth=("", b"")) == (
        "basic auth is not configured"
    )


# ---------------------------------------------------------------------- parsing


def test_ritm_approved_s1() -> None:
    body, headers = _business_rule(S1, SECRET, NOW)
    event = parse_servicenow_webhook(body, headers["X-Jitgate-Event-Id"])
    assert isinstance(event, ServiceNowEvent)
    assert (event.table, event.sys_id, event.ticket_id) == (
        "sc_req_item", RITM, f"sc_req_item/{RITM}",
    )
    assert event.number == "RITM0012345"
    assert event.sys_mod_count == 7 and event.ticket_version == 7
    assert event.updated_at == datetime(2026, 1, 15, 9, 12, 44, tzinfo=UTC)
    assert event.event_id == f"sc_req_item:{RITM}:7"
    assert event.cat_item == CAT
    assert (event.state, event.approval) == ("1", "approved")
    assert event.changed == ("approval", "stage")
    assert not event.is_approval_row


def test_ritm_closed_s2_and_change_s3() -> None:
    closed = parse_servicenow_webhook(_raw(S2), f"sc_req_item:{RITM}:12")
    assert closed.event_id == f"sc_req_item:{RITM}:12"
    assert closed.state == "3" and closed.cat_item is None
    change = parse_servicenow_webhook(_raw(S3), f"change_request:{CHG}:21")
    assert change.ticket_id == f"change_request/{CHG}"
    assert change.sys_mod_count == 21 and change.event_id == f"change_request:{CHG}:21"
    assert change.number == "CHG0030999" and change.cat_item is None


def test_raw_string_references_are_accepted() -> None:
    payload = json.loads(json.dumps(S1))
    payload["record"]["cat_item"] = CAT
    payload["record"]["requested_for"] = USER
    assert parse_servicenow_webhook(_raw(payload), None).cat_item == CAT


def test_approval_row_maps_to_the_approved_record() -> None:
    event = parse_servicenow_webhook(_raw(APPROVAL_ROW), f"sysapproval_approver:{APPROVAL}:2")
    assert event.is_approval_row
    assert (event.table, event.sys_id, event.ticket_id) == (
        "sc_req_item", RITM, f"sc_req_item/{RITM}",
    )
    assert (event.source_table, event.source_sys_id) == ("sysapproval_approver", APPROVAL)
    # Dedupe on the row's own update; its count says nothing about the item's version.
    assert event.event_id == f"sysapproval_approver:{APPROVAL}:2"
    assert event.ticket_version is None
    assert event.number == "RITM0012345"
    assert event.state == "approved" and event.approval is None


def test_approval_row_by_document_id() -> None:
    payload = json.loads(json.dumps(APPROVAL_ROW))
    payload["record"]["sysapproval"] = ""
    payload["record"]["document_id"] = CHG
    payload["record"]["source_table"] = "change_request"
    event = parse_servicenow_webhook(_raw(payload), None)
    assert event.ticket_id == f"change_request/{CHG}"
    assert event.number is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sysapproval": "", "document_id": ""}, "record.sysapproval"),
        ({"sysapproval": "RITM0012345", "document_id": ""}, "record.sysapproval"),
        ({"source_table": ""}, "record.source_table"),
        ({"source_table": "sc_request"}, "record.source_table"),
    ],
)
def test_approval_row_without_a_usable_record_is_422(change: dict[str, str], field: str) -> None:
    payload = json.loads(json.dumps(APPROVAL_ROW))
    payload["record"].update(change)
    with pytest.raises(WebhookParseError) as info:
        parse_servicenow_webhook(_raw(payload), None)
    assert info.value.status == 422
    assert info.value.reason.startswith(field)


@pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe", b"[1, 2]", b'"text"', b"", b"null"])
def test_malformed_body_is_400(raw: bytes) -> None:
    with pytest.raises(WebhookParseError) as info:
        parse_servicenow_webhook(raw, None)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"table": None}, "table"),
        ({"table": "incident"}, "table"),
        ({"sys_id": None}, "sys_id"),
        ({"sys_id": "RITM0012345"}, "sys_id"),
        ({"sys_id": RITM.upper()}, "sys_id"),
        ({"sys_mod_count": None}, "sys_mod_count"),
        ({"sys_mod_count": -1}, "sys_mod_count"),
        ({"sys_mod_count": True}, "sys_mod_count"),
        ({"sys_mod_count": "seven"}, "sys_mod_count"),
        ({"sys_updated_on": "yesterday"}, "sys_updated_on"),
        ({"record": None}, "record"),
        ({"record": "sekrit-value"}, "record"),
        ({"changed": "state"}, "changed"),
    ],
)
def test_schema_problems_are_422_and_name_the_field(change: dict[str, Any], field: str) -> None:
    payload = json.loads(json.dumps(S1))
    for key, value in change.items():
        if value is None:
            del payload[key]
        else:
            payload[key] = value
    with pytest.raises(WebhookParseError) as info:
        parse_servicenow_webhook(_raw(payload), None)
    assert info.value.status == 422
    assert info.value.reason.startswith(field)
    assert "sekrit" not in info.value.reason and "incident" not in info.value.reason


def test_bad_cat_item_is_422() -> None:
    payload = json.loads(json.dumps(S1))
    payload["record"]["cat_item"] = {"value": "Prod DB read access"}
    with pytest.raises(WebhookParseError) as info:
        parse_servicenow_webhook(_raw(payload), None)
    assert (info.value.status, info.value.reason) == (422, "record.cat_item: not a sys_id")


@pytest.mark.parametrize(
    "header",
    [
        f"sc_req_item:{RITM}:8",  # count disagrees
        f"change_request:{RITM}:7",  # table disagrees
        f"sc_req_item:{CHG}:7",  # sys_id disagrees
        f"sc_req_item:{RITM}",
        f"sc_req_item:{RITM}:7:extra",
        f"sc_req_item:{RITM}:x",
        "garbage",
        f"sc_req_item:{RITM}:{'7' * 300}",
    ],
)
def test_event_id_header_must_match_the_body(header: str) -> None:
    with pytest.raises(WebhookParseError) as info:
        parse_servicenow_webhook(_raw(S1), header)
    assert (info.value.status, info.value.reason) == (
        422, "X-Jitgate-Event-Id does not match the body",
    )


def test_event_id_header_is_optional() -> None:
    for header in (None, "", "  "):
        assert parse_servicenow_webhook(_raw(S1), header).event_id == f"sc_req_item:{RITM}:7"
    # String counts from getValue() compare as numbers.
    assert parse_servicenow_webhook(_raw(S3), f"change_request:{CHG}:21").sys_mod_count == 21


def test_event_ids_dedupe_redeliveries_and_order_updates() -> None:
    first = parse_servicenow_webhook(_raw(S1), None)
    again = parse_servicenow_webhook(json.dumps(S1, indent=2).encode(), None)
    later = parse_servicenow_webhook(_raw(S2), None)
    row = parse_servicenow_webhook(_raw(APPROVAL_ROW), None)
    assert first.event_id == again.event_id
    assert len({first.event_id, later.event_id, row.event_id}) == 3
    assert first.ticket_id == later.ticket_id == row.ticket_id
    assert later.ticket_version is not None and first.ticket_version is not None
    assert later.ticket_version > first.ticket_version


def test_iso_datetime_with_offset_is_normalized_to_utc() -> None:
    payload = json.loads(json.dumps(S1))
    payload["sys_updated_on"] = "2026-01-15T10:12:44+01:00"
    event = parse_servicenow_webhook(_raw(payload), None)
    assert event.updated_at == datetime(2026, 1, 15, 9, 12, 44, tzinfo=UTC)


def test_unknown_keys_are_ignored_and_event_is_frozen() -> None:
    payload = json.loads(json.dumps(S1))
    payload["x_custom"] = {"anything": [1, 2]}
    event = parse_servicenow_webhook(_raw(payload), None)
    with pytest.raises(ValueError, match="frozen"):
        event.sys_id = "1"  # type: ignore[misc]


def test_parse_error_is_the_jira_one() -> None:
    # One error type for the listener to map to 400/422, whatever the source.
    assert WebhookParseError is JiraWebhookParseError
