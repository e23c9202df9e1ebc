"""Connectors: ticket sources (where requests live) and grant targets (where roles live)."""
