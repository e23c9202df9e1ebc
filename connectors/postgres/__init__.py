"""PostgreSQL grant target: ticket grants become role memberships."""

from __future__ import annotations

from connectors.postgres.target import PostgresTarget, PostgresTargetConfig

__all__ = ["PostgresTarget", "PostgresTargetConfig"]
