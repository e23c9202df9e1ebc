"""One contract, every target, each against its real server."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from connectors.base import BatchRevoker, BatchSessionTerminator, Outcome, SessionTerminator
from connectors.errors import ConnectorError, PermanentError
from tests.contract.targets import Harness

LATER = datetime.now(UTC) + timedelta(hours=1)


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def test_grant_twice_is_one_membership(harness: Harness) -> None:
    role = harness.make_role(_name("jgrole"))
    principal = harness.make_principal(_name("ctr"))
    t = harness.target
    assert t.grant(principal=principal, role=role, expires_at=LATER) == Outcome.APPLIED
    assert t.grant(principal=principal, role=role, expires_at=LATER) == Outcome.ALREADY_PRESENT
    assert harness.is_member(principal, role)
    assert principal in t.members(role=role)


def test_revoke_twice_is_fine(harness: Harness) -> None:
    role = harness.make_role(_name("jgrole"))
    principal = harness.make_principal(_name("ctr"))
    t = harness.target
    t.grant(principal=principal, role=role, expires_at=LATER)
    assert t.revoke(principal=principal, role=role) == Outcome.APPLIED
    assert t.revoke(principal=principal, role=role) == Outcome.ALREADY_ABSENT
    assert not harness.is_member(principal, role)
    assert principal not in t.members(role=role)


def test_members_reflects_changes_made_behind_its_back(harness: Harness) -> None:
    role = harness.make_role(_name("jgrole"))
    first, second = harness.make_principal(_name("ctr")), harness.make_principal(_name("ctr"))
    assert harness.target.members(role=role) == frozenset()
    harness.add_member(first, role)
    harness.add_member(second, role)
    assert harness.target.members(role=role) == frozenset({first, second})
    assert harness.target.grant(principal=first, role=role, expires_at=LATER) == (
        Outcome.ALREADY_PRESENT
    )


def test_revoking_a_membership_that_was_never_there(harness: Harness) -> None:
    role = harness.make_role(_name("jgrole"))
    principal = harness.make_principal(_name("ctr"))
    assert harness.target.revoke(principal=principal, role=role) == Outcome.ALREADY_ABSENT


def test_a_missing_role_is_a_permanent_error(harness: Harness) -> None:
    principal = harness.make_principal(_name("ctr"))
    with pytest.raises(PermanentError):
        harness.target.grant(principal=principal, role=_name("nosuchrole"), expires_at=LATER)


@pytest.mark.parametrize(
    "style", ["Upper_Case", "with space", 'quo"te', "apo'strophe", "ünï_çødé", "semi;colon"]
)
def test_awkward_names_work_exactly_or_are_refused_cleanly(harness: Harness, style: str) -> None:
    """Allow-listed names reach the target through identifier composition: either the
    exact name works, or the connector refuses with a PermanentError. Nothing else."""
    suffix = uuid.uuid4().hex[:6]
    plain_role = harness.make_role(_name("jgrole"))
    principal = harness.make_principal(_name("ctr"))
    try:
        role = harness.make_role(f"{style}_{suffix}")
    except Exception:  # the server itself cannot hold such a name
        pytest.skip(f"{harness.kind} cannot create a role named {style!r}")
    try:
        outcome = harness.target.grant(principal=principal, role=role, expires_at=LATER)
    except PermanentError:
        assert not harness.is_member(principal, role)
    except ConnectorError as exc:  # pragma: no cover - a failure message, not a path
        pytest.fail(f"unexpected {exc!r}")
    else:
        assert outcome == Outcome.APPLIED
        assert harness.is_member(principal, role)
        assert principal in harness.target.members(role=role)
        assert harness.target.revoke(principal=principal, role=role) == Outcome.APPLIED
        assert not harness.is_member(principal, role)
    # Never a different role by accident.
    assert not harness.is_member(principal, plain_role)


def test_sessions_end_on_revoke_where_supported(harness: Harness) -> None:
    if not isinstance(harness.target, SessionTerminator) or harness.open_session is None:
        pytest.skip(f"{harness.kind} has no live sessions to end")
    role = harness.make_role(_name("jgrole"))
    principal = harness.make_principal(_name("ctr"))
    harness.target.grant(principal=principal, role=role, expires_at=LATER)
    alive = harness.open_session(principal)
    assert alive()
    harness.target.revoke(principal=principal, role=role)
    assert harness.target.terminate_sessions(principal=principal) >= 1
    assert not alive()


def test_check_passes_on_a_reachable_target(harness: Harness) -> None:
    harness.target.check()


def test_batch_revoke_answers_each_pair_on_its_own(harness: Harness) -> None:
    """``revoke_many`` (where a target has it) gives the same answers as ``revoke``,
    one per pair and in order: a bad pair does not fail or hide the others."""
    if not isinstance(harness.target, BatchRevoker):
        pytest.skip(f"{harness.kind} revokes one membership per call")
    role, other = harness.make_role(_name("jgrole")), harness.make_role(_name("jgrole"))
    members = [harness.make_principal(_name("ctr")) for _ in range(3)]
    bystander = harness.make_principal(_name("ctr"))
    for principal in members:
        harness.target.grant(principal=principal, role=role, expires_at=LATER)
    harness.target.grant(principal=members[0], role=other, expires_at=LATER)
    harness.target.grant(principal=bystander, role=role, expires_at=LATER)
    pairs = [
        (members[0], role),
        (members[1], role),
        (bystander, other),              # never a member: absent
        ("x" * 200, role),               # refused on its own
        (members[0], other),
        (members[2], _name("nosuchrole")),  # role gone: absent, as with revoke()
        (members[1], role),              # the same pair twice in one batch
    ]
    results = harness.target.revoke_many(pairs)
    assert results[:3] == [Outcome.APPLIED, Outcome.APPLIED, Outcome.ALREADY_ABSENT]
    assert isinstance(results[3], PermanentError)
    assert results[4] == Outcome.APPLIED
    assert results[5] == Outcome.ALREADY_ABSENT
    assert results[6] in (Outcome.APPLIED, Outcome.ALREADY_ABSENT)
    assert not harness.is_member(members[0], role) and not harness.is_member(members[0], other)
    assert not harness.is_member(members[1], role)
    # Untouched: pairs not in the batch keep their memberships.
    assert harness.is_member(members[2], role) and harness.is_member(bystander, role)
    assert harness.target.revoke_many(pairs[:2]) == [Outcome.ALREADY_ABSENT] * 2


def test_batch_session_termination_where_supported(harness: Harness) -> None:
    if (not isinstance(harness.target, BatchSessionTerminator)
            or harness.open_session is None):
        pytest.skip(f"{harness.kind} ends sessions one principal at a time")
    role = harness.make_role(_name("jgrole"))
    first, second = harness.make_principal(_name("ctr")), harness.make_principal(_name("ctr"))
    keep = harness.make_principal(_name("ctr"))
    sessions: dict[str, Callable[[], bool]] = {}
    for principal in (first, second, keep):
        harness.target.grant(principal=principal, role=role, expires_at=LATER)
        sessions[principal] = harness.open_session(principal)
    ended = harness.target.terminate_sessions_many([first, second])
    assert ended == {first: 1, second: 1}
    assert not sessions[first]() and not sessions[second]()
    assert sessions[keep]()
