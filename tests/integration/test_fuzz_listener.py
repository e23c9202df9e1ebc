"""Fuzzing the listener: generated bodies and headers never produce a 5xx, and nothing
is ever stored or enqueued without a valid signature (which a fuzzer cannot forge)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack]) -> Stack:
    return stack_factory(start_worker=False)


@pytest.fixture(scope="module")
def baseline(stack: Stack) -> tuple[int, int]:
    return stack.pending_deliveries(), stack.queue_length()


def test_openapi_fuzz_never_500_never_enqueues(stack: Stack, baseline: tuple[int, int]) -> None:
    """Schemathesis generates requests from the listener's own OpenAPI document."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", stack.client.app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/webhooks/jira", "/webhooks/servicenow"}
    statuses: list[int] = []
    for operation in operations:

        @FUZZ
        @given(case=operation.as_strategy())
        def exercise(case: Any) -> None:
            response = case.call()
            statuses.append(response.status_code)
            assert response.status_code < 500, response.text
            if case.path.startswith("/webhooks/"):
                assert response.status_code in {400, 401, 413, 415, 422, 429}, response.text
            assert (stack.pending_deliveries(), stack.queue_length()) == baseline

        exercise()
    assert len(statuses) >= 100  # the fuzzer really ran
    assert {401, 415} & set(statuses)


_header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)


@FUZZ
@given(
    path=st.sampled_from(["/webhooks/jira", "/webhooks/servicenow"]),
    body=st.one_of(
        st.binary(max_size=2048),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=30),
            lambda inner: st.lists(inner, max_size=4)
            | st.dictionaries(st.text(max_size=12), inner, max_size=4),
            max_leaves=20,
        ).map(lambda value: __import__("json").dumps(value).encode()),
    ),
    content_type=st.sampled_from(["application/json", "application/json; charset=utf-8",
                                  "text/plain", ""]),
    signature=st.one_of(st.none(), _header_text, _header_text.map(lambda t: "sha256=" + t),
                        _header_text.map(lambda t: "v1=" + t)),
    stamp=st.one_of(st.none(), st.integers().map(str), _header_text),
    event_id=st.one_of(st.none(), _header_text),
)
def test_random_deliveries_never_500_never_enqueue(
    stack: Stack, baseline: tuple[int, int], path: str, body: bytes, content_type: str,
    signature: str | None, stamp: str | None, event_id: str | None,
) -> None:
    headers = {"Content-Type": content_type}
    if signature is not None:
        headers["X-Hub-Signature"] = signature
        headers["X-Jitgate-Signature"] = signature
    if stamp is not None:
        headers["X-Jitgate-Timestamp"] = stamp
    if event_id is not None:
        headers["X-Jitgate-Event-Id"] = event_id
    response = stack.client.post(path, content=body, headers=headers)
    assert response.status_code in {400, 401, 413, 415, 422, 429}, response.text
    assert (stack.pending_deliveries(), stack.queue_length()) == baseline
