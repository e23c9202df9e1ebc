"""The Celery application, configured from ``Settings`` by the process entry point.

Delivery profile (reference/reliability.md §1.4): late ack plus reject-on-worker-lost
so a killed worker's task is redelivered, prefetch 1 so a crash strands nothing
else, JSON only, time limits below the visibility timeout. Nothing here promises
exactly-once: the ledger and idempotent connectors make repeats harmless.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import (
    setup_logging,
    task_postrun,
    task_prerun,
    worker_process_init,
    worker_ready,
)

from worker.runtime import Runtime
from worker.settings import Settings

__all__ = ["JitgateCelery", "create_celery"]


class JitgateCelery(Celery):  # type: ignore[misc]
    """Celery app that carries the process's settings and lazily built runtime."""

    jitgate_settings: Settings
    _runtime: Runtime | None = None

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = Runtime(self.jitgate_settings)
        return self._runtime

    def reset_runtime(self) -> None:
        """Drop connections inherited across a fork; rebuilt on first use."""
        self._runtime = None


def create_celery(settings: Settings, *, broker_url: str | None = None) -> JitgateCelery:
    app = JitgateCelery("jitgate", set_as_current=True)
    app.jitgate_settings = settings
    transport = {"visibility_timeout": settings.visibility_timeout}
    app.conf.update(
        broker_url=broker_url or settings.broker_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport,
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # No remote control (`celery inspect`/`control`; jitgate uses neither, liveness is
        # the heartbeat file below). On RabbitMQ every worker would hold an exclusive
        # "<nodename>.celery.pidbox" queue, so a second worker with the same node name
        # (default celery@<host>: two workers or two installations on one host) dies at
        # start with RESOURCE_LOCKED.
        worker_enable_remote_control=False,
        task_serializer="json",
        accept_content=["json"],
        # One queue per installation (JITGATE_QUEUE): send_task, delay and beat all route
        # to the default queue, and `jitgate worker` consumes exactly that one. On
        # RabbitMQ the exchange and routing key take the same name.
        task_default_queue=settings.queue,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        # A periodic message older than its period is dropped (the next one is on its way):
        # under load, sweeps must not pile up in the queue ahead of ticket events.
        beat_schedule={
            "sweep": {"task": "jitgate.sweep", "schedule": settings.sweep_interval,
                      "options": {"expires": settings.sweep_interval}},
            "poll-sources": {"task": "jitgate.poll_sources", "schedule": settings.poll_interval,
                             "options": {"expires": settings.poll_interval}},
            "reconcile-targets": {"task": "jitgate.reconcile_targets",
                                  "schedule": settings.drift_interval,
                                  "options": {"expires": settings.drift_interval}},
        },
        include=["worker.tasks"],
    )
    # Shared tasks: importing the module registers them on every app.
    import worker.tasks  # noqa: F401, PLC0415

    return app


@setup_logging.connect  # type: ignore[untyped-decorator]
def _keep_our_logging(**_: Any) -> None:
    """Celery must not install its own handlers; worker.log configured them."""


HEARTBEAT_EVERY = 10.0


def heartbeat_path(settings: Settings, hostname: str) -> Path:
    return settings.data_dir.resolve() / f"worker-{hostname}.heartbeat"


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    """Touch a file from the worker's main process, so a liveness probe can tell a dead
    worker from a busy one (a long task keeps the pool busy, not the main process)."""
    from celery import current_app  # noqa: PLC0415

    if not isinstance(current_app, JitgateCelery):
        return
    path = heartbeat_path(current_app.jitgate_settings, getattr(sender, "hostname", "worker"))
    path.parent.mkdir(parents=True, exist_ok=True)

    def beat() -> None:
        while True:
            path.touch()
            time.sleep(HEARTBEAT_EVERY)

    threading.Thread(target=beat, name="jitgate-heartbeat", daemon=True).start()


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _after_fork(**_: Any) -> None:
    from celery import current_app  # noqa: PLC0415

    if isinstance(current_app, JitgateCelery):
        current_app.reset_runtime()


@task_prerun.connect  # type: ignore[untyped-decorator]
def _bind_task(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    import structlog  # noqa: PLC0415

    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(task_id=task_id, task=getattr(task, "name", None))


@task_postrun.connect  # type: ignore[untyped-decorator]
def _unbind_task(**_: Any) -> None:
    import structlog  # noqa: PLC0415

    structlog.contextvars.clear_contextvars()
