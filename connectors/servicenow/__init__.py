"""ServiceNow as a ticket source: Table API reads through ``pysnow`` and the pure
parsing and verification of the webhook contract jitgate publishes (deploy/servicenow)."""

from __future__ import annotations

from connectors.servicenow.source import ServiceNowSource, split_ticket_id
from connectors.servicenow.values import (
    DEFAULT_CLOSED_STATES,
    SUPPORTED_TABLES,
    parse_servicenow_datetime,
)
from connectors.servicenow.webhook import (
    ServiceNowEvent,
    WebhookParseError,
    parse_servicenow_webhook,
    servicenow_mac,
    verify_servicenow,
)

__all__ = [
    "DEFAULT_CLOSED_STATES",
    "SUPPORTED_TABLES",
    "ServiceNowEvent",
    "ServiceNowSource",
    "WebhookParseError",
    "parse_servicenow_datetime",
    "parse_servicenow_webhook",
    "servicenow_mac",
    "split_ticket_id",
    "verify_servicenow",
]
