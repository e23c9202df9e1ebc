"""PostgreSQL target: a grant is membership of a principal (login role) in a group role.

Every call is "ensure present" / "ensure absent" and runs in one transaction together with
the state it checks, so a redelivered task (fault cases T01-T04) sees the membership it
already created and makes no second change. Identifiers are only ever composed with
``psycopg.sql.Identifier``/``sql.Literal``; names in ``WHERE`` clauses are bind parameters.

Membership has no native expiry in PostgreSQL; ``VALID UNTIL`` on a managed login role is
defence in depth only (it limits password authentication, not sessions or memberships).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, ClassVar, Final

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from pydantic import BaseModel, Field, SecretStr, field_validator

from connectors.base import Outcome
from connectors.errors import ConnectorError, PermanentError, TransientError

__all__ = ["PostgresTarget", "PostgresTargetConfig"]

# NAMEDATALEN - 1 on every stock build. Longer names are silently truncated by the server,
# so a long principal could land on (or be compared with) a different, existing role.
_MAX_IDENTIFIER_BYTES: Final = 63

# One row: does the role exist, does the principal exist, is it already a direct member,
# and would ``expires`` extend the principal's VALID UNTIL. The comparison is done in SQL
# because psycopg cannot load 'infinity' into a datetime. NULL VALID UNTIL means "never
# expires" (a role we did not create); it is left alone.
_STATE_SQL: Final = """
SELECT r.oid IS NOT NULL,
       p.oid IS NOT NULL,
       EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members AS m
               WHERE m.roleid = r.oid AND m.member = p.oid),
       p.rolvaliduntil IS NOT NULL AND p.rolvaliduntil < %(expires)s
FROM (VALUES (1)) AS one (x)
LEFT JOIN pg_catalog.pg_roles AS r ON r.rolname = %(role)s
LEFT JOIN pg_catalog.pg_roles AS p ON p.rolname = %(principal)s
"""

_IS_MEMBER_SQL: Final = """
SELECT EXISTS (
    SELECT 1 FROM pg_catalog.pg_auth_members AS m
    JOIN pg_catalog.pg_roles AS r ON r.oid = m.roleid
    JOIN pg_catalog.pg_roles AS p ON p.oid = m.member
    WHERE r.rolname = %(role)s AND p.rolname = %(principal)s)
"""

# The batch form of _STATE_SQL for revocation: one row per (principal, role) pair, by
# position, so duplicates and missing roles are answered individually.
_BATCH_STATE_SQL: Final = """
SELECT x.i, r.oid IS NOT NULL AND p.oid IS NOT NULL AND EXISTS (
           SELECT 1 FROM pg_catalog.pg_auth_members AS m
           WHERE m.roleid = r.oid AND m.member = p.oid)
FROM unnest(%(principals)s::text[], %(roles)s::text[]) WITH ORDINALITY AS x (principal, role, i)
LEFT JOIN pg_catalog.pg_roles AS r ON r.rolname = x.role
LEFT JOIN pg_catalog.pg_roles AS p ON p.rolname = x.principal
"""

_MEMBERS_SQL: Final = """
SELECT p.rolname
FROM pg_catalog.pg_roles AS r
LEFT JOIN pg_catalog.pg_auth_members AS m ON m.roleid = r.oid
LEFT JOIN pg_catalog.pg_roles AS p ON p.oid = m.member
WHERE r.rolname = %(role)s
"""


class PostgresTargetConfig(BaseModel, frozen=True, extra="forbid", hide_input_in_errors=True):
    """Options of a ``type: postgres`` target (the worker strips the generic target keys).

    ``hide_input_in_errors`` keeps the DSN out of ``ValidationError`` text.
    """

    dsn: SecretStr
    manage_login: bool = False
    connect_timeout: int = Field(default=5, ge=1)
    # 0 would mean "no timeout" to PostgreSQL, letting a lock wait hang a worker forever.
    statement_timeout_ms: int = Field(default=5000, ge=1)
    application_name: str = "jitgate"

    @field_validator("dsn")
    @classmethod
    def _dsn_parses(cls, value: SecretStr) -> SecretStr:
        # Parse now so a malformed DSN fails at policy load; libpq's parse errors quote
        # fragments of the string (possibly the password), so none of that is kept.
        try:
            conninfo_to_dict(value.get_secret_value())
        except psycopg.Error:
            raise ValueError("not a valid libpq connection string (URI or key=value)") from None
        return value


def _check_identifier(value: str, what: str) -> None:
    if not value or "\x00" in value or len(value.encode()) > _MAX_IDENTIFIER_BYTES:
        raise PermanentError(
            f"{what} name is empty, longer than {_MAX_IDENTIFIER_BYTES} bytes or contains NUL",
            code="invalid_identifier",
        )


def _principal_lock_key(principal: str) -> int:
    """Advisory-lock key serialising all grant/revoke calls for one principal, so two
    workers granting the same membership (or creating the same login) cannot race."""
    digest = hashlib.blake2b(principal.encode(), digest_size=8, person=b"jitgate-pg-role").digest()
    return int.from_bytes(digest, "big", signed=True)


def _describe(exc: psycopg.Error) -> str:
    # Only the class and SQLSTATE: the driver's message can quote the connection string.
    return f"{type(exc).__name__}, sqlstate {exc.sqlstate}" if exc.sqlstate else type(exc).__name__


class PostgresTarget:
    """Grants PostgreSQL role memberships. One lazily opened autocommit connection per
    instance, serialised by a lock and reopened after a connection failure."""

    kind: ClassVar[str] = "postgres"

    def __init__(self, config: PostgresTargetConfig, *, name: str) -> None:
        self.name = name
        self._config = config
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[TupleRow] | None = None

    @classmethod
    def from_options(cls, name: str, options: dict[str, Any]) -> PostgresTarget:
        return cls(PostgresTargetConfig.model_validate(options), name=name)

    def __repr__(self) -> str:
        return f"PostgresTarget(name={self.name!r})"

    # -- TargetConnector -------------------------------------------------------------

    def grant(self, *, principal: str, role: str, expires_at: datetime) -> Outcome:
        _check_identifier(principal, "principal")
        _check_identifier(role, "role")
        if expires_at.utcoffset() is None:
            raise PermanentError("expires_at must be timezone-aware", code="invalid_expiry")
        with self._session("grant") as conn:
            try:
                return self._grant_once(conn, principal, role, expires_at)
            except (pg_errors.UniqueViolation, pg_errors.DuplicateObject):
                # A race our advisory lock cannot see: roles are cluster-wide, advisory
                # locks per database. PG <= 15 reports a concurrent duplicate GRANT as
                # unique_violation (16+ waits and answers with a NOTICE), a concurrent
                # CREATE ROLE as a duplicate. Retrying reads the winner's committed state.
                return self._grant_once(conn, principal, role, expires_at)

    def _grant_once(
        self,
        conn: psycopg.Connection[TupleRow],
        principal: str,
        role: str,
        expires_at: datetime,
    ) -> Outcome:
        who, what = sql.Identifier(principal), sql.Identifier(role)
        # VALID UNTIL takes a string constant; an ISO timestamp with offset is unambiguous.
        until = sql.Literal(expires_at.isoformat())
        with conn.transaction():
            self._lock_principal(conn, principal)
            row = conn.execute(
                _STATE_SQL, {"role": role, "principal": principal, "expires": expires_at}
            ).fetchone()
            assert row is not None  # the query always yields exactly one row
            role_exists, principal_exists, is_member, extend = row
            if not role_exists:
                raise self._role_missing(role)
            if not principal_exists:
                if not self._config.manage_login:
                    raise PermanentError(
                        f"postgres target {self.name!r}: principal {principal!r} does not "
                        "exist and manage_login is off",
                        code="principal_missing",
                    )
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN VALID UNTIL {}").format(who, until))
            elif self._config.manage_login and extend:
                # Only ever later: expires_at is the max over the principal's active
                # grants, and a shorter value would cut another ticket's access.
                conn.execute(sql.SQL("ALTER ROLE {} VALID UNTIL {}").format(who, until))
            if is_member:
                return Outcome.ALREADY_PRESENT
            # Granting an existing membership is a NOTICE (PG <= 15) or NOTICE/WARNING
            # (16+), never an error, so this stays idempotent even outside our lock.
            conn.execute(sql.SQL("GRANT {} TO {}").format(what, who))
        return Outcome.APPLIED

    def revoke(self, *, principal: str, role: str) -> Outcome:
        _check_identifier(principal, "principal")
        _check_identifier(role, "role")
        params = {"role": role, "principal": principal, "expires": None}
        try:
            with self._session("revoke") as conn:
                with conn.transaction():
                    self._lock_principal(conn, principal)
                    row = conn.execute(_STATE_SQL, params).fetchone()
                    assert row is not None
                    role_exists, principal_exists, is_member, _ = row
                    if not (role_exists and principal_exists and is_member):
                        return Outcome.ALREADY_ABSENT
                    conn.execute(
                        sql.SQL("REVOKE {} FROM {}").format(
                            sql.Identifier(role), sql.Identifier(principal)
                        )
                    )
                    # PG 16+ keys memberships by grantor: plain REVOKE removes only ours
                    # and merely warns about the rest. Commit what we removed, then fail
                    # loudly, because the principal still has the role.
                    remaining = conn.execute(_IS_MEMBER_SQL, params).fetchone()
                if remaining is not None and remaining[0]:
                    raise PermanentError(
                        f"postgres target {self.name!r}: {principal!r} is still a member of "
                        f"{role!r} through a grant made by another grantor",
                        code="revoke_incomplete",
                    )
        except PermanentError as exc:
            # The role or principal was dropped between our check and REVOKE: absent.
            if exc.code == "role_missing":
                return Outcome.ALREADY_ABSENT
            raise
        return Outcome.APPLIED

    def revoke_many(self, pairs: Sequence[tuple[str, str]]) -> list[Outcome | ConnectorError]:
        """Revoke many memberships in one transaction: advisory locks, one state query,
        one ``REVOKE role FROM a, b, ...`` per role, one re-check. If the batch as a
        whole hits a server error, each pair is retried alone so that one bad pair is
        reported against itself and the rest still go through."""
        results: list[Outcome | ConnectorError | None] = [None] * len(pairs)
        valid: list[int] = []
        for index, (principal, role) in enumerate(pairs):
            try:
                _check_identifier(principal, "principal")
                _check_identifier(role, "role")
            except PermanentError as exc:
                results[index] = exc
            else:
                valid.append(index)
        if valid:
            try:
                with self._session("revoke") as conn:
                    self._revoke_batch(conn, [pairs[i] for i in valid], valid, results)
            except TransientError as exc:
                for index in valid:
                    results[index] = exc
            except PermanentError:
                for index in valid:
                    try:
                        results[index] = self.revoke(principal=pairs[index][0],
                                                     role=pairs[index][1])
                    except ConnectorError as exc:
                        results[index] = exc
        return [result if result is not None else Outcome.ALREADY_ABSENT for result in results]

    def _revoke_batch(self, conn: psycopg.Connection[TupleRow],
                      pairs: list[tuple[str, str]], positions: list[int],
                      results: list[Outcome | ConnectorError | None]) -> None:
        principals = [principal for principal, _ in pairs]
        roles = [role for _, role in pairs]
        params = {"principals": principals, "roles": roles}
        with conn.transaction():
            # Sorted, so two batches sharing principals always lock in the same order.
            keys = sorted({_principal_lock_key(p) for p in principals})
            conn.execute("SELECT pg_catalog.pg_advisory_xact_lock(k) "
                         "FROM unnest(%s::bigint[]) AS k", (keys,))
            present = {int(i) - 1 for i, member in conn.execute(_BATCH_STATE_SQL, params)
                       if member}
            by_role: dict[str, list[str]] = {}
            for offset in sorted(present):
                principal, role = pairs[offset]
                if principal not in by_role.setdefault(role, []):
                    by_role[role].append(principal)
            for role, members in by_role.items():
                conn.execute(sql.SQL("REVOKE {} FROM {}").format(
                    sql.Identifier(role), sql.SQL(", ").join(map(sql.Identifier, members))))
            # See revoke(): a membership granted by another grantor survives REVOKE.
            remaining = ({int(i) - 1 for i, member in conn.execute(_BATCH_STATE_SQL, params)
                          if member} if present else set())
        for offset, index in enumerate(positions):
            principal, role = pairs[offset]
            if offset in remaining:
                results[index] = PermanentError(
                    f"postgres target {self.name!r}: {principal!r} is still a member of "
                    f"{role!r} through a grant made by another grantor",
                    code="revoke_incomplete",
                )
            else:
                results[index] = Outcome.APPLIED if offset in present else Outcome.ALREADY_ABSENT

    def members(self, *, role: str) -> frozenset[str]:
        """Direct members of ``role``; raises ``role_missing`` rather than answering an
        empty set for a role that does not exist (a misnamed role is not "no members")."""
        _check_identifier(role, "role")
        with self._session("members") as conn:
            rows = conn.execute(_MEMBERS_SQL, {"role": role}).fetchall()
        if not rows:
            raise self._role_missing(role)
        return frozenset(str(member) for (member,) in rows if member is not None)

    def check(self) -> None:
        with self._session("check") as conn:
            conn.execute("SELECT 1")

    def terminate_sessions(self, *, principal: str) -> int:
        """End the principal's backends: a session opened before the revocation (or one
        that ran ``SET ROLE``) would otherwise keep the role's privileges."""
        _check_identifier(principal, "principal")
        with self._session("terminate_sessions") as conn:
            rows = conn.execute(
                "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity "
                "WHERE usename = %s AND pid <> pg_catalog.pg_backend_pid()",
                (principal,),
            ).fetchall()
        return sum(1 for (ended,) in rows if ended)

    def terminate_sessions_many(self, principals: Sequence[str]) -> dict[str, int]:
        names = sorted(set(principals))
        for principal in names:
            _check_identifier(principal, "principal")
        with self._session("terminate_sessions") as conn:
            rows = conn.execute(
                "SELECT usename, pg_catalog.pg_terminate_backend(pid) "
                "FROM pg_catalog.pg_stat_activity "
                "WHERE usename = ANY(%s::text[]) AND pid <> pg_catalog.pg_backend_pid()",
                (names,),
            ).fetchall()
        ended = dict.fromkeys(names, 0)
        for name, done in rows:
            if done:
                ended[str(name)] += 1
        return ended

    def close(self) -> None:
        with self._lock:
            self._discard()

    # -- internals -------------------------------------------------------------------

    def _role_missing(self, role: str) -> PermanentError:
        return PermanentError(
            f"postgres target {self.name!r}: role {role!r} does not exist", code="role_missing"
        )

    @staticmethod
    def _lock_principal(conn: psycopg.Connection[TupleRow], principal: str) -> None:
        # Transaction-scoped, so it is released on commit/rollback even if we crash.
        conn.execute(
            "SELECT pg_catalog.pg_advisory_xact_lock(%s::bigint)", (_principal_lock_key(principal),)
        )

    @contextlib.contextmanager
    def _session(self, action: str) -> Iterator[psycopg.Connection[TupleRow]]:
        """Serialise use of the connection and translate every driver error (the only
        place that does). ``from None`` keeps the driver's message, which may quote
        connection parameters, out of printed tracebacks."""
        with self._lock:
            try:
                yield self._connection()
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                    self._discard()
                raise self._translate(exc, action) from None

    def _translate(self, exc: psycopg.Error, action: str) -> ConnectorError:
        prefix = f"postgres target {self.name!r}: {action} failed ({_describe(exc)})"
        if isinstance(exc, pg_errors.InsufficientPrivilege):
            return PermanentError(f"{prefix}: permission denied", code="permission_denied")
        if isinstance(exc, pg_errors.UndefinedObject):
            return PermanentError(f"{prefix}: role does not exist", code="role_missing")
        # AdminShutdown and QueryCanceled are OperationalError subclasses; named for clarity.
        if isinstance(
            exc,
            pg_errors.AdminShutdown
            | pg_errors.QueryCanceled
            | psycopg.OperationalError
            | psycopg.InterfaceError,
        ):
            return TransientError(f"{prefix}: target unavailable or timed out")
        return PermanentError(prefix, code=exc.sqlstate or "driver_error")

    def _connection(self) -> psycopg.Connection[TupleRow]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._discard()
        conn = psycopg.connect(
            self._config.dsn.get_secret_value(),
            autocommit=True,
            # No server-side prepared statements: safe behind transaction-mode poolers.
            prepare_threshold=None,
            connect_timeout=self._config.connect_timeout,
            application_name=self._config.application_name,
        )
        try:
            # set_config takes a bind parameter, unlike SET; session scope (false).
            conn.execute(
                "SELECT pg_catalog.set_config('statement_timeout', %s, false)",
                (f"{self._config.statement_timeout_ms}ms",),
            )
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # Closing a broken connection can fail; there is nothing left to release.
            with contextlib.suppress(psycopg.Error):
                conn.close()
