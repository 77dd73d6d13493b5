"""Shared fixtures: real Redis, real SQL (SQLite and PostgreSQL), a local HTTP server playing the provider.

Redis: ``REDIS_URL`` when it answers, else a private redis-server; tests use database ``TEST_REDIS_DB``
(default 13) and flush it before and after. PostgreSQL: ``TEST_POSTGRES_URL`` names a server on which a
database of the run's own is created and dropped; unset, PostgreSQL tests skip; set but unreachable, they fail.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy import delete
from sqlalchemy.engine import make_url

from integrations.ledger import schema
from integrations.ledger.engine import database_url
from integrations.ledger.models import Operation, OperatorAction, WebhookEvent
from integrations.ledger.store import Ledger
from integrations.testing.provider import ProviderSimulator
from integrations.testing.redis_server import redis_for

TEST_REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "13"))


def with_redis_db(url: str, db: int) -> str:
    return make_url(url).set(database=str(db)).render_as_string(hide_password=False)


def pytest_report_header() -> list[str]:
    """What the run talks to, said once instead of once per skipped test."""
    postgres = os.environ.get("TEST_POSTGRES_URL")
    lines = [
        f"PostgreSQL: {make_url(postgres).render_as_string(hide_password=True)} (TEST_POSTGRES_URL)"
        if postgres
        else "PostgreSQL: TEST_POSTGRES_URL is not set, so the PostgreSQL variants of the tests skip"
    ]
    promtool = shutil.which("promtool")
    lines.append(
        f"promtool: {promtool}"
        if promtool
        else "promtool: not found, so the alert rules are not checked by it (Debian package: prometheus)"
    )
    return lines


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    with redis_for(os.environ.get("REDIS_URL")) as (url, _private):
        yield url


@pytest.fixture(scope="session")
def redis_url(redis_server_url: str) -> Iterator[str]:
    url = with_redis_db(redis_server_url, TEST_REDIS_DB)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A PostgreSQL database of its own, named ``prefix`` and a random suffix, created on TEST_POSTGRES_URL's
    server and dropped at the end; the test is skipped without TEST_POSTGRES_URL."""
    base = os.environ.get("TEST_POSTGRES_URL")
    if not base:
        pytest.skip("TEST_POSTGRES_URL is not set: PostgreSQL tests skipped")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    plain = database_url(base).replace("postgresql+psycopg://", "postgresql://")
    try:
        admin = psycopg.connect(plain, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        pytest.fail(f"TEST_POSTGRES_URL={base} is set but PostgreSQL cannot be reached: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(database_url(base)).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with psycopg.connect(plain, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A PostgreSQL database of this run's own, created on TEST_POSTGRES_URL's server and dropped after."""
    with postgres_database("integrations_test") as url:
        yield url


@pytest.fixture(scope="session")
def postgres_ledger_url(postgres_server_url: str) -> str:
    schema.upgrade(postgres_server_url)
    return postgres_server_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty ledger on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        schema.upgrade(url)
        yield url
        return
    url = request.getfixturevalue("postgres_ledger_url")
    yield url
    ledger = Ledger.connect(url)
    with ledger.engine.begin() as connection:
        connection.execute(delete(Operation.__table__))
        connection.execute(delete(OperatorAction.__table__))
        connection.execute(delete(WebhookEvent))
    ledger.dispose()


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    ledger = Ledger.connect(ledger_url)
    yield ledger
    ledger.dispose()


@pytest.fixture(scope="session")
def simulator_server() -> Iterator[ProviderSimulator]:
    with ProviderSimulator() as simulator:
        yield simulator


@pytest.fixture
def simulator(simulator_server: ProviderSimulator) -> ProviderSimulator:
    """The provider simulator, with no recorded calls and no outage."""
    simulator_server.reset()
    return simulator_server


@pytest.fixture
def shared_redis(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the test Redis as the breaker and throttle use it (decoded responses)."""
    from integrations.resilience.scripts import redis_client

    client = redis_client(redis_url)
    yield client
    client.close()


@pytest.fixture
def provider_name() -> str:
    """A provider name of the test's own, so its Redis keys are its own."""
    return f"p-{uuid.uuid4().hex[:10]}"
