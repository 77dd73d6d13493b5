"""RabbitMQ as the broker, with classic queues and with quorum queues (INTEGRATIONS_QUEUE_TYPE): the worker
tests' own bodies run again here on a worker whose broker is RabbitMQ (the result backend stays Redis), fed by
an application's Celery app set as the README says; and what differs from Redis: where a countdown waits, what
becomes of the message of a worker lost whole, the sweeper sending a message the broker never had, the queue
depths.

Each queue type has a virtual host of the run's own (tests/e2e/conftest.py). The ledger is SQLite only: the
ledger's backends are not what these tests are about."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult
from click.testing import CliRunner

from config.celery_settings import celery_config
from config.cli import main, operator_context
from config.settings import Settings
from integrations.adapters.registry import resolve
from integrations.client import Client
from integrations.fleet import Fleet, FleetCollector
from integrations.ledger import schema
from integrations.ledger.models import OperationStatus
from integrations.ledger.records import OperationRecord
from integrations.ledger.store import Ledger
from integrations.providers import load_providers
from integrations.resilience.breaker import SharedBreaker
from integrations.resilience.scripts import redis_client
from integrations.testing.provider import ProviderSimulator
from tasks.enqueue import send
from tasks.maintenance import MAINTENANCE_QUEUE, SWEEP_TASK
from tasks.queues import declared_count
from tasks.worker import running_worker
from tests.conftest import TEST_REDIS_DB, with_redis_db
from tests.e2e.conftest import (
    CANARY,
    PROVIDER_QUEUES,
    QUEUE_TYPES,
    Worker,
    closed_port,
    providers_toml,
    unique,
)

# Collected again here, against RabbitMQ: the imported test functions (unused names to the linter).
from tests.e2e.test_worker import (  # noqa: F401
    test_a_killed_worker_process_gives_its_message_back,
    test_an_operation_succeeds_with_the_documented_result,
    test_transient_failures_are_retried_by_the_worker,
)
from tests.fakes.hubspot import FakeHubSpot

pytestmark = pytest.mark.rabbitmq

TIMEOUT = 30
SWEEP_INTERVAL = 1.0  # seconds: the sweeper's grace too
# A provider whose queue the module's worker does not consume: its messages wait, or a test's own worker
# takes them.
SPARE = """
[providers.spare]
adapter = "http"
base_url = "{url}"
timeout = 1.0
[providers.spare.breaker]
fail_max = 1000
min_calls = 1000
"""
WORKER_QUEUES = [MAINTENANCE_QUEUE, *PROVIDER_QUEUES]


def application(broker: str, backend: str, queue_type: str) -> Celery:
    """An application's own Celery app, which knows nothing of this project, set as the README says for
    the queue type: with quorum queues it declares the queues it sends to as the workers do."""
    app = Celery("client", broker=broker, backend=backend)
    app.conf.update(
        accept_content=["json"], result_accept_content=["json"], broker_connection_retry_on_startup=True
    )
    if queue_type == "quorum":
        app.conf.update(
            task_create_missing_queue_type="quorum", task_create_missing_queue_exchange_type="topic"
        )
    return app


@pytest.fixture(scope="module", params=QUEUE_TYPES)
def worker(
    request: pytest.FixtureRequest,
    rabbitmq_vhosts: dict[str, str],
    redis_server_url: str,
    simulator_server: ProviderSimulator,
    hubspot_server: FakeHubSpot,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Worker]:
    """The worker of tests/e2e/conftest.py, on RabbitMQ with the queue type of the param."""
    queue_type: str = request.param
    folder = tmp_path_factory.mktemp(f"rabbitmq-{queue_type}")
    database = f"sqlite:///{folder / 'ledger.sqlite3'}"
    schema.upgrade(database)
    redis_url = with_redis_db(redis_server_url, TEST_REDIS_DB + 2)
    providers = folder / "providers.toml"
    providers.write_text(
        providers_toml(simulator_server.url, hubspot_server.url) + SPARE.format(url=simulator_server.url)
    )
    env = dict(
        os.environ,
        REDIS_URL=redis_url,
        BROKER_URL=rabbitmq_vhosts[queue_type],
        INTEGRATIONS_QUEUE_TYPE=queue_type,
        DATABASE_URL=database,
        INTEGRATIONS_PROVIDERS_FILE=str(providers),
        INTEGRATIONS_SWEEP_INTERVAL=str(SWEEP_INTERVAL),
        PYTHONUNBUFFERED="1",
        INTEGRATIONS_TEST_CANARY=CANARY,
    )
    app = application(rabbitmq_vhosts[queue_type], redis_url, queue_type)
    app.backend.client.flushdb()
    ledger = Ledger.connect(database)
    try:
        with running_worker(app, env, WORKER_QUEUES, folder, loglevel="INFO") as process:
            yield Worker(process, env, app, ledger)
    finally:
        ledger.dispose()
        app.backend.client.flushdb()
        app.close()


def waiting(app: Celery, queue: str) -> int | None:
    """The messages ready in ``queue`` (``None``: the broker has no such queue), from a passive declare."""
    with app.connection_for_read() as connection:
        return declared_count(connection, queue)


def delayed(app: Celery) -> int:
    """The messages in native delayed delivery's queues (one per power of two seconds, 2^0 to 2^27)."""
    return sum(waiting(app, f"celery_delayed_{level}") or 0 for level in range(28))


def queue_type(worker: Worker) -> str:
    return worker.env["INTEGRATIONS_QUEUE_TYPE"]


def poll(condition: Callable[[], bool], what: str, worker: Worker | None = None) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"{what}\n{worker.process.log_tail() if worker else ''}"
        time.sleep(0.05)


def test_a_countdown_waits_in_the_broker_with_quorum_queues_and_in_the_worker_with_classic(
    worker: Worker, sim: ProviderSimulator
) -> None:
    """A guard's deferral (a breaker held open, looked at again every 5 s) goes back with a countdown: on
    quorum queues it waits in native delayed delivery's queues and the worker holds nothing; on classic
    queues the worker that took it holds it, unacknowledged, until it is due."""
    fragile = load_providers(Path(worker.env["INTEGRATIONS_PROVIDERS_FILE"]))["fragile"]
    breaker = SharedBreaker(
        redis_client(worker.env["REDIS_URL"]), "fragile", fragile.breaker, probe_ttl=fragile.lease_seconds
    )
    breaker.force_open()
    try:
        key = unique("deferred")
        result = worker.send(key, {"method": "POST", "path": "/v1/deferred"}, provider="fragile")

        def deferred() -> bool:
            record = worker.ledger.find("fragile", key)
            return record is not None and record.waiting == "breaker_forced_open"

        poll(deferred, "the operation never waited on its breaker", worker)
        inspect = worker.app.control.inspect([worker.process.node], timeout=2)
        if queue_type(worker) == "quorum":
            poll(lambda: delayed(worker.app) == 1, "the countdown never reached the delayed queues", worker)
            assert inspect.scheduled() == {worker.process.node: []}
        else:
            poll(lambda: bool((inspect.scheduled() or {}).get(worker.process.node)), "nothing scheduled")
            [held] = inspect.scheduled()[worker.process.node]
            assert held["request"]["id"] == result.id
            assert waiting(worker.app, "celery_delayed_0") is None  # no native delayed delivery at all
        assert waiting(worker.app, "integrations.fragile") == 0
        assert sim.calls(path="/v1/deferred") == []
    finally:
        breaker.close()
    value = result.get(timeout=TIMEOUT)
    assert (value["status"], value["attempts"]) == ("succeeded", 1)
    assert len(sim.calls(path="/v1/deferred")) == 1


def sender(**kwargs: Any) -> None:
    """A stand-in of a task for its app to send: the worker runs the real one."""


@pytest.mark.parametrize("worker", ["quorum"], indirect=True)
def test_a_countdown_below_a_second_is_sent_through_native_delayed_delivery(
    worker: Worker, sim: ProviderSimulator
) -> None:
    """Celery's native delayed delivery counts whole seconds and refuses a countdown below one, which a
    retry's backoff often is: a task of the workers' app sends it rounded up."""
    settings = Settings(
        REDIS_URL=worker.env["REDIS_URL"],
        BROKER_URL=worker.env["BROKER_URL"],
        INTEGRATIONS_QUEUE_TYPE=queue_type(worker),
    )
    app = Celery("workers", set_as_current=False)
    app.conf.update(celery_config(settings))
    request = app.task(name="integrations.sim.request", shared=False)(sender)
    key = unique("subsecond")
    payload = {"method": "POST", "path": "/v1/subsecond"}
    try:
        result = request.apply_async(
            kwargs={"payload": payload, "idempotency_key": key}, countdown=0.3, queue="integrations.sim"
        )
        assert result.get(timeout=TIMEOUT)["status"] == "succeeded"
    finally:
        app.close()
    assert len(sim.calls(idempotency_key=key)) == 1


# The message of a lost connection comes back whatever the queue type: once is enough.
@pytest.mark.parametrize("worker", ["classic"], indirect=True)
def test_a_lost_workers_message_comes_back_at_once_and_runs_after_the_lease(
    worker: Worker, sim: ProviderSimulator, tmp_path: Path
) -> None:
    """A worker lost whole mid-call (main process and pool killed): RabbitMQ puts its unacknowledged message
    back in the queue as its connection drops, with no visibility timeout to wait out nor a sweep to make,
    and the next worker to consume the queue calls again, with the same key, once the lost attempt's lease
    has run out. (With Redis the message stays with the lost worker, and the sweeper sends it:
    tests/e2e/test_sweeper.py.)"""
    key = unique("lost-worker")
    with running_worker(worker.app, worker.env, ["integrations.spare"], tmp_path, concurrency=1) as first:
        result = worker.send(key, {"method": "POST", "path": "/v1/payments?delay=0.8"}, provider="spare")
        poll(lambda: bool(sim.calls(idempotency_key=key)), "the call never started", worker)
        for pid in [first.process.pid, *first.children()]:
            os.kill(pid, signal.SIGKILL)
        first.process.wait()
    held = worker.ledger.find("spare", key)
    assert held is not None and held.status is OperationStatus.RUNNING and held.lease_expires_at is not None
    poll(lambda: waiting(worker.app, "integrations.spare") == 1, "the message never came back")
    node = [worker.process.node]
    worker.app.control.add_consumer("integrations.spare", destination=node, reply=True)  # the next worker
    try:
        value = result.get(timeout=TIMEOUT)
    finally:
        worker.app.control.cancel_consumer("integrations.spare", destination=node, reply=True)
    assert (value["status"], value["attempts"]) == ("succeeded", 2)
    # The lost attempt was carried out; the repeat has its key.
    assert len(sim.calls(idempotency_key=key)) == 2


def test_an_operation_whose_message_never_reached_the_broker_is_sent_by_the_sweeper(
    worker: Worker, sim: ProviderSimulator
) -> None:
    """Enqueued through the ledger while the application's RabbitMQ is out of reach: ``enqueue`` returns,
    the row waits, and a sweep sends its message under its task id; the caller gets the outcome of one
    call."""
    unreachable = Celery("application", broker=f"amqp://guest:guest@127.0.0.1:{closed_port()}//")
    unreachable.conf.update(task_publish_retry=False, broker_connection_timeout=1)

    def publish(record: OperationRecord) -> str:
        return send(unreachable, record, record.task_id)

    providers_file = Path(worker.env["INTEGRATIONS_PROVIDERS_FILE"])
    configured = load_providers(providers_file)
    client = Client(configured, resolve(configured, str(providers_file)), worker.ledger, publish)
    key = unique("unsent")
    handle = client.enqueue(
        "sim", "request", payload={"method": "POST", "path": "/v1/u"}, idempotency_key=key
    )
    unreachable.close()
    assert handle.created and handle.task_id is not None

    swept = 0
    deadline = time.monotonic() + TIMEOUT
    while not ((record := worker.ledger.find("sim", key)) and record.status.terminal):
        assert time.monotonic() < deadline, worker.process.log_tail()
        swept += worker.app.send_task(SWEEP_TASK, queue=MAINTENANCE_QUEUE).get(timeout=TIMEOUT)
        time.sleep(SWEEP_INTERVAL)  # as beat sweeps
    value = AsyncResult(handle.task_id, app=worker.app).get(timeout=TIMEOUT)
    assert swept >= 1 and record.swept_at is not None
    assert (value["status"], value["attempts"], value["operation_id"]) == (
        "succeeded",
        1,
        handle.operation_id,
    )
    assert len(sim.calls(idempotency_key=key)) == 1
    assert f"swept sim.request key={key}" in worker.process.log_tail(50_000)


def test_queue_depths_are_read_from_rabbitmq(
    worker: Worker, sim: ProviderSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`integrations queues`, `integrations status` and the exporter's queue-depth gauge read the depths
    with passive declares: RabbitMQ cannot list its queues, so the known ones are asked, and one the broker
    does not have reads absent."""
    for _ in range(3):  # no worker consumes the spare queue here
        worker.send(unique("waiting"), {"method": "POST", "path": "/v1/w"}, provider="spare")
    poll(lambda: waiting(worker.app, "integrations.spare") == 3, "the messages never reached their queue")
    for name in (
        "REDIS_URL",
        "BROKER_URL",
        "INTEGRATIONS_QUEUE_TYPE",
        "DATABASE_URL",
        "INTEGRATIONS_PROVIDERS_FILE",
    ):
        monkeypatch.setenv(name, worker.env[name])
    try:
        runner = CliRunner()
        queues = runner.invoke(main, ["queues", "--json"], catch_exceptions=False)
        status = runner.invoke(main, ["status", "--json"], catch_exceptions=False)
        context = operator_context()
        fleet = Fleet(
            load_providers(context.providers_file),
            redis_client(context.redis_url),
            Ledger.connect(context.database_url),
            queue_depths=context.queue_depths,
        )
        gauges = {
            sample.labels["queue"]: sample.value
            for family in FleetCollector(fleet).collect()
            if family.name == "integrations_queue_depth"
            for sample in family.samples
        }
        fleet.ledger.dispose()
    finally:
        with worker.app.connection_for_write() as connection:
            connection.default_channel.queue_purge("integrations.spare")

    found = json.loads(queues.output)
    assert found["complete"] is False and found["broker"].startswith("amqp://guest:**@127.0.0.1:5672/")
    rows = {row["queue"]: row for row in found["queues"]}
    assert (rows["integrations.spare"]["messages"], rows["integrations.spare"]["provider"]) == (3, "spare")
    assert rows["integrations.sim"]["messages"] == 0
    assert rows["celery"]["messages"] is None  # absent: nothing was ever sent without queue=
    assert {row["provider"]: row["queue_depth"] for row in json.loads(status.output)}["spare"] == 3
    assert gauges["integrations.spare"] == 3 and gauges["integrations.sim"] == 0 and "celery" not in gauges
