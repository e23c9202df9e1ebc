"""Raw-value helpers shared by the ServiceNow source and webhook parsing (no I/O, no
pysnow import, so the webhook listener stays light)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "DEFAULT_CLOSED_STATES",
    "SUPPORTED_TABLES",
    "SYS_ID",
    "format_servicenow_datetime",
    "parse_servicenow_datetime",
    "reference_value",
]

SUPPORTED_TABLES: tuple[str, ...] = ("sc_req_item", "change_request")
# task states that end a ticket whatever its approval says (formats.md §2.3):
# RITM closed complete/incomplete/skipped; change review/closed/canceled.
DEFAULT_CLOSED_STATES: Mapping[str, frozenset[str]] = {
    "sc_req_item": frozenset({"3", "4", "7"}),
    "change_request": frozenset({"0", "3", "4"}),
}
SYS_ID = re.compile(r"^[0-9a-f]{32}$")
_DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def parse_servicenow_datetime(value: Any) -> datetime | None:
    """Parse a raw datetime (``2026-01-15 09:12:44``: UTC without a zone marker) into an
    aware UTC datetime; an ISO value with an offset is converted to UTC. ``None`` for
    empty or unreadable values."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def format_servicenow_datetime(at: datetime) -> str:
    """The raw form of a datetime (UTC, second resolution). A naive value is taken as
    UTC already, as pysnow does: SQLite hands timestamps back without a zone."""
    if at.tzinfo is not None:
        at = at.astimezone(UTC)
    return at.strftime(_DATETIME_FORMAT)


def reference_value(value: Any) -> str:
    """The raw value of a field: a plain value, or the ``value`` of a
    ``{"value", "display_value"[, "link"]}`` object (display_value=all, references)."""
    if isinstance(value, Mapping):
        value = value.get("value")
    return "" if value is None else str(value)
