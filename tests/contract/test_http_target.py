"""Generic HTTP target against the reference receiver: signing, retries, error mapping."""

from __future__ import annotations

import hmac
import json
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from pydantic import ValidationError

from connectors.base import Outcome
from connectors.errors import ConnectorError, PermanentError, TransientError
from connectors.http import HTTPTarget, parse_retry_after, sign
from tests.contract.targets.http import SECRET, options
from worker.doubles.http_target import HTTPTargetDouble, verify_signature

LATER = datetime.now(UTC) + timedelta(hours=1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def receiver() -> Iterator[HTTPTargetDouble]:
    with HTTPTargetDouble(SECRET, roles=["analytics_ro"], principals=["ctr_bob"]) as double:
        yield double


@pytest.fixture
def make_target(receiver: HTTPTargetDouble) -> Iterator[Any]:
    built: list[HTTPTarget] = []

    def make(**overrides: Any) -> HTTPTarget:
        target = HTTPTarget.from_options("http-test", options(receiver, **overrides))
        built.append(target)
        return target

    yield make
    for target in built:
        target.close()


def _all_text(exc: BaseException) -> str:
    parts = [str(exc), repr(exc), *map(str, exc.args)]
    for linked in (exc.__cause__, exc.__context__):
        if linked is not None:
            parts += [str(linked), repr(linked)]
    return " ".join(parts)


def test_requests_are_signed_and_verified(receiver: HTTPTargetDouble, make_target: Any) -> None:
    target = make_target()
    assert target.grant(principal="ctr_bob", role="analytics_ro", expires_at=LATER) == (
        Outcome.APPLIED
    )
    assert target.members(role="analytics_ro") == frozenset({"ctr_bob"})
    target.check()
    assert target.revoke(principal="ctr_bob", role="analytics_ro") == Outcome.APPLIED
    assert [(c.method, c.path) for c in receiver.requests] == [
        ("POST", "/grant"), ("GET", "/members"), ("GET", "/health"), ("POST", "/revoke"),
    ]
    assert all(c.signature_valid and c.status == 200 for c in receiver.requests)
    grant = receiver.requests[0].body
    assert grant["action"] == "grant" and grant["principal"] == "ctr_bob"
    assert grant["expires_at"].endswith("Z")
    assert len(grant["request_id"]) == 36
    assert receiver.requests[1].query == {"role": ("analytics_ro",)}


def test_the_receiver_rejects_a_wrong_secret(receiver: HTTPTargetDouble, make_target: Any) -> None:
    wrong = "not-the-right-secret-000000"
    with pytest.raises(PermanentError) as caught:
        make_target(secret=wrong).grant(principal="ctr_bob", role="analytics_ro", expires_at=LATER)
    assert caught.value.code == "permission_denied"
    assert not receiver.requests[0].signature_valid
    assert receiver.requests[0].status == 401
    assert len(receiver.requests) == 1  # 401 is not retried
    assert wrong not in _all_text(caught.value)
    assert not receiver.is_member("ctr_bob", "analytics_ro")


def test_signature_contract_is_what_the_readme_says() -> None:
    body = b'{"action":"revoke"}'
    expected = "v1=" + hmac.new(SECRET.encode(), b"1700000000." + body, "sha256").hexdigest()
    assert sign(SECRET.encode(), "1700000000", body) == expected
    assert verify_signature(SECRET.encode(), "1700000000", expected, body, now=1700000100)
    assert not verify_signature(SECRET.encode(), "1700000000", expected, body, now=1700001000)
    tampered = body + b" "
    assert not verify_signature(SECRET.encode(), "1700000000", expected, tampered, now=1700000000)
    assert not verify_signature(SECRET.encode(), None, expected, body)
    assert not verify_signature(SECRET.encode(), "1700000000", None, body, now=1700000000)


def test_missing_signature_is_401(receiver: HTTPTargetDouble) -> None:
    import httpx

    response = httpx.post(f"{receiver.url}/grant", json={"action": "grant"})
    assert response.status_code == 401
    assert not receiver.requests[-1].signature_valid


def test_503_then_success_is_retried(receiver: HTTPTargetDouble, make_target: Any) -> None:
    receiver.fail_next(2, 503)
    target = make_target()
    assert target.grant(principal="ctr_bob", role="analytics_ro", expires_at=LATER) == (
        Outcome.APPLIED
    )
    statuses = [c.status for c in receiver.requests]
    assert statuses == [503, 503, 200]
    # One logical call: the same request_id on every attempt, a fresh signature each time.
    assert len({c.body["request_id"] for c in receiver.requests}) == 1
    assert all(c.signature_valid for c in receiver.requests)


def test_a_retry_of_an_applied_call_is_deduplicated_by_request_id(
    receiver: HTTPTargetDouble,
) -> None:
    import httpx

    body = json.dumps({"action": "grant", "principal": "ctr_bob", "role": "analytics_ro",
                       "expires_at": "2030-01-01T00:00:00Z", "request_id": "r-1"}).encode()
    answers = []
    for _ in range(2):
        ts = str(int(time.time()))
        response = httpx.post(
            f"{receiver.url}/grant", content=body,
            headers={"X-Jitgate-Timestamp": ts,
                     "X-Jitgate-Signature": sign(SECRET.encode(), ts, body)},
        )
        answers.append(response.json()["outcome"])
    assert answers == ["applied", "applied"]


def test_429_retry_after_is_honoured(receiver: HTTPTargetDouble, make_target: Any) -> None:
    receiver.fail_next(1, 429, retry_after=1)
    target = make_target()
    started = time.monotonic()
    assert target.members(role="analytics_ro") == frozenset()
    assert time.monotonic() - started >= 0.9
    first, second = receiver.requests
    assert second.at - first.at >= 0.9


def test_retry_after_is_capped(receiver: HTTPTargetDouble, make_target: Any) -> None:
    receiver.fail_next(1, 503, retry_after=3600)
    started = time.monotonic()
    make_target(max_retry_after=0.2).check()
    assert time.monotonic() - started < 2


def test_persistent_500_is_transient_after_max_attempts(
    receiver: HTTPTargetDouble, make_target: Any
) -> None:
    receiver.fail_next(10, 500)
    with pytest.raises(TransientError) as caught:
        make_target(max_attempts=3).grant(principal="ctr_bob", role="analytics_ro",
                                          expires_at=LATER)
    assert len(receiver.requests) == 3
    assert "HTTP 500" in str(caught.value)
    assert SECRET not in _all_text(caught.value)


def test_403_is_permanent_without_retries(receiver: HTTPTargetDouble, make_target: Any) -> None:
    receiver.fail_next(5, 403)
    with pytest.raises(PermanentError) as caught:
        make_target().revoke(principal="ctr_bob", role="analytics_ro")
    assert caught.value.code == "permission_denied"
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("status", [400, 409, 422])
def test_other_4xx_is_permanent_without_retries(
    receiver: HTTPTargetDouble, make_target: Any, status: int
) -> None:
    receiver.fail_next(5, status)
    with pytest.raises(PermanentError) as caught:
        make_target().grant(principal="ctr_bob", role="analytics_ro", expires_at=LATER)
    assert caught.value.code == f"http_{status}"
    assert len(receiver.requests) == 1


def test_404_bodies_name_what_is_missing(receiver: HTTPTargetDouble, make_target: Any) -> None:
    target = make_target()
    with pytest.raises(PermanentError) as caught:
        target.grant(principal="ctr_bob", role="nosuch", expires_at=LATER)
    assert caught.value.code == "role_missing"
    with pytest.raises(PermanentError) as caught:
        target.grant(principal="ctr_ghost", role="analytics_ro", expires_at=LATER)
    assert caught.value.code == "principal_missing"
    with pytest.raises(PermanentError) as caught:
        target.members(role="nosuch")
    assert caught.value.code == "role_missing"
    # Nothing to take away from a role or principal the receiver does not know.
    assert target.revoke(principal="ctr_bob", role="nosuch") == Outcome.ALREADY_ABSENT


def test_unreachable_receiver_is_transient() -> None:
    target = HTTPTarget.from_options(
        "down", {"url": f"http://127.0.0.1:{free_port()}/x", "secret": SECRET,
                 "max_attempts": 2, "backoff_initial": 0.01, "timeout": 1},
    )
    started = time.monotonic()
    with pytest.raises(TransientError) as caught:
        target.check()
    assert time.monotonic() - started < 3
    assert "ConnectError" in str(caught.value)
    assert SECRET not in _all_text(caught.value)


def test_secret_never_appears_in_errors_or_repr(
    receiver: HTTPTargetDouble, make_target: Any
) -> None:
    target = make_target(max_attempts=1)
    texts = [repr(target)]
    for status in (401, 403, 404, 418, 500, 503):
        receiver.fail_next(1, status)
        try:
            target.grant(principal="ctr_bob", role="analytics_ro", expires_at=LATER)
        except ConnectorError as exc:
            texts.append(_all_text(exc))
        else:  # pragma: no cover
            pytest.fail(f"HTTP {status} passed")
    assert all(SECRET not in text for text in texts)


def test_an_unusable_success_answer_is_an_error(
    receiver: HTTPTargetDouble, make_target: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(receiver, "_change", lambda action, body: (200, {"outcome": "maybe"}))
    with pytest.raises(PermanentError) as caught:
        make_target().grant(principal="ctr_bob", role="analytics_ro", expires_at=LATER)
    assert caught.value.code == "invalid_response"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", 1.0), ("0.5", 0.5), ("-3", 0.0), ("soon", None), (None, None)],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    when = datetime(2030, 1, 1, 12, 0, 10, tzinfo=UTC)
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after(format_datetime(when, usegmt=True), now=now) == 10.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("url", "ftp://example.org"),
        ("url", "https://user:pw@example.org/api"),
        ("url", "https://example.org/api?x=1"),
        ("secret", "short"),
        ("headers", {"Authorization": "Bearer abc"}),
        ("headers", {"X-Jitgate-Signature": "v1=0"}),
        ("headers", {"Bad Header": "x"}),
        ("headers", {"X-Tenant": "a\r\nInjected: 1"}),
        ("max_attempts", 0),
        ("unknown", 1),
    ],
)
def test_bad_configuration_is_refused(field: str, value: Any) -> None:
    base = {"url": "https://example.org/api", "secret": SECRET}
    with pytest.raises(ValidationError) as caught:
        HTTPTarget.from_options("bad", {**base, field: value})
    assert SECRET not in str(caught.value)


def test_static_headers_are_sent(receiver: HTTPTargetDouble, make_target: Any) -> None:
    make_target(headers={"X-Tenant": "blue"}).check()
    assert receiver.requests[-1].headers["X-Tenant"] == "blue"
    assert receiver.requests[-1].headers["User-Agent"] == "jitgate"
