"""The Celery settings of each broker: Redis's visibility timeout for Redis only; on RabbitMQ publisher
confirms, and with INTEGRATIONS_QUEUE_TYPE=quorum quorum queues on topic exchanges, so that a countdown goes
through native delayed delivery, in whole seconds. Nothing here connects to a broker."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from celery.utils.quorum_queues import detect_quorum_queues
from pydantic import ValidationError

from config.celery_settings import VISIBILITY_TIMEOUT, broker_kind, celery_config, whole_second_countdown
from config.settings import Settings
from integrations.errors import ConfigError

AMQP = "amqp://guest:secret@rabbit.example:5672/integrations"


def app_of(**environment: Any) -> Celery:
    app = Celery("test", set_as_current=False)
    app.conf.update(celery_config(Settings(REDIS_URL="redis://r:6379/0", **environment)))
    return app


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis://r:6379/0", "redis"),
        ("rediss://r:6379/0", "redis"),
        ("sentinel://r:26379", "redis"),
        (AMQP, "amqp"),
        ("amqps://rabbit.example//", "amqp"),
        ("pyamqp://a//;pyamqp://b//", "amqp"),
    ],
)
def test_the_broker_kind_is_kombus_transport(url: str, kind: str) -> None:
    assert broker_kind(url) == kind


def test_redis_keeps_its_visibility_timeout_and_the_queues_celerys_defaults() -> None:
    conf = app_of().conf
    assert conf.broker_transport_options == {"visibility_timeout": VISIBILITY_TIMEOUT}
    assert conf.task_default_queue_type == "classic" and conf.task_annotations is None


def test_rabbitmq_has_publisher_confirms_and_no_visibility_timeout() -> None:
    app = app_of(BROKER_URL=AMQP)
    assert app.conf.broker_transport_options == {"confirm_publish": True}
    assert app.conf.task_default_delivery_mode == "persistent"
    sim = app.amqp.queues["integrations.sim"]  # declared by a worker's -Q
    assert sim.durable and (sim.queue_arguments or {}).get("x-queue-type") is None
    assert sim.exchange.type == "direct"  # as an application's plain Celery app declares it
    assert detect_quorum_queues(app, "amqp") == (False, "")


def test_quorum_queues_on_topic_exchanges_for_native_delayed_delivery() -> None:
    app = app_of(BROKER_URL=AMQP, INTEGRATIONS_QUEUE_TYPE="quorum")
    conf = app.conf
    assert conf.broker_transport_options == {"confirm_publish": True}
    assert conf.broker_native_delayed_delivery_queue_type == "quorum"
    assert conf.worker_detect_quorum_queues is True
    for name in ("integrations.sim", "integrations.default"):  # a -Q queue, and the default one
        queue = app.amqp.queues[name]
        assert queue.queue_arguments == {"x-queue-type": "quorum"}
        assert (queue.exchange.name, queue.exchange.type, queue.routing_key) == (name, "topic", name)
    assert detect_quorum_queues(app, "amqp") == (True, "integrations.default")


def operation() -> None:
    """A stand-in of an operation task."""


def test_a_task_of_the_quorum_app_sends_its_countdown_in_whole_seconds_rounded_up() -> None:
    app = app_of(BROKER_URL=AMQP, INTEGRATIONS_QUEUE_TYPE="quorum")
    sent: list[dict[str, Any]] = []
    app.send_task = lambda name, *args, **options: sent.append(options)
    request = app.task(name="integrations.sim.request", shared=False)(operation)
    for countdown in (0.02, 1.0, 1.5, None):
        request.apply_async(countdown=countdown)
    assert [options["countdown"] for options in sent] == [1, 1, 2, None]


def test_whole_second_countdown_leaves_no_countdown_alone() -> None:
    seen: list[float | None] = []

    def apply_async(self: Any, *args: Any, countdown: float | None = None, **options: Any) -> None:
        seen.append(countdown)

    wrapped = whole_second_countdown(apply_async)
    for countdown in (None, 0, 0.001, 2.0, 899.2):
        wrapped(object(), countdown=countdown)
    assert seen == [None, 0, 1, 2, 900]
    assert wrapped.__wrapped__ is apply_async  # type: ignore[attr-defined]


def test_quorum_queues_on_redis_are_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"INTEGRATIONS_QUEUE_TYPE.*RabbitMQ's.*is redis"):
        celery_config(Settings(REDIS_URL="redis://r:6379/0", INTEGRATIONS_QUEUE_TYPE="quorum"))


def test_an_unknown_queue_type_or_broker_is_refused_without_the_password() -> None:
    with pytest.raises(ValidationError, match="INTEGRATIONS_QUEUE_TYPE"):
        Settings(INTEGRATIONS_QUEUE_TYPE="stream")
    for url in ("nosuch://user:hunter2@b:1", "kafka://user:hunter2@k:9092"):  # kafka: its library missing
        with pytest.raises(ConfigError, match=r"BROKER_URL.*'(nosuch|kafka)'") as raised:
            celery_config(Settings(BROKER_URL=url))
        assert "hunter2" not in str(raised.value)
