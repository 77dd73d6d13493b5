"""Redis slow to answer while a worker stores a succeeded operation's result: the caller must never be
told it failed. A real worker; private Redis servers, the results' one paused with ``CLIENT PAUSE`` past
the point where a soft time limit (3 x timeout) would have fired. The broker is on another, so that only
the result's store waits."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from integrations.ledger import schema
from integrations.ledger.models import OperationStatus
from integrations.ledger.store import Ledger
from integrations.testing.provider import ProviderSimulator
from integrations.testing.redis_server import private_redis
from tasks.worker import running_worker
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
def results_url() -> Iterator[str]:
    with private_redis() as url:
        yield url


@pytest.fixture
def broker_url() -> Iterator[str]:
    with private_redis() as url:
        yield url


def test_a_result_stored_late_is_the_operations_success(
    results_url: str, broker_url: str, simulator: ProviderSimulator, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    schema.upgrade(database)
    providers = tmp_path / "providers.toml"
    providers.write_text(PROVIDERS.format(url=simulator.url))
    env = dict(
        os.environ,
        REDIS_URL=results_url,
        BROKER_URL=broker_url,
        DATABASE_URL=database,
        INTEGRATIONS_PROVIDERS_FILE=str(providers),
    )
    app = Celery("client", broker=broker_url, backend=results_url)
    app.conf.update(accept_content=["json"], result_accept_content=["json"])
    key = unique("paused")
    kwargs = {"payload": {"method": "POST", "path": "/v1/payments?delay=1.5"}, "idempotency_key": key}

    with running_worker(
        app, env, ["integrations.paused"], tmp_path, concurrency=1, loglevel="INFO"
    ) as worker:
        result = app.send_task("integrations.paused.request", kwargs=kwargs, queue="integrations.paused")
        deadline = time.monotonic() + 30
        while not simulator.calls(idempotency_key=key):  # the call is in flight (1.5 s): pause Redis now
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.02)
        redis.Redis.from_url(results_url).execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
        value = result.get(timeout=60)
        log = worker.log.read_text()
    app.close()

    assert (value["status"], value["attempts"], value["replayed"]) == ("succeeded", 1, False)
    assert "time limit" not in log.lower(), log[-3000:]
    assert len(simulator.calls(idempotency_key=key)) == 1
    ledger = Ledger.connect(database)
    record = ledger.find("paused", key)
    ledger.engine.dispose()
    assert record is not None and record.status is OperationStatus.SUCCEEDED
