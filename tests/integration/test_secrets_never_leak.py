"""Sentinel secrets, forced failures: the sentinels never appear in anything jitgate
writes — worker and beat logs, audit events, ticket comments, /metrics, /readyz,
HTTP answers and CLI output."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import pytest

from tests.integration.conftest import APPROVED, SECRET, SNOW_SECRET, Stack, wait_for
from worker.doubles.jira import jira_delivery, sign_jira

pytestmark = pytest.mark.integration

JIRA_TOKEN = "SENTINEL-jira-token-" + uuid.uuid4().hex
SNOW_PASSWORD = "SENTINEL-snow-password-" + uuid.uuid4().hex
TARGET_PASSWORD = "SENTINEL-target-password-" + uuid.uuid4().hex
SENTINELS = (JIRA_TOKEN, SNOW_PASSWORD, TARGET_PASSWORD, SECRET, SNOW_SECRET)


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack]) -> Stack:
    built = stack_factory(
        jira_token=JIRA_TOKEN,
        # The ServiceNow double expects another password: every read fails with 401.
        extra_env={
            "JITGATE_JIRA_TOKEN": JIRA_TOKEN,
            "JITGATE_SERVICENOW_PASSWORD": SNOW_PASSWORD,
            # A target that refuses connections, its DSN carrying a password.
            "JG_TEST_TARGET_DSN": f"postgresql://jitgate:{TARGET_PASSWORD}@127.0.0.1:9/x"
                                  "?connect_timeout=1",
            "JITGATE_SWEEP_INTERVAL": "1",
            "JITGATE_STUCK_AFTER": "1",
            "JITGATE_RETRY_BASE_DELAY": "0.05",
            "JITGATE_REVOKE_RETRY_MAX_BACKOFF": "0.3",
            "JITGATE_LOG_LEVEL": "DEBUG",
        },
    )
    built.start_beat()
    return built


def _assert_clean(text: str, where: str) -> None:
    for sentinel in SENTINELS:
        assert sentinel not in text, f"a secret leaked into {where}"


def test_secrets_never_appear_even_when_everything_fails(stack: Stack) -> None:
    answers: list[str] = []
    # A grant that fails against the unreachable target, retried again and again.
    principal = f"ctr_{stack.token}_leak"
    key = stack.new_ticket(principal=principal)
    answers.append(stack.transition(key, APPROVED).text)
    wait_for(lambda: stack.grants_of(key) and stack.grants_of(key)[0].attempts >= 3,
             timeout=60, what="failing grant attempts")
    assert stack.grants_of(key)[0].last_error.startswith("TransientError")

    # ServiceNow reads fail on credentials.
    requester = stack.snow.add_user("someone", "Someone")
    sys_id = stack.snow.create_ritm(requested_for=requester, cat_item_name="Warehouse access",
                                    variables={"db_user": principal})
    answers.append(stack.snow_event("sc_req_item", sys_id).text)
    wait_for(lambda: stack.pending_deliveries() == 0, timeout=30, what="deliveries handled")

    # Bad signatures (each one computed with a wrong key), polling, drift reconciliation.
    body, headers = jira_delivery({"webhookEvent": "jira:issue_updated"}, secret=None)
    headers["X-Hub-Signature"] = sign_jira("wrong", body)
    answers.append(stack.client.post("/webhooks/jira", content=body, headers=headers).text)
    answers.append(stack.post_snow(stack.snow.webhook("sc_req_item", sys_id),
                                   secret="wrong").text)
    stack.send("jitgate.poll_sources")
    stack.send("jitgate.reconcile_targets")
    wait_for(lambda: "drift.unreachable" in stack.worker_logs(), timeout=30,
             what="reconcile attempted")
    answers.append(stack.client.get("/metrics").text)
    answers.append(stack.client.get("/readyz").text)
    for args in (("targets", "check"), ("grants", "--json"), ("policy", "check"),
                 ("audit", "export")):
        done = stack.cli(*args)
        answers.extend((done.stdout, done.stderr))

    logs = stack.worker_logs()
    assert "grant.retry" in logs  # the failures really happened and were logged
    assert "source_auth" in logs
    _assert_clean(logs, "worker/beat logs")
    _assert_clean(json.dumps(stack.audit()), "the audit trail")
    _assert_clean("\n".join(stack.jira.comments(key)), "ticket comments")
    _assert_clean("\n".join(answers), "HTTP answers or CLI output")
