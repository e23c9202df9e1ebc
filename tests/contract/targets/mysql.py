"""MariaDB harness: ``JITGATE_TEST_MYSQL_URL`` (``mysql://root@127.0.0.1:3306/``), else
root on 127.0.0.1:3306; skipped with a reason when neither answers.

Roles and accounts are server-global and tests may run in parallel, so every name
carries a random token and is dropped in cleanup. Principals get a password the harness
knows, so ``open_session`` can log in as them over TCP.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pymysql
import pytest

from connectors.mysql import MySQLTarget
from connectors.mysql.target import account_literal, quote_identifier
from tests.contract.targets import Harness

PRINCIPAL_PASSWORD = "jg-contract-pw"
HOST_PATTERN = "%"


def mysql_options() -> dict[str, Any]:
    """Target options for the test server, or ``pytest.skip`` when none is reachable."""
    url = os.environ.get("JITGATE_TEST_MYSQL_URL")
    if url:
        parts = urlsplit(url)
        options: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 3306,
            "user": unquote(parts.username or "root"),
        }
        if parts.password:
            options["password"] = unquote(parts.password)
        if parts.path.strip("/"):
            options["database"] = parts.path.strip("/")
        socket = parse_qs(parts.query).get("unix_socket")
        if socket:
            options["unix_socket"] = socket[0]
    else:
        options = {"host": "127.0.0.1", "port": 3306, "user": "root"}
    try:
        with admin_connection(options):
            pass
    except pymysql.MySQLError as exc:
        where = "JITGATE_TEST_MYSQL_URL" if url else "root@127.0.0.1:3306"
        pytest.skip(f"no MariaDB reachable at {where} ({type(exc).__name__} {exc.args[0]})")
    return options


@contextlib.contextmanager
def admin_connection(options: dict[str, Any]) -> Iterator[pymysql.connections.Connection[Any]]:
    conn = pymysql.connect(
        host=options["host"],
        port=options["port"],
        user=options["user"],
        password=options.get("password", ""),
        database=options.get("database"),
        unix_socket=options.get("unix_socket"),
        connect_timeout=3,
        autocommit=True,
        charset="utf8mb4",
    )
    try:
        yield conn
    finally:
        conn.close()


def run(options: dict[str, Any], statement: str, args: Any = None) -> list[tuple[Any, ...]]:
    with admin_connection(options) as conn, conn.cursor() as cur:
        cur.execute(statement, args)
        return list(cur.fetchall())


def account(options: dict[str, Any], user: str) -> str:
    with admin_connection(options) as conn:
        return account_literal(conn.escape, user, HOST_PATTERN)


def connect_as(options: dict[str, Any], user: str) -> pymysql.connections.Connection[Any]:
    return pymysql.connect(
        host=options["host"],
        port=options["port"],
        user=user,
        password=PRINCIPAL_PASSWORD,
        connect_timeout=3,
        read_timeout=5,
        autocommit=True,
        charset="utf8mb4",
    )


def harness(request: pytest.FixtureRequest, token: str) -> Harness:
    del request, token  # names come from the suite, each with its own random token
    options = mysql_options()
    roles: list[str] = []
    users: list[str] = []

    def make_role(name: str) -> str:
        run(options, f"CREATE ROLE {quote_identifier(name)}")
        roles.append(name)
        return name

    def make_principal(name: str) -> str:
        with admin_connection(options) as conn, conn.cursor() as cur:
            cur.execute(
                f"CREATE USER {account_literal(conn.escape, name, HOST_PATTERN)} "
                f"IDENTIFIED BY {conn.escape(PRINCIPAL_PASSWORD)}"
            )
        users.append(name)
        return name

    def is_member(principal: str, role: str) -> bool:
        rows = run(
            options,
            "SELECT 1 FROM mysql.roles_mapping WHERE User = %s AND Host = %s AND Role = %s",
            (principal, HOST_PATTERN, role),
        )
        return bool(rows)

    def add_member(principal: str, role: str) -> None:
        run(options, f"GRANT {quote_identifier(role)} TO {account(options, principal)}")

    def open_session(principal: str) -> Callable[[], bool]:
        conn = connect_as(options, principal)

        def alive() -> bool:
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
            except pymysql.MySQLError:
                return False
            return True

        return alive

    def drop() -> None:
        with admin_connection(options) as conn, conn.cursor() as cur:
            for user in users:
                cur.execute(f"DROP USER IF EXISTS {account_literal(conn.escape, user, '%')}")
            for role in roles:
                cur.execute(f"DROP ROLE IF EXISTS {quote_identifier(role)}")

    target = MySQLTarget.from_options("contract-mysql", options)
    return Harness(kind="mysql", target=target, make_role=make_role,
                   make_principal=make_principal, is_member=is_member, add_member=add_member,
                   open_session=open_session, cleanup=[target.close, drop])
