"""Redis restarted without its data (it keeps nothing on disk): the queued messages are gone, the ledger
is not. Operations enqueued through the ledger all end once the sweeper has sent them again, each with one
provider call, and a worker that was running goes on consuming without a restart."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from celery import Celery

from integrations.adapters.registry import resolve
from integrations.client import Client
from integrations.ledger import schema
from integrations.ledger.models import OperationStatus
from integrations.ledger.records import OperationRecord
from integrations.ledger.store import Ledger
from integrations.providers import load_providers
from integrations.sweeper import Sweeper
from integrations.testing.provider import ProviderSimulator
from integrations.testing.redis_server import RedisServer
from tasks.enqueue import send
from tasks.worker import running_worker
from tests.e2e.conftest import CANARY, providers_toml, unique
from tests.fakes.hubspot import FakeHubSpot

OPERATIONS = 20
GRACE = timedelta(seconds=1)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.remove()


def test_after_redis_comes_back_empty_every_enqueued_operation_ends_once(
    redis_server: RedisServer, simulator: ProviderSimulator, hubspot_server: FakeHubSpot, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    schema.upgrade(database)
    providers = tmp_path / "providers.toml"
    providers.write_text(providers_toml(simulator.url, hubspot_server.url))
    env = dict(
        os.environ,
        REDIS_URL=redis_server.url,
        DATABASE_URL=database,
        INTEGRATIONS_PROVIDERS_FILE=str(providers),
        INTEGRATIONS_TEST_CANARY=CANARY,
    )
    env.pop("BROKER_URL", None)
    app = Celery("application", broker=redis_server.url, backend=redis_server.url)
    app.conf.update(
        accept_content=["json"], result_accept_content=["json"], broker_connection_retry_on_startup=True
    )

    def publish(record: OperationRecord) -> str:
        return send(app, record, record.task_id)

    configured = load_providers(providers)
    ledger = Ledger.connect(database)
    client = Client(configured, resolve(configured, str(providers)), ledger, publish)
    sweeper = Sweeper(ledger, publish, set(configured), GRACE)

    def enqueue(prefix: str) -> list[str]:
        keys = [unique(prefix) for _ in range(OPERATIONS)]
        for key in keys:
            client.enqueue(
                "sim", "request", payload={"method": "POST", "path": "/v1/payments"}, idempotency_key=key
            )
        return keys

    def ended(keys: list[str]) -> bool:
        records = [ledger.find("sim", key) for key in keys]
        return all(record is not None and record.status.terminal for record in records)

    def drain(keys: list[str], worker_log: Path) -> None:
        """Sweep, as beat would every second, until every operation has ended."""
        deadline = time.monotonic() + 60
        while not ended(keys):
            assert time.monotonic() < deadline, worker_log.read_text()[-3000:]
            sweeper.sweep()
            time.sleep(GRACE.total_seconds())  # the sweep interval

    lost = enqueue("lost")  # no worker yet: the messages wait in Redis, and go with it
    redis_server.restart()
    assert app.connection().default_channel.client.llen("integrations.sim") == 0
    with running_worker(app, env, ["integrations.sim"], tmp_path, concurrency=1) as worker:
        drain(lost, worker.log)
        redis_server.restart()  # under a running worker, which reconnects by itself
        after = enqueue("after")
        drain(after, worker.log)

    for key in lost + after:
        record = ledger.find("sim", key)
        assert record is not None and record.status is OperationStatus.SUCCEEDED
        assert len(simulator.calls(idempotency_key=key)) == 1
    ledger.dispose()
    app.close()
