"""PostgreSQL harness: the server from the suite's ``pg_url`` fixture."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
from psycopg import sql

from connectors.postgres import PostgresTarget
from tests.contract.targets import Harness


def harness(request: pytest.FixtureRequest, token: str) -> Harness:
    pg_url: str = request.getfixturevalue("pg_url")
    created: list[str] = []

    def run(statement: sql.Composable) -> None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(statement)

    def make_role(name: str) -> str:
        run(sql.SQL("CREATE ROLE {}").format(sql.Identifier(name)))
        created.append(name)
        return name

    def make_principal(name: str) -> str:
        run(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        created.append(name)
        return name

    def is_member(principal: str, role: str) -> bool:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                "JOIN pg_roles u ON u.oid = m.member WHERE r.rolname = %s AND u.rolname = %s",
                (role, principal),
            ).fetchone()
        return row is not None

    def add_member(principal: str, role: str) -> None:
        run(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(principal)))

    def open_session(principal: str) -> Callable[[], bool]:
        info = psycopg.conninfo.conninfo_to_dict(pg_url)
        info["user"] = principal
        conn = psycopg.connect(**info, autocommit=True)

        def alive() -> bool:
            try:
                conn.execute("SELECT 1")
            except psycopg.Error:
                return False
            return True

        return alive

    def drop() -> None:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            for name in reversed(created):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))

    target = PostgresTarget.from_options("contract-pg", {"dsn": pg_url})
    return Harness(kind="postgres", target=target, make_role=make_role,
                   make_principal=make_principal, is_member=is_member, add_member=add_member,
                   open_session=open_session, cleanup=[target.close, drop])
