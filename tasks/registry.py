"""Registers a task per (provider, operation) from the providers file, with its queue."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded, WorkerShutdown
from celery.signals import after_setup_logger, after_setup_task_logger, worker_init

from config.settings import Settings
from integrations.auth import check_secrets
from integrations.errors import ConfigError
from integrations.ledger import schema
from integrations.ledger.engine import create_ledger_engine
from integrations.redaction import install as install_redaction
from integrations.runtime import Runtime
from tasks.maintenance import MAINTENANCE_QUEUE, PRUNE_TASK, register_maintenance
from tasks.operations import configure_runtime, register_operation

log = logging.getLogger("integrations.worker")


def register_tasks(app: Celery, settings: Settings) -> Runtime:
    """Register every operation task and route it to ``integrations.<provider>``; returns the runtime
    built from the providers file (a bad file raises ``ConfigError`` here, before a worker starts)."""
    loaded = Runtime.load(settings.providers_file, settings.database_url, settings.redis_url)
    configure_runtime(
        lambda: Runtime(
            loaded.providers,
            loaded.adapter_classes,
            settings.database_url,
            settings.redis_url,
            retention=settings.retention,
            dead_letter_retention=settings.dead_letter_retention,
            interrupts=(SoftTimeLimitExceeded,),
        )
    )
    routes: dict[str, dict[str, str]] = {PRUNE_TASK: {"queue": MAINTENANCE_QUEUE}}
    for name, provider in loaded.providers.items():
        for operation in loaded.adapter_classes[name].operations:
            task_name = provider.task_name(operation)
            register_operation(app, name, operation, task_name, provider.lease_seconds)
            routes[task_name] = {"queue": provider.queue}
    app.conf.task_routes = routes
    register_maintenance(app)

    global _startup
    _startup = (settings.database_url, loaded)
    # Connected once per process, however often tasks are registered (a test may build several apps):
    # the dispatch uid makes a second connect a no-op, and the handlers read what was registered last.
    worker_init.connect(_check_before_start, weak=False, dispatch_uid=f"{__name__}.check_before_start")
    after_setup_logger.connect(_redact_logs, weak=False, dispatch_uid=f"{__name__}.redact_logs")
    after_setup_task_logger.connect(_redact_logs, weak=False, dispatch_uid=f"{__name__}.redact_task_logs")
    return loaded


# What the worker checks before it takes a message: the ledger's URL and the runtime loaded from the
# providers file.
_startup: tuple[str, Runtime] | None = None


def _check_before_start(**_: Any) -> None:
    if _startup is None:
        return
    database_url, loaded = _startup
    try:
        check_schema(database_url)
        for provider in loaded.providers.values():  # every secret can be had, before any message
            check_secrets(provider.name, provider.auth)
    except ConfigError as exc:
        # Celery logs and swallows a signal handler's exceptions; WorkerShutdown stops the worker.
        log.critical("%s", exc)
        raise WorkerShutdown(str(exc)) from exc


def _redact_logs(logger: logging.Logger, **_: Any) -> None:
    install_redaction(logger)


def check_schema(database_url: str) -> None:
    """Refuse to start a worker on a ledger whose schema is not at the code's migration head."""
    engine = create_ledger_engine(database_url)
    try:
        current = schema.current_revision(engine)
    except Exception as exc:
        raise ConfigError(
            f"ledger at {engine.url.render_as_string(hide_password=True)} cannot be reached: {exc}"
        ) from exc
    finally:
        engine.dispose()
    head = schema.head_revision()
    if current != head:
        raise ConfigError(
            f"ledger at {engine.url.render_as_string(hide_password=True)} is at schema revision {current}, "
            f"this code needs {head}: run `integrations db upgrade` (with the same DATABASE_URL)"
        )
