"""Fixtures of the fault suite.

Every fault module runs on the integration harness (``stack_factory``), but with a
Redis the suite starts itself (so a test may crash, restart or FLUSHALL it without
touching anybody else's broker) and with short timeouts, so recovery paths (sweep,
redelivery, retries) run within seconds.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults.control import RedisServer, Workers
from tests.faults.invariants import violations
from tests.integration.conftest import Stack, stack_factory  # noqa: F401 - re-exported fixture

# Short timeouts; the limits keep soft < hard < visibility (Settings refuses anything else).
FAST_ENV = {
    "JITGATE_VISIBILITY_TIMEOUT": "10",
    "JITGATE_TASK_SOFT_TIME_LIMIT": "3",
    "JITGATE_TASK_TIME_LIMIT": "5",
    "JITGATE_STUCK_AFTER": "2",
    "JITGATE_SWEEP_INTERVAL": "1",
    "JITGATE_RETRY_BASE_DELAY": "0.05",
    "JITGATE_REVOKE_RETRY_MAX_BACKOFF": "0.5",
}


@pytest.fixture(scope="session")
def fault_redis() -> Iterator[RedisServer]:
    """The suite's own redis-server (one per xdist worker): restartable, flushable."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(fault_redis: RedisServer) -> str:
    """Overrides the shared broker for tests/faults: stacks here use our own Redis."""
    return fault_redis.url


@pytest.fixture(scope="module")
def broker_url(fault_redis: RedisServer) -> str:
    """Fault stacks stay on that Redis even when JITGATE_TEST_AMQP_URL is set."""
    return fault_redis.url


@pytest.fixture(autouse=True)
def _redis_is_up(fault_redis: RedisServer) -> Iterator[None]:
    """A test that failed with Redis down must not take the next one with it."""
    fault_redis.start()
    yield
    fault_redis.start()


@dataclass
class FaultStack:
    """A stack plus its processes and crash folder."""

    stack: Stack
    workers: Workers
    crash_dir: Path

    def check(self, principals: Iterable[str], *, roles: Iterable[str] | None = None,
              target_dsn: str | None = None) -> None:
        """Every invariant holds over the whole ledger (S1 limited to ``principals``)."""
        found = violations(self.stack.runtime.ledger,
                           target_dsn=target_dsn or self.stack.target_dsn,
                           roles=list(roles or [self.stack.role]), principals=list(principals))
        assert not found, "\n".join(found)


@pytest.fixture(scope="module")
def fault_stack_factory(
    stack_factory: Callable[..., Stack],  # noqa: F811 - the re-exported fixture
) -> Iterator[Callable[..., FaultStack]]:
    """Builds one stack with fast timeouts and a crash folder, no processes started;
    every worker and beat started through ``.workers`` is killed at module end."""
    made: list[FaultStack] = []

    def build(extra_env: dict[str, str] | None = None) -> FaultStack:
        for previous in made:
            previous.workers.stop_all()
        crash_dir = Path(tempfile.mkdtemp(prefix="jg-crash-"))
        stack = stack_factory(start_worker=False, extra_env={
            **FAST_ENV, "JITGATE_CRASH_DIR": str(crash_dir), **(extra_env or {}),
        })
        built = FaultStack(stack=stack, workers=Workers(stack), crash_dir=crash_dir)
        made.append(built)
        return built

    yield build
    for built in made:
        built.workers.stop_all()
