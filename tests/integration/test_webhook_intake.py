"""The listener's contract: what a bad delivery gets back, and that it enqueues nothing."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import pytest

from tests.integration.conftest import APPROVED, SECRET, Stack, unreachable_broker_url
from worker.doubles.jira import jira_delivery, sign_jira

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack]) -> Stack:
    # No worker: whatever is enqueued stays countable in the broker.
    return stack_factory(start_worker=False)


@pytest.fixture(autouse=True)
def _empty_queue(stack: Stack) -> None:
    stack.purge_queue()


def _approval(stack: Stack) -> dict[str, object]:
    key = stack.new_ticket(principal="ctr_someone")
    return stack.jira.transition(key, APPROVED, author=stack.approver)


def _post(stack: Stack, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    response = stack.client.post("/webhooks/jira", content=body, headers=headers)
    return response.status_code, response.json()


def test_valid_delivery_is_queued_once(stack: Stack) -> None:
    body, headers = jira_delivery(_approval(stack), secret=SECRET, identifier="dup-1")
    status, reply = _post(stack, body, headers)
    assert (status, reply["status"]) == (202, "queued")
    status, reply = _post(stack, body, headers)
    assert (status, reply["status"]) == (200, "duplicate")
    assert stack.queue_length() == 1


def test_dedupe_falls_back_to_issue_and_changelog_id(stack: Stack) -> None:
    """Data Center sends no delivery identifier: issue id + changelog id dedupes."""
    body, headers = jira_delivery(_approval(stack), secret=SECRET)
    assert _post(stack, body, headers)[0] == 202
    assert _post(stack, body, headers)[1]["status"] == "duplicate"
    assert stack.queue_length() == 1


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("missing_signature", 401),
        ("wrong_secret", 401),
        ("tampered_body", 401),
        ("sha1_prefix", 401),
        ("too_large", 413),
        ("too_large_no_length", 413),
        ("malformed_json", 400),
        ("not_an_object", 400),
        ("schema", 422),
        ("wrong_content_type", 415),
    ],
)
def test_bad_deliveries_are_refused_and_nothing_is_enqueued(
    stack: Stack, case: str, status: int
) -> None:
    body, headers = jira_delivery(_approval(stack), secret=SECRET,
                                  identifier=str(uuid.uuid4()))
    held_before = stack.pending_deliveries()
    if case == "missing_signature":
        del headers["X-Hub-Signature"]
    elif case == "wrong_secret":
        headers["X-Hub-Signature"] = sign_jira("not-the-secret", body)
    elif case == "tampered_body":
        body = body.replace(b'"Approved"', b'"Approvedd"')
    elif case == "sha1_prefix":
        headers["X-Hub-Signature"] = "sha1=" + headers["X-Hub-Signature"].split("=", 1)[1]
    elif case in {"too_large", "too_large_no_length"}:
        body = b'{"pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'
        headers["X-Hub-Signature"] = sign_jira(SECRET, body)
    elif case == "malformed_json":
        body = b'{"webhookEvent": "jira:issue_updated", "issue": '
        headers["X-Hub-Signature"] = sign_jira(SECRET, body)
    elif case == "not_an_object":
        body = b'["jira:issue_updated"]'
        headers["X-Hub-Signature"] = sign_jira(SECRET, body)
    elif case == "schema":
        body = json.dumps({"webhookEvent": "jira:issue_updated", "issue": {"key": "OPS-1"}}
                          ).encode()
        headers["X-Hub-Signature"] = sign_jira(SECRET, body)
    elif case == "wrong_content_type":
        headers["Content-Type"] = "application/x-www-form-urlencoded"

    if case == "too_large_no_length":
        # Chunked upload: no Content-Length to trust, the stream itself is capped.
        def chunks() -> object:
            for i in range(0, len(body), 65536):
                yield body[i : i + 65536]

        response = stack.client.post("/webhooks/jira", content=chunks(), headers=headers)
        code, reply = response.status_code, response.json()
    else:
        code, reply = _post(stack, body, headers)
    assert code == status, reply
    assert reply["error"]
    assert stack.queue_length() == 0
    assert stack.pending_deliveries() == held_before


def test_events_no_policy_covers_are_acknowledged_and_dropped(stack: Stack) -> None:
    key = stack.new_ticket(principal="ctr_someone")
    payload = stack.jira.transition(key, APPROVED, author=stack.approver)
    payload["issue"]["fields"]["project"] = {"id": "1", "key": "HR"}
    body, headers = jira_delivery(payload, secret=SECRET, identifier=str(uuid.uuid4()))
    code, reply = _post(stack, body, headers)
    assert (code, reply["status"]) == (200, "ignored")
    sprint = json.dumps({"webhookEvent": "sprint_started", "sprint": {"id": 1}}).encode()
    code, reply = _post(stack, sprint, {"Content-Type": "application/json",
                                        "X-Hub-Signature": sign_jira(SECRET, sprint)})
    assert (code, reply["status"]) == (200, "ignored")
    assert stack.queue_length() == 0


def test_health_endpoints(stack: Stack) -> None:
    assert stack.client.get("/healthz").json() == {"status": "ok"}
    ready = stack.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["ready"] is True


def test_readiness_reports_a_stopped_broker(stack: Stack) -> None:
    from starlette.testclient import TestClient

    from worker.celery_app import create_celery
    from worker.runtime import Runtime
    from worker.webhooks.app import create_app

    settings = stack.settings.model_copy(
        update={"broker_url": unreachable_broker_url(stack.broker_url)})
    client = TestClient(create_app(Runtime(settings, env=stack.env), create_celery(settings)))
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert set(ready.json()["problems"]) == {"broker"}
    intake = client.get("/readyz", params={"scope": "intake"})  # the probe sees it too
    assert (intake.status_code, set(intake.json()["problems"])) == (503, {"broker"})
    assert client.get("/healthz").status_code == 200  # alive, just not ready


def test_concurrent_copies_are_stored_and_queued_once(stack: Stack) -> None:
    """Many deliveries at once share a commit (the listener's group commit); copies of
    one delivery inside the same batch still come out as one queued and the rest
    duplicates, whichever batch each lands in."""
    from concurrent.futures import ThreadPoolExecutor

    deliveries = [jira_delivery(_approval(stack), secret=SECRET, identifier=str(uuid.uuid4()))
                  for _ in range(8)]
    copies = [d for d in deliveries for _ in range(5)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        replies = list(pool.map(lambda d: _post(stack, d[0], d[1]), copies))
    by_delivery: dict[str, list[tuple[int, object]]] = {}
    for (status, reply) in replies:
        by_delivery.setdefault(str(reply["delivery"]), []).append((status, reply["status"]))
    assert len(by_delivery) == 8
    for answers in by_delivery.values():
        assert sorted(answers, key=str) == sorted(
            [(202, "queued")] + [(200, "duplicate")] * 4, key=str)
    assert stack.queue_length() == 8
