"""The pure decision engine: ``decide(snapshot, ledger, policy_set, now)``.

No I/O: tickets are built directly with a small builder, policies from dicts, and the
ledger is a list of ``LedgerGrant`` rows.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connectors.base import Approval, FieldChange, Identity, StatusChange, TicketRef, TicketSnapshot
from policies.engine import Decision, Deny, Grant, LedgerGrant, Revoke, candidate_principals, decide
from policies.loader import PolicySet
from policies.model import Policy, TargetSpec

# --------------------------------------------------------------------------- people

REQUESTER = Identity(
    source_id="acc-requester", name="bob", email="bob@contractor.example", display="Bob"
)
APPROVER = Identity(
    source_id="acc-approver", name="alice", email="alice@corp.example", display="Alice"
)
SECOND = Identity(source_id="acc-second", name="carol", email="carol@corp.example")
STRANGER = Identity(source_id="acc-stranger", name="mallory", display="Mallory")
DBA = Identity(source_id="acc-dba", display="Dee", groups=("grp-other", "grp-dba"))

# --------------------------------------------------------------------------- statuses

OPEN = ("1", "Open", "open")
IN_REVIEW = ("3", "In Review", "open")
APPROVED = ("10105", "Approved", "open")
APPROVED_PROD = ("10106", "Approved (prod)", "open")
DONE = ("10002", "Done", "closed")
REJECTED = ("10003", "Rejected", "closed")

T_APPROVED = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
NOW = T_APPROVED + timedelta(minutes=5)
DURATION = timedelta(hours=8)

REQUEST_FIELD = "customfield_10070"
PRINCIPAL_FIELD = "customfield_10071"


def change(
    history_id: str,
    to: tuple[str, str, str],
    *,
    author: Identity | None = APPROVER,
    at: datetime = T_APPROVED,
    from_status: str | None = "1",
) -> StatusChange:
    return StatusChange(
        history_id=history_id,
        author=author,
        at=at,
        from_status=from_status,
        to_status=to[0],
        to_name=to[1],
    )


APPROVAL = change("h100", APPROVED)
KEEP: Any = object()  # leave the default field value
DEFAULT_FIELDS: dict[str, Any] = {
    REQUEST_FIELD: {"value": "warehouse-read", "id": "10070"},
    PRINCIPAL_FIELD: "ctr_bob",
}


def ticket(
    status: tuple[str, str, str] = APPROVED,
    *,
    transitions: Sequence[StatusChange] | None = None,
    approvals: Sequence[Approval] = (),
    requester: Identity | None = REQUESTER,
    fields: dict[str, Any] | None = None,
    state: str | None = None,
    source: str = "jira",
    project: str | None = "OPS",
    issue_type: str | None = "Access Request",
    version: int = 7,
    requested: Any = KEEP,
    principal: Any = KEEP,
) -> TicketSnapshot:
    """An OPS "Access Request" asking for warehouse-read for ctr_bob, by default
    approved by an allowed approver (history entry h100)."""
    if transitions is None:
        transitions = [APPROVAL] if status == APPROVED else []
    all_fields = dict(DEFAULT_FIELDS if fields is None else fields)
    if requested is not KEEP:
        all_fields[REQUEST_FIELD] = requested
    if principal is not KEEP:
        all_fields[PRINCIPAL_FIELD] = principal
    return TicketSnapshot(
        ref=TicketRef(source=source, id="10042", key="OPS-12", url="https://x/browse/OPS-12"),
        status=status[0],
        status_name=status[1],
        state=state or status[2],
        version=version,
        updated_at=T_APPROVED,
        project=project,
        issue_type=issue_type,
        requester=requester,
        transitions=tuple(transitions),
        approvals=tuple(approvals),
        fields=all_fields,
    )


def approval(who: Identity, decision: str = "approved", n: int = 1) -> Approval:
    return Approval(
        approval_id=f"jsm-{n}",
        approver=who,
        decision=decision,
        at=T_APPROVED - timedelta(minutes=1),
    )


# --------------------------------------------------------------------------- policies

TARGETS = {
    "warehouse": TargetSpec(type="postgres", principal_pattern=r"^ctr_[a-z0-9_]{2,40}$"),
    "audit": TargetSpec(type="postgres", reserved_principals=("ctr_ops",)),
}


def make_policy(
    name: str = "warehouse-read",
    *,
    requested: str | None = "warehouse-read",
    approvers: dict[str, Any] | None = None,
    **overrides: Any,
) -> Policy:
    body: dict[str, Any] = {
        "name": name,
        "source": "jira",
        "match": {"project": "OPS", "issue_type": "Access Request"},
        "approved_statuses": ["Approved", "10106"],
        "closed_statuses": ["Done", "Cancelled"],
        "rejected_statuses": ["Rejected"],
        "approvers": approvers or {"users": ["acc-approver"]},
        "principal": {"from": "field", "field": PRINCIPAL_FIELD},
        "grants": [{"target": "warehouse", "role": "analytics_ro"}],
        "duration": "8h",
        "max_duration": "24h",
    }
    if requested is not None:
        body["match"]["requested"] = {"field": REQUEST_FIELD, "equals": requested}
    body.update(overrides)
    return Policy.model_validate(body)


def policies(*items: Policy) -> PolicySet:
    return PolicySet(targets=TARGETS, policies=items or (make_policy(),))


def held(
    grant_id: str = "g1",
    *,
    state: str = "active",
    policy: str = "warehouse-read",
    target: str = "warehouse",
    role: str = "analytics_ro",
    principal: str = "ctr_bob",
    approval_ref: str = "h100",
) -> LedgerGrant:
    return LedgerGrant(
        grant_id=grant_id,
        policy=policy,
        target=target,
        role=role,
        principal=principal,
        approval_ref=approval_ref,
        state=state,
    )


def run(
    snapshot: TicketSnapshot | None = None,
    ledger: Sequence[LedgerGrant] = (),
    policy_set: PolicySet | None = None,
    now: datetime = NOW,
) -> Decision:
    decision = decide(
        snapshot if snapshot is not None else ticket(),
        list(ledger),
        policy_set or policies(),
        now,
    )
    # invariants that hold for every decision
    revoked = [r.grant_id for r in decision.revokes]
    assert len(revoked) == len(set(revoked)), "a grant was revoked twice"
    assert len(decision.actions) == len(decision.grants) + len(decision.revokes) + len(
        decision.denials
    )
    return decision


def only_denial(decision: Decision) -> Deny:
    assert decision.grants == ()
    assert len(decision.denials) == 1, decision.actions
    return decision.denials[0]


def revokes(decision: Decision) -> set[tuple[str, str]]:
    return {(r.grant_id, r.reason) for r in decision.revokes}


# =========================================================================== grants


def test_approved_by_allowed_user_grants_once() -> None:
    policy = make_policy()
    decision = run(policy_set=policies(policy))

    assert decision.ignored is None
    assert decision.revokes == ()
    assert decision.denials == ()
    assert len(decision.grants) == 1
    grant = decision.grants[0]
    assert grant == Grant(
        policy="warehouse-read",
        policy_digest=policy.digest,
        target="warehouse",
        role="analytics_ro",
        principal="ctr_bob",
        approval_ref="h100",
        approver=APPROVER,
        approvers=(APPROVER,),
        requester=REQUESTER,
        starts_at=T_APPROVED,
        expires_at=T_APPROVED + DURATION,
        request_digest=grant.request_digest,
    )
    assert len(grant.request_digest) == 64
    assert grant.notes == ()


@pytest.mark.parametrize(
    ("duration", "max_duration", "expected"),
    [
        ("8h", "24h", timedelta(hours=8)),
        ("24h", "24h", timedelta(hours=24)),
        ("30m", None, timedelta(minutes=30)),
        ("2d", "1w", timedelta(days=2)),
    ],
)
def test_expiry_is_approval_time_plus_duration(
    duration: str, max_duration: str | None, expected: timedelta
) -> None:
    policy = make_policy(duration=duration, max_duration=max_duration)
    (grant,) = run(policy_set=policies(policy)).grants
    assert grant.starts_at == T_APPROVED
    assert grant.expires_at == T_APPROVED + expected


def test_expiry_is_capped_by_max_duration() -> None:
    # Validation keeps duration <= max_duration; a policy that slips past it is still capped.
    policy = make_policy(duration="8h", max_duration="12h").model_copy(
        update={"duration": timedelta(days=30)}
    )
    (grant,) = run(policy_set=policies(policy)).grants
    assert grant.expires_at == T_APPROVED + timedelta(hours=12)


def test_expiry_counts_from_approval_not_from_now() -> None:
    later = T_APPROVED + timedelta(hours=3)
    (grant,) = run(now=later).grants
    assert grant.expires_at == T_APPROVED + DURATION


@pytest.mark.parametrize(
    "user_ref",
    ["acc-approver", "alice", "alice@corp.example", "ALICE@Corp.Example", " acc-approver "],
)
def test_approver_named_by_id_name_or_email(user_ref: str) -> None:
    policy = make_policy(approvers={"users": ["someone-else", user_ref]})
    (grant,) = run(policy_set=policies(policy)).grants
    assert grant.approver == APPROVER


def test_approver_named_by_wrong_case_id_is_not_allowed() -> None:
    policy = make_policy(approvers={"users": ["ACC-APPROVER"]})
    assert only_denial(run(policy_set=policies(policy))).rule == "approver_not_allowed"


def test_group_based_approval() -> None:
    policy = make_policy(approvers={"users": ["nobody"], "groups": ["grp-dba"]})
    snapshot = ticket(transitions=[change("h100", APPROVED, author=DBA)])
    (grant,) = run(snapshot, policy_set=policies(policy)).grants
    assert grant.approver == DBA


@pytest.mark.parametrize("groups", [(), ("grp-other",), ("GRP-DBA",), ("grp-dba-2",)])
def test_group_not_held_is_not_allowed(groups: tuple[str, ...]) -> None:
    policy = make_policy(approvers={"groups": ["grp-dba"]})
    person = Identity(source_id="acc-x", groups=groups)
    snapshot = ticket(transitions=[change("h100", APPROVED, author=person)])
    assert only_denial(run(snapshot, policy_set=policies(policy))).rule == "approver_not_allowed"


def test_approval_into_second_approved_status_by_id() -> None:
    snapshot = ticket(APPROVED_PROD, transitions=[change("h7", APPROVED_PROD)])
    (grant,) = run(snapshot).grants
    assert grant.approval_ref == "h7"


# =========================================================================== who approved


@pytest.mark.parametrize(
    ("transitions", "outcome"),
    [
        # the latest entry into the current status decides
        pytest.param(
            [
                change("h1", APPROVED, author=STRANGER),
                change("h2", OPEN, author=REQUESTER, from_status="10105"),
                change("h3", APPROVED, author=APPROVER),
            ],
            ("grant", "h3"),
            id="stranger-then-withdrawn-then-allowed",
        ),
        pytest.param(
            [
                change("h1", APPROVED, author=APPROVER),
                change("h2", OPEN, author=REQUESTER, from_status="10105"),
                change("h3", APPROVED, author=STRANGER),
            ],
            ("deny", "approver_not_allowed"),
            id="allowed-earlier-but-stranger-now",
        ),
        pytest.param(
            [
                change("h1", IN_REVIEW, author=APPROVER),
                change("h2", APPROVED, author=STRANGER, from_status="3"),
            ],
            ("deny", "approver_not_allowed"),
            id="allowed-person-moved-it-elsewhere",
        ),
        pytest.param(
            [
                change("h1", APPROVED, author=STRANGER),
                change("h2", IN_REVIEW, author=APPROVER, from_status="10105"),
                change("h3", APPROVED, author=STRANGER, from_status="3"),
            ],
            ("deny", "approver_not_allowed"),
            id="allowed-person-took-it-out-of-approved",
        ),
        pytest.param(
            [
                change("h1", APPROVED_PROD, author=APPROVER),
                change("h2", APPROVED, author=STRANGER, from_status="10106"),
            ],
            ("deny", "approver_not_allowed"),
            id="allowed-approval-into-another-approved-status",
        ),
        pytest.param(
            # current status is Approved, but the only approval went into Approved (prod)
            [change("h1", APPROVED_PROD, author=APPROVER)],
            ("deny", "approval_not_verified"),
            id="no-entry-into-the-current-status",
        ),
    ],
)
def test_approver_comes_from_the_entry_into_the_current_status(
    transitions: list[StatusChange], outcome: tuple[str, str]
) -> None:
    snapshot = ticket(transitions=transitions)
    decision = run(snapshot)
    kind, value = outcome
    if kind == "grant":
        (grant,) = decision.grants
        assert grant.approval_ref == value
        assert grant.approver == APPROVER
        assert decision.denials == ()
    else:
        assert only_denial(decision).rule == value


def test_approver_is_not_taken_from_the_requester_or_a_non_approving_approval() -> None:
    # The requester is allowed as an approver, and the allowed approver left a
    # *rejected* JSM approval: neither makes the stranger's transition acceptable.
    policy = make_policy(approvers={"users": ["acc-approver", "acc-requester"],
                                    "allow_self_approval": True})
    snapshot = ticket(
        transitions=[change("h100", APPROVED, author=STRANGER)],
        approvals=[approval(APPROVER, "rejected"), approval(APPROVER, "pending", 2)],
    )
    assert only_denial(run(snapshot, policy_set=policies(policy))).rule == "approver_not_allowed"


@pytest.mark.parametrize(
    "transitions",
    [
        pytest.param([], id="no-history"),
        pytest.param([change("h1", OPEN)], id="history-into-other-status-only"),
        pytest.param([change("h1", APPROVED, author=None)], id="entry-without-author"),
        pytest.param(
            [change("h1", APPROVED, author=APPROVER), change("h2", APPROVED, author=None)],
            id="latest-entry-without-author",
        ),
    ],
)
def test_approval_not_verified(transitions: list[StatusChange]) -> None:
    denial = only_denial(run(ticket(transitions=transitions)))
    assert denial.rule == "approval_not_verified"
    assert denial.policy == "warehouse-read"


def test_approval_not_verified_even_with_jsm_approvals() -> None:
    snapshot = ticket(transitions=[], approvals=[approval(APPROVER), approval(SECOND, n=2)])
    assert only_denial(run(snapshot)).rule == "approval_not_verified"


# =========================================================================== self approval


@pytest.mark.parametrize(
    ("requester", "transitions", "approvals"),
    [
        pytest.param(
            APPROVER, [change("h100", APPROVED, author=APPROVER)], [], id="same-account"
        ),
        pytest.param(
            Identity(source_id="other-account", email="ALICE@corp.example"),
            [change("h100", APPROVED, author=APPROVER)],
            [],
            id="same-email-other-account",
        ),
        pytest.param(
            REQUESTER,
            [change("h100", APPROVED, author=APPROVER)],
            [approval(REQUESTER)],
            id="requester-in-jsm-approvals",
        ),
    ],
)
def test_self_approval_denied(
    requester: Identity, transitions: list[StatusChange], approvals: list[Approval]
) -> None:
    policy = make_policy(approvers={"users": ["acc-approver", "acc-requester"]})
    snapshot = ticket(requester=requester, transitions=transitions, approvals=approvals)
    denial = only_denial(run(snapshot, policy_set=policies(policy)))
    assert denial.rule == "self_approval"
    assert denial.policy == "warehouse-read"


def test_self_approval_allowed_when_policy_says_so() -> None:
    policy = make_policy(approvers={"users": ["acc-approver"], "allow_self_approval": True})
    snapshot = ticket(requester=APPROVER)
    (grant,) = run(snapshot, policy_set=policies(policy)).grants
    assert grant.approver == APPROVER
    assert grant.requester == APPROVER


def test_self_approval_allowed_still_needs_an_allowed_approver() -> None:
    policy = make_policy(approvers={"users": ["acc-approver"], "allow_self_approval": True})
    snapshot = ticket(requester=STRANGER, transitions=[change("h100", APPROVED, author=STRANGER)])
    assert only_denial(run(snapshot, policy_set=policies(policy))).rule == "approver_not_allowed"


def test_no_requester_is_not_self_approval() -> None:
    policy = make_policy(principal={"from": "field", "field": PRINCIPAL_FIELD})
    (grant,) = run(ticket(requester=None), policy_set=policies(policy)).grants
    assert grant.requester is None


# =========================================================================== approver rules


def test_approver_not_allowed() -> None:
    snapshot = ticket(transitions=[change("h100", APPROVED, author=STRANGER)])
    denial = only_denial(run(snapshot))
    assert denial.rule == "approver_not_allowed"
    assert denial.policy == "warehouse-read"
    assert "Mallory" in denial.message


@pytest.mark.parametrize(
    ("approvals", "outcome"),
    [
        pytest.param([], "insufficient_approvals", id="one-approver"),
        pytest.param([approval(SECOND)], "grant", id="second-allowed-jsm-approval"),
        pytest.param([approval(STRANGER)], "insufficient_approvals", id="second-not-allowed"),
        pytest.param(
            [approval(SECOND, "pending")], "insufficient_approvals", id="second-pending"
        ),
        pytest.param(
            [approval(SECOND, "rejected")], "insufficient_approvals", id="second-rejected"
        ),
        pytest.param(
            [approval(APPROVER), approval(APPROVER, n=2)],
            "insufficient_approvals",
            id="same-person-twice",
        ),
        pytest.param(
            [approval(Identity(source_id="acc-x", email="Alice@Corp.Example"))],
            "insufficient_approvals",
            id="same-person-by-email",
        ),
        pytest.param(
            [approval(STRANGER), approval(SECOND, n=2)], "grant", id="stranger-and-second"
        ),
    ],
)
def test_min_approvals(approvals: list[Approval], outcome: str) -> None:
    policy = make_policy(approvers={"users": ["acc-approver", "acc-second"], "min_approvals": 2})
    decision = run(ticket(approvals=approvals), policy_set=policies(policy))
    if outcome == "grant":
        (grant,) = decision.grants
        assert grant.approver == APPROVER
        assert set(grant.approvers) == {APPROVER, SECOND}
        assert decision.denials == ()
    else:
        denial = only_denial(decision)
        assert denial.rule == outcome
        assert "of 2" in denial.message


def test_min_approvals_by_group_members() -> None:
    policy = make_policy(approvers={"groups": ["grp-dba"], "min_approvals": 2})
    other_dba = Identity(source_id="acc-dba-2", groups=("grp-dba",))
    snapshot = ticket(
        transitions=[change("h100", APPROVED, author=DBA)], approvals=[approval(other_dba)]
    )
    (grant,) = run(snapshot, policy_set=policies(policy)).grants
    assert grant.approvers == (DBA, other_dba)


# =========================================================================== principal


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        pytest.param(None, "principal_missing", id="absent"),
        pytest.param("", "principal_missing", id="empty"),
        pytest.param("   ", "principal_missing", id="blank"),
        pytest.param({"value": None}, "principal_missing", id="empty-option"),
        pytest.param(["ctr_a", "ctr_b"], "principal_missing", id="two-values"),
        pytest.param("postgres", "principal_invalid", id="reserved-postgres"),
        pytest.param("pg_monitor", "principal_invalid", id="reserved-pg-prefix"),
        pytest.param("bob", "principal_invalid", id="pattern-mismatch"),
        pytest.param("CTR_BOB", "principal_invalid", id="pattern-case"),
        pytest.param("ctr_bob; DROP ROLE postgres", "principal_invalid", id="sql-injection"),
        pytest.param('ctr_bob" SUPERUSER --', "principal_invalid", id="quote-injection"),
        pytest.param("ctr_bob\nctr_eve", "principal_invalid", id="newline"),
        pytest.param("ctr_b", "principal_invalid", id="too-short"),
    ],
)
def test_bad_principal_denied(value: Any, rule: str) -> None:
    fields = dict(DEFAULT_FIELDS)
    if value is None:
        del fields[PRINCIPAL_FIELD]
    else:
        fields[PRINCIPAL_FIELD] = value
    denial = only_denial(run(ticket(fields=fields)))
    assert denial.rule == rule
    assert denial.policy == "warehouse-read"


@pytest.mark.parametrize(
    ("value", "principal"),
    [
        ("ctr_bob", "ctr_bob"),
        ("  ctr_bob\n", "ctr_bob"),
        ({"value": "ctr_bob"}, "ctr_bob"),
        ([{"value": "ctr_bob"}], "ctr_bob"),
    ],
)
def test_principal_from_field(value: Any, principal: str) -> None:
    (grant,) = run(ticket(principal=value)).grants
    assert grant.principal == principal


@pytest.mark.parametrize(
    ("rule", "requester", "outcome"),
    [
        ({"from": "requester_email_local"}, REQUESTER.model_copy(
            update={"email": "ctr_bob@contractor.example"}), "ctr_bob"),
        ({"from": "requester_email_local"}, REQUESTER.model_copy(update={"email": None}),
         "principal_missing"),
        ({"from": "requester_email_local"}, REQUESTER.model_copy(update={"email": "ctr_bob"}),
         "principal_missing"),
        ({"from": "requester_user_name"}, REQUESTER.model_copy(update={"name": "ctr_bob"}),
         "ctr_bob"),
        ({"from": "requester_user_name"}, REQUESTER.model_copy(update={"name": None}),
         "principal_missing"),
        ({"from": "requester_user_name"}, REQUESTER.model_copy(update={"name": "postgres"}),
         "principal_invalid"),
        ({"from": "map", "map": {"acc-requester": "ctr_bobby"}}, REQUESTER, "ctr_bobby"),
        ({"from": "map", "map": {"bob": "ctr_by_name"}}, REQUESTER, "ctr_by_name"),
        ({"from": "map", "map": {"bob@contractor.example": "ctr_by_mail"}}, REQUESTER,
         "ctr_by_mail"),
        ({"from": "map", "map": {"someone": "ctr_other"}}, REQUESTER, "principal_missing"),
        ({"from": "map", "map": {"acc-requester": "ctr_bobby"}}, None, "principal_missing"),
        ({"from": "requester_user_name"}, None, "principal_missing"),
    ],
)
def test_principal_rules(rule: dict[str, Any], requester: Identity | None, outcome: str) -> None:
    policy = make_policy(principal=rule)
    decision = run(ticket(requester=requester), policy_set=policies(policy))
    if outcome.startswith("principal_"):
        assert only_denial(decision).rule == outcome
    else:
        (grant,) = decision.grants
        assert grant.principal == outcome


def test_principal_checked_against_every_grant_target() -> None:
    # ctr_ops matches warehouse's pattern but is reserved on the audit target:
    # nothing is granted, not even the warehouse part.
    policy = make_policy(
        grants=[
            {"target": "warehouse", "role": "analytics_ro"},
            {"target": "audit", "role": "reader"},
        ]
    )
    denial = only_denial(run(ticket(principal="ctr_ops"), policy_set=policies(policy)))
    assert denial.rule == "principal_invalid"
    assert "reserved" in denial.message


# =========================================================================== requested access


def test_unknown_requested_access_while_approved() -> None:
    decision = run(ticket(requested={"value": "warehouse-admin"}))
    denial = only_denial(decision)
    assert denial.rule == "unknown_requested_access"
    assert denial.policy is None
    assert "warehouse-admin" in denial.message
    assert denial.key.endswith(":h100")


@pytest.mark.parametrize("status", [OPEN, IN_REVIEW])
def test_unknown_requested_access_while_open_is_not_denied(
    status: tuple[str, str, str],
) -> None:
    decision = run(ticket(status, requested="warehouse-admin"))
    assert decision.actions == ()
    assert decision.ignored is None
    assert decision.notes


def test_missing_requested_field_while_approved() -> None:
    fields = {PRINCIPAL_FIELD: "ctr_bob"}
    denial = only_denial(run(ticket(fields=fields)))
    assert denial.rule == "unknown_requested_access"
    assert "(nothing)" in denial.message


# =========================================================================== expiry


@pytest.mark.parametrize(
    ("elapsed", "granted"),
    [
        (timedelta(0), True),
        (DURATION - timedelta(seconds=1), True),
        (DURATION, False),
        (DURATION + timedelta(seconds=1), False),
        (timedelta(days=30), False),
    ],
)
def test_expired_before_grant(elapsed: timedelta, granted: bool) -> None:
    decision = run(now=T_APPROVED + elapsed)
    if granted:
        assert len(decision.grants) == 1
        assert decision.denials == ()
    else:
        assert only_denial(decision).rule == "expired_before_grant"


@pytest.mark.parametrize("state", ["revoked", "active"])
def test_no_expired_before_grant_denial_after_the_grant_was_issued(state: str) -> None:
    decision = run(ledger=[held(state=state)], now=T_APPROVED + DURATION + timedelta(hours=1))
    assert decision.grants == ()
    assert decision.denials == ()


# =========================================================================== idempotency


@pytest.mark.parametrize(
    "state", ["pending", "active", "revoking", "revoke_failed", "revoked", "grant_failed"]
)
def test_ledger_already_holds_the_grant(state: str) -> None:
    decision = run(ledger=[held(state=state)])
    assert decision.grants == ()
    assert decision.revokes == ()
    assert decision.denials == ()


@pytest.mark.parametrize(
    ("ledger_row", "expect_grant"),
    [
        pytest.param(held(policy="other-policy", state="revoked"), True, id="other-policy"),
        pytest.param(held(target="audit", state="revoked"), True, id="other-target"),
        pytest.param(held(role="analytics_rw", state="revoked"), True, id="other-role"),
        pytest.param(held(principal="ctr_eve", state="revoked"), True, id="other-principal"),
        pytest.param(held(approval_ref="h050", state="revoked"), True, id="earlier-approval"),
        pytest.param(
            held(approval_ref="h050", state="grant_failed"), True, id="earlier-failed"
        ),
        pytest.param(held(approval_ref="h050", state="active"), False, id="still-held"),
    ],
)
def test_idempotency_key(ledger_row: LedgerGrant, expect_grant: bool) -> None:
    decision = run(ledger=[ledger_row])
    assert len(decision.grants) == (1 if expect_grant else 0)
    assert decision.denials == ()


def test_reapproval_after_withdrawal_grants_again() -> None:
    transitions = [
        change("h100", APPROVED),
        change("h150", OPEN, author=REQUESTER, from_status="10105"),
        change("h200", APPROVED, at=T_APPROVED + timedelta(hours=1)),
    ]
    decision = run(
        ticket(transitions=transitions),
        ledger=[held(state="revoked")],
        now=T_APPROVED + timedelta(hours=1, minutes=1),
    )
    (grant,) = decision.grants
    assert grant.approval_ref == "h200"
    assert grant.expires_at == T_APPROVED + timedelta(hours=1) + DURATION


# =========================================================================== revocations

LEDGER_ALL_STATES = [
    held("g-pending", state="pending"),
    held("g-active", state="active"),
    held("g-failed", state="revoke_failed"),
    held("g-revoking", state="revoking"),
    held("g-revoked", state="revoked"),
    held("g-grant-failed", state="grant_failed"),
]
LIVE_IDS = {"g-pending", "g-active", "g-failed"}


@pytest.mark.parametrize(
    ("snapshot", "reason"),
    [
        pytest.param(ticket(DONE), "ticket_closed", id="done"),
        pytest.param(ticket(("x", "Cancelled", "open")), "ticket_closed", id="cancelled"),
        pytest.param(ticket(("x", "Resolved", "closed")), "ticket_closed", id="source-closed"),
        pytest.param(ticket(REJECTED), "ticket_rejected", id="rejected"),
        pytest.param(ticket(("x", "Declined", "rejected")), "ticket_rejected",
                     id="source-rejected"),
        pytest.param(ticket(OPEN), "approval_withdrawn", id="back-to-open"),
        pytest.param(ticket(IN_REVIEW), "approval_withdrawn", id="in-review"),
    ],
)
def test_live_grants_revoked_when_ticket_leaves_approved(
    snapshot: TicketSnapshot, reason: str
) -> None:
    decision = run(snapshot, ledger=LEDGER_ALL_STATES)
    assert revokes(decision) == {(g, reason) for g in LIVE_IDS}
    assert decision.grants == ()
    assert decision.denials == ()
    assert decision.ignored is None


@pytest.mark.parametrize("status", [DONE, REJECTED, OPEN])
def test_nothing_to_revoke_when_nothing_is_live(status: tuple[str, str, str]) -> None:
    ledger = [held("g1", state="revoked"), held("g2", state="grant_failed")]
    assert run(ticket(status), ledger=ledger).actions == ()


def test_closed_status_with_approved_history_still_revokes() -> None:
    snapshot = ticket(DONE, transitions=[APPROVAL, change("h200", DONE, from_status="10105")])
    decision = run(snapshot, ledger=[held()])
    assert revokes(decision) == {("g1", "ticket_closed")}


@pytest.mark.parametrize(
    "snapshot",
    [
        pytest.param(ticket(state="deleted"), id="approved-status"),
        pytest.param(ticket(OPEN, state="deleted"), id="open-status"),
        pytest.param(ticket(state="deleted", project="OTHER"), id="out-of-scope"),
        pytest.param(ticket(state="deleted", source="servicenow"), id="no-policy-for-source"),
    ],
)
def test_deleted_ticket_revokes_live_grants(snapshot: TicketSnapshot) -> None:
    decision = run(snapshot, ledger=LEDGER_ALL_STATES)
    assert revokes(decision) == {(g, "ticket_deleted") for g in LIVE_IDS}
    assert decision.grants == ()
    assert decision.denials == ()


@pytest.mark.parametrize(
    "snapshot",
    [
        pytest.param(ticket(project="SEC"), id="moved-project"),
        pytest.param(ticket(issue_type="Bug"), id="changed-issue-type"),
        pytest.param(ticket(project=None), id="project-unknown"),
        pytest.param(ticket(source="servicenow"), id="other-source"),
    ],
)
def test_out_of_scope_ticket_revokes_as_stale_and_is_ignored(snapshot: TicketSnapshot) -> None:
    decision = run(snapshot, ledger=LEDGER_ALL_STATES)
    assert revokes(decision) == {(g, "stale") for g in LIVE_IDS}
    assert decision.grants == ()
    assert decision.denials == ()
    assert decision.ignored


def test_out_of_scope_without_grants_is_only_ignored() -> None:
    decision = run(ticket(project="SEC"))
    assert decision.actions == ()
    assert decision.ignored == "no policy covers this ticket"


# =========================================================================== request changes

READ = make_policy("warehouse-read", requested="warehouse-read")
WRITE = make_policy(
    "warehouse-write",
    requested="warehouse-write",
    grants=[{"target": "warehouse", "role": "analytics_rw"}],
)


def test_requested_access_changed_to_another_policy() -> None:
    snapshot = ticket(requested={"value": "warehouse-write"})
    decision = run(snapshot, ledger=[held("g-read")], policy_set=policies(READ, WRITE))
    assert revokes(decision) == {("g-read", "request_changed")}
    (grant,) = decision.grants
    assert (grant.policy, grant.role, grant.principal) == ("warehouse-write", "analytics_rw",
                                                           "ctr_bob")
    assert decision.denials == ()


def test_requested_access_changed_to_another_policy_while_open() -> None:
    snapshot = ticket(OPEN, requested="warehouse-write")
    decision = run(snapshot, ledger=[held("g-read")], policy_set=policies(READ, WRITE))
    assert revokes(decision) == {("g-read", "request_changed")}
    assert decision.grants == ()


def test_requested_access_changed_to_unknown_value() -> None:
    snapshot = ticket(requested="warehouse-admin")
    decision = run(snapshot, ledger=[held("g-read")], policy_set=policies(READ, WRITE))
    assert revokes(decision) == {("g-read", "request_changed")}
    assert [d.rule for d in decision.denials] == ["unknown_requested_access"]
    assert decision.grants == ()


def test_principal_edited_while_approved() -> None:
    snapshot = ticket(principal="ctr_carol")
    decision = run(snapshot, ledger=[held("g-bob", principal="ctr_bob")])
    assert revokes(decision) == {("g-bob", "request_changed")}
    (grant,) = decision.grants
    assert grant.principal == "ctr_carol"
    assert grant.approval_ref == "h100"
    assert decision.denials == ()


def test_principal_edited_to_an_invalid_name_revokes_and_denies() -> None:
    snapshot = ticket(principal="postgres")
    decision = run(snapshot, ledger=[held("g-bob")])
    assert revokes(decision) == {("g-bob", "request_changed")}
    assert [d.rule for d in decision.denials] == ["principal_invalid"]
    assert decision.grants == ()


def test_reapproved_by_stranger_revokes_and_denies() -> None:
    transitions = [
        APPROVAL,
        change("h150", OPEN, author=REQUESTER, from_status="10105"),
        change("h200", APPROVED, author=STRANGER),
    ]
    decision = run(ticket(transitions=transitions), ledger=[held("g1")])
    assert revokes(decision) == {("g1", "request_changed")}
    assert [d.rule for d in decision.denials] == ["approver_not_allowed"]


def test_policy_roles_edited_while_approved() -> None:
    # The policy now grants another role: the old one goes, the new one comes.
    policy = make_policy(grants=[{"target": "warehouse", "role": "analytics_v2"}])
    decision = run(ledger=[held("g-old", role="analytics_ro")], policy_set=policies(policy))
    assert revokes(decision) == {("g-old", "request_changed")}
    assert [g.role for g in decision.grants] == ["analytics_v2"]


# =========================================================================== deny keys


def _deny_key(snapshot: TicketSnapshot, now: datetime = NOW) -> str:
    return only_denial(run(snapshot, now=now)).key


@pytest.mark.parametrize(
    "author", [STRANGER, REQUESTER], ids=["approver_not_allowed", "self_approval"]
)
def test_deny_key_is_stable_for_the_same_approval(author: Identity) -> None:
    policy_set = policies(make_policy(approvers={"users": ["acc-approver", "acc-requester"]}))

    def key(history_id: str, version: int, now: datetime) -> str:
        snapshot = ticket(
            transitions=[change(history_id, APPROVED, author=author)], version=version
        )
        return only_denial(run(snapshot, policy_set=policy_set, now=now)).key

    first = key("h100", 7, NOW)
    assert first == key("h100", 8, NOW + timedelta(minutes=1))
    assert first == key("h100", 9, NOW + timedelta(hours=1))
    assert first != key("h200", 9, NOW)
    assert first.startswith("jira:10042:warehouse-read:")
    assert first.endswith(":h100")


def test_deny_keys_differ_by_rule_and_policy() -> None:
    stranger = ticket(transitions=[change("h100", APPROVED, author=STRANGER)])
    bad_principal = ticket(principal="postgres")
    unknown = ticket(requested="warehouse-admin")
    keys = {_deny_key(stranger), _deny_key(bad_principal), _deny_key(unknown)}
    assert keys == {
        "jira:10042:warehouse-read:approver_not_allowed:h100",
        "jira:10042:warehouse-read:principal_invalid:h100",
        "jira:10042:-:unknown_requested_access:h100",
    }


def test_unverified_approval_is_denied_once_per_status_not_per_version() -> None:
    """Edits to a ticket stuck in an unverifiable approved status do not repeat the denial."""
    a = _deny_key(ticket(transitions=[], version=7))
    assert a == _deny_key(ticket(transitions=[], version=7), now=NOW + timedelta(hours=1))
    assert a == _deny_key(ticket(transitions=[], version=8))
    assert a.endswith(":approval_not_verified:status-10105")


# =========================================================================== multi grant


def test_multi_grant_policy_emits_one_grant_per_item() -> None:
    items = [
        {"target": "warehouse", "role": "analytics_ro"},
        {"target": "warehouse", "role": "reporting_ro"},
        {"target": "audit", "role": "reader"},
    ]
    policy = make_policy(grants=items)
    decision = run(policy_set=policies(policy))
    assert [(g.target, g.role) for g in decision.grants] == [
        (i["target"], i["role"]) for i in items
    ]
    assert {g.principal for g in decision.grants} == {"ctr_bob"}
    assert {g.expires_at for g in decision.grants} == {T_APPROVED + DURATION}
    assert {g.approval_ref for g in decision.grants} == {"h100"}

    # with one of them already in the ledger, only the others are granted
    again = run(ledger=[held(role="reporting_ro", state="active")], policy_set=policies(policy))
    assert [(g.target, g.role) for g in again.grants] == [
        ("warehouse", "analytics_ro"),
        ("audit", "reader"),
    ]
    assert again.revokes == ()


def test_two_policies_for_the_same_request_both_grant() -> None:
    other = make_policy("warehouse-read-audit", grants=[{"target": "audit", "role": "reader"}])
    decision = run(policy_set=policies(make_policy(), other))
    assert sorted(g.policy for g in decision.grants) == ["warehouse-read", "warehouse-read-audit"]


def test_policies_of_other_sources_are_not_consulted() -> None:
    snow = make_policy("snow-read", source="servicenow", match={})
    decision = run(policy_set=policies(make_policy(), snow))
    assert [g.policy for g in decision.grants] == ["warehouse-read"]


# =========================================================================== purity


@pytest.mark.parametrize(
    ("snapshot", "ledger"),
    [
        pytest.param(ticket(), [], id="grant"),
        pytest.param(ticket(DONE), LEDGER_ALL_STATES, id="revoke"),
        pytest.param(ticket(transitions=[change("h1", APPROVED, author=STRANGER)]),
                     [held()], id="deny"),
        pytest.param(ticket(project="SEC"), [held()], id="ignored"),
    ],
)
def test_decide_is_deterministic_and_does_not_mutate_inputs(
    snapshot: TicketSnapshot, ledger: list[LedgerGrant]
) -> None:
    policy_set = policies(READ, WRITE)
    snapshot_before = snapshot.model_dump()
    ledger_arg = list(ledger)
    ledger_before = copy.deepcopy(ledger_arg)
    targets_before = dict(policy_set.targets)
    policies_before = policy_set.policies

    first = decide(snapshot, ledger_arg, policy_set, NOW)
    second = decide(snapshot, ledger_arg, policy_set, NOW)

    assert first == second
    assert first.model_dump() == second.model_dump()
    assert first.actions  # every case here decides something
    assert snapshot.model_dump() == snapshot_before
    assert ledger_arg == ledger_before
    assert dict(policy_set.targets) == targets_before
    assert policy_set.policies == policies_before


def test_decision_accessors_split_actions() -> None:
    decision = run(ticket(requested="warehouse-admin"), ledger=[held()])
    assert all(isinstance(a, Revoke) for a in decision.revokes)
    assert all(isinstance(a, Deny) for a in decision.denials)
    assert len(decision.revokes) == 1
    assert len(decision.denials) == 1


# =========================================================================== issue 5 rules


def test_sponsor_may_not_approve() -> None:
    policy = make_policy(approvers={"users": ["acc-approver"], "sponsor_field": "customfield_9"})
    fields = dict(DEFAULT_FIELDS)
    fields["customfield_9"] = {"accountId": APPROVER.source_id, "displayName": "Sponsor"}
    denial = only_denial(run(ticket(fields=fields), policy_set=policies(policy)))
    assert denial.rule == "sponsor_approved"

    fields["customfield_9"] = {"accountId": "acc-someone-else"}
    assert len(run(ticket(fields=fields), policy_set=policies(policy)).grants) == 1

    del fields["customfield_9"]
    assert only_denial(run(ticket(fields=fields), policy_set=policies(policy))).rule == (
        "sponsor_missing"
    )


def test_per_principal_limit_counts_grants_held_through_other_tickets() -> None:
    policy = make_policy(max_grants_per_principal=1)
    snapshot = ticket()
    pairs = candidate_principals(snapshot, policies(policy))
    assert pairs == {("warehouse-read", "ctr_bob")}
    free = decide(snapshot, [], policies(policy), NOW, principal_load={})
    assert len(free.grants) == 1
    busy = decide(snapshot, [], policies(policy), NOW,
                  principal_load={"warehouse-read\x1fctr_bob": 1})
    assert only_denial(busy).rule == "principal_limit_reached"


def test_a_field_edit_after_the_approving_entry_voids_the_approval() -> None:
    edit_after = FieldChange(history_id="101", field=PRINCIPAL_FIELD,
                             at=T_APPROVED + timedelta(minutes=5))
    edit_before = FieldChange(history_id="99", field=PRINCIPAL_FIELD,
                              at=T_APPROVED - timedelta(minutes=5))
    unrelated = FieldChange(history_id="102", field="labels",
                            at=T_APPROVED + timedelta(minutes=6))
    live = LedgerGrant(grant_id="g1", policy="warehouse-read", target="warehouse",
                       role="analytics_ro", principal="ctr_bob", approval_ref="h100",
                       state="active")

    def with_changes(*changes: FieldChange) -> TicketSnapshot:
        return ticket().model_copy(update={"field_changes": changes})

    decision = run(with_changes(edit_after), ledger=[live])
    assert only_denial(decision).rule == "request_changed_after_approval"
    assert revokes(decision) == {("g1", "request_changed")}
    assert run(with_changes(edit_before, unrelated), ledger=[live]).actions == ()


def test_a_changed_request_digest_voids_the_approval() -> None:
    first = run()
    digest = first.grants[0].request_digest
    live = LedgerGrant(grant_id="g1", policy="warehouse-read", target="warehouse",
                       role="analytics_ro", principal="ctr_bob", approval_ref="h100",
                       state="active", request_digest=digest)
    assert run(ledger=[live]).actions == ()
    changed = ticket(requester=Identity(source_id="acc-other", display="Someone else"))
    decision = run(changed, ledger=[live])
    assert only_denial(decision).rule == "request_changed_after_approval"


@pytest.mark.parametrize(
    ("asked", "hours", "cut"),
    [("4h", 4, False), ("6", 6, False), ("72h", 24, True), ("2d", 24, True)],
)
def test_requested_duration_is_honoured_up_to_the_maximum(asked: str, hours: int,
                                                          cut: bool) -> None:
    policy = make_policy(duration_field="customfield_8")
    fields = dict(DEFAULT_FIELDS)
    fields["customfield_8"] = asked
    grant = run(ticket(fields=fields), policy_set=policies(policy)).grants[0]
    assert grant.expires_at - grant.starts_at == timedelta(hours=hours)
    assert bool(grant.notes) == cut


def test_unreadable_requested_duration_is_a_clear_denial() -> None:
    policy = make_policy(duration_field="customfield_8")
    fields = dict(DEFAULT_FIELDS)
    fields["customfield_8"] = "forever"
    assert only_denial(run(ticket(fields=fields), policy_set=policies(policy))).rule == (
        "invalid_requested_duration"
    )
