"""LDAP target beyond the shared contract: injection (T29), posixGroup, the last member
of a groupOfNames, credentials and outages — against the test process's real slapd."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ldap3 import MODIFY_ADD
from pydantic import ValidationError

from connectors.base import Outcome
from connectors.errors import ConnectorError, PermanentError, TransientError
from connectors.ldap import LDAPTarget
from tests.contract.targets.ldap import Directory, group_dn, options, user_dn
from tests.support.proxy import FaultProxy
from tests.support.slapd import (
    ADMIN_PASSWORD,
    PLACEHOLDER_DN,
    READER_DN,
    READER_PASSWORD,
    USER_BASE,
    SlapdServer,
    free_port,
    slapd_for,
)

LATER = datetime.now(UTC) + timedelta(hours=1)


def _tag() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def server(request: pytest.FixtureRequest) -> SlapdServer:
    return slapd_for(request.config)


@pytest.fixture
def directory(server: SlapdServer) -> Iterator[Directory]:
    made = Directory(server)
    yield made
    made.drop()


@pytest.fixture
def make_target(server: SlapdServer) -> Iterator[Any]:
    built: list[LDAPTarget] = []

    def make(**overrides: Any) -> LDAPTarget:
        target = LDAPTarget.from_options("ldap-test", options(server, **overrides))
        built.append(target)
        return target

    yield make
    for target in built:
        target.close()


def _members(directory: Directory, role: str) -> list[str]:
    return directory.values(group_dn(role), "member")


# -- T29: names with LDAP specials ---------------------------------------------------

SPECIALS = ["a,b", "a+b", "a=b", "a\\b", "#hash", "semi;colon", 'quo"te', "<angle>", "trail "]


@pytest.mark.parametrize("special", SPECIALS)
def test_special_names_reach_exactly_their_own_entry(
    directory: Directory, make_target: Any, special: str
) -> None:
    tag = _tag()
    # The special part leads, so '#' and spaces sit where RFC 4514 treats them specially.
    name = f"{special}{tag}" if not special.endswith(" ") else f"{tag}{special}"
    bystander = directory.person(f"plain{tag}")
    principal = directory.person(name)
    role = directory.group(f"{special}grp{tag}")
    target = make_target()

    assert target.grant(principal=principal, role=role, expires_at=LATER) == Outcome.APPLIED
    assert directory.has_value(group_dn(role), "member", user_dn(principal))
    assert target.members(role=role) == frozenset({principal})
    assert not directory.has_value(group_dn(role), "member", user_dn(bystander))
    assert target.revoke(principal=principal, role=role) == Outcome.APPLIED
    assert target.members(role=role) == frozenset()


@pytest.mark.parametrize("injection", ["*", "*)(uid=*", "*)(|(uid=*", "plain*", "\\2a"])
def test_filter_injection_matches_nobody(
    directory: Directory, make_target: Any, injection: str
) -> None:
    tag = _tag()
    for i in range(3):
        directory.person(f"plain{tag}{i}")
    role = directory.group(f"grp{tag}")
    target = make_target()
    with pytest.raises(PermanentError) as caught:
        target.grant(principal=injection if injection != "plain*" else f"plain{tag}*",
                     role=role, expires_at=LATER)
    assert caught.value.code == "principal_missing"
    assert _members(directory, role) == [PLACEHOLDER_DN]


def test_a_literal_star_in_a_name_is_only_that_name(
    directory: Directory, make_target: Any
) -> None:
    tag = _tag()
    directory.person(f"star{tag}a")
    starred = directory.person(f"star{tag}*")
    role = directory.group(f"grp{tag}")
    target = make_target()
    assert target.grant(principal=starred, role=role, expires_at=LATER) == Outcome.APPLIED
    assert target.members(role=role) == frozenset({starred})


@pytest.mark.parametrize("variant", ["upper", "leading space", "trailing space", "inner space"])
def test_a_loosely_equal_name_fails_closed(
    directory: Directory, make_target: Any, variant: str
) -> None:
    """LDAP matching ignores case and surrounding spaces; jitgate does not."""
    tag = _tag()
    real = directory.person(f"bob{tag}")
    asked = {
        "upper": real.upper(),
        "leading space": f" {real}",
        "trailing space": f"{real} ",
        "inner space": f"bob  {tag}",
    }[variant]
    role = directory.group(f"grp{tag}")
    target = make_target()
    with pytest.raises(PermanentError) as caught:
        target.grant(principal=asked, role=role, expires_at=LATER)
    assert caught.value.code == "principal_missing"
    assert _members(directory, role) == [PLACEHOLDER_DN]
    # Revoking the loose variant must not remove the real user either.
    target.grant(principal=real, role=role, expires_at=LATER)
    assert target.revoke(principal=asked, role=role) == Outcome.ALREADY_ABSENT
    assert target.members(role=role) == frozenset({real})


def test_two_entries_with_the_same_name_are_ambiguous(
    directory: Directory, make_target: Any
) -> None:
    tag = _tag()
    for ou in ("a", "b"):
        directory.add(f"ou={ou}{tag},{USER_BASE}", ["organizationalUnit"], {"ou": f"{ou}{tag}"})
    twin = f"twin{tag}"
    directory.person(twin, dn=f"uid={twin},ou=a{tag},{USER_BASE}")
    directory.person(twin, dn=f"uid={twin},ou=b{tag},{USER_BASE}")
    role = directory.group(f"grp{tag}")
    target = make_target()
    for call in (
        lambda: target.grant(principal=twin, role=role, expires_at=LATER),
        lambda: target.revoke(principal=twin, role=role),
    ):
        with pytest.raises(PermanentError) as caught:
            call()
        assert caught.value.code == "ambiguous_principal"
    assert _members(directory, role) == [PLACEHOLDER_DN]


@pytest.mark.parametrize("role_suffix", [",ou=people", ")(cn=*", "*"])
def test_role_names_cannot_escape_their_rdn(
    directory: Directory, make_target: Any, role_suffix: str
) -> None:
    tag = _tag()
    principal = directory.person(f"ctr{tag}")
    directory.group(f"grp{tag}")
    with pytest.raises(PermanentError) as caught:
        make_target().grant(principal=principal, role=f"grp{tag}{role_suffix}", expires_at=LATER)
    assert caught.value.code == "role_missing"


def test_a_role_differing_only_in_case_is_missing(directory: Directory, make_target: Any) -> None:
    tag = _tag()
    principal = directory.person(f"ctr{tag}")
    role = directory.group(f"grp{tag}")
    target = make_target()
    with pytest.raises(PermanentError) as caught:
        target.grant(principal=principal, role=role.upper(), expires_at=LATER)
    assert caught.value.code == "role_missing"
    assert target.revoke(principal=principal, role=role.upper()) == Outcome.ALREADY_ABSENT


@pytest.mark.parametrize("bad", ["", "   ", "nul\x00byte", "new\nline"])
def test_unusable_names_are_refused_before_any_request(make_target: Any, bad: str) -> None:
    with pytest.raises(PermanentError) as caught:
        make_target(url=f"ldap://127.0.0.1:{free_port()}").grant(
            principal=bad, role="r", expires_at=LATER
        )
    assert caught.value.code == "invalid_identifier"


# -- posixGroup / memberUid ------------------------------------------------------------


def test_posix_group_member_uid_mode(directory: Directory, make_target: Any) -> None:
    tag = _tag()
    principal = directory.person(f"ctr{tag}")
    other = directory.person(f"ctr{tag}x")
    role = directory.posix_group(f"pgrp{tag}")
    target = make_target(member_attribute="memberUid", empty_member=None)

    assert target.members(role=role) == frozenset()
    assert target.grant(principal=principal, role=role, expires_at=LATER) == Outcome.APPLIED
    assert target.grant(principal=principal, role=role, expires_at=LATER) == (
        Outcome.ALREADY_PRESENT
    )
    assert directory.values(group_dn(role), "memberUid") == [principal]
    directory.modify(group_dn(role), {"memberUid": [(MODIFY_ADD, [other])]})
    assert target.members(role=role) == frozenset({principal, other})
    # A loose variant of a present name is not that name.
    assert target.revoke(principal=f" {principal}", role=role) == Outcome.ALREADY_ABSENT
    assert target.revoke(principal=principal, role=role) == Outcome.APPLIED
    assert target.revoke(principal=principal, role=role) == Outcome.ALREADY_ABSENT
    assert directory.values(group_dn(role), "memberUid") == [other]
    with pytest.raises(PermanentError) as caught:
        target.grant(principal=f"ghost{tag}", role=role, expires_at=LATER)
    assert caught.value.code == "principal_missing"


def test_member_uid_mode_rejects_a_placeholder() -> None:
    with pytest.raises(ValidationError):
        LDAPTarget.from_options(
            "x",
            {"url": "ldap://h", "bind_dn": "cn=a", "bind_password": "p", "user_base": "o=x",
             "group_base": "o=x", "member_attribute": "memberUid", "empty_member": "cn=e"},
        )


# -- the last member of a groupOfNames ---------------------------------------------------


def test_last_member_without_placeholder_fails_visibly(
    directory: Directory, make_target: Any
) -> None:
    tag = _tag()
    principal = directory.person(f"ctr{tag}")
    role = directory.group(f"grp{tag}", members=[user_dn(principal)])
    with pytest.raises(PermanentError) as caught:
        make_target(empty_member=None).revoke(principal=principal, role=role)
    assert caught.value.code == "last_member"
    assert directory.has_value(group_dn(role), "member", user_dn(principal))


def test_last_member_is_swapped_for_the_placeholder(
    directory: Directory, make_target: Any
) -> None:
    tag = _tag()
    principal = directory.person(f"ctr{tag}")
    role = directory.group(f"grp{tag}", members=[user_dn(principal)])
    target = make_target()
    assert target.revoke(principal=principal, role=role) == Outcome.APPLIED
    assert _members(directory, role) == [PLACEHOLDER_DN]
    assert target.members(role=role) == frozenset()
    assert target.grant(principal=principal, role=role, expires_at=LATER) == Outcome.APPLIED


def test_a_dangling_member_dn_is_reported_and_revocable(
    directory: Directory, make_target: Any
) -> None:
    """A deleted user's DN left in a group would revive with a recreated account."""
    tag = _tag()
    ghost = f"ghost{tag}"
    role = directory.group(f"grp{tag}", members=[PLACEHOLDER_DN, user_dn(ghost)])
    target = make_target()
    assert target.members(role=role) == frozenset({ghost})
    assert target.revoke(principal=ghost, role=role) == Outcome.APPLIED
    assert target.members(role=role) == frozenset()


def test_members_outside_user_base_are_not_principals(
    directory: Directory, make_target: Any
) -> None:
    tag = _tag()
    role = directory.group(f"grp{tag}", members=[PLACEHOLDER_DN, READER_DN])
    assert make_target().members(role=role) == frozenset()


def test_members_of_a_missing_role_is_an_error(make_target: Any) -> None:
    with pytest.raises(PermanentError) as caught:
        make_target().members(role=f"nosuch{_tag()}")
    assert caught.value.code == "role_missing"


# -- credentials and outages ------------------------------------------------------------


def _all_text(exc: BaseException) -> str:
    parts = [str(exc), repr(exc), *map(str, exc.args)]
    for linked in (exc.__cause__, exc.__context__):
        if linked is not None:
            parts += [str(linked), repr(linked)]
    return " ".join(parts)


def test_wrong_bind_password_is_permission_denied_without_the_password(
    make_target: Any,
) -> None:
    wrong = "Wr0ng-Passw0rd-zz9"
    target = make_target(bind_password=wrong)
    with pytest.raises(PermanentError) as caught:
        target.check()
    assert caught.value.code == "permission_denied"
    assert caught.value.__cause__ is None
    text = _all_text(caught.value)
    assert wrong not in text
    assert ADMIN_PASSWORD not in text
    assert wrong not in repr(target)


def test_a_read_only_account_is_permission_denied(
    directory: Directory, make_target: Any
) -> None:
    tag = _tag()
    principal = directory.person(f"ctr{tag}")
    role = directory.group(f"grp{tag}")
    target = make_target(bind_dn=READER_DN, bind_password=READER_PASSWORD)
    target.check()  # it may read
    with pytest.raises(PermanentError) as caught:
        target.grant(principal=principal, role=role, expires_at=LATER)
    assert caught.value.code == "permission_denied"
    assert READER_PASSWORD not in _all_text(caught.value)


def test_unreachable_directory_is_transient_and_quick(make_target: Any) -> None:
    target = make_target(url=f"ldap://127.0.0.1:{free_port()}", connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        target.grant(principal="p", role="r", expires_at=LATER)
    assert time.monotonic() - started < 3
    assert ADMIN_PASSWORD not in _all_text(caught.value)


def test_a_directory_that_never_answers_times_out_as_transient(make_target: Any) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        target = make_target(url=f"ldap://127.0.0.1:{silent.getsockname()[1]}",
                             receive_timeout=1)
        started = time.monotonic()
        with pytest.raises(TransientError):
            target.check()
        assert time.monotonic() - started < 5
    finally:
        stop.set()
        thread.join()
        for sock in (*accepted, silent):
            sock.close()


def test_a_dropped_connection_is_replaced(
    server: SlapdServer, directory: Directory, make_target: Any
) -> None:
    tag = _tag()
    principal = directory.person(f"ctr{tag}")
    role = directory.group(f"grp{tag}")
    host, port = server.url.removeprefix("ldap://").split(":")
    with FaultProxy((host, int(port))) as proxy:
        target = make_target(url=f"ldap://127.0.0.1:{proxy.port}", connect_timeout=1)
        target.check()
        proxy.down()
        with pytest.raises(TransientError):
            target.grant(principal=principal, role=role, expires_at=LATER)
        proxy.up()
        # The old connection died with the proxy; the call opens a new one by itself.
        assert target.grant(principal=principal, role=role, expires_at=LATER) == (
            Outcome.APPLIED
        )
        proxy.down()
        proxy.up()
        assert target.members(role=role) == frozenset({principal})


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("url", "http://127.0.0.1:389"),
        ("url", "ldap://user:pw@127.0.0.1:389"),
        ("url", "ldap://127.0.0.1:389/dc=x?uid"),
        ("bind_password", ""),
        ("user_base", "not a dn"),
        ("user_attribute", "uid)(x"),
        ("unknown_key", 1),
    ],
)
def test_bad_configuration_is_refused(server: SlapdServer, field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        LDAPTarget.from_options("bad", {**options(server), field: value})
    assert ADMIN_PASSWORD not in str(caught.value)


def test_start_tls_against_a_plain_server_is_an_error(make_target: Any) -> None:
    with pytest.raises(ConnectorError) as caught:
        make_target(start_tls=True).check()
    assert ADMIN_PASSWORD not in _all_text(caught.value)
