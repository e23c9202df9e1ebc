"""Generic HTTP grant target: signed JSON calls to a user's own API."""

from __future__ import annotations

from connectors.http.target import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    HTTPTarget,
    HTTPTargetConfig,
    parse_retry_after,
    sign,
)

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "HTTPTarget",
    "HTTPTargetConfig",
    "parse_retry_after",
    "sign",
]
