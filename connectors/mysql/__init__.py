"""MySQL/MariaDB grant target: ticket grants become role grants to user accounts."""

from __future__ import annotations

from connectors.mysql.target import MySQLTarget, MySQLTargetConfig

__all__ = ["MySQLTarget", "MySQLTargetConfig"]
