"""One Celery task per provider with a ``[providers.<p>.webhooks]`` table: ``integrations.<p>.handle_event``,
on the provider's queue, handles the stored events the receiver (or the sweeper, or ``events replay``)
publishes.

The message is ``kwargs={"event": <the ledger's id of the event>}`` and nothing else: the task reads the
event from the ledger, so no body travels through the broker or shows in Flower. A failed pass is sent
back with the provider's retry backoff (attempts are counted in the event's row) until the provider's
``max_attempts``, then the event is ``dead``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from celery import Celery, Task
from celery.exceptions import WorkerShutdown
from celery.signals import worker_init

from integrations.errors import ConfigError, LedgerUnavailable
from integrations.providers import ProviderSettings
from integrations.resilience.retry import RetryPolicy
from integrations.runtime import Runtime
from integrations.webhooks.handling import HANDLE_EVENT, Handlers, handle
from integrations.webhooks.store import EventStore
from tasks.operations import runtime

log = logging.getLogger("integrations.worker")


class HandlingRetried(Exception):
    """The reason of the RETRY state of an event's message: ``args[0]`` says why, never with the event's
    body or a handler's message (those are in the ledger: ``integrations events show``)."""


class EventTask(Task):  # type: ignore[misc]
    acks_late = True
    max_retries = None  # attempts are counted in the event's row
    typing = False  # a bad message is logged and dropped by the task itself


# task name -> provider
_event_tasks: dict[str, str] = {}
# The handlers' references (INTEGRATIONS_EVENT_HANDLERS) and, once loaded in this process, the handlers.
_references: list[str] = []
_handlers: Handlers | None = None
_store: tuple[Runtime, EventStore] | None = None


def event_task_name(provider: str) -> str:
    return f"integrations.{provider}.{HANDLE_EVENT}"


def event_store(current: Runtime) -> EventStore:
    """The events of ``current``'s ledger, on the ledger's own engine."""
    global _store
    if _store is None or _store[0] is not current:
        _store = (current, EventStore.sharing(current.ledger))
    return _store[1]


def handlers() -> Handlers:
    """The registered handlers, loaded once per process (before the pool forks, in a worker)."""
    global _handlers
    if _handlers is None:
        _handlers = Handlers.load(_references)
    return _handlers


def handle_event(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    provider = _event_tasks[self.name]
    event = kwargs.get("event")
    if args or set(kwargs) != {"event"} or not isinstance(event, str):
        log.error(
            "%s[%s]: dropped a message that is not kwargs={'event': <ledger id of the event>}",
            self.name,
            self.request.id,
        )
        return {"provider": provider, "event": None, "status": "invalid_message"}
    current = runtime()
    policy = RetryPolicy.of(current.providers[provider].retry)
    adapter = current.runner(provider).adapter
    try:
        handling = handle(
            event_store(current),
            event,
            handlers(),
            policy,
            ledger=current.ledger,
            link=adapter.event_link,
            own=adapter.event_handlers(),
        )
    except LedgerUnavailable as exc:
        log.error(
            "webhook event %s of %s: the ledger cannot be reached, tried again later: %s",
            event,
            provider,
            exc,
        )
        attempt = (self.request.retries or 0) + 1
        raise self.retry(countdown=policy.delay(attempt), exc=HandlingRetried("ledger_unavailable")) from None
    if handling.retry_in is not None:
        attempts = handling.record.attempts if handling.record is not None else 0
        raise self.retry(
            countdown=handling.retry_in, exc=HandlingRetried(f"handler failed, attempt {attempts}")
        )
    return {"provider": provider, "event": event, "status": handling.outcome}


def register_event_tasks(
    app: Celery, providers: Mapping[str, ProviderSettings], handler_references: list[str]
) -> dict[str, dict[str, str]]:
    """Register the event task of each provider with webhooks; returns their routes. The handlers
    (entry points and ``handler_references``) are loaded when a worker starts: one that cannot be loaded
    stops it, naming the entry point or reference."""
    _references[:] = handler_references
    routes: dict[str, dict[str, str]] = {}
    for name, provider in providers.items():
        if provider.webhooks is None:
            continue
        task_name = event_task_name(name)
        if task_name in app.tasks:
            raise ConfigError(
                f"provider {name!r}: its adapter has an operation named {HANDLE_EVENT!r}, the name of the "
                "task that handles its webhook events; rename the operation"
            )
        _event_tasks[task_name] = name
        app.task(name=task_name, bind=True, base=EventTask, time_limit=provider.lease_seconds)(handle_event)
        routes[task_name] = {"queue": provider.queue}
    worker_init.connect(_load_handlers, weak=False, dispatch_uid=f"{__name__}.load_handlers")
    return routes


def _load_handlers(**_: Any) -> None:
    global _handlers
    _handlers = None
    try:
        loaded = handlers()
    except ConfigError as exc:
        raise WorkerShutdown(str(exc)) from None
    if _event_tasks:
        log.info("webhook event handlers registered: %d", len(loaded))
