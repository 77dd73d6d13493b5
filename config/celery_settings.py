"""Celery settings, each with the reason it is set. https://docs.celeryq.dev/en/stable/userguide/configuration.html"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import wraps
from typing import Any

import celery
from kombu import Connection

from config.settings import Settings
from integrations.errors import ConfigError
from integrations.providers import MAX_COUNTDOWN

# A message held for a countdown stays unacknowledged in Redis; if the hold outlasts the visibility
# timeout, Redis hands it to another worker as well. The longest hold is MAX_COUNTDOWN (900 s: longer
# waits are made in hops) plus the longest attempt (a lease of at most 3 x a 300 s timeout), so one hour
# leaves room. It is also how long a message of a killed worker waits before Redis redelivers it.
VISIBILITY_TIMEOUT = 3600
assert VISIBILITY_TIMEOUT > MAX_COUNTDOWN + 900

# Celery before 5.6.3 sends a retry on with the x-death headers of its last delay, and RabbitMQ before 4.0.1
# takes the second delay of the same message for a dead-letter cycle and drops it (celery/celery#9867).
QUORUM_MIN_CELERY = (5, 6, 3)


def broker_kind(url: str) -> str:
    """Which broker ``url`` names, as kombu's transport says: ``redis`` (Redis, Sentinel) or ``amqp``
    (RabbitMQ), or another kombu transport's name. Nothing is connected."""
    scheme = url.partition("://")[0]  # the URL may hold a password: only its scheme is shown
    try:
        return str(Connection(url).transport.driver_type)
    except KeyError:
        raise ConfigError(
            f"environment variable BROKER_URL (else REDIS_URL): no broker of the kind {scheme!r}: use a "
            "redis:// or amqp:// URL"
        ) from None
    except Exception as exc:  # a transport whose client library is missing or broken
        raise ConfigError(
            f"environment variable BROKER_URL (else REDIS_URL): kombu cannot load its transport for "
            f"{scheme!r} ({type(exc).__name__}: {exc}): install its client library, or use a redis:// or "
            "amqp:// URL"
        ) from None


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
        # Task events, from every task's receipt to its end, when INTEGRATIONS_TASK_EVENTS says so; else
        # from when Flower (or `celery control enable_events`) asks. "sent" events come from whoever sends:
        # here, the retries the workers send; applications set it on their own app.
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
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
        # Messages written to disk by a broker that can (RabbitMQ): they outlive its restart.
        "task_default_delivery_mode": "persistent",
        "task_default_queue": "integrations.default",
        "enable_utc": True,
        "timezone": "UTC",
        **broker_config(settings),
    }


def broker_config(settings: Settings) -> dict[str, Any]:
    """The settings of the broker's own kind: Redis's visibility timeout, RabbitMQ's publisher confirms
    and queue type. ``ConfigError`` for a queue type the broker does not have."""
    kind = broker_kind(settings.broker_url)
    if settings.queue_type == "quorum" and kind != "amqp":
        raise ConfigError(
            f"environment variable INTEGRATIONS_QUEUE_TYPE: 'quorum' queues are RabbitMQ's, and the broker "
            f"(BROKER_URL, else REDIS_URL) is {kind}: unset INTEGRATIONS_QUEUE_TYPE, or set BROKER_URL to an "
            "amqp:// URL"
        )
    if kind == "redis":
        return {"broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT}}
    if kind != "amqp":
        return {}
    # RabbitMQ. Queues are durable (kombu's default). A publish returns once the broker has the message
    # (publisher confirms), so a retry or a resend the broker refused raises rather than vanishing.
    config: dict[str, Any] = {"broker_transport_options": {"confirm_publish": True}}
    if settings.queue_type == "classic":
        # Celery's defaults: direct exchanges, which an application's plain Celery app declares alike.
        # A countdown is held unacknowledged by the worker that took it (RabbitMQ's consumer_timeout, 30
        # minutes by default, must outlast MAX_COUNTDOWN plus the longest attempt); it comes back at once
        # if that worker's connection goes.
        return config
    if celery.version_info[:3] < QUORUM_MIN_CELERY:
        raise ConfigError(
            "environment variable INTEGRATIONS_QUEUE_TYPE: 'quorum' needs Celery "
            f"{'.'.join(map(str, QUORUM_MIN_CELERY))} or newer (this is {celery.__version__}): an older one "
            "has a retried operation's message dropped by RabbitMQ before 4.0.1. Upgrade Celery, or use "
            "'classic'"
        )
    return config | {
        # Replicated queues, of the queues a worker declares from -Q and of the default one. An
        # application's app that sends to them must declare them alike: it sets the two task_create_missing_*
        # settings as here (README, "Choosing a broker").
        "task_default_queue_type": "quorum",
        "task_create_missing_queue_type": "quorum",
        # Topic exchanges, so that a countdown travels through Celery's native delayed delivery (queues
        # with a message TTL per power of two seconds, which dead-letter it on to its queue when due)
        # instead of waiting in a worker's memory; a direct exchange cannot be bound to it.
        "task_default_exchange_type": "topic",
        "task_create_missing_queue_exchange_type": "topic",
        "broker_native_delayed_delivery_queue_type": "quorum",
        # A quorum queue has no global QoS: Celery sees the queue type and uses a per-consumer prefetch.
        "worker_detect_quorum_queues": True,
        # Native delayed delivery counts in whole seconds and refuses a countdown below one: round up.
        "task_annotations": [{"*": {"@apply_async": whole_second_countdown}}],
    }


def whole_second_countdown(apply_async: Callable[..., Any]) -> Callable[..., Any]:
    """A task's ``apply_async`` whose countdown is rounded up to whole seconds: Celery truncates one sent
    through native delayed delivery (``int(countdown)``) and raises for one below a second. Rounded up, a
    retry never comes before the ledger's due time, only by less than a second after it."""

    @wraps(apply_async)
    def apply(self: celery.Task, *args: Any, countdown: float | None = None, **options: Any) -> Any:
        if countdown is not None and countdown > 0:
            countdown = math.ceil(countdown)
        return apply_async(self, *args, countdown=countdown, **options)

    return apply
