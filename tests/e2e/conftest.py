"""A real Celery worker process per ledger backend, fed through a plain Celery client app that knows
nothing of this project (as an application would), against the provider simulator."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from celery import Celery
from celery.result import AsyncResult
from kombu import Connection

from integrations.ledger import schema
from integrations.ledger.store import Ledger
from integrations.testing.provider import ProviderSimulator
from tasks.worker import WorkerProcess, running_worker
from tests.conftest import TEST_REDIS_DB, with_redis_db
from tests.fakes.hubspot import FakeHubSpot

CANARY = "sk_live_canary_" + uuid.uuid4().hex  # a secret that must be found nowhere but at the provider


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def providers_toml(simulator_url: str, hubspot_url: str) -> str:
    return f"""
[providers.sim]
adapter = "http"
base_url = "{simulator_url}"
timeout = 1.0
[providers.sim.breaker]  # these tests are about the core; the breaker's own are elsewhere
fail_max = 1000
min_calls = 1000
[providers.sim.retry]
max_attempts = 3
backoff_base = 0.05
backoff_max = 0.2

[providers.slow]
adapter = "http"
base_url = "{simulator_url}"
timeout = 0.5
[providers.slow.retry]
max_attempts = 2
backoff_base = 0.05
backoff_max = 0.1

[providers.tuned]
adapter = "http"
base_url = "{simulator_url}"
rate_limit = "100/s"

[providers.fragile]
adapter = "http"
base_url = "{simulator_url}"

[providers.secured]
adapter = "http"
base_url = "{simulator_url}"
[providers.secured.auth]
type = "bearer"
secret = "env:INTEGRATIONS_TEST_CANARY"

[providers.crm]
adapter = "hubspot"
base_url = "{hubspot_url}"
[providers.crm.auth]
type = "bearer"
secret = "env:INTEGRATIONS_TEST_CANARY"
[providers.crm.retry]
max_attempts = 3
backoff_base = 0.05
backoff_max = 0.2

[providers.down]
adapter = "http"
base_url = "http://127.0.0.1:{closed_port()}"
timeout = 1.0
[providers.down.retry]
max_attempts = 2
backoff_base = 0.05
backoff_max = 0.1
"""


@dataclass
class Worker:
    """A running ``celery worker`` and what a test needs to talk to it."""

    process: WorkerProcess
    env: dict[str, str]
    app: Celery
    ledger: Ledger

    def send(
        self, key: str | None, payload: dict[str, Any], provider: str = "sim", **kwargs: Any
    ) -> AsyncResult:
        message: dict[str, Any] = {"payload": payload, **kwargs}
        if key is not None:
            message["idempotency_key"] = key
        return self.app.send_task(
            f"integrations.{provider}.request", kwargs=message, queue=f"integrations.{provider}"
        )


# The queues of the providers the e2e worker serves (those of `providers_toml`).
PROVIDER_QUEUES = [
    "integrations.sim",
    "integrations.slow",
    "integrations.tuned",
    "integrations.fragile",
    "integrations.secured",
    "integrations.crm",
    "integrations.down",
]


@pytest.fixture(scope="session")
def hubspot_server() -> Iterator[FakeHubSpot]:
    with FakeHubSpot(CANARY) as server:
        yield server


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def worker(
    request: pytest.FixtureRequest,
    redis_server_url: str,
    simulator_server: ProviderSimulator,
    hubspot_server: FakeHubSpot,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Worker]:
    folder = tmp_path_factory.mktemp(f"worker-{request.param}")
    if request.param == "sqlite":
        database = f"sqlite:///{folder / 'ledger.sqlite3'}"
        schema.upgrade(database)
        redis_db = TEST_REDIS_DB
    else:
        database = request.getfixturevalue("postgres_ledger_url")
        redis_db = TEST_REDIS_DB + 1
    redis_url = with_redis_db(redis_server_url, redis_db)
    providers = folder / "providers.toml"
    providers.write_text(providers_toml(simulator_server.url, hubspot_server.url))
    env = dict(
        os.environ,
        REDIS_URL=redis_url,
        DATABASE_URL=database,
        INTEGRATIONS_PROVIDERS_FILE=str(providers),
        PYTHONUNBUFFERED="1",
        INTEGRATIONS_TEST_CANARY=CANARY,
    )
    env.pop("BROKER_URL", None)
    app = Celery("client", broker=redis_url, backend=redis_url)
    app.conf.update(
        accept_content=["json"], result_accept_content=["json"], broker_connection_retry_on_startup=True
    )
    app.backend.client.flushdb()
    ledger = Ledger.connect(database)
    try:
        with running_worker(
            app,
            env,
            PROVIDER_QUEUES,
            folder,
            loglevel="INFO",
        ) as process:
            yield Worker(process, env, app, ledger)
    finally:
        ledger.dispose()
        app.backend.client.flushdb()
        app.close()


@pytest.fixture
def sim(worker: Worker, simulator_server: ProviderSimulator) -> ProviderSimulator:
    simulator_server.reset()
    return simulator_server


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# RabbitMQ: TEST_RABBITMQ_URL names a server (a user with the right to be given a virtual host); unset, the
# local one with its default user is used when it answers, and the RabbitMQ tests skip when it does not. A
# virtual host of the run's own is made per queue type with rabbitmqctl, which must reach that server's node.
RABBITMQ_DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672//"
QUEUE_TYPES = ("classic", "quorum")  # a queue of one name cannot be both: one virtual host each


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "rabbitmq: needs RabbitMQ (TEST_RABBITMQ_URL) and its rabbitmqctl")


def _rabbitmqctl(*commands: list[str]) -> None:
    """Run each ``rabbitmqctl`` command at once (each start costs a second or two), and fail naming the
    ones that failed."""
    started = [
        (
            command,
            subprocess.Popen(["rabbitmqctl", *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
        )
        for command in commands
    ]
    failed = []
    for command, process in started:
        out, _ = process.communicate(timeout=60)
        if process.returncode != 0:
            failed.append(f"rabbitmqctl {' '.join(command)}: {out.decode(errors='replace').strip()}")
    if failed:
        raise RuntimeError("\n".join(failed))


@pytest.fixture(scope="session")
def rabbitmq_vhosts() -> Iterator[dict[str, str]]:
    """A URL per queue type, each on a virtual host of this run's own, deleted after the run."""
    base = os.environ.get("TEST_RABBITMQ_URL")
    url = urlsplit(base or RABBITMQ_DEFAULT_URL)
    try:
        with Connection(url.geturl(), connect_timeout=3) as connection:
            connection.connect()
    except OSError as exc:
        if base:
            pytest.fail(
                f"TEST_RABBITMQ_URL (at {url.hostname}:{url.port}) is set but RabbitMQ cannot be reached: "
                f"{exc}"
            )
        pytest.skip(
            f"no RabbitMQ answers at {url.hostname}:{url.port}: the RabbitMQ tests skip (set "
            "TEST_RABBITMQ_URL)"
        )
    if shutil.which("rabbitmqctl") is None:
        (pytest.fail if base else pytest.skip)(
            "rabbitmqctl is not on PATH: the RabbitMQ tests cannot make their virtual hosts"
        )
    user = url.username or "guest"
    names = {kind: f"integrations-test-{uuid.uuid4().hex[:10]}-{kind}" for kind in QUEUE_TYPES}
    _rabbitmqctl(*(["add_vhost", name] for name in names.values()))
    try:
        _rabbitmqctl(*(["set_permissions", "-p", name, user, ".*", ".*", ".*"] for name in names.values()))
        yield {kind: url._replace(path=f"/{name}").geturl() for kind, name in names.items()}
    finally:
        _rabbitmqctl(*(["delete_vhost", name] for name in names.values()))
