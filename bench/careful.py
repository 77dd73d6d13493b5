"""The Celery settings of the baseline apps, as careful as ours: JSON only, late acks, a message put back if
its worker process dies, one message at a time."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

CAREFUL: dict[str, Any] = {
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "broker_connection_retry_on_startup": True,
}

# The broker and result backend of the baseline apps: the benchmark's Redis.
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def careful_app(name: str, queue: str) -> Celery:
    """A baseline's Celery app on ``REDIS_URL`` (broker and results), with the settings above and its own
    default queue."""
    app = Celery(name, broker=REDIS_URL, backend=REDIS_URL)
    app.conf.update(CAREFUL, task_default_queue=queue)
    return app
