"""The project's broker queues: which names a worker may consume, and how many messages wait in each.

A provider's operations travel on ``integrations.<provider>``, the project's own tasks on its maintenance
and default queues, and a message an application sends without ``queue=`` lands on Celery's default queue,
``celery``. Any other ``integrations.*`` queue is served by no provider: a worker on it would take its
messages and drop them as unregistered tasks, so a worker refuses it (``tasks/registry.py``) and
``integrations queues`` flags it. On RabbitMQ with quorum queues, a starting worker declares the default
queue, which Celery's native delayed delivery binds whether a worker consumes it or not.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import redis
from celery.signals import worker_init
from celery.utils.quorum_queues import detect_quorum_queues
from kombu.connection import Connection
from kombu.exceptions import OperationalError

from integrations.errors import ConfigError
from integrations.providers import ProviderSettings, queue_name
from tasks.maintenance import MAINTENANCE_QUEUE

log = logging.getLogger("integrations.worker")

PREFIX = queue_name("")  # "integrations."
CELERY_DEFAULT_QUEUE = "celery"  # where Celery sends a task when the sender names no queue


class QueueKind(StrEnum):
    PROVIDER = "provider"  # integrations.<provider> of a provider in the providers file
    PROJECT = "project"  # the project's own: maintenance, default
    CELERY_DEFAULT = "celery default"  # messages sent without queue=
    UNSERVED = "unserved"  # integrations.* of no provider in the providers file
    FOREIGN = "foreign"  # nothing of this project is sent there


@dataclass(frozen=True)
class QueueNames:
    """The queues this project serves: each provider's (from the providers file) and its own."""

    providers: Mapping[str, str]  # queue -> provider
    own: frozenset[str]
    providers_file: Path

    @classmethod
    def of(
        cls, providers: Mapping[str, ProviderSettings], providers_file: Path | str, default_queue: str
    ) -> QueueNames:
        """The providers' queues, the maintenance queue and the app's ``task_default_queue``."""
        queues = {provider.queue: name for name, provider in providers.items()}
        return cls(queues, frozenset({MAINTENANCE_QUEUE, default_queue}), Path(providers_file))

    def kind(self, queue: str) -> QueueKind:
        if queue in self.providers:
            return QueueKind.PROVIDER
        if queue in self.own:
            return QueueKind.PROJECT
        if queue == CELERY_DEFAULT_QUEUE:
            return QueueKind.CELERY_DEFAULT
        return QueueKind.UNSERVED if queue.startswith(PREFIX) else QueueKind.FOREIGN

    def known(self) -> list[str]:
        """Every queue a worker of this project may consume, sorted."""
        return sorted({*self.providers, *self.own, CELERY_DEFAULT_QUEUE})

    def describe(self) -> str:
        """The providers with their queues and the project's own queues, as an error message lists them."""
        providers = ", ".join(f"{name} ({queue})" for queue, name in sorted(self.providers.items()))
        return (
            f"Providers in {self.providers_file} and their queues: {providers or 'none'}; "
            f"the project's own queues: {', '.join(sorted(self.own))}; "
            f"and {CELERY_DEFAULT_QUEUE} (where a message sent without queue= lands)"
        )


def refuse_unserved(consumed: Iterable[str], names: QueueNames) -> None:
    """Raise ``ConfigError`` naming every queue in ``consumed`` that nothing of this project is sent to,
    and the queues there are: a worker on it would drop as unregistered what it took."""
    problems = []
    for queue in sorted(set(consumed)):
        kind = names.kind(queue)
        if kind is QueueKind.UNSERVED:
            problems.append(f"{queue}: no provider in {names.providers_file} serves it")
        elif kind is QueueKind.FOREIGN:
            problems.append(f"{queue}: not a queue of this project")
    if problems:
        raise ConfigError(
            "worker not started: it was asked to consume queues whose messages it would drop as "
            "unregistered tasks:\n  " + "\n  ".join(problems) + f"\n{names.describe()}.\n"
            "Name only those in -Q, or add the provider to the providers file."
        )


@dataclass(frozen=True)
class QueueDepth:
    """One queue in the broker: the messages waiting in it (``None``: the broker has no such queue), which
    provider serves it, and what is wrong with it (``flag``, in a few words) and what to do (``problem``)."""

    queue: str
    messages: int | None
    kind: QueueKind
    provider: str | None
    flag: str | None = None
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "messages": self.messages,
            "kind": self.kind.value,
            "provider": self.provider,
            "flag": self.flag,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class BrokerQueues:
    """What ``integrations queues`` shows. ``complete``: every ``integrations.*`` queue in the broker is
    listed (Redis); otherwise the broker cannot list its queues (AMQP) and only the known names were asked."""

    broker: str
    complete: bool
    queues: list[QueueDepth]

    def to_json(self) -> dict[str, Any]:
        return {
            "broker": self.broker,
            "complete": self.complete,
            "queues": [queue.to_json() for queue in self.queues],
        }


def inspect_broker(connection: Connection, names: QueueNames) -> BrokerQueues:
    """Each ``integrations.*`` queue in the broker with its depth and what serves it, and ``celery``.
    With Redis every such queue is found; with another transport only the names in ``names``."""
    broker = connection.as_uri()  # without the password
    try:
        connection.ensure_connection(max_retries=1)
        counts: dict[str, int | None]
        if connection.transport.driver_type == "redis":
            counts, complete = dict(_redis_counts(connection)), True
        else:
            counts, complete = {queue: declared_count(connection, queue) for queue in names.known()}, False
    except (*connection.connection_errors, OperationalError, OSError) as exc:
        raise ConfigError(
            f"broker at {broker} (BROKER_URL, else REDIS_URL) cannot be reached: {exc}"
        ) from exc
    for queue in names.known():
        counts.setdefault(queue, 0)  # Redis keeps no empty list: an absent queue is an empty one
    return BrokerQueues(broker, complete, [_row(queue, counts[queue], names) for queue in sorted(counts)])


def _row(queue: str, messages: int | None, names: QueueNames) -> QueueDepth:
    kind = names.kind(queue)
    if kind is QueueKind.UNSERVED:
        return QueueDepth(
            queue,
            messages,
            kind,
            None,
            "no provider serves it",
            f"no provider in {names.providers_file} serves it: its messages wait for no one. Add "
            f"[providers.{queue.removeprefix(PREFIX)}] back to the providers file and start a worker with "
            f"-Q {queue}, or drop them: celery -A config.celery_app purge -Q {queue}",
        )
    if kind is QueueKind.CELERY_DEFAULT and messages:
        return QueueDepth(
            queue,
            messages,
            kind,
            None,
            "sent without queue=",
            "messages sent without queue='integrations.<provider>' wait here, where no provider's worker "
            f"looks: have the application send with queue=, and drain these with a worker started with "
            f"-Q {queue}",
        )
    return QueueDepth(queue, messages, kind, names.providers.get(queue))


def _redis_counts(connection: Connection) -> dict[str, int]:
    """The length of every ``integrations.*`` and ``celery`` queue, found with SCAN. kombu keeps a queue
    as a list named after it, plus one list per priority step (``<queue>\\x06\\x16<step>``), and no list
    when the queue is empty."""
    channel: Any = connection.default_channel  # kombu's Redis channel: its pool, key prefix, separator
    client = redis.Redis(connection_pool=channel.pool)
    prefix: str = channel.global_keyprefix
    lists: dict[str, str] = {}  # key -> queue
    for base in (PREFIX, CELERY_DEFAULT_QUEUE):
        pattern = _glob_escape(prefix + base) + "*"
        for raw in client.scan_iter(match=pattern, count=1000, _type="list"):
            key = raw.decode()
            queue = key.removeprefix(prefix).split(channel.sep, 1)[0]
            if base != CELERY_DEFAULT_QUEUE or queue == CELERY_DEFAULT_QUEUE:
                lists[key] = queue
    with client.pipeline(transaction=False) as pipe:
        for key in lists:
            pipe.llen(key)
        lengths = pipe.execute()
    counts: dict[str, int] = {}
    for queue, length in zip(lists.values(), lengths, strict=True):
        counts[queue] = counts.get(queue, 0) + int(length)
    return counts


def declared_count(connection: Connection, queue: str) -> int | None:
    """A queue's depth from a passive declare (what AMQP offers); ``None`` when the broker has no such
    queue. A refused declare closes its channel, so each queue is asked on a channel of its own."""
    channel = connection.channel()
    try:
        return int(channel.queue_declare(queue=queue, passive=True).message_count)
    except connection.channel_errors:
        return None
    finally:
        channel.close()


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def declare_default_queue(sender: Any = None, **_: Any) -> None:
    """Declare the default queue as a worker (``sender``, Celery's WorkController) starts on RabbitMQ with
    quorum queues. Celery binds every queue it knows to its native delayed delivery, the default queue
    too, which a worker started with -Q does not declare: the binding would fail with an error, and a
    critical line saying that delayed delivery is not available, at every start."""
    if sender is None:
        return
    app = sender.app
    default = app.amqp.queues[app.conf.task_default_queue]
    with app.connection_for_write() as connection:
        if not detect_quorum_queues(app, connection.transport.driver_type)[0]:
            return
        try:
            connection.ensure_connection(max_retries=3)
            default.bind(connection.default_channel).declare()
        except (*connection.connection_errors, *connection.channel_errors, OperationalError) as exc:
            # The worker starts all the same; the broker's own error says what is wrong (the queue
            # declared with another type, by an application's app set for classic queues).
            log.warning("the default queue %s could not be declared: %s", default.name, exc)


worker_init.connect(declare_default_queue, weak=False, dispatch_uid=f"{__name__}.declare_default_queue")
