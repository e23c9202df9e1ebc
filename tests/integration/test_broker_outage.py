"""The broker goes away under a running stack and comes back, on whichever broker the
suite runs (Redis, or RabbitMQ with ``JITGATE_TEST_AMQP_URL``).

The broker is reached through a TCP fault proxy, so "down" drops the web's pooled
connection and the worker's and beat's consumers for real. While it is down the
listener still answers quickly (``202 held``: the inbox row is the event) and readiness
says ``broker``; once it is back, the worker and beat reconnect on their own and the
sweep sends what was held.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.integration.conftest import APPROVED, Stack, suite_broker_url, wait_for
from tests.support.proxy import FaultProxy, Upstream

pytestmark = pytest.mark.integration

_DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "amqp": 5672, "amqps": 5671, "pyamqp": 5672}


def _upstream(url: str) -> Upstream:
    if url.startswith("redis+socket://"):
        return url.removeprefix("redis+socket://").split("?", 1)[0]
    parts = urlsplit(url)
    return (parts.hostname or "127.0.0.1", parts.port or _DEFAULT_PORTS[parts.scheme])


def _through(url: str, proxy: FaultProxy) -> str:
    """``url`` rewritten to connect through ``proxy``; credentials, vhost or DB kept."""
    if url.startswith("redis+socket://"):
        return f"redis://127.0.0.1:{proxy.port}/0"
    parts = urlsplit(url)
    auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{proxy.port}"))


@pytest.fixture(scope="module")
def proxy(request: pytest.FixtureRequest) -> Iterator[FaultProxy]:
    with FaultProxy(_upstream(suite_broker_url(request))) as running:
        yield running


@pytest.fixture(scope="module")
def broker_url(request: pytest.FixtureRequest, proxy: FaultProxy) -> str:
    """This module's stacks reach the suite's broker through the proxy."""
    return _through(suite_broker_url(request), proxy)


@pytest.fixture(scope="module")
def stack(stack_factory: Callable[..., Stack]) -> Stack:
    built = stack_factory(extra_env={"JITGATE_SWEEP_INTERVAL": "1", "JITGATE_STUCK_AFTER": "2"})
    built.start_beat()
    return built


@pytest.fixture(autouse=True)
def _broker_up(proxy: FaultProxy) -> Iterator[None]:
    proxy.up()
    yield
    proxy.up()


def _approve(stack: Stack) -> tuple[str, str]:
    principal = stack.create_principal()
    key = stack.new_ticket(principal=principal)
    payload = stack.jira.transition(key, APPROVED, author=stack.approver)
    started = time.monotonic()
    response = stack.post(payload)
    elapsed = time.monotonic() - started
    assert response.status_code == 202, response.text
    # Publishing gives up after a few quick retries: a dead broker never costs a
    # delivery the sender's timeout (Jira: 10 s).
    assert elapsed < 8, f"the listener took {elapsed:.1f}s to answer"
    return key, str(response.json()["status"])


def _active(stack: Stack, key: str) -> None:
    wait_for(lambda: any(g.state == "active" for g in stack.grants_of(key)), timeout=60,
             what=f"{key} active")


def test_deliveries_are_held_while_the_broker_is_down_and_sent_once_it_is_back(
    stack: Stack, proxy: FaultProxy
) -> None:
    before, status = _approve(stack)
    assert status == "queued"
    _active(stack, before)  # the web's producer connection is pooled and open now

    proxy.down()
    held, status = _approve(stack)
    assert status == "held"
    again, status = _approve(stack)  # the next batch tries the broker again, as quickly
    assert status == "held"
    ready = stack.client.get("/readyz")
    assert ready.status_code == 503
    assert "broker" in ready.json()["problems"]
    assert stack.pending_deliveries() >= 2
    assert not any(g.state == "active" for k in (held, again) for g in stack.grants_of(k))

    proxy.up()
    # Worker and beat reconnect by themselves; the sweep re-publishes the held rows.
    _active(stack, held)
    _active(stack, again)
    wait_for(lambda: stack.client.get("/readyz").status_code == 200, timeout=60,
             what="ready again")  # (target checks are cached for 30 s; the broker is not)
    after, status = _approve(stack)
    assert status == "queued"  # the listener's producer reconnected too
    _active(stack, after)
    for key in (held, again, after):
        assert len(stack.audit("grant.issued", key)) == 1


def test_worker_survives_repeated_connection_drops(stack: Stack, proxy: FaultProxy) -> None:
    """Drops without a long outage (a broker failover, a load balancer's idle cut): each
    time, the worker reconnects and takes the next delivery."""
    for _ in range(3):
        proxy.down()
        time.sleep(0.5)
        proxy.up()
        key, status = _approve(stack)
        assert status in {"queued", "held"}
        _active(stack, key)
    assert all(proc.poll() is None for proc in stack.workers), stack.worker_logs()[-4000:]
