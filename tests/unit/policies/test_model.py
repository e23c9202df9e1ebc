"""The policy model: durations, principal checks, status mapping and ticket matching.

Pure: no I/O. Tickets are built directly as ``TicketSnapshot`` objects.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from connectors.base import TicketRef, TicketSnapshot
from policies.model import RESERVED_PRINCIPALS, Policy, PolicyFile, TargetSpec, parse_duration

T0 = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)


def policy_dict(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "warehouse-read",
        "source": "jira",
        "match": {
            "project": "OPS",
            "issue_type": "Access Request",
            "requested": {"field": "customfield_10070", "equals": "warehouse-read"},
        },
        "approved_statuses": ["Approved"],
        "closed_statuses": ["Done", "10002"],
        "rejected_statuses": ["Rejected"],
        "approvers": {"users": ["acc-approver"]},
        "principal": {"from": "field", "field": "customfield_10071"},
        "grants": [{"target": "warehouse", "role": "analytics_ro"}],
        "duration": "8h",
        "max_duration": "24h",
    }
    body.update(overrides)
    return body


def make_policy(**overrides: Any) -> Policy:
    return Policy.model_validate(policy_dict(**overrides))


def snapshot(
    *,
    status: str = "10105",
    status_name: str | None = "Approved",
    state: str = "open",
    source: str = "jira",
    project: str | None = "OPS",
    issue_type: str | None = "Access Request",
    fields: dict[str, Any] | None = None,
) -> TicketSnapshot:
    return TicketSnapshot(
        ref=TicketRef(source=source, id="10042", key="OPS-12"),
        status=status,
        status_name=status_name,
        state=state,
        version=1,
        updated_at=T0,
        project=project,
        issue_type=issue_type,
        fields=fields or {},
    )


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("8h", timedelta(hours=8)),
        ("30m", timedelta(minutes=30)),
        ("2d", timedelta(days=2)),
        ("1w", timedelta(weeks=1)),
        ("90s", timedelta(seconds=90)),
        (" 8h ", timedelta(hours=8)),
        ("8 h", timedelta(hours=8)),
        ("012h", timedelta(hours=12)),
        (3600, timedelta(hours=1)),
        (1, timedelta(seconds=1)),
        (timedelta(minutes=5), timedelta(minutes=5)),
    ],
)
def test_parse_duration_accepts(value: Any, expected: timedelta) -> None:
    assert parse_duration(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        0,
        "0h",
        "0s",
        -1,
        -3600,
        "-1h",
        "8x",
        "8H",
        "8",
        "h",
        "",
        "1.5h",
        "8h30m",
        "eight hours",
        1.5,
        None,
        True,
        False,
        [8],
        {"hours": 8},
    ],
)
def test_parse_duration_rejects(value: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [timedelta(0), timedelta(hours=-1)])
def test_parse_duration_rejects_non_positive_timedelta(value: timedelta) -> None:
    with pytest.raises(ValueError, match="positive"):
        parse_duration(value)


def test_duration_field_serializes_as_seconds() -> None:
    dumped = make_policy(duration="8h").model_dump(mode="json", by_alias=True)
    assert dumped["duration"] == "28800s"
    assert dumped["max_duration"] == "86400s"


@pytest.mark.parametrize(
    ("duration", "max_duration", "ok"),
    [
        ("8h", "24h", True),
        ("24h", "24h", True),
        ("25h", "24h", False),
        ("2d", "1d", False),
        ("8h", None, True),
    ],
)
def test_duration_not_longer_than_max_duration(
    duration: str, max_duration: str | None, ok: bool
) -> None:
    if ok:
        policy = make_policy(duration=duration, max_duration=max_duration)
        assert policy.duration == parse_duration(duration)
    else:
        with pytest.raises(ValidationError, match="longer than max_duration"):
            make_policy(duration=duration, max_duration=max_duration)


def test_effective_duration() -> None:
    assert make_policy(duration="8h", max_duration="24h").effective_duration == timedelta(hours=8)
    assert make_policy(duration="8h", max_duration=None).effective_duration == timedelta(hours=8)
    # A policy built around validation (model_copy) is still capped by max_duration.
    widened = make_policy(duration="8h", max_duration="24h").model_copy(
        update={"duration": timedelta(hours=48)}
    )
    assert widened.effective_duration == timedelta(hours=24)


# --------------------------------------------------------------------------- principals

STRICT = TargetSpec(type="postgres", principal_pattern=r"^ctr_[a-z0-9_]{2,40}$")
DEFAULT = TargetSpec(type="postgres")
WITH_RESERVED = TargetSpec(type="postgres", reserved_principals=("ops_admin",))


@pytest.mark.parametrize(
    ("target", "principal", "problem"),
    [
        (STRICT, "ctr_bob", None),
        (STRICT, "ctr_bob_2", None),
        (DEFAULT, "bob", None),
        (DEFAULT, "ops_admin", None),
        # reserved names win over a pattern that would allow them
        (DEFAULT, "postgres", "reserved name"),
        (DEFAULT, "Postgres", "reserved name"),
        (DEFAULT, "root", "reserved name"),
        (DEFAULT, "public", "reserved name"),
        (DEFAULT, "jitgate", "reserved name"),
        (DEFAULT, "current_user", "reserved name"),
        (STRICT, "POSTGRES", "reserved name"),
        (WITH_RESERVED, "ops_admin", "reserved name"),
        (WITH_RESERVED, "OPS_ADMIN", "reserved name"),
        (DEFAULT, "pg_monitor", "reserved prefix"),
        (DEFAULT, "pg_read_all_data", "reserved prefix"),
        (DEFAULT, "PG_write_server_files", "reserved prefix"),
        # pattern
        (STRICT, "bob", "does not match"),
        (STRICT, "ctr_b", "does not match"),
        (STRICT, "ctr_Bob", "does not match"),
        (STRICT, "ctr_bob; DROP ROLE postgres", "does not match"),
        (STRICT, "ctr_bob\"; ALTER ROLE x SUPERUSER; --", "does not match"),
        (STRICT, "ctr_bob\n", "does not match"),
        (STRICT, " ctr_bob", "does not match"),
        (STRICT, "", "does not match"),
        (DEFAULT, "bob smith", "does not match"),
        (DEFAULT, "a", "does not match"),
        (DEFAULT, "1bob", "does not match"),
    ],
)
def test_principal_problem(target: TargetSpec, principal: str, problem: str | None) -> None:
    found = target.principal_problem(principal)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found
        assert repr(principal) in found


def test_reserved_principals_cover_the_dangerous_names() -> None:
    assert {"postgres", "root", "admin", "superuser", "public"} <= RESERVED_PRINCIPALS


def test_target_spec_rejects_a_bad_regex() -> None:
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        TargetSpec(type="postgres", principal_pattern="^ctr_[a-z")


def test_target_spec_needs_a_type() -> None:
    with pytest.raises(ValidationError):
        TargetSpec.model_validate({"dsn": "x"})
    with pytest.raises(ValidationError):
        TargetSpec(type="")


def test_target_spec_options_are_the_connector_keys() -> None:
    spec = TargetSpec.model_validate(
        {"type": "postgres", "principal_pattern": "^x_.+$", "dsn": "postgresql://h/db",
         "manage_login": True}
    )
    assert spec.options == {"dsn": "postgresql://h/db", "manage_login": True}
    assert TargetSpec(type="postgres").options == {}


# --------------------------------------------------------------------------- state mapping


@pytest.mark.parametrize(
    ("status", "status_name", "state", "expected"),
    [
        # by name, case-insensitive
        ("10105", "Approved", "open", "approved"),
        ("10105", "APPROVED", "open", "approved"),
        ("10105", "approved", "open", "approved"),
        ("x", "Done", "closed", "closed"),
        ("x", "done", "open", "closed"),
        ("x", "REJECTED", "closed", "rejected"),
        # by status id (the status itself names the list entry)
        ("10002", None, "open", "closed"),
        ("10002", "Renamed Status", "open", "closed"),
        ("Approved", None, "open", "approved"),
        ("approved", None, "open", "approved"),
        # no list matches: the source's coarse state, but never "approved" by itself
        ("x", "Waiting", "open", "open"),
        ("x", "Waiting", "approved", "open"),
        ("x", "Resolved", "closed", "closed"),
        ("x", "Declined", "rejected", "rejected"),
        ("x", None, "open", "open"),
        # deleted wins over everything
        ("10105", "Approved", "deleted", "deleted"),
    ],
)
def test_state_of(status: str, status_name: str | None, state: str, expected: str) -> None:
    policy = make_policy()
    assert policy.state_of(snapshot(status=status, status_name=status_name, state=state)) == (
        expected
    )


@pytest.mark.parametrize(
    ("approved", "closed", "rejected", "expected"),
    [
        (["S"], ["S"], ["S"], "rejected"),
        ([], ["S"], ["S"], "rejected"),
        (["S"], [], ["S"], "rejected"),
        (["S"], ["S"], [], "closed"),
        (["S"], [], [], "approved"),
    ],
)
def test_state_of_precedence(
    approved: list[str], closed: list[str], rejected: list[str], expected: str
) -> None:
    policy = make_policy(
        approved_statuses=approved or ["Other"],
        closed_statuses=closed,
        rejected_statuses=rejected,
    )
    assert policy.state_of(snapshot(status="1", status_name="S")) == expected


@pytest.mark.parametrize(
    ("status_id", "status_name", "expected"),
    [
        ("10105", "Approved", True),
        ("10105", None, False),
        ("approved", None, True),
        ("x", "aPPROVED", True),
        ("x", "Done", False),
    ],
)
def test_is_approved_status(status_id: str, status_name: str | None, expected: bool) -> None:
    assert make_policy().is_approved_status(status_id, status_name) is expected


# --------------------------------------------------------------------------- scope


@pytest.mark.parametrize(
    ("source", "project", "issue_type", "expected"),
    [
        ("jira", "OPS", "Access Request", True),
        ("jira", "ops", "access request", True),
        ("jira", "SEC", "Access Request", True),
        ("jira", "DEV", "Access Request", False),
        ("jira", "OPS", "Bug", False),
        ("servicenow", "OPS", "Access Request", False),
        # None means unknown and is not held against the ticket
        ("jira", None, None, True),
        ("jira", None, "Access Request", True),
        ("jira", "OPS", None, True),
        ("jira", None, "Bug", False),
        ("jira", "DEV", None, False),
    ],
)
def test_covers(source: str, project: str | None, issue_type: str | None, expected: bool) -> None:
    policy = make_policy(
        match={"project": ["OPS", "SEC"], "issue_type": "Access Request"},
    )
    assert policy.covers(source, project, issue_type) is expected


@pytest.mark.parametrize(
    ("project", "issue_type", "expected"),
    [
        ("OPS", "Access Request", True),
        ("ops", "ACCESS REQUEST", True),
        ("DEV", "Access Request", False),
        ("OPS", "Bug", False),
        # in_scope needs the values covers() tolerates as unknown
        (None, "Access Request", False),
        ("OPS", None, False),
    ],
)
def test_in_scope_jira(project: str | None, issue_type: str | None, expected: bool) -> None:
    policy = make_policy()
    assert policy.in_scope(snapshot(project=project, issue_type=issue_type)) is expected


def test_in_scope_checks_source() -> None:
    assert make_policy().in_scope(snapshot(source="jira")) is True
    assert make_policy().in_scope(snapshot(source="servicenow")) is False


def test_in_scope_without_match_takes_every_ticket_of_its_source() -> None:
    policy = make_policy(match={})
    assert policy.in_scope(snapshot(project=None, issue_type=None)) is True
    assert policy.in_scope(snapshot(project="ANY", issue_type="Bug")) is True
    assert policy.in_scope(snapshot(source="servicenow")) is False


SNOW_MATCH = {"table": "sc_req_item", "cat_item": ["a1b2c3", "Database access"]}


@pytest.mark.parametrize(
    ("project", "cat_item", "expected"),
    [
        ("sc_req_item", {"value": "a1b2c3", "display_value": "DB access"}, True),
        ("sc_req_item", {"value": "A1B2C3"}, True),
        ("sc_req_item", "a1b2c3", True),
        ("sc_req_item", {"name": "Database access"}, True),
        ("sc_req_item", [{"value": "a1b2c3"}], True),
        ("sc_req_item", {"value": "zzz"}, False),
        ("sc_req_item", None, False),
        ("sc_req_item", {"display_value": "a1b2c3"}, False),
        ("change_request", {"value": "a1b2c3"}, False),
        (None, {"value": "a1b2c3"}, False),
    ],
)
def test_in_scope_servicenow_table_and_cat_item(
    project: str | None, cat_item: Any, expected: bool
) -> None:
    policy = make_policy(source="servicenow", match=SNOW_MATCH)
    fields = {} if cat_item is None else {"cat_item": cat_item}
    ticket = snapshot(source="servicenow", project=project, issue_type=None, fields=fields)
    assert policy.in_scope(ticket) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("warehouse-read", True),
        ("WAREHOUSE-READ", True),
        ({"value": "warehouse-read"}, True),
        ({"self": "https://x/option/1", "value": "warehouse-read", "id": "10070"}, True),
        ({"id": "warehouse-read"}, True),
        ({"name": "warehouse-read"}, True),
        ({"key": "warehouse-read"}, True),
        ([{"value": "warehouse-read"}], True),
        (["warehouse-read"], True),
        (["warehouse-read", "warehouse-write"], False),
        ([], False),
        ({"value": "warehouse-write"}, False),
        ({"other": "warehouse-read"}, False),
        ({"value": None}, False),
        ("warehouse-write", False),
        ("warehouse-read-extra", False),
        ("", False),
        (None, False),
    ],
)
def test_requests_this(value: Any, expected: bool) -> None:
    policy = make_policy()
    fields = {} if value is None else {"customfield_10070": value}
    assert policy.requests_this(snapshot(fields=fields)) is expected


def test_requests_this_numeric_option() -> None:
    policy = make_policy(match={"requested": {"field": "cf", "equals": "42"}})
    assert policy.requests_this(snapshot(fields={"cf": 42})) is True
    assert policy.requests_this(snapshot(fields={"cf": {"id": 42}})) is True
    assert policy.requests_this(snapshot(fields={"cf": 43})) is False


def test_requests_this_without_requested_match() -> None:
    policy = make_policy(match={"project": "OPS"})
    assert policy.requests_this(snapshot(fields={})) is True


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("overrides", "loc", "fragment"),
    [
        ({"duraton": "8h"}, ("duraton",), "Extra inputs"),
        ({"approvers": {"users": ["a"], "min_approval": 2}}, ("approvers", "min_approval"),
         "Extra inputs"),
        ({"approvers": {}}, ("approvers",), "at least one approver"),
        ({"approvers": {"users": [], "groups": []}}, ("approvers",), "at least one approver"),
        ({"approvers": {"users": ["a"], "min_approvals": 0}}, ("approvers", "min_approvals"),
         "greater than or equal"),
        ({"approvers": {"users": ["a"], "min_approvals": 21}}, ("approvers", "min_approvals"),
         "less than or equal"),
        ({"principal": {"from": "field"}}, ("principal",), "needs 'field'"),
        ({"principal": {"from": "map"}}, ("principal",), "needs 'map'"),
        ({"principal": {"from": "ldap"}}, ("principal", "from"), "Input should be"),
        ({"grants": []}, ("grants",), "at least 1"),
        ({"grants": [{"target": "w", "role": "r\x00x"}]}, ("grants", 0, "role"), "printable"),
        ({"grants": [{"target": "w", "role": "r" * 64}]}, ("grants", 0, "role"), "at most 63"),
        ({"grants": [{"target": "", "role": "r"}]}, ("grants", 0, "target"), "at least 1"),
        ({"approved_statuses": []}, ("approved_statuses",), "at least 1"),
        ({"source": "gitlab"}, ("source",), "Input should be"),
        ({"name": "bad name"}, ("name",), "pattern"),
        ({"name": "-lead"}, ("name",), "pattern"),
        ({"duration": "8x"}, ("duration",), "expected a duration"),
        ({"duration": 0}, ("duration",), "positive"),
        ({"stale_after": True}, ("stale_after",), "expected a duration"),
        ({"match": {"projct": "OPS"}}, ("match", "projct"), "Extra inputs"),
        ({"match": {"requested": {"field": "cf"}}}, ("match", "requested", "equals"), "required"),
    ],
)
def test_policy_rejects(overrides: dict[str, Any], loc: tuple[Any, ...], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        make_policy(**overrides)
    errors = info.value.errors()
    assert any(e["loc"] == loc and fragment in e["msg"] for e in errors), errors


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("OPS", ("OPS",)),
        (10000, ("10000",)),
        (["OPS", "SEC"], ("OPS", "SEC")),
        (None, ()),
    ],
)
def test_str_lists_accept_a_scalar(value: Any, expected: tuple[str, ...]) -> None:
    assert make_policy(match={"project": value}).match.project == expected


def test_principal_rule_reads_from_alias() -> None:
    policy = make_policy(principal={"from": "map", "map": {"acc-1": "ctr_bob"}})
    assert policy.principal.from_ == "map"
    assert policy.model_dump(by_alias=True)["principal"]["from"] == "map"


def test_policy_is_frozen() -> None:
    policy = make_policy()
    with pytest.raises(ValidationError):
        policy.name = "other"  # type: ignore[misc]


def test_digest_is_stable_and_tracks_content() -> None:
    a = make_policy()
    b = make_policy()
    assert a.digest == b.digest
    assert a.digest.startswith("sha256:")
    assert len(a.digest) == len("sha256:") + 64
    assert make_policy(duration="9h").digest != a.digest
    assert make_policy(grants=[{"target": "warehouse", "role": "other"}]).digest != a.digest


def test_policy_file_schema() -> None:
    doc = PolicyFile.model_validate(
        {"version": 1, "targets": {"w": {"type": "postgres"}}, "policies": [policy_dict()]}
    )
    assert doc.targets["w"].type == "postgres"
    assert doc.policies[0].name == "warehouse-read"
    for bad in ({"version": 2}, {}, {"version": 1, "extra": True}):
        with pytest.raises(ValidationError):
            PolicyFile.model_validate(bad)


def test_policy_closed_states_override_the_source_mapping() -> None:
    """A ServiceNow policy may say which raw states close its table."""
    from connectors.base import TicketRef, TicketSnapshot
    from policies.model import Policy

    base = {
        "name": "snow", "source": "servicenow", "approved_statuses": ["approved"],
        "approvers": {"users": ["jane"]}, "principal": {"from": "requester_user_name"},
        "grants": [{"target": "t", "role": "r"}], "duration": "1h",
    }
    default = Policy.model_validate(base)
    custom = Policy.model_validate({**base, "closed_states": ["8"]})

    def snap(state: str, final: bool, source_state: str) -> TicketSnapshot:
        return TicketSnapshot(
            ref=TicketRef(source="servicenow", id="sc_req_item/x", key="RITM1"),
            status="approved", state=source_state, final=final, version=1,
            updated_at=datetime(2026, 1, 1, tzinfo=UTC), fields={"state": state},
        )

    assert default.state_of(snap("3", True, "closed")) == "closed"
    assert custom.state_of(snap("3", True, "closed")) == "approved"
    assert custom.state_of(snap("8", False, "approved")) == "closed"
    assert default.state_of(snap("8", False, "approved")) == "approved"
