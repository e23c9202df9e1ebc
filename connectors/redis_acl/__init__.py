"""Redis ACL grant target: ticket grants become ACL rule sets on existing Redis users."""

from __future__ import annotations

from connectors.redis_acl.target import RedisACLTarget, RedisACLTargetConfig, RoleRule

__all__ = ["RedisACLTarget", "RedisACLTargetConfig", "RoleRule"]
