"""Redis ACL target: a "role" is a named rule set from the target's configuration, and a
principal (an existing ACL user) holds it when jitgate has written those rules into it.

Redis ACL has no groups, so the set of roles a user holds is recorded in the user's own
ACL as root channel patterns ``&jitgate:held:<role>`` ("markers"), and every grant or
revoke rewrites the user's permissions from scratch for exactly the held roles in one
atomic ``ACL SETUSER``. Keeping the record in the ACL rather than in a key means a
principal whose role can write keys cannot forge a role into its own record, and rules
and record can never disagree after a crash.

On Redis 7+ each held role becomes its own selector ``(<commands> <keys> <channels>)``
under root permissions of ``-@all``: a command is allowed only together with the keys of
the role that allows it (one role's ``+@write`` never reaches another role's keys), and
the markers, sitting in the command-less root, grant nothing. Redis 6.2 has no
selectors; there the root carries the rules, which is exact for one role, so a second
role on the same user is refused (``multiple_roles_unsupported``) rather than merged
into a broader union. On 6.2 a marker is a real channel permission when the role
allows pub/sub commands: a private, unused channel name.

Passwords are never touched: principals authenticate as the pre-existing users, and a
user that does not exist is ``principal_missing``.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any, ClassVar, Final
from urllib.parse import unquote, urlsplit

import redis
from pydantic import BaseModel, Field, SecretStr, field_validator
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    BusyLoadingError,
    NoPermissionError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)
from redis.retry import Retry

from connectors.base import Outcome
from connectors.errors import ConnectorError, PermanentError, TransientError

__all__ = ["RedisACLTarget", "RedisACLTargetConfig", "RoleRule"]

MARKER_PREFIX: Final = "jitgate:held:"
_LOCK_PREFIX: Final = "jitgate:lock:acl:"

# Role names end up inside a channel pattern: no glob metacharacters, no spaces.
_ROLE_NAME: Final = re.compile(r"^[\w.:-]{1,64}$")
# Principals are ACL user names: no spaces (ACL LIST would become ambiguous), no globs.
_USER_NAME: Final = re.compile(r"^[\w.@+:-]{1,128}$")
_USER_PREFIX: Final = re.compile(r"^[\w.@+:-]{0,64}$")
_CATEGORY: Final = re.compile(r"^[+-]@[a-z]+$")
_COMMAND: Final = re.compile(r"^[+-][a-z][a-z_-]*(\|[a-z][a-z_-]*)?$")
# Quotes, parentheses and backslashes are refused because Redis 7 re-splits selector
# text with quote handling; whitespace because every token is one rule.
_KEY: Final = re.compile(r"^(~|%R~|%W~|%RW~)[^\s\"'()\\]+$")
_CHANNEL: Final = re.compile(r"^&[^\s\"'()\\]+$")

# A role that can rewrite ACLs or the server could make itself permanent: revocation
# would no longer be able to take it back.
_FORBIDDEN_CATEGORIES: Final = frozenset({"+@all", "+@admin", "+@dangerous"})
_FORBIDDEN_COMMANDS: Final = frozenset({"acl", "module", "debug"})
_FORBIDDEN_SUBCOMMANDS: Final = frozenset({"config|set", "config|rewrite", "config"})


class RoleRule(BaseModel, frozen=True, extra="forbid"):
    """One role's ACL rules. Every token is validated on its own, so nothing in a policy
    file can smuggle other ACL syntax (``>password``, ``nopass``, ``on``/``off``,
    ``reset``, ``allkeys``) into ``ACL SETUSER``."""

    categories: list[str] = Field(default_factory=list)
    commands: list[str] = Field(default_factory=list)
    keys: list[str] = Field(default_factory=list)
    channels: list[str] = Field(default_factory=list)

    @field_validator("categories")
    @classmethod
    def _categories(cls, value: list[str]) -> list[str]:
        for token in value:
            if not _CATEGORY.fullmatch(token):
                raise ValueError(f"category rule {token!r} must look like +@read or -@write")
            if token in _FORBIDDEN_CATEGORIES:
                raise ValueError(
                    f"category rule {token!r} would let the holder change ACLs or the server"
                )
        return value

    @field_validator("commands")
    @classmethod
    def _commands(cls, value: list[str]) -> list[str]:
        for token in value:
            if not _COMMAND.fullmatch(token):
                raise ValueError(f"command rule {token!r} must look like +get or -client|kill")
            name = token[1:]
            if token[0] == "+" and (
                name.split("|")[0] in _FORBIDDEN_COMMANDS or name in _FORBIDDEN_SUBCOMMANDS
            ):
                raise ValueError(
                    f"command rule {token!r} would let the holder change ACLs or the server"
                )
        return value

    @field_validator("keys")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        for token in value:
            if not _KEY.fullmatch(token):
                raise ValueError(f"key rule {token!r} must look like ~cache:* or %R~cache:*")
        return value

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: list[str]) -> list[str]:
        for token in value:
            if not _CHANNEL.fullmatch(token):
                raise ValueError(f"channel rule {token!r} must look like &events:*")
            if token[1:].startswith(MARKER_PREFIX):
                raise ValueError(f"channel rule {token!r} uses jitgate's reserved prefix")
        return value

    def tokens(self) -> list[str]:
        return [*self.categories, *self.commands, *self.keys, *self.channels]


class RedisACLTargetConfig(BaseModel, frozen=True, extra="forbid", hide_input_in_errors=True):
    """Options of a ``type: redis_acl`` target.

    ``url`` is ``redis://[user:password@]host:port[/db]`` (``rediss://`` for TLS,
    ``unix:///path`` for a socket); its account needs ``+acl +client|kill +info`` and the
    lock commands on ``jitgate:lock:*``. A principal is the ACL user
    ``user_prefix + principal``.
    """

    url: SecretStr
    roles: dict[str, RoleRule]
    user_prefix: str = ""
    connect_timeout: float = Field(default=5, gt=0)
    socket_timeout: float = Field(default=10, gt=0)
    # Seconds to wait for another worker's call on the same principal.
    lock_timeout: float = Field(default=10, gt=0)

    @field_validator("url")
    @classmethod
    def _url_parses(cls, value: SecretStr) -> SecretStr:
        # The message must not echo the URL: it carries the password.
        try:
            parts = urlsplit(value.get_secret_value())
            parts.port  # noqa: B018 - raises ValueError for a malformed port
        except ValueError:
            raise ValueError("not a valid Redis URL") from None
        if parts.scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("Redis URL scheme must be redis, rediss or unix")
        return value

    @field_validator("roles")
    @classmethod
    def _role_names(cls, value: dict[str, RoleRule]) -> dict[str, RoleRule]:
        for name in value:
            if not _ROLE_NAME.fullmatch(name):
                raise ValueError(
                    f"role name {name!r} must be 1-64 letters, digits, '_', '.', ':' or '-'"
                )
        return value

    @field_validator("user_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not _USER_PREFIX.fullmatch(value):
            raise ValueError("user_prefix may hold letters, digits and '_.@+:-' only")
        return value

    @property
    def service_user(self) -> str:
        username = urlsplit(self.url.get_secret_value()).username
        return unquote(username) if username else "default"


def _channel_names(info: dict[str, Any]) -> list[str]:
    channels = info.get("channels") or []
    if isinstance(channels, str):  # RESP shapes differ across server and client versions
        channels = channels.split()
    # Redis 6.2 answers the patterns without '&', Redis 7 with it.
    return [str(item).removeprefix("&") for item in channels]


def held_roles(info: dict[str, Any]) -> frozenset[str]:
    """The roles recorded in an ``ACL GETUSER`` answer (root channel markers)."""
    return frozenset(
        name.removeprefix(MARKER_PREFIX)
        for name in _channel_names(info)
        if name.startswith(MARKER_PREFIX)
    )


class RedisACLTarget:
    """Writes Redis ACL rules for configured roles. One lazily built client (a single
    connection) per instance, serialised by a lock and rebuilt after a connection
    failure; calls on one principal are serialised across workers by a Redis lock."""

    kind: ClassVar[str] = "redis_acl"

    def __init__(self, config: RedisACLTargetConfig, *, name: str) -> None:
        self.name = name
        self._config = config
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._selectors: bool | None = None

    @classmethod
    def from_options(cls, name: str, options: dict[str, Any]) -> RedisACLTarget:
        return cls(RedisACLTargetConfig.model_validate(options), name=name)

    def __repr__(self) -> str:
        return f"RedisACLTarget(name={self.name!r})"

    # -- TargetConnector -------------------------------------------------------------

    def grant(self, *, principal: str, role: str, expires_at: datetime) -> Outcome:
        # Redis ACL users carry no expiry; expires_at is enforced by the sweep alone.
        del expires_at
        user = self._user(principal)
        self._rule(role)
        with self._session("grant") as client, self._principal_lock(client, user):
            info = self._getuser(client, user)
            if info is None:
                raise PermanentError(
                    f"redis_acl target {self.name!r}: ACL user {user!r} does not exist",
                    code="principal_missing",
                )
            held = held_roles(info)
            if role in held:
                return Outcome.ALREADY_PRESENT
            self._apply(client, user, held | {role})
        return Outcome.APPLIED

    def revoke(self, *, principal: str, role: str) -> Outcome:
        """Ensure absent. A role no longer in the configuration can still be revoked:
        only its marker is needed, not its rules."""
        user = self._user(principal)
        self._check_role_name(role)
        with self._session("revoke") as client, self._principal_lock(client, user):
            info = self._getuser(client, user)
            if info is None:
                return Outcome.ALREADY_ABSENT
            held = held_roles(info)
            if role not in held:
                return Outcome.ALREADY_ABSENT
            self._apply(client, user, held - {role})
        return Outcome.APPLIED

    def members(self, *, role: str) -> frozenset[str]:
        self._rule(role)
        prefix = self._config.user_prefix
        with self._session("members") as client:
            users = [str(u) for u in client.acl_users() if str(u).startswith(prefix)]
            pipe = client.pipeline(transaction=False)
            for user in users:
                pipe.acl_getuser(user)
            infos: list[Any] = pipe.execute()
        return frozenset(
            user.removeprefix(prefix)
            for user, info in zip(users, infos, strict=True)
            if info is not None and role in held_roles(info)
        )

    def check(self) -> None:
        with self._session("check") as client:
            client.ping()

    def terminate_sessions(self, *, principal: str) -> int:
        """``CLIENT KILL USER``: connections authenticated before the revocation keep
        running, and in-flight blocking commands or subscriptions keep their data."""
        user = self._user(principal)
        with self._session("terminate_sessions") as client:
            try:
                return int(client.client_kill_filter(user=user, skipme=True))
            except ResponseError as exc:
                if "no such user" in str(exc).lower():
                    return 0
                raise

    def close(self) -> None:
        with self._lock:
            self._discard()

    # -- internals -------------------------------------------------------------------

    def _user(self, principal: str) -> str:
        user = self._config.user_prefix + principal
        if not principal or not _USER_NAME.fullmatch(user):
            raise PermanentError(
                "principal must be 1-128 letters, digits or '_.@+:-' (with the prefix)",
                code="invalid_identifier",
            )
        # "default" is every unauthenticated connection; our own account would lock
        # jitgate out. Neither is a contractor.
        if user in {"default", self._config.service_user}:
            raise PermanentError(
                f"redis_acl target {self.name!r}: refusing to manage ACL user {user!r}",
                code="invalid_identifier",
            )
        return user

    def _check_role_name(self, role: str) -> None:
        if not _ROLE_NAME.fullmatch(role):
            raise PermanentError(
                "role name must be 1-64 letters, digits, '_', '.', ':' or '-'",
                code="invalid_identifier",
            )

    def _rule(self, role: str) -> RoleRule:
        self._check_role_name(role)
        rule = self._config.roles.get(role)
        if rule is None:
            raise PermanentError(
                f"redis_acl target {self.name!r}: role {role!r} is not configured",
                code="role_missing",
            )
        return rule

    @staticmethod
    def _getuser(client: redis.Redis, user: str) -> dict[str, Any] | None:
        info: dict[str, Any] | None = client.acl_getuser(user)
        return info

    def _apply(self, client: redis.Redis, user: str, roles: Iterable[str]) -> None:
        """Rewrite the user's permissions for exactly ``roles`` in one ``ACL SETUSER``
        (atomic: all rules apply or none). Held roles that left the configuration are
        dropped with their rules: less access, never a guess."""
        known = sorted(r for r in roles if r in self._config.roles)
        rules = ["resetkeys", "resetchannels", "-@all"]
        if known:
            # A user switched off is switched on by a grant: the grant is the approval.
            rules.insert(0, "on")
        rules += [f"&{MARKER_PREFIX}{role}" for role in known]
        if self._supports_selectors(client):
            rules.append("clearselectors")
            rules += [
                "(" + " ".join(["resetchannels", *self._config.roles[r].tokens()]) + ")"
                for r in known
            ]
        elif len(known) > 1:
            raise PermanentError(
                f"redis_acl target {self.name!r}: Redis < 7 has no ACL selectors, so "
                f"{user!r} cannot hold several roles without widening each one",
                code="multiple_roles_unsupported",
            )
        elif known:
            rules += self._config.roles[known[0]].tokens()
        # redis-py's acl_setuser adds rules of its own; send exactly ours.
        execute: Callable[..., Any] = client.execute_command
        execute("ACL", "SETUSER", user, *rules)

    def _supports_selectors(self, client: redis.Redis) -> bool:
        if self._selectors is None:
            version = str(client.info("server").get("redis_version", "0"))
            self._selectors = int(version.split(".", maxsplit=1)[0]) >= 7
        return self._selectors

    @contextlib.contextmanager
    def _principal_lock(self, client: redis.Redis, user: str) -> Iterator[None]:
        # A lock key with an expiry: released by a crash after at most its timeout.
        lock = client.lock(
            f"{_LOCK_PREFIX}{user}",
            timeout=max(30.0, 3 * self._config.socket_timeout),
            blocking_timeout=self._config.lock_timeout,
        )
        if not lock.acquire():
            raise TransientError(
                f"redis_acl target {self.name!r}: another call on the same principal is in "
                "progress (lock wait timed out)"
            )
        try:
            yield
        finally:
            # Expired and taken over meanwhile: our write is done, nothing to undo.
            with contextlib.suppress(RedisError):
                lock.release()

    @contextlib.contextmanager
    def _session(self, action: str) -> Iterator[redis.Redis]:
        """Serialise use of the client and translate every driver error (the only place
        that does). ``from None`` keeps driver messages out of printed tracebacks."""
        with self._lock:
            try:
                yield self._connection()
            except RedisError as exc:
                translated = self._translate(exc, action)
                if isinstance(translated, TransientError):
                    self._discard()
                raise translated from None

    def _translate(self, exc: RedisError, action: str) -> ConnectorError:
        prefix = f"redis_acl target {self.name!r}: {action} failed ({type(exc).__name__})"
        # AuthenticationError is a ConnectionError subclass: check it first.
        if isinstance(
            exc, AuthenticationError | AuthenticationWrongNumberOfArgsError | NoPermissionError
        ):
            return PermanentError(f"{prefix}: permission denied", code="permission_denied")
        if isinstance(
            exc,
            RedisConnectionError | RedisTimeoutError | BusyLoadingError | ReadOnlyError
            | TryAgainError,
        ):
            return TransientError(f"{prefix}: target unavailable or timed out")
        return PermanentError(prefix, code="redis_error")

    def _connection(self) -> redis.Redis:
        if self._client is None:
            # No client-side retries: the worker retries with backoff, and one call
            # should fail fast. A single connection matches the instance lock.
            self._client = redis.Redis.from_url(
                self._config.url.get_secret_value(),
                decode_responses=True,
                socket_connect_timeout=self._config.connect_timeout,
                socket_timeout=self._config.socket_timeout,
                retry=Retry(NoBackoff(), 0),
                single_connection_client=True,
            )
            self._selectors = None
        return self._client

    def _discard(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(RedisError, OSError):
                client.close()
