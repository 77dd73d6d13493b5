"""A whole worker lost mid-call (its main process killed, as an OOM kill or a lost machine does): the
broker keeps its message unacknowledged until the visibility timeout, an hour; the sweeper sends it again
under the same task id once the attempt's lease has run out, and the caller gets the outcome."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from celery import Celery

from integrations.ledger import schema
from integrations.ledger.models import OperationStatus
from integrations.ledger.store import Ledger
from integrations.testing.provider import ProviderSimulator
from tasks.maintenance import MAINTENANCE_QUEUE, SWEEP_TASK
from tasks.worker import running_worker
from tests.conftest import TEST_REDIS_DB, with_redis_db
from tests.e2e.conftest import CANARY, providers_toml, unique
from tests.fakes.hubspot import FakeHubSpot

QUEUES = ["integrations.sim", MAINTENANCE_QUEUE]
SWEEP_INTERVAL = 1.0  # seconds: the sweeper's grace too


@pytest.fixture
def setup(
    redis_server_url: str, simulator: ProviderSimulator, hubspot_server: FakeHubSpot, tmp_path: Path
) -> Iterator[tuple[Celery, dict[str, str], Ledger]]:
    redis_url = with_redis_db(redis_server_url, TEST_REDIS_DB - 1)
    database = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    schema.upgrade(database)
    providers = tmp_path / "providers.toml"
    providers.write_text(providers_toml(simulator.url, hubspot_server.url))
    env = dict(
        os.environ,
        REDIS_URL=redis_url,
        DATABASE_URL=database,
        INTEGRATIONS_PROVIDERS_FILE=str(providers),
        INTEGRATIONS_SWEEP_INTERVAL=str(SWEEP_INTERVAL),
        INTEGRATIONS_TEST_CANARY=CANARY,
        PYTHONUNBUFFERED="1",
    )
    env.pop("BROKER_URL", None)
    app = Celery("client", broker=redis_url, backend=redis_url)
    app.conf.update(accept_content=["json"], result_accept_content=["json"])
    app.backend.client.flushdb()
    ledger = Ledger.connect(database)
    yield app, env, ledger
    ledger.dispose()
    app.backend.client.flushdb()
    app.close()


def test_a_lost_workers_operation_ends_after_its_lease_and_a_sweep(
    setup: tuple[Celery, dict[str, str], Ledger], simulator: ProviderSimulator, tmp_path: Path
) -> None:
    app, env, ledger = setup
    key = unique("lost-worker")
    kwargs = {"payload": {"method": "POST", "path": "/v1/payments?delay=0.8"}, "idempotency_key": key}

    with running_worker(app, env, QUEUES, tmp_path, concurrency=1) as first:
        result = app.send_task("integrations.sim.request", kwargs=kwargs, queue="integrations.sim")
        deadline = time.monotonic() + 30
        while not simulator.calls(idempotency_key=key):  # the call is in flight
            assert time.monotonic() < deadline, first.log_tail()
            time.sleep(0.02)
        children = first.children()
        for pid in [first.process.pid, *children]:  # the whole machine goes
            os.kill(pid, signal.SIGKILL)
        first.process.wait()

    held = ledger.find("sim", key)
    assert held is not None and held.status is OperationStatus.RUNNING and held.lease_expires_at is not None
    with running_worker(app, env, QUEUES, tmp_path, concurrency=1) as second:
        # The new worker does not get the message: Redis keeps it for the dead one. Wait out the lease and
        # the grace (time that must pass, not a race), then sweep as beat would.
        wait = (held.lease_expires_at - datetime.now(UTC)).total_seconds() + SWEEP_INTERVAL + 0.2
        time.sleep(max(0.0, wait))
        swept = app.send_task(SWEEP_TASK, queue=MAINTENANCE_QUEUE).get(timeout=30)
        value = result.get(timeout=30)
        log = second.log_tail(20_000)

    assert swept == 1
    assert value["status"] == "succeeded" and value["attempts"] == 2
    calls = simulator.calls(idempotency_key=key)  # the lost attempt was carried out; the repeat has its key
    assert len(calls) == 2
    assert f"swept sim.request key={key}" in log and result.id in log


def test_a_sweep_stores_the_results_callers_miss(
    setup: tuple[Celery, dict[str, str], Ledger], simulator: ProviderSimulator, tmp_path: Path
) -> None:
    """An operation ended in the ledger whose result the backend lost (Redis restarted empty), or holds from
    before its end (a RETRY: the pool process was stopped between the ledger's write and the result's):
    the next sweep stores the ledger's outcome, and the caller reads it."""
    app, env, _ = setup
    lost, stale, rejected = unique("lost"), unique("stale"), unique("rejected")
    with running_worker(app, env, QUEUES, tmp_path, concurrency=1):
        results = {
            key: app.send_task(
                "integrations.sim.request",
                kwargs={"payload": {"method": "POST", "path": path}, "idempotency_key": key},
                queue="integrations.sim",
            )
            for key, path in ((lost, "/v1/a"), (stale, "/v1/b"), (rejected, "/v1/c?status=400"))
        }
        for outcome in results.values():
            outcome.get(timeout=30, propagate=False)
        backend = app.backend
        backend.client.delete(*(backend.get_key_for_task(result.id) for result in results.values()))
        backend.store_result(
            results[stale].id, None, "RETRY"
        )  # Celery keeps a SUCCESS from being overwritten
        states = [backend.get_task_meta(results[key].id)["status"] for key in (lost, stale, rejected)]
        assert states == ["PENDING", "RETRY", "PENDING"]
        app.send_task(SWEEP_TASK, queue=MAINTENANCE_QUEUE).get(timeout=30)

    for key in (lost, stale):
        value = backend.get_task_meta(results[key].id)
        assert value["status"] == "SUCCESS", value
        assert (value["result"]["status"], value["result"]["idempotency_key"]) == ("succeeded", key)
    failure = backend.get_task_meta(results[rejected].id)
    assert failure["status"] == "FAILURE" and "provider_rejected" in str(failure["result"])
    assert len(simulator.calls()) == 3  # stored from the ledger: no call made again
