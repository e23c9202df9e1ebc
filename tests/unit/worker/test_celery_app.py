"""``worker.celery_app.create_celery``: every message goes to the installation's queue
(``JITGATE_QUEUE``), whichever way it is sent, on Redis and on RabbitMQ alike."""

from __future__ import annotations

from typing import Any

import pytest

from worker.celery_app import create_celery
from worker.settings import Settings

BROKERS = ["redis://127.0.0.1:1/0", "amqp://guest:guest@127.0.0.1:1//"]


def _queue_of(app: Any, task: str, options: dict[str, Any] | None = None) -> Any:
    return app.amqp.router.route(dict(options or {}), task, (), {})["queue"]


@pytest.mark.parametrize("broker", BROKERS)
def test_send_task_routes_to_the_configured_queue(broker: str) -> None:
    app = create_celery(Settings(broker_url=broker, queue="jitgate-staging"))
    assert app.conf.task_default_queue == "jitgate-staging"
    for task in ("jitgate.process_event", "jitgate.apply_grant", "jitgate.notify_events"):
        queue = _queue_of(app, task)
        # On RabbitMQ the exchange and routing key follow the queue: two installations
        # on one vhost share nothing.
        assert (queue.name, queue.exchange.name, queue.routing_key) == ("jitgate-staging",) * 3


@pytest.mark.parametrize("broker", BROKERS)
def test_beat_entries_route_to_the_configured_queue(broker: str) -> None:
    app = create_celery(Settings(broker_url=broker, queue="jitgate-staging"))
    schedule = app.conf.beat_schedule
    assert set(schedule) == {"sweep", "poll-sources", "reconcile-targets"}
    for entry in schedule.values():
        assert "queue" not in entry["options"]  # the default queue, i.e. JITGATE_QUEUE
        assert _queue_of(app, entry["task"], entry["options"]).name == "jitgate-staging"


def test_the_default_queue_keeps_its_name() -> None:
    """Upgrades: messages already queued under "jitgate" are still consumed."""
    app = create_celery(Settings(broker_url=BROKERS[0]))
    assert _queue_of(app, "jitgate.sweep").name == "jitgate"


def test_no_remote_control() -> None:
    """No exclusive per-node pidbox queue on RabbitMQ, so workers need no unique -n."""
    app = create_celery(Settings(broker_url=BROKERS[1]))
    assert app.conf.worker_enable_remote_control is False
