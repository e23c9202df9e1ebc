"""LDAP harness: the test process's own slapd (``tests.support.slapd``).

Roles are groupOfNames under ``ou=groups`` created with the placeholder member (the
schema requires one), principals inetOrgPerson entries ``uid=<name>`` under
``ou=people``. Memberships are read and written directly with the admin account.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from ldap3 import BASE, MODIFY_ADD
from ldap3.core.exceptions import LDAPNoSuchAttributeResult, LDAPNoSuchObjectResult
from ldap3.utils.dn import escape_rdn

from connectors.ldap import LDAPTarget
from tests.contract.targets import Harness
from tests.support.slapd import (
    ADMIN_DN,
    ADMIN_PASSWORD,
    GROUP_BASE,
    PLACEHOLDER_DN,
    USER_BASE,
    SlapdServer,
    slapd_for,
)


def user_dn(name: str) -> str:
    return f"uid={escape_rdn(name)},{USER_BASE}"


def group_dn(name: str) -> str:
    return f"cn={escape_rdn(name)},{GROUP_BASE}"


def options(server: SlapdServer, **overrides: Any) -> dict[str, Any]:
    return {
        "url": server.url,
        "bind_dn": ADMIN_DN,
        "bind_password": ADMIN_PASSWORD,
        "user_base": USER_BASE,
        "group_base": GROUP_BASE,
        "empty_member": PLACEHOLDER_DN,
        "connect_timeout": 2,
        "receive_timeout": 5,
        **overrides,
    }


class Directory:
    """Direct admin access to the test directory, remembering what it created."""

    def __init__(self, server: SlapdServer) -> None:
        self.server = server
        self.created: list[str] = []

    def add(self, dn: str, classes: list[str], attributes: dict[str, Any]) -> None:
        conn = self.server.admin()
        try:
            conn.add(dn, classes, attributes)
        finally:
            conn.unbind()
        self.created.append(dn)

    def person(self, name: str, *, dn: str | None = None) -> str:
        self.add(dn or user_dn(name), ["inetOrgPerson"], {"uid": name, "cn": name, "sn": "x"})
        return name

    def group(self, name: str, members: list[str] | None = None) -> str:
        initial = members or [PLACEHOLDER_DN]
        self.add(group_dn(name), ["groupOfNames"], {"cn": name, "member": initial})
        return name

    def posix_group(self, name: str) -> str:
        self.add(group_dn(name), ["posixGroup"], {"cn": name, "gidNumber": "4242"})
        return name

    def values(self, dn: str, attribute: str) -> list[str]:
        conn = self.server.admin()
        try:
            conn.search(dn, "(objectClass=*)", search_scope=BASE, attributes=[attribute])
            for entry in conn.response:
                if entry.get("type") == "searchResEntry":
                    return [str(v) for v in entry["attributes"].get(attribute, [])]
            return []
        except LDAPNoSuchObjectResult:
            return []
        finally:
            conn.unbind()

    def has_value(self, dn: str, attribute: str, value: str) -> bool:
        """The server's own matching (DN equality for ``member``)."""
        conn = self.server.admin()
        try:
            return bool(conn.compare(dn, attribute, value))
        except LDAPNoSuchAttributeResult:
            return False
        finally:
            conn.unbind()

    def modify(self, dn: str, changes: dict[str, Any]) -> None:
        conn = self.server.admin()
        try:
            conn.modify(dn, changes)
        finally:
            conn.unbind()

    def drop(self) -> None:
        conn = self.server.admin()
        try:
            for dn in reversed(self.created):
                with contextlib.suppress(LDAPNoSuchObjectResult):
                    conn.delete(dn)
        finally:
            conn.unbind()


def harness(request: pytest.FixtureRequest, token: str) -> Harness:
    server = slapd_for(request.config)
    directory = Directory(server)

    def is_member(principal: str, role: str) -> bool:
        return directory.has_value(group_dn(role), "member", user_dn(principal))

    def add_member(principal: str, role: str) -> None:
        directory.modify(group_dn(role), {"member": [(MODIFY_ADD, [user_dn(principal)])]})

    target = LDAPTarget.from_options(f"contract-ldap-{token}", options(server))
    return Harness(
        kind="ldap",
        target=target,
        make_role=directory.group,
        make_principal=directory.person,
        is_member=is_member,
        add_member=add_member,
        open_session=None,  # a directory membership has no session to end
        cleanup=[target.close, directory.drop],
    )
