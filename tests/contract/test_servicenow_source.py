"""ServiceNowSource against the ServiceNow Table API double, through the real ``pysnow``.

No mocks of the library: every call below is real HTTP on 127.0.0.1, so URL building,
sysparms, basic auth, paging and the error mapping are all exercised.
"""

from __future__ import annotations

import json
import pickle
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from connectors.base import Identity, SourceConnector, TicketRef
from connectors.errors import ConnectorError, PermanentError, TicketNotFound, TransientError
from connectors.servicenow import (
    ServiceNowSource,
    parse_servicenow_webhook,
    verify_servicenow,
)
from worker.doubles.servicenow import ServiceNowDouble, servicenow_delivery

PASSWORD = "pw-8c1e55d0-very-secret"
T0 = datetime(2026, 1, 15, 9, 0, 0, tzinfo=UTC)


class Clock:
    """The double's clock, moved by hand so sys_updated_on values are predictable."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sn(clock: Clock) -> Iterator[ServiceNowDouble]:
    with ServiceNowDouble(password=PASSWORD, clock=clock) as double:
        yield double


@pytest.fixture
def people(sn: ServiceNowDouble) -> dict[str, str]:
    return {
        "sam": sn.add_user("sam.user", "Sam User", "sam@example.com"),
        "jane": sn.add_user("jane.approver", "Jane Approver", "jane@example.com",
                            groups=["db-approvers", "cab"]),
        "fred": sn.add_user("fred.approver", "Fred Approver"),
    }


def _source(
    sn: ServiceNowDouble, *, password: str = PASSWORD, timeout: float = 2.0, page_size: int = 200
) -> ServiceNowSource:
    return ServiceNowSource(
        url=sn.url, user=sn.user, password=password, timeout=timeout, page_size=page_size
    )


def _assert_no_secret(exc: BaseException, secret: str = PASSWORD) -> None:
    rendered = "".join(traceback.format_exception(exc))
    assert secret not in str(exc)
    assert secret not in repr(exc)
    assert secret not in rendered
    assert "Authorization" not in rendered
    assert exc.__cause__ is None and exc.__context__ is None


def _ritm(sn: ServiceNowDouble, people: dict[str, str], **kwargs: str) -> str:
    return sn.create_ritm(
        requested_for=people["sam"],
        cat_item_name="Prod DB read access",
        variables={"target_system": "prod-db-01", "duration_hours": "4"},
        **kwargs,
    )


def test_satisfies_protocol_and_does_no_io_on_construction() -> None:
    source = ServiceNowSource(url="http://127.0.0.1:9", user="u", password=PASSWORD)
    assert isinstance(source, SourceConnector)
    assert source.kind == "servicenow"
    assert PASSWORD not in repr(source)


def test_fetch_normalizes_requested_item(
    sn: ServiceNowDouble, people: dict[str, str], clock: Clock
) -> None:
    ritm = _ritm(sn, people)
    clock.advance(60)
    approved = sn.add_approval(ritm, people["jane"])
    pending = sn.add_approval(ritm, people["fred"])
    moot = [sn.add_approval(ritm, people["sam"], state=s)
            for s in ("cancelled", "not_required", "duplicate")]
    clock.advance(60)
    sn.set_approval(approved, "approved")
    sn.update("sc_req_item", ritm, approval="approved", stage="request_approved")
    body = sn.webhook("sc_req_item", ritm)
    event = parse_servicenow_webhook(json.dumps(body).encode(), None)
    sn.reset_requests()

    snap = _source(sn).fetch(event.ticket_id)

    assert snap.ref == TicketRef(
        source="servicenow",
        id=f"sc_req_item/{ritm}",
        key="RITM0010001",
        url=f"{sn.url}/nav_to.do?uri=sc_req_item.do?sys_id={ritm}",
    )
    assert snap.ref.uid == f"servicenow:sc_req_item/{ritm}"
    assert (snap.status, snap.status_name, snap.state, snap.final) == (
        "approved", "Approved", "approved", False,
    )
    assert snap.version == int(sn.record("sc_req_item", ritm)["sys_mod_count"]) == 1
    assert snap.updated_at == T0 + timedelta(seconds=120)  # raw UTC, not the display TZ
    assert snap.project == "sc_req_item" and snap.issue_type is None
    assert snap.window is None
    assert snap.summary == "Prod DB read access"
    assert snap.requester == Identity(
        source_id=people["sam"], name="sam.user", email="sam@example.com", display="Sam User"
    )
    got = {a.approval_id: (a.approver.source_id, a.decision, a.at) for a in snap.approvals}
    assert got == {
        approved: (people["jane"], "approved", T0 + timedelta(seconds=120)),
        pending: (people["fred"], "pending", T0 + timedelta(seconds=60)),
    }
    assert not set(moot) & set(got)
    jane = next(a.approver for a in snap.approvals if a.approval_id == approved)
    assert (jane.name, jane.email, jane.display) == (
        "jane.approver", "jane@example.com", "Jane Approver",
    )
    fred = next(a.approver for a in snap.approvals if a.approval_id == pending)
    assert fred.email is None  # empty in sys_user: not ""

    fields = snap.fields
    assert fields["state"] == "1" and fields["approval"] == "approved"
    assert fields["requested_for"] == people["sam"]  # references as their sys_id
    assert fields["cat_item"] == event.cat_item
    assert fields["cat_item_name"] == "Prod DB read access"
    assert fields["variables.target_system"] == "prod-db-01"
    assert fields["variables.duration_hours"] == "4"
    assert fields["sys_updated_on"] == "2026-01-15 09:02:00"
    assert all(isinstance(v, str) for v in fields.values())
    json.dumps(dict(fields))

    # Every query term was understood, and sysparms never leaked between requests:
    # only the record read asked for display values.
    assert sn.ignored_terms == []
    modes = [(r.path.rsplit("/", 1)[-1], r.query["sysparm_display_value"][0])
             for r in sn.requests]
    assert [m for m in modes if m[1] != "false"] == [(ritm, "all")]
    assert all(r.query["sysparm_exclude_reference_link"] == ("true",) for r in sn.requests)
    assert all(r.method == "GET" for r in sn.requests)


@pytest.mark.parametrize(
    ("state", "approval", "expected"),
    [
        ("1", "requested", ("open", False)),
        ("2", "not requested", ("open", False)),
        ("1", "approved", ("approved", False)),
        ("1", "rejected", ("rejected", True)),
        ("3", "approved", ("closed", True)),
        ("4", "requested", ("closed", True)),
        ("7", "approved", ("closed", True)),
    ],
)
def test_requested_item_state_mapping(
    sn: ServiceNowDouble, people: dict[str, str], state: str, approval: str,
    expected: tuple[str, bool],
) -> None:
    ritm = _ritm(sn, people, state=state, approval=approval)
    snap = _source(sn).fetch(f"sc_req_item/{ritm}")
    assert (snap.state, snap.final) == expected
    assert snap.status == approval


def test_fetch_normalizes_change_request(sn: ServiceNowDouble, people: dict[str, str]) -> None:
    start, end = T0 + timedelta(hours=16), T0 + timedelta(hours=18)
    chg = sn.create_change(requested_by=people["sam"], start=start, end=end)
    cab = sn.add_approval(chg, people["jane"])
    sn.set_approval(cab, "approved")
    sn.update("change_request", chg, approval="approved", state="-2")

    snap = _source(sn).fetch(f"change_request/{chg}")

    assert snap.ref.key == "CHG0030001"
    assert snap.ref.url == f"{sn.url}/nav_to.do?uri=change_request.do?sys_id={chg}"
    assert (snap.state, snap.final, snap.status, snap.status_name) == (
        "approved", False, "approved", "Approved",
    )
    assert snap.project == "change_request" and snap.issue_type == "normal"
    assert snap.window == (start, end)
    assert snap.window[0].tzinfo is not None
    assert snap.requester is not None and snap.requester.name == "sam.user"
    assert [(a.approval_id, a.decision) for a in snap.approvals] == [(cab, "approved")]
    assert snap.fields["start_date"] == "2026-01-16 01:00:00"
    assert not any(k.startswith("variables.") for k in snap.fields)
    assert "cat_item_name" not in snap.fields


@pytest.mark.parametrize(
    ("state", "approval", "expected"),
    [
        ("-3", "requested", ("open", False)),
        ("-2", "approved", ("approved", False)),
        ("-1", "approved", ("approved", False)),
        ("-3", "rejected", ("rejected", True)),
        ("0", "approved", ("closed", True)),
        ("3", "approved", ("closed", True)),
        ("4", "approved", ("closed", True)),
    ],
)
def test_change_request_state_mapping(
    sn: ServiceNowDouble, people: dict[str, str], state: str, approval: str,
    expected: tuple[str, bool],
) -> None:
    chg = sn.create_change(requested_by=people["sam"], start=T0, end=T0 + timedelta(hours=1),
                           state=state, approval=approval)
    snap = _source(sn).fetch(f"change_request/{chg}")
    assert (snap.state, snap.final) == expected


def test_change_without_both_dates_has_no_window(
    sn: ServiceNowDouble, people: dict[str, str]
) -> None:
    chg = sn.create_change(requested_by=people["sam"], start=T0, end=T0 + timedelta(hours=1))
    sn.update("change_request", chg, end_date="")
    assert _source(sn).fetch(f"change_request/{chg}").window is None


def test_closed_states_can_be_overridden(sn: ServiceNowDouble, people: dict[str, str]) -> None:
    ritm = _ritm(sn, people, state="7", approval="approved")
    chg = sn.create_change(requested_by=people["sam"], start=T0, end=T0 + timedelta(hours=1),
                           state="0", approval="approved")
    source = ServiceNowSource(
        url=sn.url, user=sn.user, password=PASSWORD,
        closed_states={"sc_req_item": frozenset({"3", "4"})},
    )
    assert source.fetch(f"sc_req_item/{ritm}").state == "approved"
    assert source.fetch(f"change_request/{chg}").state == "closed"  # default kept
    with pytest.raises(ValueError, match="unsupported table"):
        ServiceNowSource(url=sn.url, user="u", password="p",
                         closed_states={"incident": frozenset({"7"})})


def test_approvals_by_document_id_and_unreadable_approver(
    sn: ServiceNowDouble, people: dict[str, str]
) -> None:
    ritm = _ritm(sn, people)
    other = _ritm(sn, people)
    by_document = sn.add_approval(ritm, people["jane"], state="approved")
    sn.update("sysapproval_approver", by_document, sysapproval="")
    sn.add_approval(other, people["fred"], state="approved")  # another record's row
    ghost = sn.add_user("ghost", "Ghost")
    rejected = sn.add_approval(ritm, ghost, state="rejected")
    sn.hide(ghost)  # the integration user may not read this sys_user row

    snap = _source(sn).fetch(f"sc_req_item/{ritm}")

    got = {a.approval_id: (a.approver, a.decision) for a in snap.approvals}
    assert set(got) == {by_document, rejected}
    assert got[by_document][0].name == "jane.approver"
    assert got[rejected] == (Identity(source_id=ghost), "rejected")


def test_paging_continues_past_short_and_empty_pages(
    sn: ServiceNowDouble, people: dict[str, str]
) -> None:
    many = {f"var_{i:02d}": str(i) for i in range(7)}
    ritm = sn.create_ritm(requested_for=people["sam"], cat_item_name="Bulk", variables=many)
    rows = [sn.add_approval(ritm, people["jane"], state="approved") for _ in range(9)]
    # ACLs filter after sysparm_limit: with pages of 2 (ordered by sys_id), hiding the
    # 3rd and 4th rows empties page 2 completely and others come back short.
    ordered = sorted(rows)
    sn.hide(ordered[2], ordered[3], ordered[6])
    sn.reset_requests()

    snap = _source(sn, page_size=2).fetch(f"sc_req_item/{ritm}")

    visible = set(rows) - {ordered[2], ordered[3], ordered[6]}
    assert {a.approval_id for a in snap.approvals} == visible
    assert {k: v for k, v in snap.fields.items() if k.startswith("variables.")} == {
        f"variables.{k}": v for k, v in many.items()
    }
    offsets = [r.query["sysparm_offset"][0] for r in sn.requests
               if r.path.endswith("/sysapproval_approver")]
    assert offsets == ["0", "2", "4", "6", "8", "10"]  # ... until an empty page at the end
    assert all(r.query["sysparm_limit"] == ("2",) for r in sn.requests
               if "sysparm_offset" in r.query)
    assert sn.ignored_terms == []


def test_comment_is_idempotent_through_the_journal(
    sn: ServiceNowDouble, people: dict[str, str]
) -> None:
    ritm = _ritm(sn, people)
    source = _source(sn)
    ref = source.fetch(f"sc_req_item/{ritm}").ref
    sn.reset_requests()

    assert source.comment(ref, "Access granted until 18:00.", marker="[jit:grant:g1]") is True
    assert source.comment(ref, "Access granted until 18:00.", marker="[jit:grant:g1]") is False
    assert source.comment(ref, "Access revoked.", marker="[jit:revoke:g1]") is True

    notes = sn.work_notes(ritm)
    assert notes == ["Access granted until 18:00.\n\n[jit:grant:g1]",
                     "Access revoked.\n\n[jit:revoke:g1]"]
    patches = [r for r in sn.requests if r.method == "PATCH"]
    assert [r.path for r in patches] == [f"/api/now/table/sc_req_item/{ritm}"] * 2
    assert [r.body for r in patches] == [{"work_notes": n} for n in notes]
    lookups = [r.query["sysparm_query"][0] for r in sn.requests
               if r.path.endswith("/sys_journal_field")]
    assert lookups[0].startswith(f"element=work_notes^element_id={ritm}^name=sc_req_item^")
    assert "valueLIKE[jit:grant:g1]" in lookups[0]
    # work_notes reads back empty: only the journal knows.
    assert sn.record("sc_req_item", ritm)["work_notes"] == ""
    assert source.fetch(ref.id).fields["work_notes"] == ""
    assert sn.ignored_terms == []


def test_comment_finds_a_note_written_earlier_and_checks_markers(
    sn: ServiceNowDouble, people: dict[str, str]
) -> None:
    chg = sn.create_change(requested_by=people["sam"], start=T0, end=T0 + timedelta(hours=1))
    for i in range(5):
        sn.add_work_note("change_request", chg, f"chatter {i}")
    sn.add_work_note("change_request", chg, "earlier post\n\n[jit:grant:g7]")
    source = _source(sn, page_size=2)
    ref = source.fetch(f"change_request/{chg}").ref
    assert source.comment(ref, "again", marker="[jit:grant:g7]") is False
    assert len(sn.work_notes(chg)) == 6
    for bad in ("", "  ", "a^b", "two\nlines"):
        with pytest.raises(ValueError, match="marker"):
            source.comment(ref, "x", marker=bad)


def test_missing_record_is_ticket_not_found(sn: ServiceNowDouble, people: dict[str, str]) -> None:
    source = _source(sn)
    with pytest.raises(TicketNotFound):
        source.fetch("sc_req_item/" + "0" * 32)
    ritm = _ritm(sn, people)
    ref = source.fetch(f"sc_req_item/{ritm}").ref
    sn.delete("sc_req_item", ritm)
    with pytest.raises(TicketNotFound):
        source.fetch(ref.id)
    with pytest.raises(TicketNotFound):
        source.comment(ref, "x", marker="[m]")


@pytest.mark.parametrize(
    "ticket_id",
    [
        "incident/" + "a" * 32,  # not a supported table
        "sc_req_item/" + "A" * 32,  # sys_ids are lowercase
        "sc_req_item/" + "a" * 31,
        "sc_req_item/../../sys_user",
        "sc_req_item",
        "RITM0010001",
        "sc_req_item/" + "a" * 32 + "/x",
    ],
)
def test_invalid_ids_are_refused_before_any_request(sn: ServiceNowDouble, ticket_id: str) -> None:
    source = _source(sn)
    with pytest.raises(TicketNotFound):
        source.fetch(ticket_id)
    with pytest.raises(TicketNotFound):
        source.comment(TicketRef(source="servicenow", id=ticket_id, key="x"), "x", marker="[m]")
    assert sn.requests == []


@pytest.mark.parametrize("status", [503, 500, 502, 429])
def test_server_errors_are_transient_and_fast(
    sn: ServiceNowDouble, people: dict[str, str], status: int
) -> None:
    ritm = _ritm(sn, people)
    source = _source(sn)
    source.check()
    sn.fail_next(1, status=status)
    started = time.monotonic()
    with pytest.raises(TransientError) as info:
        source.fetch(f"sc_req_item/{ritm}")
    assert time.monotonic() - started < 5
    assert str(status) in str(info.value)
    _assert_no_secret(info.value)
    assert [r.status for r in sn.requests[-1:]] == [status]  # one attempt, no retry loop
    assert source.fetch(f"sc_req_item/{ritm}").ref.key == "RITM0010001"


def test_unreadable_answer_is_transient(sn: ServiceNowDouble, people: dict[str, str]) -> None:
    ritm = _ritm(sn, people)
    source = _source(sn)
    sn.fail_next(1, status=200, body="<html><body>Instance hibernating</body></html>")
    with pytest.raises(TransientError, match="unreadable") as info:
        source.fetch(f"sc_req_item/{ritm}")
    _assert_no_secret(info.value)


def test_down_and_slow_instance_are_transient(sn: ServiceNowDouble, people: dict[str, str]) -> None:
    ritm = _ritm(sn, people)
    source = _source(sn, timeout=0.5)
    sn.set_down()
    started = time.monotonic()
    with pytest.raises(TransientError) as info:
        source.fetch(f"sc_req_item/{ritm}")
    with pytest.raises(TransientError):
        source.check()
    _assert_no_secret(info.value)
    sn.set_down(False)
    sn.slow_next(1, seconds=1.5)
    with pytest.raises(TransientError, match="Timeout"):
        source.fetch(f"sc_req_item/{ritm}")
    assert time.monotonic() - started < 5
    assert source.fetch(f"sc_req_item/{ritm}").status == "requested"


def test_stopped_server_with_pooled_connection_is_transient() -> None:
    sn = ServiceNowDouble(password=PASSWORD).start()
    source = _source(sn)
    source.check()  # leaves a keep-alive connection in the session's pool
    sn.stop()
    with pytest.raises(TransientError, match="ConnectionError"):
        source.check()
    with pytest.raises(TransientError):
        source.fetch("sc_req_item/" + "a" * 32)


def test_wrong_password_is_permanent_and_never_shown(
    sn: ServiceNowDouble, people: dict[str, str]
) -> None:
    ritm = _ritm(sn, people)
    wrong = "wrong-password-5d1e8b2a"
    source = _source(sn, password=wrong)
    with pytest.raises(PermanentError) as info:
        source.fetch(f"sc_req_item/{ritm}")
    assert info.value.code == "source_auth"
    assert not isinstance(info.value, TicketNotFound)
    _assert_no_secret(info.value, wrong)
    _assert_no_secret(info.value, PASSWORD)
    assert wrong not in repr(pickle.loads(pickle.dumps(info.value)))
    with pytest.raises(TransientError) as check_info:
        source.check()
    assert check_info.value.code == "source_auth"
    _assert_no_secret(check_info.value, wrong)
    # The double saw the requests but kept no credential.
    assert sn.requests and all(r.auth_user is None for r in sn.requests)
    assert wrong not in repr(sn.requests) and PASSWORD not in repr(sn.requests)


def test_check_is_one_cheap_request(sn: ServiceNowDouble) -> None:
    source = ServiceNowSource(url=sn.url + "/", user=sn.user, password=PASSWORD)
    source.check()
    assert [(r.path, r.query["sysparm_limit"]) for r in sn.requests] == [
        ("/api/now/table/sys_user", ("1",))
    ]
    source.close()
    source.check()


def test_missing_configuration_is_a_connector_error() -> None:
    for source in (
        ServiceNowSource(url="", user="u", password=PASSWORD),
        ServiceNowSource(url="http://127.0.0.1:9", user=None, password=PASSWORD),
        ServiceNowSource(url="http://127.0.0.1:9", user="u", password=""),
        ServiceNowSource(url="ftp://example.com", user="u", password=PASSWORD),
        ServiceNowSource(url="https://u:p@example.com", user="u", password=PASSWORD),
    ):
        with pytest.raises(ConnectorError) as info:
            source.fetch("sc_req_item/" + "a" * 32)
        assert info.value.code == "source_not_configured"


def test_user_groups(sn: ServiceNowDouble, people: dict[str, str]) -> None:
    source = _source(sn, page_size=1)
    jane = Identity(source_id=people["jane"])
    assert set(source.user_groups(jane)) == {sn.group_id("db-approvers"), sn.group_id("cab")}
    assert source.user_groups(Identity(source_id=people["sam"])) == ()
    assert source.user_groups(Identity(source_id="not-a-sys-id")) == ()


def test_changed_since(sn: ServiceNowDouble, people: dict[str, str], clock: Clock) -> None:
    old = _ritm(sn, people)
    clock.advance(600)
    since = clock.now
    chg = sn.create_change(requested_by=people["sam"], start=T0, end=T0 + timedelta(hours=1))
    clock.advance(60)
    fresh = [_ritm(sn, people) for _ in range(3)]
    clock.advance(60)
    sn.update("sc_req_item", old, approval="approved")  # updated again: now in the window
    source = _source(sn, page_size=2)
    sn.reset_requests()

    got = source.changed_since(since)

    # Oldest first; equal times in sys_id order (stable paging).
    assert got == [*(f"sc_req_item/{r}" for r in sorted(fresh)), f"sc_req_item/{old}",
                   f"change_request/{chg}"]
    queries = {r.query["sysparm_query"][0] for r in sn.requests}
    assert queries == {"sys_updated_on>=2026-01-15 09:10:00^ORDERBYsys_updated_on^ORDERBYsys_id"}
    assert sn.ignored_terms == []
    # Aware datetimes in any zone are converted to UTC literals.
    plus2 = since.astimezone(timezone(timedelta(hours=2)))
    assert source.changed_since(plus2, ["change_request"]) == [f"change_request/{chg}"]
    # Naive values (SQLite watermarks) are UTC already.
    assert source.changed_since(since.replace(tzinfo=None), ["change_request"]) == [
        f"change_request/{chg}"
    ]
    with pytest.raises(ValueError, match="unsupported"):
        source.changed_since(since, ["incident"])


def test_double_delivery_is_signed_like_the_business_rule(
    sn: ServiceNowDouble, people: dict[str, str]
) -> None:
    ritm = _ritm(sn, people)
    approval = sn.add_approval(ritm, people["jane"])
    sn.set_approval(approval, "approved")
    secret = "9f1c2e7a5b-shared-secret"
    now = int(time.time())
    body, headers = servicenow_delivery(sn.webhook("sysapproval_approver", approval),
                                        secret=secret, ts=now)
    assert verify_servicenow(body, headers, (secret.encode(),), now=now) is None
    event = parse_servicenow_webhook(body, headers["X-Jitgate-Event-Id"])
    assert event.is_approval_row
    assert event.ticket_id == f"sc_req_item/{ritm}"
    assert event.event_id == f"sysapproval_approver:{approval}:1"
    assert event.number == "RITM0010001"
    # The approval row's delivery re-reads the approved item.
    snap = _source(sn).fetch(event.ticket_id)
    assert [(a.approval_id, a.decision) for a in snap.approvals] == [(approval, "approved")]


def test_double_serves_the_documented_shapes(sn: ServiceNowDouble, people: dict[str, str]) -> None:
    """The double itself, with plain requests: what pysnow relies on is what the Table
    API documents (formats.md §2.4)."""
    import requests

    ritm = _ritm(sn, people, state="3")
    auth = (sn.user, PASSWORD)
    base = f"{sn.url}/api/now/table"

    raw = requests.get(f"{base}/sc_req_item/{ritm}", auth=auth, timeout=5).json()["result"]
    assert raw["state"] == "3" and raw["sys_mod_count"] == "0"
    assert raw["requested_for"] == {
        "link": f"{sn.url}/api/now/table/sys_user/{people['sam']}", "value": people["sam"],
    }
    shown = requests.get(f"{base}/sc_req_item/{ritm}", auth=auth, timeout=5,
                         params={"sysparm_display_value": "true",
                                 "sysparm_exclude_reference_link": "true"}).json()["result"]
    assert shown["state"] == "Closed Complete" and shown["requested_for"] == "Sam User"
    assert shown["sys_updated_on"] == "2026-01-15 10:00:00"  # the user's time zone (+1h)
    both = requests.get(f"{base}/sc_req_item/{ritm}", auth=auth, timeout=5,
                        params={"sysparm_display_value": "all",
                                "sysparm_fields": "approval,cat_item"}).json()["result"]
    assert both["approval"] == {"display_value": "Requested", "value": "requested"}
    assert set(both["cat_item"]) == {"display_value", "link", "value"}
    assert set(both) == {"approval", "cat_item"}

    page = requests.get(f"{base}/sys_user", auth=auth, timeout=5,
                        params={"sysparm_query": "user_nameLIKE.approver^ORDERBYDESCuser_name",
                                "sysparm_fields": "user_name", "sysparm_limit": "1",
                                "sysparm_offset": "0"})
    assert page.json() == {"result": [{"user_name": "jane.approver"}]}
    assert page.headers["X-Total-Count"] == "2"
    assert 'rel="next"' in page.headers["Link"] and "sysparm_offset=1" in page.headers["Link"]
    walked = requests.get(f"{base}/sc_item_option_mtom", auth=auth, timeout=5,
                          params={"sysparm_query": f"request_item={ritm}",
                                  "sysparm_fields": "sc_item_option.item_option_new.name"})
    assert sorted(r["sc_item_option.item_option_new.name"] for r in walked.json()["result"]) == [
        "duration_hours", "target_system",
    ]

    missing = requests.get(f"{base}/sc_req_item/{'0' * 32}", auth=auth, timeout=5)
    assert missing.status_code == 404
    assert missing.json() == {"error": {"message": "No Record found", "detail": (
        "Record doesn't exist or ACL restricts the record retrieval")}, "status": "failure"}
    denied = requests.get(f"{base}/sc_req_item/{ritm}", auth=(sn.user, "nope"), timeout=5)
    assert denied.status_code == 401 and denied.json()["status"] == "failure"

    put = requests.put(f"{base}/sc_req_item/{ritm}", auth=auth, timeout=5,
                       json={"work_notes": "via PUT", "stage": "complete", "sys_id": "x"})
    assert put.json()["result"]["work_notes"] == "" and put.json()["result"]["stage"] == "complete"
    assert sn.work_notes(ritm) == ["via PUT"]
    assert sn.record("sc_req_item", ritm)["sys_mod_count"] == "1"

    requests.get(f"{base}/sys_user", auth=auth, timeout=5,
                 params={"sysparm_query": "user_nme=sam.user"})
    assert sn.ignored_terms == ["user_nme=sam.user"]  # dropped silently, like the instance
