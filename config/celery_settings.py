"""Celery settings, each with the reason it is set. https://docs.celeryq.dev/en/stable/userguide/configuration.html"""

from __future__ import annotations

from typing import Any

from config.settings import Settings
from integrations.providers import MAX_COUNTDOWN

# A message held for a countdown stays unacknowledged in Redis; if the hold outlasts the visibility
# timeout, Redis hands it to another worker as well. The longest hold is MAX_COUNTDOWN (900 s: longer
# waits are made in hops) plus the longest attempt (a lease of at most 3 x a 300 s timeout), so one hour
# leaves room. It is also how long a message of a killed worker waits before Redis redelivers it.
VISIBILITY_TIMEOUT = 3600
assert VISIBILITY_TIMEOUT > MAX_COUNTDOWN + 900


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.redis_url,
        # JSON only: a pickled message could run code on the worker, so it is refused.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # Acknowledge after the task ran, and put the message back if the worker process dies mid-task.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Take one message at a time, so a slow provider's messages do not queue behind a busy process.
        "worker_prefetch_multiplier": 1,
        # Task events on, so Flower sees every task from its receipt to its end. "sent" events come from
        # whoever sends: here, the retries the workers send; applications set it on their own app.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT},
        # A result that cannot be stored because Redis is gone is stored when it answers again (retried
        # with a backoff of at most a second), rather than given up: a succeeded operation whose result
        # store failed would otherwise read PENDING, or FAILURE, to its caller. The hard time limit still
        # bounds the wait; the message then comes back and its next delivery reports the ledger's outcome.
        "result_backend_always_retry": True,
        "result_backend_max_sleep_between_retries_ms": 1000,
        "broker_connection_retry_on_startup": True,
        # On a lost broker connection, stop running tasks: with late acks their messages come back,
        # and the ledger's lease keeps the provider from being called twice at once.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_default_queue": "integrations.default",
        "enable_utc": True,
        "timezone": "UTC",
    }
