"""Redis slow to answer, or gone, while a worker stores a succeeded operation's result: the caller must
never be told it failed, and reads the success once Redis answers again. A real worker; private Redis
servers, the results' one paused with ``CLIENT PAUSE`` past the point where a soft time limit (3 x timeout)
would have fired, or stopped and started again empty. The broker is on another, so that only the result's
store fails."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from integrations.ledger import schema
from integrations.ledger.models import OperationStatus
from integrations.ledger.store import Ledger
from integrations.testing.provider import ProviderSimulator
from integrations.testing.redis_server import RedisServer, private_redis
from tasks.worker import WorkerProcess, running_worker
from tests.e2e.conftest import unique

# timeout 2 s: the attempt's deadline is 6 s (3 x timeout), the hard time limit 10 s, the lease 11 s.
PROVIDERS = """
[providers.paused]
adapter = "http"
base_url = "{url}"
timeout = 2.0
"""
PAUSE_MS = 7000  # the store waits past the attempt's deadline, and ends before the hard limit


@pytest.fixture
def results() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.remove()


@pytest.fixture
def broker_url() -> Iterator[str]:
    with private_redis() as url:
        yield url


@dataclass
class Run:
    app: Celery
    env: dict[str, str]
    database: str
    key: str
    kwargs: dict[str, Any]


@pytest.fixture
def run(results: RedisServer, broker_url: str, simulator: ProviderSimulator, tmp_path: Path) -> Iterator[Run]:
    database = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    schema.upgrade(database)
    providers = tmp_path / "providers.toml"
    providers.write_text(PROVIDERS.format(url=simulator.url))
    env = dict(
        os.environ,
        REDIS_URL=results.url,
        BROKER_URL=broker_url,
        DATABASE_URL=database,
        INTEGRATIONS_PROVIDERS_FILE=str(providers),
    )
    app = Celery("client", broker=broker_url, backend=results.url)
    app.conf.update(accept_content=["json"], result_accept_content=["json"])
    key = unique("paused")
    kwargs = {"payload": {"method": "POST", "path": "/v1/payments?delay=1.5"}, "idempotency_key": key}
    yield Run(app, env, database, key, kwargs)
    app.close()


def wait_for_call(simulator: ProviderSimulator, key: str, worker: WorkerProcess) -> None:
    deadline = time.monotonic() + 30
    while not simulator.calls(idempotency_key=key):  # the call is in flight (1.5 s)
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.02)


def assert_succeeded_once(run: Run, simulator: ProviderSimulator, value: dict[str, Any], log: str) -> None:
    """One provider call, one attempt, and the caller reads its success first-hand."""
    assert (value["status"], value["attempts"], value["replayed"]) == ("succeeded", 1, False)
    assert len(simulator.calls(idempotency_key=run.key)) == 1
    ledger = Ledger.connect(run.database)
    record = ledger.find("paused", run.key)
    ledger.dispose()
    assert record is not None and record.status is OperationStatus.SUCCEEDED, log[-3000:]


def test_a_result_stored_late_is_the_operations_success(
    run: Run, results: RedisServer, simulator: ProviderSimulator, tmp_path: Path
) -> None:
    with running_worker(
        run.app, run.env, ["integrations.paused"], tmp_path, concurrency=1, loglevel="INFO"
    ) as worker:
        result = run.app.send_task(
            "integrations.paused.request", kwargs=run.kwargs, queue="integrations.paused"
        )
        wait_for_call(simulator, run.key, worker)
        redis.Redis.from_url(results.url).execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
        value = result.get(timeout=60)
        log = worker.log.read_text()

    assert "time limit" not in log.lower(), log[-3000:]
    assert_succeeded_once(run, simulator, value, log)


def test_a_result_whose_redis_was_gone_is_stored_when_it_is_back(
    run: Run, results: RedisServer, simulator: ProviderSimulator, tmp_path: Path
) -> None:
    """The pool process waits for Redis to store the result (``result_backend_always_retry``): the caller
    reads the success first-hand. Without the wait, Celery would store FAILURE for it once Redis answers."""
    with running_worker(
        run.app,
        run.env,
        ["integrations.paused"],
        tmp_path,
        concurrency=1,
        loglevel="INFO",
    ) as worker:
        task_id = run.app.send_task(
            "integrations.paused.request", kwargs=run.kwargs, queue="integrations.paused"
        ).id
        wait_for_call(simulator, run.key, worker)
        results.stop()  # gone while the call is in flight: the result's store finds no Redis
        ledger = Ledger.connect(run.database)
        deadline = time.monotonic() + 30
        while (
            record := ledger.find("paused", run.key)
        ) is None or record.status is not OperationStatus.SUCCEEDED:
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.05)
        ledger.dispose()
        time.sleep(1.0)  # let the worker meet the missing Redis a while: the outcome must not depend on it
        results.start()  # back, and empty
        value = AsyncResult(task_id, app=run.app).get(timeout=60)
        log = worker.log.read_text()

    assert_succeeded_once(run, simulator, value, log)
