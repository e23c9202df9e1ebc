"""JiraSource against the Jira Cloud HTTP double, through the real ``jira`` library.

No mocks of the library: every call below is real HTTP on 127.0.0.1, so URL building,
basic auth, paging and the error mapping are all exercised.
"""

from __future__ import annotations

import json
import pickle
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import requests

from connectors.base import SourceConnector
from connectors.errors import ConnectorError, PermanentError, TicketNotFound, TransientError
from connectors.jira import JiraSource, parse_jira_webhook
from worker.doubles.jira import (
    DONE,
    SD_APPROVALS_TYPE,
    TO_DO,
    JiraDouble,
    jira_delivery,
    sign_jira,
)

APPROVED = ("10105", "Approved", "indeterminate")
WAITING = ("10104", "Waiting for approval", "indeterminate")
TOKEN = "tok-3f9a1c77-very-secret"
People = dict[str, dict[str, Any]]


@pytest.fixture
def jira() -> Iterator[JiraDouble]:
    with JiraDouble(token=TOKEN) as double:
        yield double


@pytest.fixture
def people(jira: JiraDouble) -> People:
    return {
        "requester": jira.add_user("5b10ac8d82e05b22cc7d4ef5", "Sam User", "sam@example.com"),
        "approver": jira.add_user(
            "712020:aaaa-1111", "Jane Approver", None, [("g-approvers-id", "db-approvers")]
        ),
        "bot": jira.add_user("557058:automation", "Automation for Jira"),
    }


def _source(jira: JiraDouble, *, token: str = TOKEN, timeout: float = 2.0) -> JiraSource:
    return JiraSource(url=jira.url, user=jira.user, token=token, timeout=timeout)


def _assert_no_secret(exc: BaseException, secret: str = TOKEN) -> None:
    rendered = "".join(traceback.format_exception(exc))
    assert secret not in str(exc)
    assert secret not in repr(exc)
    assert secret not in rendered
    assert "Authorization" not in rendered
    assert exc.__cause__ is None and exc.__context__ is None


def test_satisfies_protocol_and_does_no_io_on_construction() -> None:
    source = JiraSource(url="http://127.0.0.1:9", user="u", token=TOKEN)
    assert isinstance(source, SourceConnector)
    assert source.kind == "jira"
    assert TOKEN not in repr(source)


def test_fetch_normalizes_cloud_issue(jira: JiraDouble, people: People) -> None:
    issue_id = jira.create_issue(
        "OPS-12",
        reporter=people["requester"],
        fields={"customfield_10070": {"id": "20001", "value": "warehouse-read"},
                "customfield_10071": "ctr_sam"},
        status=TO_DO,
    )
    jira.edit_fields("OPS-12", {"customfield_10071": "ctr_sam2"}, author=people["requester"])
    jira.transition("OPS-12", WAITING, author=people["requester"])
    payload = jira.transition("OPS-12", APPROVED, author=people["approver"])
    # The delivery claims a different actor (automation): the snapshot must not care.
    payload["user"] = people["bot"]
    event = parse_jira_webhook(json.dumps(payload).encode())
    assert event.issue_id == issue_id
    assert event.status_changes == ((WAITING[0], APPROVED[0]),)
    assert event.actor is not None and event.actor.source_id == "557058:automation"

    snap = _source(jira).fetch(event.issue_id)

    assert snap.ref.source == "jira"
    assert (snap.ref.id, snap.ref.key) == (issue_id, "OPS-12")
    assert snap.ref.url == f"{jira.url}/browse/OPS-12"
    assert (snap.status, snap.status_name, snap.state) == ("10105", "Approved", "open")
    assert snap.project == "OPS" and snap.issue_type == "Access Request"
    assert snap.summary == "Access request OPS-12"
    assert snap.requester is not None
    assert snap.requester.source_id == "5b10ac8d82e05b22cc7d4ef5"
    assert snap.requester.email == "sam@example.com"
    assert snap.fields["customfield_10070"] == {"id": "20001", "value": "warehouse-read"}
    assert snap.fields["customfield_10071"] == "ctr_sam2"
    assert snap.updated_at.tzinfo is not None
    # Status history only (the field edit is not a transition), oldest first.
    assert [(t.from_status, t.to_status) for t in snap.transitions] == [
        ("10000", "10104"), ("10104", "10105"),
    ]
    last = snap.transitions[-1]
    assert last.author is not None and last.author.source_id == "712020:aaaa-1111"
    assert last.to_name == "Approved"
    assert last.history_id == event.changelog_id
    assert snap.version == int(last.history_id)
    assert snap.approvals == ()
    json.dumps(dict(snap.fields))  # JSON-compatible

    jira.transition("OPS-12", DONE, author=people["approver"])
    closed = _source(jira).fetch("OPS-12")
    assert closed.state == "closed" and closed.version > snap.version


def test_truncated_changelog_is_paged_fully() -> None:
    with JiraDouble(token=TOKEN, embedded_changelog_max=3, changelog_page_max=4) as jira:
        user = jira.add_user("712020:x", "X")
        jira.create_issue("OPS-1", reporter=user)
        statuses = [WAITING, APPROVED, TO_DO]
        for i in range(10):
            jira.transition("OPS-1", statuses[i % 3], author=user)
        jira.reset_requests()

        snap = _source(jira).fetch("OPS-1")

        assert len(snap.transitions) == 10
        ids = [int(t.history_id) for t in snap.transitions]
        assert ids == sorted(ids) and snap.version == ids[-1]
        pages = [r.query["startAt"][0] for r in jira.requests if r.path.endswith("/changelog")]
        assert pages == ["0", "4", "8"]


def test_comment_is_idempotent_by_marker(jira: JiraDouble, people: People) -> None:
    jira.create_issue("OPS-2", reporter=people["requester"])
    source = _source(jira)
    ref = source.fetch("OPS-2").ref

    assert source.comment(ref, "Access granted until 18:00.", marker="[jit:grant:g1]") is True
    assert source.comment(ref, "Access granted until 18:00.", marker="[jit:grant:g1]") is False
    assert source.comment(ref, "Access revoked.", marker="[jit:revoke:g1]") is True

    bodies = jira.comments("OPS-2")
    assert len(bodies) == 2
    assert bodies[0].splitlines()[-1] == "[jit:grant:g1]"
    posts = [r for r in jira.requests if r.method == "POST"]
    assert [r.body for r in posts] == [{"body": b} for b in bodies]


def test_comment_marker_found_beyond_first_page(jira: JiraDouble, people: People) -> None:
    jira.create_issue("OPS-3", reporter=people["requester"])
    for i in range(150):
        jira.add_comment("OPS-3", f"chatter {i}")
    jira.add_comment("OPS-3", "earlier post\n\n[jit:grant:g7]")
    source = _source(jira)
    ref = source.fetch("OPS-3").ref
    assert source.comment(ref, "again", marker="[jit:grant:g7]") is False
    assert len(jira.comments("OPS-3")) == 151


def test_missing_issue_is_ticket_not_found(jira: JiraDouble, people: People) -> None:
    source = _source(jira)
    with pytest.raises(TicketNotFound):
        source.fetch("OPS-404")
    jira.create_issue("OPS-5", reporter=people["requester"])
    ref = source.fetch("OPS-5").ref
    jira.delete_issue("OPS-5")
    with pytest.raises(TicketNotFound):
        source.fetch(ref.id)
    with pytest.raises(TicketNotFound):
        source.comment(ref, "x", marker="[m]")
    # Not an id or key: refused before any request reaches the server.
    before = len(jira.requests)
    with pytest.raises(TicketNotFound):
        source.fetch("../myself")
    assert len(jira.requests) == before


@pytest.mark.parametrize("status", [503, 500, 429, 502])
def test_server_errors_are_transient_and_fast(
    jira: JiraDouble, people: People, status: int
) -> None:
    jira.create_issue("OPS-6", reporter=people["requester"])
    source = _source(jira)
    source.check()  # the client exists; the next request fails
    jira.fail_next(1, status=status)
    started = time.monotonic()
    with pytest.raises(TransientError) as info:
        source.fetch("OPS-6")
    assert time.monotonic() - started < 5
    assert str(status) in str(info.value)
    _assert_no_secret(info.value)
    # One attempt only (no library retry loop), and the source recovers.
    assert [r.status for r in jira.requests[-1:]] == [status]
    assert source.fetch("OPS-6").ref.key == "OPS-6"


def test_down_double_is_transient_and_fast(jira: JiraDouble, people: People) -> None:
    jira.create_issue("OPS-7", reporter=people["requester"])
    source = _source(jira)
    jira.set_down()
    started = time.monotonic()
    with pytest.raises(TransientError) as info:
        source.fetch("OPS-7")  # also the first use: client creation fails transiently
    with pytest.raises(TransientError):
        source.check()
    assert time.monotonic() - started < 5
    _assert_no_secret(info.value)
    jira.set_down(False)
    assert source.fetch("OPS-7").status == TO_DO[0]


def test_stopped_server_and_read_timeout_are_transient() -> None:
    jira = JiraDouble(token=TOKEN).start()
    user = jira.add_user("712020:x", "X")
    jira.create_issue("OPS-8", reporter=user)
    source = _source(jira, timeout=0.5)
    source.check()
    jira.slow_next(1, seconds=1.5)
    started = time.monotonic()
    with pytest.raises(TransientError, match="Timeout"):
        source.fetch("OPS-8")
    jira.stop()
    with pytest.raises(TransientError, match="ConnectionError"):
        source.fetch("OPS-8")
    assert time.monotonic() - started < 5


def test_stopped_server_with_pooled_connection_is_transient() -> None:
    jira = JiraDouble(token=TOKEN).start()
    source = _source(jira)
    source.check()  # leaves a keep-alive connection in the client's pool
    jira.stop()
    with pytest.raises(TransientError):
        source.check()
    with pytest.raises(TransientError):
        source.fetch("OPS-1")


def test_wrong_token_is_permanent_and_never_shown(jira: JiraDouble, people: People) -> None:
    jira.create_issue("OPS-9", reporter=people["requester"])
    wrong = "wrong-token-5d1e8b2a"
    source = _source(jira, token=wrong)
    with pytest.raises(PermanentError) as info:
        source.fetch("OPS-9")
    assert info.value.code == "source_auth"
    assert not isinstance(info.value, TicketNotFound)
    _assert_no_secret(info.value, wrong)
    _assert_no_secret(info.value, TOKEN)
    assert wrong not in repr(pickle.loads(pickle.dumps(info.value)))
    # Readiness reports it as unavailable but keeps the reason.
    with pytest.raises(TransientError) as check_info:
        source.check()
    assert check_info.value.code == "source_auth"
    _assert_no_secret(check_info.value, wrong)
    # The double saw the request but kept no credential.
    assert jira.requests and all(r.auth_user is None for r in jira.requests)
    assert wrong not in repr(jira.requests) and TOKEN not in repr(jira.requests)


def test_check_and_deployment_hint(jira: JiraDouble) -> None:
    source = JiraSource(url=jira.url + "/", user=jira.user, token=TOKEN, deployment="cloud")
    source.check()
    # deployment given: no serverInfo round trip; the trailing slash is normalized.
    assert [r.path for r in jira.requests] == ["/rest/api/2/myself"]
    source.close()
    source.check()


def test_user_groups_cloud(jira: JiraDouble, people: People) -> None:
    jira.create_issue("OPS-10", reporter=people["requester"])
    jira.transition("OPS-10", APPROVED, author=people["approver"])
    source = _source(jira)
    approver = source.fetch("OPS-10").transitions[-1].author
    assert approver is not None
    assert source.user_groups(approver) == ("g-approvers-id",)
    requester = source.fetch("OPS-10").requester
    assert requester is not None and source.user_groups(requester) == ()
    ghost = approver.model_copy(update={"source_id": "712020:gone"})
    assert source.user_groups(ghost) == ()


def test_jsm_approvals_are_read_from_the_approvals_field(jira: JiraDouble, people: People) -> None:
    jira.add_field("customfield_10027", "Approvals", SD_APPROVALS_TYPE)
    approvals = [
        {"id": "3", "name": "Manager approval", "finalDecision": "approved",
         "approvers": [
             {"approver": people["approver"], "approverDecision": "approved"},
             {"approver": people["bot"], "approverDecision": "pending"},
         ],
         "completedDate": {"epochMillis": 1767001000000, "iso8601": "2026-01-15T10:16:40+0100"}},
        {"id": "4", "name": "Owner approval", "finalDecision": "declined",
         "approvers": [{"approver": people["requester"], "approverDecision": "declined"}]},
    ]
    # Same shape in an ordinary custom field (e.g. copied by a user) must not count.
    jira.create_issue("OPS-11", reporter=people["requester"],
                      fields={"customfield_10027": approvals, "customfield_19999": approvals})
    snap = _source(jira).fetch("OPS-11")
    got = [(a.approval_id, a.approver.source_id, a.decision, a.at) for a in snap.approvals]
    assert [g[:3] for g in got] == [
        ("3:712020:aaaa-1111", "712020:aaaa-1111", "approved"),
        ("3:557058:automation", "557058:automation", "pending"),
        ("4:5b10ac8d82e05b22cc7d4ef5", "5b10ac8d82e05b22cc7d4ef5", "rejected"),
    ]
    assert got[0][3] is not None and got[0][3].isoformat() == "2026-01-15T10:16:40+01:00"
    assert got[1][3] is None


def test_double_delivery_helpers_sign_the_exact_body(jira: JiraDouble, people: People) -> None:
    jira.create_issue("OPS-13", reporter=people["requester"])
    payload = jira.transition("OPS-13", APPROVED, author=people["approver"])
    body, headers = jira_delivery(payload, secret="s3cret", identifier="abc-1")
    assert headers["X-Hub-Signature"] == sign_jira("s3cret", body)
    assert headers["X-Hub-Signature"].startswith("sha256=")
    assert len(headers["X-Hub-Signature"]) == len("sha256=") + 64
    event = parse_jira_webhook(body)
    delivery = headers["X-Atlassian-Webhook-Identifier"]
    assert event.dedupe_key(delivery, body) == "jira:delivery:abc-1"
    assert event.timestamp is not None


def test_connector_errors_only(jira: JiraDouble) -> None:
    # Missing configuration surfaces as a connector error (SourceNotConfigured), not a crash.
    source = JiraSource(url="", user="u", token=TOKEN)
    with pytest.raises(ConnectorError):
        source.fetch("OPS-1")


# ---------------------------------------------------------------- reconciliation search


class _Clock:
    """A settable clock shared by the double (issue times) and the source (window)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 9, 0, 7, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _search_requests(jira: JiraDouble) -> list[Any]:
    return [r for r in jira.requests if "/search" in r.path]


def test_changed_since_pages_through_all_results() -> None:
    with JiraDouble(token=TOKEN) as jira:
        jira.search_page_max = 3
        user = jira.add_user("712020:x", "X")
        ids = [jira.create_issue(f"OPS-{n}", reporter=user) for n in range(1, 9)]
        jira.reset_requests()

        found = _source(jira).changed_since(
            since=datetime.now(UTC) - timedelta(minutes=5), projects=["OPS"]
        )

        assert sorted(found, key=int) == ids
        pages = _search_requests(jira)
        assert [r.path for r in pages] == ["/rest/api/2/search/jql"] * 3
        assert "nextPageToken" not in pages[0].query
        assert all("nextPageToken" in r.query for r in pages[1:])
        assert pages[0].query["fields"] == ("updated",)


def test_changed_since_excludes_older_issues_with_a_one_minute_overlap() -> None:
    clock = _Clock()
    with JiraDouble(token=TOKEN, clock=clock) as jira:
        user = jira.add_user("712020:x", "X")
        old = jira.create_issue("OPS-1", reporter=user)
        jira.create_issue("SEC-1", project="SEC", reporter=user)
        clock.now += timedelta(hours=2)
        since = clock.now
        edge = jira.create_issue("OPS-2", reporter=user)  # updated exactly at `since`
        clock.now += timedelta(minutes=10)
        fresh = jira.create_issue("OPS-3", reporter=user)
        jira.transition("OPS-1", APPROVED, author=user)  # touched again: found once more
        clock.now += timedelta(seconds=30)
        source = JiraSource(url=jira.url, user=jira.user, token=TOKEN, clock=clock)

        def found(after: datetime) -> set[str]:
            return set(source.changed_since(since=after, projects=["OPS"]))

        assert found(since) == {edge, fresh, old}  # SEC-1 is in another project
        [request] = _search_requests(jira)
        # 10.5 min elapsed -> 11, plus one minute of overlap for minute rounding.
        assert request.query["jql"] == ('project in ("OPS") AND updated >= -12m',)
        assert found(since + timedelta(minutes=5)) == {fresh, old}  # edge is 5 min older
        # Overlap: something a few seconds older than `since` may come back (processing
        # is idempotent); nothing newer is ever missed.
        assert found(since + timedelta(seconds=30)) == {edge, fresh, old}
        clock.now += timedelta(minutes=3)
        assert found(clock.now) == set()


def test_changed_since_includes_grant_holding_issue_moved_out_of_the_projects() -> None:
    clock = _Clock()
    with JiraDouble(token=TOKEN, clock=clock) as jira:
        user = jira.add_user("712020:x", "X")
        held = jira.create_issue("OPS-1", reporter=user)
        quiet = jira.create_issue("OTHER-1", project="OTHER", reporter=user)
        clock.now += timedelta(hours=1)
        since = clock.now
        clock.now += timedelta(minutes=5)
        jira.move_issue("OPS-1", "SEC", author=user)
        source = JiraSource(url=jira.url, user=jira.user, token=TOKEN, clock=clock)

        assert source.changed_since(since=since, projects=["OPS"]) == []
        # Held ids are searched wherever they live now, but only when they changed.
        found = source.changed_since(since=since, projects=["OPS"], ids=[held, quiet, held])
        assert found == [held]
        assert source.fetch(held).project == "SEC"
        assert source.changed_since(since=since, projects=[], ids=[held]) == [held]


def test_changed_since_chunks_ids_and_survives_a_deleted_issue(jira: JiraDouble) -> None:
    user = jira.add_user("712020:x", "X")
    ids = [jira.create_issue(f"OPS-{n}", reporter=user) for n in range(1, 251)]
    source = _source(jira)
    source.check()
    jira.reset_requests()

    found = source.changed_since(since=datetime.now(UTC), projects=[], ids=ids)

    assert sorted(found, key=int) == ids
    jqls = [r.query["jql"][0] for r in _search_requests(jira)]
    assert len(jqls) == 3
    assert [j.count(",") + 1 for j in jqls] == [100, 100, 50]
    assert all(j.startswith("id in (") for j in jqls)

    # Jira rejects a whole query naming an issue it cannot see; the poll must go on.
    jira.delete_issue("OPS-7")
    jira.reset_requests()
    found = source.changed_since(since=datetime.now(UTC), projects=[], ids=ids[:20])
    assert sorted(found, key=int) == ids[:20]  # the deleted one too: re-read finds it gone
    statuses = [r.status for r in _search_requests(jira)]
    assert statuses[0] == 400 and statuses.count(400) == 2 and len(statuses) == 21


@pytest.mark.parametrize(
    ("projects", "ids"),
    [
        (['OPS") OR project is not EMPTY OR ("'], ()),
        (["ops"], ()),
        (["OPS "], ()),
        ("OPS", ()),
        (["OPS", "A" * 51], ()),
        (["OPS"], ["10001) OR (id > 0"]),
        (["OPS"], ["10001\n"]),
        (["OPS"], ["١٢٣"]),  # non-ASCII digits
        (["OPS"], [10001]),
    ],
)
def test_changed_since_refuses_injectable_input_before_any_request(
    jira: JiraDouble, projects: Any, ids: Any
) -> None:
    source = _source(jira)
    with pytest.raises(ValueError, match="jira: "):
        source.changed_since(since=datetime.now(UTC), projects=projects, ids=ids)
    assert jira.requests == []


def test_changed_since_without_scope_or_with_naive_time_makes_no_request(
    jira: JiraDouble,
) -> None:
    source = _source(jira)
    assert source.changed_since(since=datetime.now(UTC), projects=[]) == []
    with pytest.raises(ValueError, match="timezone"):
        source.changed_since(since=datetime(2026, 1, 1), projects=["OPS"])
    assert jira.requests == []


def test_changed_since_server_error_is_transient(jira: JiraDouble) -> None:
    source = _source(jira)
    source.check()
    jira.fail_next(1, status=503)
    with pytest.raises(TransientError) as info:
        source.changed_since(since=datetime.now(UTC), projects=["OPS"])
    assert "503" in str(info.value)
    _assert_no_secret(info.value)
    assert source.changed_since(since=datetime.now(UTC), projects=["OPS"]) == []


def test_changed_since_skips_an_unknown_project_and_polls_the_rest(jira: JiraDouble) -> None:
    """Jira refuses a whole query naming a missing project; one typo in a policy must
    not stop the poll of every other project."""
    user = jira.add_user("712020:x", "X")
    issue_id = jira.create_issue("OPS-1", reporter=user)
    since = datetime.now(UTC) - timedelta(minutes=1)
    assert _source(jira).changed_since(since=since, projects=["NOPE"]) == []
    assert _source(jira).changed_since(since=since, projects=["NOPE", "OPS"]) == [issue_id]


def test_library_path_never_uses_the_removed_search_api(jira: JiraDouble) -> None:
    user = jira.add_user("712020:x", "X")
    issue_id = jira.create_issue("OPS-1", reporter=user)
    source = _source(jira)
    source.changed_since(since=datetime.now(UTC), projects=["OPS"], ids=[issue_id])
    client = source._client()
    # The library's generic search delegates to search/jql on Cloud (first page only).
    assert [i.id for i in client.search_issues(f"id in ({issue_id})", maxResults=0)] == [
        issue_id
    ]
    searched = {r.path for r in _search_requests(jira)}
    assert searched == {"/rest/api/2/search/jql"}
    assert all(r.status == 200 for r in _search_requests(jira))

    # The old endpoint is gone, as on Cloud; a source told it talks to DC gets a clear error.
    gone = requests.get(f"{jira.url}/rest/api/2/search", params={"jql": "project in (OPS)"},
                        auth=(jira.user, TOKEN), timeout=5)
    assert gone.status_code == 410
    assert "/rest/api/3/search/jql" in gone.json()["errorMessages"][0]
    dc = JiraSource(url=jira.url, user=jira.user, token=TOKEN, deployment="datacenter")
    with pytest.raises(PermanentError, match="HTTP 410"):
        dc.changed_since(since=datetime.now(UTC), projects=["OPS"])


def test_double_search_jql_speaks_cloud_get_and_post(jira: JiraDouble) -> None:
    user = jira.add_user("712020:x", "X")
    first = jira.create_issue("OPS-1", reporter=user)
    second = jira.create_issue("OPS-2", reporter=user)
    jira.search_page_max = 1
    auth = (jira.user, TOKEN)
    url = f"{jira.url}/rest/api/3/search/jql"
    jql = f'(project in ("OPS") AND updated >= -5m) OR id in ({first})'

    page = requests.post(url, json={"jql": jql, "fields": ["updated", "summary"]},
                         auth=auth, timeout=5).json()
    assert page["isLast"] is False and "total" not in page
    assert [i["id"] for i in page["issues"]] == [first]
    assert set(page["issues"][0]["fields"]) == {"updated", "summary"}
    rest = requests.get(url, params={"jql": jql, "nextPageToken": page["nextPageToken"]},
                        auth=auth, timeout=5).json()
    assert rest["issues"] == [{"id": second}] and rest["isLast"] is True  # ids only
    assert "nextPageToken" not in rest

    # Absolute literals are wall-clock minutes in the site's zone (UTC+1 here).
    updated = datetime.fromisoformat(page["issues"][0]["fields"]["updated"])
    local = updated.astimezone(timezone(timedelta(hours=1)))
    for minute, hit in [(local, True), (local + timedelta(minutes=1), False)]:
        literal = minute.strftime("%Y/%m/%d %H:%M")
        body = {"jql": f'id in ({first}) AND updated >= "{literal}"'}
        got = requests.post(url, json=body, auth=auth, timeout=5).json()["issues"]
        assert bool(got) is hit

    for bad in ["", "order by created", "project = OPS", "summary ~ x", "(id in (1)",
                f"id in ({first}) AND", "project in (OPS) OR id in (99999)",
                f'id in ({first}) AND updated >= "yesterday"']:
        reply = requests.get(url, params={"jql": bad}, auth=auth, timeout=5)
        assert reply.status_code == 400, bad
        assert reply.json()["errorMessages"], bad
    token_reply = requests.get(url, params={"jql": "project in (OPS)", "nextPageToken": "xx"},
                               auth=auth, timeout=5)
    assert token_reply.status_code == 400


# ---------------------------------------------------------------- JSM approvals (Service Desk API)

SD_PATH = "/rest/servicedeskapi/"
PORTAL_CUSTOMER: dict[str, Any] = {
    "accountId": "qm:1b2c3d4e-5f60-4718-9a0b-c1d2e3f4a5b6:0f1e2d3c-portal",
    "accountType": "customer",
    "displayName": "Pat Portal",
    "emailAddress": "pat@customer.example",
    "active": True,
}


def _sd_requests(jira: JiraDouble) -> list[Any]:
    return [r for r in jira.requests if r.path.startswith(SD_PATH)]


def _decisions(snap: Any) -> list[tuple[str, str, str]]:
    return [(a.approval_id, a.approver.source_id, a.decision) for a in snap.approvals]


def test_jsm_approvals_are_read_from_the_service_desk_api(
    jira: JiraDouble, people: People
) -> None:
    issue_id = jira.create_issue("HELP-1", project="HELP", project_type="service_desk",
                                 reporter=people["requester"], status=WAITING)
    step = jira.add_jsm_approval("HELP-1", "Manager approval",
                                 [people["approver"], PORTAL_CUSTOMER])
    jira.decide_jsm_approval("HELP-1", step, PORTAL_CUSTOMER["accountId"], "approve")
    # The transition (and so the webhook) is made by automation: it names no approver.
    payload = jira.transition("HELP-1", APPROVED, author=people["bot"])
    assert payload["user"]["accountId"] == "557058:automation"
    jira.reset_requests()

    snap = _source(jira).fetch(issue_id)

    assert _decisions(snap) == [
        (f"{step}:712020:aaaa-1111", "712020:aaaa-1111", "pending"),
        (f"{step}:{PORTAL_CUSTOMER['accountId']}", PORTAL_CUSTOMER["accountId"], "approved"),
    ]
    pending, approved = snap.approvals
    assert pending.at is None
    assert approved.at is not None and approved.at.tzinfo is not None
    assert approved.approver.email == "pat@customer.example"
    [call] = _sd_requests(jira)
    assert call.path == f"/rest/servicedeskapi/request/{issue_id}/approval"
    assert call.query["start"] == ("0",) and call.status == 200


def test_jsm_endpoint_replaces_the_approvals_field(jira: JiraDouble, people: People) -> None:
    jira.add_field("customfield_10027", "Approvals", SD_APPROVALS_TYPE)
    claimed = [{"id": "9", "name": "Manager approval", "finalDecision": "approved",
                "approvers": [{"approver": people["bot"], "approverDecision": "approved"}]}]
    jira.create_issue("HELP-2", project="HELP", project_type="service_desk",
                      reporter=people["requester"], fields={"customfield_10027": claimed})
    # The request has no approvals in JSM: what the field claims does not count.
    assert _source(jira).fetch("HELP-2").approvals == ()


def test_jsm_declined_is_rejected(jira: JiraDouble, people: People) -> None:
    jira.create_issue("HELP-3", project="HELP", project_type="service_desk",
                      reporter=people["requester"])
    step = jira.add_jsm_approval("HELP-3", "Owner approval",
                                 [people["approver"], PORTAL_CUSTOMER], required=2)
    jira.decide_jsm_approval("HELP-3", step, "712020:aaaa-1111", "approve")
    assert _source(jira).fetch("HELP-3").approvals[0].at is None  # step still pending
    jira.decide_jsm_approval("HELP-3", step, PORTAL_CUSTOMER["accountId"], "decline")

    snap = _source(jira).fetch("HELP-3")

    assert [(a.decision, a.at is not None) for a in snap.approvals] == [
        ("approved", True), ("rejected", True),
    ]
    # The double keeps JSM's copy in the Approvals field in step.
    [field_step] = snap.fields["customfield_10027"]
    assert field_step["finalDecision"] == "declined" and "completedDate" in field_step
    with pytest.raises(ValueError, match="already declined"):
        jira.decide_jsm_approval("HELP-3", step, "712020:aaaa-1111", "approve")


def test_jsm_approvals_are_paged(jira: JiraDouble, people: People) -> None:
    jira.approval_page_max = 2
    jira.create_issue("HELP-4", project="HELP", project_type="service_desk",
                      reporter=people["requester"])
    steps = [jira.add_jsm_approval("HELP-4", f"Step {n}", [people["approver"]])
             for n in range(5)]
    jira.decide_jsm_approval("HELP-4", steps[4], "712020:aaaa-1111", "approve")
    jira.reset_requests()

    snap = _source(jira).fetch("HELP-4")

    assert [a.approval_id.split(":")[0] for a in snap.approvals] == steps
    assert [a.decision for a in snap.approvals] == ["pending"] * 4 + ["approved"]
    assert [r.query["start"][0] for r in _sd_requests(jira)] == ["0", "2", "4"]


def test_non_jsm_project_makes_no_approval_call(jira: JiraDouble, people: People) -> None:
    # A look-alike in an ordinary custom field is not a reason to ask JSM either.
    lookalike = [{"id": "1", "approvers": [
        {"approver": people["bot"], "approverDecision": "approved"}]}]
    jira.create_issue("OPS-20", reporter=people["requester"],
                      fields={"customfield_19999": lookalike})
    jira.reset_requests()

    snap = _source(jira).fetch("OPS-20")

    assert snap.fields["project"]["projectTypeKey"] == "software"
    assert snap.approvals == ()
    assert _sd_requests(jira) == []
    assert all(r.status == 200 for r in jira.requests)


def test_jsm_field_on_non_jsm_issue_survives_the_404(jira: JiraDouble, people: People) -> None:
    jira.add_field("customfield_10027", "Approvals", SD_APPROVALS_TYPE)
    steps = [{"id": "5", "name": "Approval", "finalDecision": "approved",
              "approvers": [{"approver": people["approver"], "approverDecision": "approved"}],
              "completedDate": {"epochMillis": 1767001000000}}]
    jira.create_issue("OPS-21", reporter=people["requester"],
                      fields={"customfield_10027": steps})

    snap = _source(jira).fetch("OPS-21")  # 404 from the endpoint is not TicketNotFound

    assert _decisions(snap) == [("5:712020:aaaa-1111", "712020:aaaa-1111", "approved")]
    assert snap.approvals[0].at == datetime.fromtimestamp(1767001000, tz=UTC)
    assert [r.status for r in _sd_requests(jira)] == [404]


def test_jsm_endpoint_server_error_is_transient(jira: JiraDouble, people: People) -> None:
    jira.create_issue("HELP-5", project="HELP", project_type="service_desk",
                      reporter=people["requester"])
    jira.add_jsm_approval("HELP-5", "Manager approval", [people["approver"]])
    source = _source(jira)
    source.check()
    jira.fail_next(1, status=503, path=SD_PATH)

    with pytest.raises(TransientError) as info:
        source.fetch("HELP-5")

    assert "503" in str(info.value) and "approvals" in str(info.value)
    _assert_no_secret(info.value)
    assert [r.status for r in _sd_requests(jira)] == [503]
    assert [a.decision for a in source.fetch("HELP-5").approvals] == ["pending"]


def test_jsm_field_is_the_fallback_when_the_endpoint_is_forbidden(
    jira: JiraDouble, people: People
) -> None:
    jira.create_issue("HELP-6", project="HELP", project_type="service_desk",
                      reporter=people["requester"])
    step = jira.add_jsm_approval("HELP-6", "Manager approval", [people["approver"]])
    jira.decide_jsm_approval("HELP-6", step, "712020:aaaa-1111", "approve")
    source = _source(jira)
    from_endpoint = source.fetch("HELP-6").approvals
    jira.fail_next(1, status=403, path=SD_PATH)  # e.g. the API user is no JSM agent

    from_field = source.fetch("HELP-6").approvals

    assert from_field == from_endpoint
    assert _decisions(source.fetch("HELP-6")) == [
        (f"{step}:712020:aaaa-1111", "712020:aaaa-1111", "approved"),
    ]
    assert [r.status for r in _sd_requests(jira)] == [200, 403, 200]


def test_double_serves_the_servicedeskapi_approval_dto(jira: JiraDouble, people: People) -> None:
    jira.approval_page_max = 1
    issue_id = jira.create_issue("HELP-7", project="HELP", project_type="service_desk",
                                 reporter=people["requester"])
    first = jira.add_jsm_approval("HELP-7", "First", [PORTAL_CUSTOMER])
    jira.add_jsm_approval("HELP-7", "Second", [people["approver"]])
    jira.decide_jsm_approval("HELP-7", first, PORTAL_CUSTOMER["accountId"], "approve")
    jira.create_issue("OPS-22", reporter=people["requester"])
    auth = (jira.user, TOKEN)
    base = f"{jira.url}/rest/servicedeskapi/request"

    page = requests.get(f"{base}/HELP-7/approval", auth=auth, timeout=5).json()
    assert {k: page[k] for k in ("size", "start", "limit", "isLastPage")} == {
        "size": 1, "start": 0, "limit": 1, "isLastPage": False,
    }
    [dto] = page["values"]
    assert dto["id"] == first and dto["finalDecision"] == "approved"
    assert dto["approvers"][0]["approver"]["accountType"] == "customer"
    assert dto["approvers"][0]["approverDecision"] == "approved"
    assert set(dto["completedDate"]) >= {"iso8601", "epochMillis"}
    assert dto["_links"]["self"].endswith(f"/request/{issue_id}/approval/{first}")
    rest = requests.get(f"{base}/{issue_id}/approval", params={"start": 1},
                        auth=auth, timeout=5).json()
    assert rest["isLastPage"] is True and "completedDate" not in rest["values"][0]
    one = requests.get(dto["_links"]["self"], auth=auth, timeout=5).json()
    assert one == dto
    for url in (f"{base}/OPS-22/approval", f"{base}/HELP-7/approval/999"):
        missing = requests.get(url, auth=auth, timeout=5)
        assert missing.status_code == 404 and missing.json()["errorMessage"]
    with pytest.raises(ValueError, match="service desk"):
        jira.add_jsm_approval("OPS-22", "x", [people["approver"]])
