"""One mapping from a Jira user object to ``Identity``, shared by REST reads and webhooks.

Cloud users carry only ``accountId`` (email often hidden by privacy settings); Data
Center users carry ``key`` (stable, ``JIRAUSER…``) and ``name`` (login, renamable).
Old Cloud payloads carry both shapes: ``accountId`` wins because it is the id that
modern Cloud APIs accept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connectors.base import Identity

__all__ = ["jira_identity"]


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value
    return None


def jira_identity(user: Mapping[str, Any] | None) -> Identity | None:
    """Normalize a Jira user object; ``None`` when it names nobody (system actors, null)."""
    if not isinstance(user, Mapping):
        return None
    source_id = _text(user.get("accountId")) or _text(user.get("key")) or _text(user.get("name"))
    if source_id is None:
        return None
    return Identity(
        source_id=source_id,
        name=_text(user.get("name")),
        email=_text(user.get("emailAddress")),
        display=_text(user.get("displayName")),
    )
