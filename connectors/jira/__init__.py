"""Jira as a ticket source: REST reads through ``jira`` and pure webhook parsing."""

from __future__ import annotations

from connectors.jira.identity import jira_identity
from connectors.jira.source import JiraSource
from connectors.jira.webhook import JiraEvent, WebhookParseError, parse_jira_webhook

__all__ = ["JiraEvent", "JiraSource", "WebhookParseError", "jira_identity", "parse_jira_webhook"]
