"""Typed connector errors. Retry is decided by type, never by message.

Messages must never contain secrets: connectors build them from fixed text plus the
error class of the driver exception, not from the driver's own message (which can
embed a DSN).
"""

from __future__ import annotations

__all__ = [
    "ConnectorError",
    "PermanentError",
    "SourceNotConfigured",
    "TicketNotFound",
    "TransientError",
    "WebhookParseError",
]


class ConnectorError(Exception):
    """Root of every error a connector raises."""

    code: str = "connector_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class TransientError(ConnectorError):
    """The system was unreachable, timed out or rate limited: retry with backoff."""

    code = "unavailable"


class PermanentError(ConnectorError):
    """Retrying cannot help: permission denied, unknown role, invalid principal."""

    code = "permanent"


class TicketNotFound(PermanentError):
    """The ticket does not exist (deleted, or an id we were never meant to see)."""

    code = "ticket_not_found"


class SourceNotConfigured(PermanentError):
    """No credentials or URL configured for this ticket source."""

    code = "source_not_configured"


class WebhookParseError(ValueError):
    """A webhook body cannot be used. ``status`` is the HTTP answer: 400 for bytes that
    are not a JSON object, 422 for a JSON object that does not fit the schema. Both are
    final for Jira (it retries only 408/409/425/429/5xx)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason
