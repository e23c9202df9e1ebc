"""Per-process start-up of what watches jitgate at work: metrics and notifications.

Called by each entry point that does work (``create_app`` for the web process, the
``worker`` command before Celery forks its pool, one-shot commands that change
grants). Idempotent: calling it again with the same settings changes nothing.
"""

from __future__ import annotations

from typing import Any

from celery.signals import task_postrun

from worker import metrics, notify
from worker.ledger import audit
from worker.settings import Settings

__all__ = ["install"]


def install(settings: Settings, send_task: notify.SendTask) -> None:
    """Count into ``settings.metrics_path`` and subscribe the audit observers.
    Raises ``ConfigError`` for a notification setting that cannot work."""
    notifier = notify.Notifier.from_settings(settings, send_task)
    metrics.configure(settings.metrics_path)
    audit.subscribe("metrics", metrics.observe_audit)
    if notifier is None:
        audit.unsubscribe("notify")
    else:
        audit.subscribe("notify", notifier)
    # Every path out of process_event (done, deferred, failed, raised) ends here.
    task_postrun.connect(_count_event, weak=False, dispatch_uid="jitgate.metrics.events")


def _count_event(task: Any = None, retval: Any = None, **_: Any) -> None:
    if getattr(task, "name", None) == "jitgate.process_event":
        metrics.event_processed(retval)
