"""HTTP harness: the in-process reference receiver (``worker.doubles.http_target``)."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.http import HTTPTarget
from tests.contract.targets import Harness
from worker.doubles.http_target import HTTPTargetDouble

SECRET = "contract-http-secret-0123456789"  # a throwaway test secret


def options(receiver: HTTPTargetDouble, **overrides: Any) -> dict[str, Any]:
    # Short backoff keeps retry tests fast; the receiver is local.
    return {"url": receiver.url, "secret": SECRET, "timeout": 5, "backoff_initial": 0.01,
            "backoff_max": 0.05, **overrides}


def harness(request: pytest.FixtureRequest, token: str) -> Harness:
    receiver = HTTPTargetDouble(SECRET).start()
    target = HTTPTarget.from_options(f"contract-http-{token}", options(receiver))
    return Harness(
        kind="http",
        target=target,
        make_role=receiver.add_role,
        make_principal=receiver.add_principal,
        is_member=receiver.is_member,
        add_member=receiver.add_member,
        open_session=None,  # sessions live in the receiver's system, not here
        cleanup=[target.close, receiver.stop],
    )
