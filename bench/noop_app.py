"""The raw limit of the task path: a no-op task on a Celery app configured exactly like
jitgate's (``worker.celery_app.create_celery``: acks_late, reject-on-worker-lost,
prefetch 1, JSON, same broker transport options), drained by the same prefork pool.

Worker: ``python -m bench.noop_app`` with ``BENCH_NOOP_BROKER_URL`` and
``BENCH_NOOP_CONCURRENCY`` in the environment.
"""

# ruff: noqa: PLC0415, TID251 - the harness reads its own env and imports lazily

from __future__ import annotations

import os
import sys
from typing import Any

from worker.celery_app import JitgateCelery, create_celery
from worker.settings import Settings

QUEUE = "jitgate_bench_noop"
TASK = "bench.noop"


def make_app(broker_url: str) -> JitgateCelery:
    app = create_celery(Settings(broker_url=broker_url))

    @app.task(name=TASK, ignore_result=True)
    def noop() -> None:
        return None

    return app


def publish(app: Any, n: int) -> float:
    """Publish ``n`` no-op tasks from this process; returns publishes per second."""
    import time

    with app.producer_or_acquire() as producer:
        t = time.perf_counter()
        for _ in range(n):
            app.send_task(TASK, queue=QUEUE, producer=producer)
        return n / (time.perf_counter() - t)


def main() -> None:
    from celery.signals import worker_ready

    @worker_ready.connect  # type: ignore[untyped-decorator]
    def _ready(**_: Any) -> None:
        print("bench-noop-worker ready", flush=True)

    app = make_app(os.environ["BENCH_NOOP_BROKER_URL"])
    concurrency = os.environ.get("BENCH_NOOP_CONCURRENCY", "2")
    app.worker_main(["worker", "-Q", QUEUE, "-c", concurrency, "-P", "prefork",
                     "--without-gossip", "--without-mingle", "-l", "WARNING"])
    sys.exit(0)


if __name__ == "__main__":
    main()
