"""MariaDB target tests beyond the shared contract: default roles, session termination,
unreachable servers and hostile names. Server tests skip when no MariaDB answers (see
``tests/contract/targets/mysql.py``); the quoting tests need no server.
"""

from __future__ import annotations

import socket
import time
import traceback
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pymysql
import pytest
from pydantic import ValidationError

from connectors.base import Outcome, SessionTerminator, TargetConnector
from connectors.errors import PermanentError, TransientError
from connectors.mysql import MySQLTarget, MySQLTargetConfig
from connectors.mysql.target import account_literal, quote_identifier
from tests.contract.targets.mysql import (
    HOST_PATTERN,
    account,
    admin_connection,
    connect_as,
    mysql_options,
    run,
)

SENTINEL = "s3cr3t-sentinel"
LATER = datetime.now(UTC) + timedelta(hours=1)


# -- quoting helpers (no server) ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("plain", "`plain`"),
        ("back`tick", "`back``tick`"),
        ("``", "``````"),
        ("x`; DROP USER root; --", "`x``; DROP USER root; --`"),
        ("quo\"te 'apo' ünï", "`quo\"te 'apo' ünï`"),
    ],
)
def test_quote_identifier(name: str, quoted: str) -> None:
    assert quote_identifier(name) == quoted


def test_account_literal_uses_the_given_escaper() -> None:
    escape = pymysql.converters.escape_string

    def literal(value: str) -> str:
        return f"'{escape(value)}'"

    assert account_literal(literal, "ctr_bob", "%") == "'ctr_bob'@'%'"
    assert account_literal(literal, "o'brien\\", "10.%") == "'o\\'brien\\\\'@'10.%'"


@pytest.mark.parametrize(
    "bad", ["", "nul\x00byte", "r" * 129, "trailing ", "emoji\U0001f600"]
)
def test_invalid_names_are_refused(bad: str) -> None:
    with pytest.raises(PermanentError) as err:
        quote_identifier(bad)
    assert err.value.code == "invalid_identifier"
    target = MySQLTarget.from_options("t", {"user": "root", "port": closed_port()})
    with pytest.raises(PermanentError) as err:
        target.grant(principal=bad, role="ok", expires_at=LATER)
    assert err.value.code == "invalid_identifier"


def test_128_characters_is_the_longest_name() -> None:
    assert quote_identifier("r" * 128) == f"`{'r' * 128}`"


def test_config_is_strict_and_hides_its_input() -> None:
    with pytest.raises(ValidationError) as err:
        MySQLTargetConfig.model_validate(
            {"user": "root", "password": SENTINEL, "pasword": SENTINEL}
        )
    assert SENTINEL not in str(err.value)
    config = MySQLTargetConfig.model_validate({"user": "root", "password": SENTINEL})
    assert SENTINEL not in repr(config)
    assert config.host_pattern == "%"
    assert config.port == 3306


# -- against the server ---------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def options() -> dict[str, Any]:
    return mysql_options()


@pytest.fixture
def names(options: dict[str, Any]) -> Iterator[list[tuple[str, str]]]:
    """(kind, name) pairs created by a test; dropped afterwards."""
    created: list[tuple[str, str]] = []
    yield created
    with admin_connection(options) as conn, conn.cursor() as cur:
        for kind, name in created:
            if kind == "user":
                cur.execute(f"DROP USER IF EXISTS {account_literal(conn.escape, name, '%')}")
            else:
                cur.execute(f"DROP ROLE IF EXISTS {quote_identifier(name)}")


@pytest.fixture
def target(options: dict[str, Any]) -> Iterator[MySQLTarget]:
    built = MySQLTarget.from_options("test-mysql", options)
    yield built
    built.close()


def make_role(options: dict[str, Any], names: list[tuple[str, str]], name: str) -> str:
    run(options, f"CREATE ROLE {quote_identifier(name)}")
    names.append(("role", name))
    return name


def make_user(options: dict[str, Any], names: list[tuple[str, str]], name: str) -> str:
    with admin_connection(options) as conn, conn.cursor() as cur:
        cur.execute(
            f"CREATE USER {account_literal(conn.escape, name, HOST_PATTERN)} "
            "IDENTIFIED BY 'jg-contract-pw'"
        )
    names.append(("user", name))
    return name


def default_role(options: dict[str, Any], user: str) -> str:
    rows = run(
        options,
        "SELECT default_role FROM mysql.user WHERE User = %s AND Host = %s",
        (user, HOST_PATTERN),
    )
    return str(rows[0][0])


def token() -> str:
    return uuid.uuid4().hex[:8]


def test_satisfies_protocols(target: MySQLTarget) -> None:
    assert isinstance(target, TargetConnector)
    assert isinstance(target, SessionTerminator)


def test_default_role_is_set_at_grant_and_reset_at_revoke(
    options: dict[str, Any], names: list[tuple[str, str]], target: MySQLTarget
) -> None:
    tok = token()
    first = make_role(options, names, f"jg_{tok}_first")
    second = make_role(options, names, f"jg_{tok}_second")
    user = make_user(options, names, f"ctr_{tok}")

    assert target.grant(principal=user, role=first, expires_at=LATER) == Outcome.APPLIED
    assert default_role(options, user) == first
    # The role is active at login, without SET ROLE.
    conn = connect_as(options, user)
    with conn.cursor() as cur:
        cur.execute("SELECT CURRENT_ROLE()")
        assert cur.fetchone() == (first,)
    conn.close()

    assert target.grant(principal=user, role=second, expires_at=LATER) == Outcome.APPLIED
    assert default_role(options, user) == second
    # Revoking the default falls back to a role still held...
    assert target.revoke(principal=user, role=second) == Outcome.APPLIED
    assert default_role(options, user) == first
    # ...and to none when nothing is left.
    assert target.revoke(principal=user, role=first) == Outcome.APPLIED
    assert default_role(options, user) == ""


def test_grant_repairs_a_missing_default_role(
    options: dict[str, Any], names: list[tuple[str, str]], target: MySQLTarget
) -> None:
    """A grant interrupted after GRANT, before SET DEFAULT ROLE, is finished when the
    task is redelivered."""
    tok = token()
    role = make_role(options, names, f"jg_{tok}")
    user = make_user(options, names, f"ctr_{tok}")
    run(options, f"GRANT {quote_identifier(role)} TO {account(options, user)}")
    assert target.grant(principal=user, role=role, expires_at=LATER) == Outcome.ALREADY_PRESENT
    assert default_role(options, user) == role


def test_missing_role_and_principal_codes(
    options: dict[str, Any], names: list[tuple[str, str]], target: MySQLTarget
) -> None:
    tok = token()
    role = make_role(options, names, f"jg_{tok}")
    user = make_user(options, names, f"ctr_{tok}")
    with pytest.raises(PermanentError) as err:
        target.grant(principal=user, role=f"nosuch_{tok}", expires_at=LATER)
    assert err.value.code == "role_missing"
    with pytest.raises(PermanentError) as err:
        target.grant(principal=f"nosuch_{tok}", role=role, expires_at=LATER)
    assert err.value.code == "principal_missing"
    with pytest.raises(PermanentError) as err:
        target.members(role=f"nosuch_{tok}")
    assert err.value.code == "role_missing"
    assert target.revoke(principal=f"nosuch_{tok}", role=role) == Outcome.ALREADY_ABSENT
    assert target.revoke(principal=user, role=f"nosuch_{tok}") == Outcome.ALREADY_ABSENT


def test_members_ignores_the_creator_and_other_hosts(
    options: dict[str, Any], names: list[tuple[str, str]], target: MySQLTarget
) -> None:
    """CREATE ROLE grants the role WITH ADMIN OPTION to its creator; that account, and
    accounts of other hosts, are not principals of this target."""
    tok = token()
    role = make_role(options, names, f"jg_{tok}")
    user = make_user(options, names, f"ctr_{tok}")
    target.grant(principal=user, role=role, expires_at=LATER)
    assert target.members(role=role) == frozenset({user})


def test_session_opened_before_revocation_is_closed_after_it(
    options: dict[str, Any], names: list[tuple[str, str]], target: MySQLTarget
) -> None:
    tok = token()
    role = make_role(options, names, f"jg_{tok}")
    user = make_user(options, names, f"ctr_{tok}")
    other = make_user(options, names, f"CTR_{tok}")  # differs only in case: untouched
    target.grant(principal=user, role=role, expires_at=LATER)
    sessions = [connect_as(options, user), connect_as(options, user)]
    bystander = connect_as(options, other)

    assert target.revoke(principal=user, role=role) == Outcome.APPLIED
    assert target.terminate_sessions(principal=user) == 2
    for conn in sessions:
        with pytest.raises(pymysql.MySQLError), conn.cursor() as cur:
            cur.execute("SELECT 1")
    with bystander.cursor() as cur:
        cur.execute("SELECT 1")
    bystander.close()
    assert target.terminate_sessions(principal=user) == 0


def test_injection_looking_role_is_a_plain_identifier(
    options: dict[str, Any], names: list[tuple[str, str]], target: MySQLTarget
) -> None:
    tok = token()
    user = make_user(options, names, f"ctr_{tok}")
    victim = make_role(options, names, f"jg_{tok}_victim")
    evil = make_role(options, names, f"x_{tok}` TO 'root'@'%'; GRANT `{victim}")
    percent = make_role(options, names, f"pct_{tok}_%s_%%")
    assert target.grant(principal=user, role=evil, expires_at=LATER) == Outcome.APPLIED
    assert target.grant(principal=user, role=percent, expires_at=LATER) == Outcome.APPLIED
    assert target.members(role=evil) == frozenset({user})
    assert target.members(role=victim) == frozenset()
    assert target.revoke(principal=user, role=evil) == Outcome.APPLIED
    assert target.revoke(principal=user, role=percent) == Outcome.APPLIED
    held = run(
        options,
        "SELECT Role FROM mysql.roles_mapping WHERE User = %s AND Host = %s",
        (user, HOST_PATTERN),
    )
    assert held == []


def test_injection_looking_principal_is_a_plain_account(
    options: dict[str, Any], names: list[tuple[str, str]], target: MySQLTarget
) -> None:
    tok = token()
    role = make_role(options, names, f"jg_{tok}")
    user = make_user(options, names, f"o'b\\r'@'%'; --{tok}")
    assert target.grant(principal=user, role=role, expires_at=LATER) == Outcome.APPLIED
    assert target.members(role=role) == frozenset({user})
    assert target.revoke(principal=user, role=role) == Outcome.APPLIED


def test_reconnects_after_its_connection_is_killed(
    options: dict[str, Any], target: MySQLTarget
) -> None:
    target.check()
    assert target._conn is not None
    thread_id = target._conn.thread_id()
    run(options, f"KILL CONNECTION {int(thread_id)}")
    with pytest.raises(TransientError):
        target.check()
    target.check()


def test_unreachable_is_transient_fast_and_never_leaks_password() -> None:
    target = MySQLTarget.from_options(
        "down", {"host": "127.0.0.1", "port": closed_port(), "user": "root",
                 "password": SENTINEL, "connect_timeout": 2}
    )
    assert SENTINEL not in repr(target)
    started = time.monotonic()
    calls = [
        target.check,
        lambda: target.grant(principal="ctr_x", role="r", expires_at=LATER),
        lambda: target.revoke(principal="ctr_x", role="r"),
        lambda: target.members(role="r"),
        lambda: target.terminate_sessions(principal="ctr_x"),
    ]
    for call in calls:
        with pytest.raises(TransientError) as err:
            call()
        chain: list[BaseException] = []
        item: BaseException | None = err.value
        while item is not None and item not in chain:
            chain.append(item)
            item = item.__cause__ or item.__context__
        for exc in chain:
            assert SENTINEL not in str(exc)
            assert SENTINEL not in repr(exc)
        assert SENTINEL not in "".join(traceback.format_exception(err.value))
    assert time.monotonic() - started < 5


def test_wrong_password_is_permission_denied(options: dict[str, Any]) -> None:
    target = MySQLTarget.from_options(
        "badpw", {**options, "user": f"nosuch_{token()}", "password": SENTINEL}
    )
    with pytest.raises(PermanentError) as err:
        target.check()
    assert err.value.code == "permission_denied"
    assert SENTINEL not in str(err.value)
