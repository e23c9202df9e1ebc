"""LDAP grant target: ticket grants become group memberships (groupOfNames or posixGroup)."""

from __future__ import annotations

from connectors.ldap.target import LDAPTarget, LDAPTargetConfig

__all__ = ["LDAPTarget", "LDAPTargetConfig"]
