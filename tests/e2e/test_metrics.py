"""What operators scrape and read: a real worker counts what it does into its metrics folder, and
``integrations metrics serve`` (a real process) serves those counts with the fleet-wide gauges read from
Redis, the ledger and the broker; ``integrations status`` shows the same fleet as a catalog."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from celery import Celery
from celery.result import AsyncResult
from prometheus_client.parser import text_string_to_metric_families

from integrations.ledger import schema
from integrations.ledger.store import Ledger
from integrations.metrics import SERVED, WEBHOOKS_RECEIVED_TOTAL
from integrations.providers import load_providers
from integrations.resilience.breaker import SharedBreaker
from integrations.resilience.scripts import redis_client
from integrations.testing.provider import ProviderSimulator
from tasks.worker import running_worker
from tests.conftest import TEST_REDIS_DB, with_redis_db
from tests.e2e.conftest import closed_port, unique

PROVIDERS = """
[providers.metered]
adapter = "http"
base_url = "{url}"
description = "Payments for the shop"
owner = "payments-team"
cost_per_call = 0.25
rate_limit = "600/m"
[providers.metered.retry]
max_attempts = 3
backoff_base = 0.05
backoff_max = 0.1

[providers.held]
adapter = "http"
base_url = "{url}"
"""

CLI = str(Path(sys.executable).with_name("integrations"))
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Fleet:
    app: Celery
    env: dict[str, str]
    providers_file: Path
    folder: Path


@pytest.fixture
def fleet(redis_server_url: str, simulator: ProviderSimulator, tmp_path: Path) -> Iterator[Fleet]:
    database = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    schema.upgrade(database)
    providers = tmp_path / "providers.toml"
    providers.write_text(PROVIDERS.format(url=simulator.url))
    redis_url = with_redis_db(redis_server_url, TEST_REDIS_DB + 2)
    env = dict(
        os.environ,
        REDIS_URL=redis_url,
        DATABASE_URL=database,
        INTEGRATIONS_PROVIDERS_FILE=str(providers),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    env.pop("BROKER_URL", None)
    app = Celery("client", broker=redis_url, backend=redis_url)
    app.conf.update(accept_content=["json"], result_accept_content=["json"])
    app.backend.client.flushdb()
    yield Fleet(app, env, providers, tmp_path)
    app.backend.client.flushdb()
    app.close()


def send(fleet: Fleet, provider: str, key: str | None, payload: Any) -> AsyncResult:
    kwargs: dict[str, Any] = {"payload": payload}
    if key is not None:
        kwargs["idempotency_key"] = key
    return fleet.app.send_task(
        f"integrations.{provider}.request", kwargs=kwargs, queue=f"integrations.{provider}"
    )


def ended(result: AsyncResult) -> None:
    result.get(timeout=30, propagate=False)


def scrape(fleet: Fleet, *options: str) -> Samples:
    port = closed_port()
    command = [CLI, "metrics", "serve", "--port", str(port), *options]
    exporter = subprocess.Popen(command, env=fleet.env, cwd=fleet.folder, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                break
            except requests.ConnectionError:
                if exporter.poll() is not None or time.monotonic() > deadline:
                    assert exporter.stderr is not None
                    raise AssertionError(exporter.stderr.read().decode()) from None
                time.sleep(0.1)  # the exporter is starting: polled, with a deadline
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_the_exporter_serves_what_the_workers_did_and_the_fleets_state(
    fleet: Fleet, simulator: ProviderSimulator
) -> None:
    providers = load_providers(fleet.providers_file)
    client = redis_client(fleet.env["REDIS_URL"])
    held = providers["held"]
    SharedBreaker(client, "held", held.breaker, probe_ttl=held.lease_seconds).force_open()
    simulator.set_rate_limit(100, window=60, headers=True)  # the provider reports its quota
    ok, retried, rejected = unique("ok"), unique("retried"), unique("rejected")

    held_key = unique("held")
    with running_worker(fleet.app, fleet.env, ["integrations.metered", "integrations.held"], fleet.folder):
        ended(send(fleet, "metered", ok, {"method": "POST", "path": "/v1/a"}))
        ended(send(fleet, "metered", retried, {"method": "POST", "path": "/v1/b?fail=1&fail_status=503"}))
        ended(send(fleet, "metered", rejected, {"method": "POST", "path": "/v1/c?status=400"}))
        ended(send(fleet, "metered", ok, {"method": "POST", "path": "/v1/a"}))  # replayed from the ledger
        ended(send(fleet, "metered", ok, {"method": "POST", "path": "/v1/other"}))  # a conflict
        ended(send(fleet, "metered", None, {"method": "POST", "path": "/v1/a"}))  # invalid: no key
        send(fleet, "held", held_key, {"method": "POST", "path": "/v1/d"})
        ledger = Ledger.connect(fleet.env["DATABASE_URL"])
        deadline = time.monotonic() + 30
        while (record := ledger.find("held", held_key)) is None or record.waiting != "breaker_forced_open":
            assert time.monotonic() < deadline, "the held operation never waited on its breaker"
            time.sleep(0.05)
        ledger.dispose()
    # The workers are gone: their counts stay in the folder. A message nobody consumes yet waits in its queue.
    send(fleet, "metered", unique("later"), {"method": "POST", "path": "/v1/a"})
    samples = scrape(fleet)

    # Named by host and process id: worker containers sharing one metrics volume keep apart.
    files = list((fleet.folder / "metrics").glob("*.db"))
    host = socket.gethostname().replace("_", "-")
    assert files and all(f"_{host}-" in file.name for file in files), [file.name for file in files]
    served = {name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum") for name, _ in samples}
    expected = set(SERVED) - {WEBHOOKS_RECEIVED_TOTAL}  # the receiver's (tests/e2e/test_webhook_receiver.py)
    assert served >= expected, expected - served
    operations = "integrations_operations_total"
    by_outcome = {
        outcome: value(samples, operations, provider="metered", operation="request", outcome=outcome)
        for outcome in ("succeeded", "failed", "replayed", "conflict", "invalid")
    }
    assert by_outcome == {"succeeded": 2, "failed": 1, "replayed": 1, "conflict": 1, "invalid": 1}
    attempts = "integrations_attempts_total"
    assert value(samples, attempts, provider="metered", operation="request", result="succeeded") == 2
    assert (
        value(samples, attempts, provider="metered", operation="request", result="provider_unavailable") == 1
    )
    assert value(samples, attempts, provider="metered", operation="request", result="provider_rejected") == 1
    durations = "integrations_attempt_duration_seconds_count"
    assert value(samples, durations, provider="metered", operation="request") == 4
    assert value(samples, "integrations_cost_total", provider="metered") == pytest.approx(4 * 0.25)
    assert value(samples, "integrations_deferrals_total", provider="held", reason="breaker_forced_open") >= 1
    # Fleet-wide, read at the scrape:
    assert value(samples, "integrations_breaker_state", provider="held") == 2
    assert value(samples, "integrations_breaker_state", provider="metered") == 0
    assert value(samples, "integrations_dead_letters", provider="metered") == 2  # rejected, invalid
    usage = value(samples, "integrations_rate_limit_usage_ratio", provider="metered", source="limit")
    assert usage == pytest.approx(4 / 600)  # four calls let through, of 600 a minute
    quota = value(samples, "integrations_rate_limit_usage_ratio", provider="metered", source="quota")
    assert 0 < quota <= 4 / 100
    assert value(samples, "integrations_queue_depth", queue="integrations.metered") == 1

    without_fleet = scrape(fleet, "--no-fleet")
    assert value(without_fleet, "integrations_breaker_state", provider="held") == 0
    assert not [key for key in without_fleet if key[0] == "integrations_breaker_state"]


def test_status_is_one_row_per_provider_with_its_health(fleet: Fleet, simulator: ProviderSimulator) -> None:
    providers = load_providers(fleet.providers_file)
    held = providers["held"]
    SharedBreaker(redis_client(fleet.env["REDIS_URL"]), "held", held.breaker, probe_ttl=10).force_open(300)
    with running_worker(fleet.app, fleet.env, ["integrations.metered"], fleet.folder):
        for index in range(4):
            ended(send(fleet, "metered", unique(f"s{index}"), {"method": "POST", "path": "/v1/a"}))
        ended(send(fleet, "metered", unique("bad"), {"method": "POST", "path": "/v1/a?status=400"}))

    out = subprocess.run(
        [CLI, "status", "--json"],
        env=fleet.env,
        cwd=fleet.folder,
        capture_output=True,
        text=True,
        check=True,
    )
    rows = {row["provider"]: row for row in json.loads(out.stdout)}
    metered, held_row = rows["metered"], rows["held"]
    assert (metered["description"], metered["owner"], metered["adapter"]) == (
        "Payments for the shop",
        "payments-team",
        "http",
    )
    assert (metered["succeeded"], metered["failed"], metered["dead"], metered["dead_letters"]) == (4, 1, 0, 1)
    assert metered["success_rate"] == pytest.approx(0.8)
    assert metered["p95_seconds"] is not None and metered["p95_seconds"] >= 0
    assert metered["rate_limit"] == "10/s" and metered["usage"] == pytest.approx(5 / 600)
    assert (metered["breaker"], metered["health"]) == ("closed", "degraded")  # 80 % < 90 %, 5 ended
    assert metered["queue"] == "integrations.metered" and metered["queue_depth"] in (0, None)
    assert (held_row["breaker"], held_row["health"]) == ("forced_open", "down")
    assert held_row["breaker_until"] is not None and "forced open" in held_row["reason"]

    table = subprocess.run(
        [CLI, "status"], env=fleet.env, cwd=fleet.folder, capture_output=True, text=True, check=True
    ).stdout
    assert "held  down: breaker forced open by an operator until" in table
