"""MariaDB target: a grant is a role granted to a user account, made its default role.

MariaDB roles are inactive until a session runs ``SET ROLE``; ``SET DEFAULT ROLE`` makes
the granted role active at login, so a contractor's client works without extra steps.
An account has exactly one default role: the newest grant wins, and revoking the default
role falls back to another role the account still holds (or ``NONE``), because MariaDB
keeps a stale default after ``REVOKE``.

Identifiers cannot be bind parameters in ``GRANT``/``REVOKE``: role names are quoted as
backtick identifiers (``quote_identifier``) and accounts as ``'user'@'host'`` string
literals escaped by the driver, which follows the session's ``NO_BACKSLASH_ESCAPES``
mode (``account_literal``). Names in ``WHERE`` clauses are ordinary bind parameters.

Every call is "ensure present" / "ensure absent" under a server-wide named lock per
principal (``GET_LOCK``), so two workers or a redelivered task see each other's result.
DDL commits implicitly in MariaDB; there is no transaction to hold.

The service account needs: ``SELECT`` on ``mysql.user`` and ``mysql.roles_mapping``,
``ADMIN OPTION`` on the roles it hands out, ``UPDATE`` on the ``mysql`` schema (for
``SET DEFAULT ROLE ... FOR``), and ``PROCESS`` + ``CONNECTION ADMIN`` for
``terminate_sessions``.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, ClassVar, Final

import pymysql
from pydantic import BaseModel, Field, SecretStr

from connectors.base import Outcome
from connectors.errors import ConnectorError, PermanentError, TransientError

__all__ = ["MySQLTarget", "MySQLTargetConfig", "account_literal", "quote_identifier"]

# USERNAME_CHAR_LENGTH: user and role names are char(128) in mysql.user/roles_mapping;
# host names char(255). Longer names are refused by the server, but we refuse first so
# the error is ours and cannot be confused with another failure.
_MAX_NAME_CHARS: Final = 128
_MAX_HOST_CHARS: Final = 255

# Client-side (CR_*) and server conditions that a later attempt can get past.
_TRANSIENT_ERRNOS: Final = frozenset(
    {
        1040,  # too many connections
        1053,  # server shutdown in progress
        1205,  # lock wait timeout
        1213,  # deadlock
        1927,  # connection was killed
        4031,  # disconnected by the server for inactivity
    }
)
_PERMISSION_ERRNOS: Final = frozenset(
    {
        1044,  # access denied to database
        1045,  # access denied for user (bad credentials)
        1142,  # command denied on table (e.g. SELECT on mysql.roles_mapping)
        1227,  # needs SUPER / CONNECTION ADMIN / ...
        1698,  # access denied (auth plugin)
    }
)
_ER_NONEXISTING_GRANT_USER: Final = 1133  # "Can't find any matching row in the user table"
_ER_NO_SUCH_THREAD: Final = 1094
_ER_INVALID_ROLE: Final = 1959
_ER_CANNOT_REVOKE_ROLE: Final = 1962

_STATE_SQL: Final = """
SELECT EXISTS (SELECT 1 FROM mysql.user
               WHERE User = %(role)s AND Host = '' AND is_role = 'Y'),
       EXISTS (SELECT 1 FROM mysql.user
               WHERE User = %(principal)s AND Host = %(host)s AND is_role = 'N'),
       EXISTS (SELECT 1 FROM mysql.roles_mapping
               WHERE User = %(principal)s AND Host = %(host)s AND Role = %(role)s),
       (SELECT default_role FROM mysql.user
        WHERE User = %(principal)s AND Host = %(host)s AND is_role = 'N')
"""

_ROLE_EXISTS_SQL: Final = (
    "SELECT 1 FROM mysql.user WHERE User = %s AND Host = '' AND is_role = 'Y'"
)
# Roles granted to roles have Host = ''; the role's creator holds it WITH ADMIN OPTION
# under its own host. Only accounts of ``host_pattern`` are principals.
_MEMBERS_SQL: Final = "SELECT User FROM mysql.roles_mapping WHERE Role = %s AND Host = %s"
_HELD_ROLES_SQL: Final = (
    "SELECT Role FROM mysql.roles_mapping WHERE User = %s AND Host = %s ORDER BY Role"
)


class MySQLTargetConfig(BaseModel, frozen=True, extra="forbid", hide_input_in_errors=True):
    """Options of a ``type: mysql`` target (MariaDB 10.3+ roles).

    ``host_pattern`` is the host part of the principals' accounts (``'ctr_bob'@'%'``).
    ``unix_socket``, when set, is used instead of ``host``/``port``.
    """

    host: str = "127.0.0.1"
    port: int = Field(default=3306, ge=1, le=65535)
    user: str = Field(min_length=1)
    password: SecretStr | None = None
    database: str | None = None
    unix_socket: str | None = None
    connect_timeout: int = Field(default=5, ge=1)
    # Bounds every read/write on the socket, so a hung server cannot hang a worker.
    read_timeout: int = Field(default=30, ge=1)
    # Seconds to wait for another worker's call on the same principal.
    lock_timeout: int = Field(default=10, ge=1)
    host_pattern: str = Field(default="%", min_length=1, max_length=_MAX_HOST_CHARS)


def _check_name(value: str, what: str, limit: int = _MAX_NAME_CHARS) -> None:
    # mysql.* columns are utf8mb3: no characters outside the BMP. They are CHAR with
    # PAD SPACE collation, so "ops " would compare equal to "ops": refuse trailing spaces.
    if (
        not value
        or len(value) > limit
        or "\x00" in value
        or value.endswith(" ")
        or any(ord(ch) > 0xFFFF for ch in value)
    ):
        raise PermanentError(
            f"{what} name is empty, longer than {limit} characters, ends with a space or "
            "contains NUL or characters outside the Basic Multilingual Plane",
            code="invalid_identifier",
        )


def quote_identifier(name: str) -> str:
    """A MariaDB identifier in backticks: the only special character inside is the
    backtick itself, written twice (ANSI_QUOTES does not change backtick quoting)."""
    _check_name(name, "role")
    return "`" + name.replace("`", "``") + "`"


def account_literal(escape: Callable[[str], str], user: str, host: str) -> str:
    """``'user'@'host'`` with both parts as string literals. ``escape`` is the
    connection's literal quoting (``Connection.escape``), which knows whether the
    session runs with ``NO_BACKSLASH_ESCAPES``."""
    _check_name(user, "principal")
    _check_name(host, "host", _MAX_HOST_CHARS)
    return f"{escape(user)}@{escape(host)}"


def _lock_name(principal: str) -> str:
    # GET_LOCK names are limited to 64 characters and are server-wide.
    digest = hashlib.blake2b(principal.encode(), digest_size=16, person=b"jitgate-mysql")
    return f"jitgate:{digest.hexdigest()}"


def _errno(exc: pymysql.MySQLError) -> int | None:
    first = exc.args[0] if exc.args else None
    return first if isinstance(first, int) else None


class MySQLTarget:
    """Grants MariaDB roles. One lazily opened autocommit connection per instance,
    serialised by a lock and reopened after a connection failure."""

    kind: ClassVar[str] = "mysql"

    def __init__(self, config: MySQLTargetConfig, *, name: str) -> None:
        self.name = name
        self._config = config
        self._lock = threading.Lock()
        self._conn: pymysql.connections.Connection[Any] | None = None

    @classmethod
    def from_options(cls, name: str, options: dict[str, Any]) -> MySQLTarget:
        return cls(MySQLTargetConfig.model_validate(options), name=name)

    def __repr__(self) -> str:
        return f"MySQLTarget(name={self.name!r})"

    # -- TargetConnector -------------------------------------------------------------

    def grant(self, *, principal: str, role: str, expires_at: datetime) -> Outcome:
        # MariaDB accounts carry no expiry that limits role use (PASSWORD EXPIRE only
        # forces a password change), so expires_at is enforced by the sweep alone.
        del expires_at
        _check_name(principal, "principal")
        role_sql = quote_identifier(role)
        with self._session("grant") as conn, self._principal_lock(conn, principal):
            account = self._account(conn, principal)
            role_exists, principal_exists, is_member, default = self._state(
                conn, principal, role
            )
            if not role_exists:
                raise self._role_missing(role)
            if not principal_exists:
                raise self._principal_missing(principal)
            if is_member:
                # Repairs a grant interrupted between GRANT and SET DEFAULT ROLE; an
                # account that already has another default keeps it.
                if not default:
                    _execute(conn, f"SET DEFAULT ROLE {role_sql} FOR {account}")
                return Outcome.ALREADY_PRESENT
            _execute(conn, f"GRANT {role_sql} TO {account}")
            _execute(conn, f"SET DEFAULT ROLE {role_sql} FOR {account}")
        return Outcome.APPLIED

    def revoke(self, *, principal: str, role: str) -> Outcome:
        _check_name(principal, "principal")
        role_sql = quote_identifier(role)
        with self._session("revoke") as conn, self._principal_lock(conn, principal):
            account = self._account(conn, principal)
            role_exists, principal_exists, is_member, default = self._state(
                conn, principal, role
            )
            if not principal_exists:
                return Outcome.ALREADY_ABSENT
            outcome = Outcome.ALREADY_ABSENT
            if role_exists and is_member:
                try:
                    _execute(conn, f"REVOKE {role_sql} FROM {account}")
                except pymysql.MySQLError as exc:
                    # Revoked or dropped by someone else between our read and REVOKE.
                    if _errno(exc) not in {_ER_CANNOT_REVOKE_ROLE, _ER_INVALID_ROLE}:
                        raise
                else:
                    outcome = Outcome.APPLIED
            # Also on ALREADY_ABSENT: a redelivered revoke finishes a default-role reset
            # that an interrupted first attempt did not reach.
            if default == role:
                self._reset_default_role(conn, principal, account)
        return outcome

    def members(self, *, role: str) -> frozenset[str]:
        """Accounts ``<user>@<host_pattern>`` holding ``role``; raises ``role_missing``
        rather than answering an empty set for a role that does not exist."""
        _check_name(role, "role")
        with self._session("members") as conn, conn.cursor() as cur:
            if not cur.execute(_ROLE_EXISTS_SQL, (role,)):
                raise self._role_missing(role)
            cur.execute(_MEMBERS_SQL, (role, self._config.host_pattern))
            return frozenset(str(user) for (user,) in cur.fetchall())

    def check(self) -> None:
        with self._session("check") as conn:
            _execute(conn, "SELECT 1")

    def terminate_sessions(self, *, principal: str) -> int:
        """``KILL CONNECTION`` for every session of the user name (whatever host it came
        from): a session opened before the revocation keeps its active role."""
        _check_name(principal, "principal")
        ended = 0
        with self._session("terminate_sessions") as conn:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT ID, USER FROM information_schema.PROCESSLIST "
                    "WHERE USER = %s AND ID <> CONNECTION_ID()",
                    (principal,),
                )
                rows = cur.fetchall()
            for thread_id, user in rows:
                # PROCESSLIST.USER compares case-insensitively; user names do not.
                if user != principal:
                    continue
                try:
                    _execute(conn, f"KILL CONNECTION {int(thread_id)}")
                except pymysql.MySQLError as exc:
                    if _errno(exc) != _ER_NO_SUCH_THREAD:  # ended on its own meanwhile
                        raise
                else:
                    ended += 1
        return ended

    def close(self) -> None:
        with self._lock:
            self._discard()

    # -- internals -------------------------------------------------------------------

    def _account(self, conn: pymysql.connections.Connection[Any], principal: str) -> str:
        return account_literal(conn.escape, principal, self._config.host_pattern)

    def _state(
        self, conn: pymysql.connections.Connection[Any], principal: str, role: str
    ) -> tuple[bool, bool, bool, str | None]:
        params = {"role": role, "principal": principal, "host": self._config.host_pattern}
        with conn.cursor() as cur:
            cur.execute(_STATE_SQL, params)
            row = cur.fetchone()
        assert row is not None  # the query always yields exactly one row
        role_exists, principal_exists, is_member, default = row
        return bool(role_exists), bool(principal_exists), bool(is_member), default or None

    def _reset_default_role(
        self, conn: pymysql.connections.Connection[Any], principal: str, account: str
    ) -> None:
        with conn.cursor() as cur:
            cur.execute(_HELD_ROLES_SQL, (principal, self._config.host_pattern))
            held = [str(role) for (role,) in cur.fetchall()]
        # Keep the account's other roles usable at login: fall back to one it still holds.
        fallback = quote_identifier(held[0]) if held else "NONE"
        _execute(conn, f"SET DEFAULT ROLE {fallback} FOR {account}")

    @contextlib.contextmanager
    def _principal_lock(
        self, conn: pymysql.connections.Connection[Any], principal: str
    ) -> Iterator[None]:
        # Named locks are released when the connection ends, so a crash cannot leak one.
        name = _lock_name(principal)
        with conn.cursor() as cur:
            cur.execute("SELECT GET_LOCK(%s, %s)", (name, self._config.lock_timeout))
            row = cur.fetchone()
        if row is None or row[0] != 1:
            raise TransientError(
                f"mysql target {self.name!r}: another call on the same principal is in "
                "progress (lock wait timed out)"
            )
        try:
            yield
        finally:
            with contextlib.suppress(pymysql.MySQLError), conn.cursor() as cur:
                cur.execute("SELECT RELEASE_LOCK(%s)", (name,))

    def _role_missing(self, role: str) -> PermanentError:
        return PermanentError(
            f"mysql target {self.name!r}: role {role!r} does not exist", code="role_missing"
        )

    def _principal_missing(self, principal: str) -> PermanentError:
        return PermanentError(
            f"mysql target {self.name!r}: account {principal!r}@"
            f"{self._config.host_pattern!r} does not exist",
            code="principal_missing",
        )

    @contextlib.contextmanager
    def _session(self, action: str) -> Iterator[pymysql.connections.Connection[Any]]:
        """Serialise use of the connection and translate every driver error (the only
        place that does). ``from None`` keeps the driver's message, which names the
        server and account, out of printed tracebacks."""
        with self._lock:
            try:
                yield self._connection()
            except pymysql.MySQLError as exc:
                translated = self._translate(exc, action)
                if isinstance(translated, TransientError):
                    self._discard()
                raise translated from None

    def _translate(self, exc: pymysql.MySQLError, action: str) -> ConnectorError:
        errno = _errno(exc)
        detail = type(exc).__name__ if errno is None else f"{type(exc).__name__} {errno}"
        prefix = f"mysql target {self.name!r}: {action} failed ({detail})"
        if errno in _PERMISSION_ERRNOS:
            return PermanentError(f"{prefix}: permission denied", code="permission_denied")
        if errno == _ER_INVALID_ROLE:
            return PermanentError(f"{prefix}: role does not exist", code="role_missing")
        if errno == _ER_NONEXISTING_GRANT_USER:
            return PermanentError(f"{prefix}: account does not exist", code="principal_missing")
        # Client errors (CR_*, 2000-2999: refused, gone away, lost, timeouts) and a
        # closed connection (InterfaceError) are about reachability, not the request.
        if (
            isinstance(exc, pymysql.InterfaceError)
            or errno in _TRANSIENT_ERRNOS
            or (errno is not None and 2000 <= errno < 3000)
        ):
            return TransientError(f"{prefix}: target unavailable or timed out")
        return PermanentError(prefix, code=str(errno) if errno is not None else "driver_error")

    def _connection(self) -> pymysql.connections.Connection[Any]:
        conn = self._conn
        if conn is not None and conn.open:
            return conn
        self._discard()
        cfg = self._config
        password = cfg.password.get_secret_value() if cfg.password is not None else ""
        conn = pymysql.connect(
            host=cfg.host,
            port=cfg.port,
            user=cfg.user,
            password=password,
            database=cfg.database,
            unix_socket=cfg.unix_socket,
            connect_timeout=cfg.connect_timeout,
            read_timeout=cfg.read_timeout,
            write_timeout=cfg.read_timeout,
            autocommit=True,
            charset="utf8mb4",
            program_name="jitgate",
        )
        self._conn = conn
        return conn

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # Closing a broken connection can fail; there is nothing left to release.
            with contextlib.suppress(pymysql.MySQLError, OSError):
                conn.close()


def _execute(conn: pymysql.connections.Connection[Any], statement: str) -> None:
    # No parameters: PyMySQL would %-format the statement, and quoted identifiers may
    # contain "%". Every dynamic part was quoted by quote_identifier/account_literal.
    with conn.cursor() as cur:
        cur.execute(statement)
