"""The Celery settings of the baseline apps, as careful as ours: JSON only, late acks, a message put back if
its worker process dies, one message at a time."""

from __future__ import annotations

from typing import Any

CAREFUL: dict[str, Any] = {
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "broker_connection_retry_on_startup": True,
}
