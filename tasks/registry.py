"""Registers a task per (provider, operation) from the providers file, with its queue."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from celery import Celery
from celery.exceptions import WorkerShutdown
from celery.signals import after_setup_logger, after_setup_task_logger, worker_init
from celery.utils.nodenames import worker_direct

from config.settings import Settings
from integrations.auth import check_secrets
from integrations.errors import ConfigError
from integrations.ledger import schema
from integrations.ledger.engine import create_ledger_engine
from integrations.metrics import Metrics, metrics_dir
from integrations.runtime import Runtime
from integrations.webhooks.handling import references
from tasks import logs
from tasks.events import register_event_tasks
from tasks.maintenance import MAINTENANCE_QUEUE, MAINTENANCE_TASKS, register_maintenance
from tasks.operations import configure_runtime, register_operation
from tasks.queues import QueueNames, refuse_unserved
from tasks.results import use_result_backend

log = logging.getLogger("integrations.worker")


def register_tasks(app: Celery, settings: Settings) -> Runtime:
    """Register every operation task and route it to ``integrations.<provider>``; returns the runtime
    built from the providers file (a bad file raises ``ConfigError`` here, before a worker starts)."""
    loaded = Runtime.load(settings.providers_file, settings.database_url, settings.state_redis_url)
    # Before any pool process counts: each writes its counts where `integrations metrics serve` reads them.
    metrics_dir()
    use_result_backend(app)
    configure_runtime(
        lambda: Runtime(
            loaded.providers,
            loaded.adapter_classes,
            settings.database_url,
            settings.state_redis_url,
            retention=settings.retention,
            dead_letter_retention=settings.dead_letter_retention,
            sweep_grace=settings.sweep_interval,
            webhook_retention=settings.webhook_retention,
            metrics=Metrics(),
        )
    )
    routes: dict[str, dict[str, str]] = {task: {"queue": MAINTENANCE_QUEUE} for task in MAINTENANCE_TASKS}
    for name, provider in loaded.providers.items():
        for operation in loaded.adapter_classes[name].operations:
            task_name = provider.task_name(operation)
            register_operation(app, name, operation, task_name, provider.lease_seconds)
            routes[task_name] = {"queue": provider.queue}
    routes |= register_event_tasks(app, loaded.providers, references(settings.event_handlers))
    app.conf.task_routes = routes
    register_maintenance(app, sweep_every=settings.sweep_interval_seconds)

    global _startup
    queues = QueueNames.of(loaded.providers, settings.providers_file, app.conf.task_default_queue)
    _startup = (settings.database_url, loaded, queues)
    # Connected once per process, however often tasks are registered (a test may build several apps):
    # the dispatch uid makes a second connect a no-op, and the handlers read what was registered last.
    worker_init.connect(_check_before_start, weak=False, dispatch_uid=f"{__name__}.check_before_start")
    # Log lines: secrets masked, Celery's lines about operations without payloads or results, text or JSON.
    logs.configure(settings.log_format)
    after_setup_logger.connect(_setup_logs, weak=False, dispatch_uid=f"{__name__}.setup_logs")
    after_setup_task_logger.connect(_setup_logs, weak=False, dispatch_uid=f"{__name__}.setup_task_logs")
    return loaded


# What the worker checks before it takes a message: the ledger's URL, the runtime loaded from the
# providers file, and the queues it serves.
_startup: tuple[str, Runtime, QueueNames] | None = None


def _check_before_start(sender: Any = None, **_: Any) -> None:
    """Refuse to start a worker (``sender``, Celery's WorkController) on a ledger behind the code's schema,
    on a queue nothing of this project is sent to, or without a provider's secrets."""
    if _startup is None:
        return
    database_url, loaded, queues = _startup
    source = str(queues.providers_file)
    checks: list[Callable[[], None]] = [lambda: check_schema(database_url)]
    if sender is not None:
        checks.append(lambda: refuse_unserved(consumed_queues(sender), queues))
    checks += [  # every secret can be had, before any message
        partial(check_secrets, provider.name, provider.auth, source=source)
        for provider in loaded.providers.values()
    ]
    problems = []
    for check in checks:  # all of them, so that one restart shows everything to fix
        try:
            check()
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        # Celery logs and swallows a signal handler's exceptions, but not WorkerShutdown (a SystemExit):
        # the worker stops, and Python prints the message once on stderr and exits with status 1. Logging
        # is not set up yet at worker_init, so a log line would only print it a second time.
        raise WorkerShutdown("\n".join(problems))


def consumed_queues(worker: Any) -> list[str]:
    """The queues ``worker`` will consume: ``-Q`` (less ``-X``) as Celery selected them before
    ``worker_init``, or the default queue without ``-Q``; not the worker's own direct queue."""
    app = worker.app
    direct = {worker_direct(worker.hostname).name} if app.conf.worker_direct else set()
    return [name for name in app.amqp.queues.consume_from if name not in direct]


def _setup_logs(logger: logging.Logger, **_: Any) -> None:
    logs.install(logger)


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
    where = f"ledger at {engine.url.render_as_string(hide_password=True)}"
    if current is None:
        raise ConfigError(
            f"{where} has no schema yet: run `integrations db upgrade` (with the same DATABASE_URL) "
            "before starting workers"
        )
    if current != head:
        raise ConfigError(
            f"{where} is at schema revision {current}, this code needs {head}: run `integrations db upgrade` "
            "(with the same DATABASE_URL)"
        )
