"""What one attempt costs in round trips, counted so that none creeps back: at most two ledger statements
(one that finds, starts or claims; one that finishes) and two Redis round trips for all the guards
together (their admission before the call, their record after it), on SQLite and PostgreSQL alike.

Statements are counted as the database driver runs them (SQLite's trace callback, a counting psycopg
cursor), where they are counted whichever way they go there: the attempt's two are run on the driver's
cursor, every other through SQLAlchemy. Redis round trips through a connection that counts what it sends (a
pipeline or a script is one send)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import redis
import requests
from sqlalchemy import Engine, event

from integrations.adapters.http import HttpAdapter
from integrations.ledger.models import OperationStatus
from integrations.ledger.store import Ledger
from integrations.message import Delivery
from integrations.outcome import Defer, Done, Outcome, Retry
from integrations.pipeline import OperationRunner
from integrations.resilience.breaker import SharedBreaker
from integrations.resilience.guards import SharedGuard
from integrations.runtime import build_runner
from integrations.testing.provider import ProviderSimulator
from tests.clock import Clock
from tests.providers import provider_settings


@dataclass
class Costs:
    statements: list[str] = field(default_factory=list)
    round_trips: int = 0

    def reset(self) -> None:
        self.statements.clear()
        self.round_trips = 0

    @property
    def seen(self) -> tuple[list[str], int]:
        """The statements' verbs, in order, and the Redis round trips."""
        return [statement.split(None, 1)[0].upper() for statement in self.statements], self.round_trips


@dataclass
class Setup:
    runner: OperationRunner
    costs: Costs
    clock: Clock
    client: redis.Redis

    def send(self, key: str, path: str = "/v1/x") -> Outcome:
        """One delivery, counted from a clean slate."""
        self.costs.reset()
        kwargs = {"payload": {"method": "POST", "path": path}, "idempotency_key": key}
        return self.runner.run(Delivery("request", kwargs, message_id=f"msg-{key}"))


def counting(statements: list[str]) -> Callable[[Any, Any], None]:
    """A listener of new connections that makes their driver note every statement it runs in
    ``statements``."""

    def count(driver: Any, _record: Any) -> None:
        if isinstance(driver, sqlite3.Connection):
            driver.set_trace_callback(statements.append)
            return

        class CountingCursor(psycopg.Cursor[Any]):
            def execute(self, query: Any, params: Any = None, **options: Any) -> Any:
                statements.append(str(query))
                return super().execute(query, params, **options)

        driver.cursor_factory = CountingCursor

    return count


@contextmanager
def counted_setup(
    ledger_url: str, redis_url: str, simulator: ProviderSimulator, name: str, **table: Any
) -> Iterator[Setup]:
    costs = Costs()

    class CountingConnection(redis.Connection):
        def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            costs.round_trips += 1
            super().send_packed_command(command, check_health)

    client = redis.Redis.from_url(redis_url, decode_responses=True, connection_class=CountingConnection)
    clock = Clock(datetime(2030, 1, 1, tzinfo=UTC))
    ledger = Ledger.connect(ledger_url, clock=clock)
    retry = {"max_attempts": 3, "backoff_base": 0.1, "backoff_max": 0.5}
    provider = provider_settings(name, base_url=simulator.url, headroom=0, retry=retry, **table)
    runner = build_runner(
        provider,
        HttpAdapter(provider, requests.Session()),
        ledger,
        client,
        clock=clock,
        clock_ms=clock.ms,
    )

    count = counting(costs.statements)
    event.listen(Engine, "connect", count)  # every engine: the ledger has two
    setup = Setup(runner, costs, clock, client)
    # Connections made and scripts loaded once, as in a worker that has run before.
    assert isinstance(setup.send("warm-up"), Done)
    try:
        yield setup
    finally:
        event.remove(Engine, "connect", count)
        ledger.dispose()
        client.close()


@pytest.fixture
def setup(
    ledger_url: str, redis_url: str, simulator: ProviderSimulator, provider_name: str
) -> Iterator[Setup]:
    with counted_setup(ledger_url, redis_url, simulator, provider_name) as made:
        yield made


def test_a_first_attempt_that_succeeds_costs_two_statements_and_two_round_trips(setup: Setup) -> None:
    assert isinstance(setup.send("order-1"), Done)
    assert setup.costs.seen == (["INSERT", "UPDATE"], 2)


def test_each_attempt_of_a_retried_operation_costs_the_same(
    setup: Setup, simulator: ProviderSimulator
) -> None:
    first = setup.send("order-2", path="/v1/x?fail=1")
    assert isinstance(first, Retry)
    assert setup.costs.seen == (["INSERT", "UPDATE"], 2)

    setup.clock.advance(first.delay)
    second = setup.send("order-2", path="/v1/x?fail=1")
    assert isinstance(second, Done) and second.result["attempts"] == 2
    assert setup.costs.seen == (["INSERT", "UPDATE"], 2)  # the insert claims the queued row
    assert [call.status for call in simulator.calls(idempotency_key="order-2")] == [503, 200]


def test_a_replay_costs_two_statements_and_no_round_trip(setup: Setup) -> None:
    assert isinstance(setup.send("order-3"), Done)
    again = setup.send("order-3")
    assert isinstance(again, Done) and again.result["replayed"]
    assert setup.costs.seen == (["INSERT", "SELECT"], 0)


def test_a_deferral_by_an_open_breaker_gives_the_attempt_back_in_two_statements_and_one_round_trip(
    setup: Setup,
) -> None:
    provider = setup.runner.provider
    SharedBreaker(setup.client, provider.name, provider.breaker, probe_ttl=10).force_open()
    deferred = setup.send("order-4")
    assert isinstance(deferred, Defer) and deferred.reason == "breaker_forced_open"
    assert setup.costs.seen == (["INSERT", "UPDATE"], 1)
    record = setup.runner.ledger.find(provider.name, "order-4")
    assert record is not None
    assert (record.status, record.attempts, record.waiting) == (
        OperationStatus.QUEUED,
        0,
        "breaker_forced_open",
    )


def test_a_throttled_attempt_waits_in_two_statements_and_one_round_trip(
    ledger_url: str, redis_url: str, simulator: ProviderSimulator, provider_name: str
) -> None:
    with counted_setup(ledger_url, redis_url, simulator, provider_name, rate_limit="1/m", burst=1) as setup:
        # the warm-up took the one token of the minute
        deferred = setup.send("order-5")
        assert isinstance(deferred, Defer) and deferred.reason == "throttled"
        assert setup.costs.seen == (["INSERT", "UPDATE"], 1)


def test_an_instrumented_ledger_shows_both_statements_of_an_attempt(setup: Setup) -> None:
    """Who listens to SQLAlchemy's statement events (an APM's instrumentation) sees the attempt's two
    statements, which then go through SQLAlchemy; the cost is the same."""
    seen: list[str] = []

    def note(_connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement.split(None, 1)[0].upper())

    event.listen(Engine, "before_cursor_execute", note)
    try:
        assert isinstance(setup.send("order-7"), Done)
    finally:
        event.remove(Engine, "before_cursor_execute", note)
    assert seen == ["INSERT", "UPDATE"]
    assert setup.costs.seen == (["INSERT", "UPDATE"], 2)


def test_a_429_that_pauses_the_fleet_still_costs_two_round_trips(
    setup: Setup, simulator: ProviderSimulator
) -> None:
    outcome = setup.send("order-6", path="/v1/x?status=429")
    assert isinstance(outcome, Retry)
    assert setup.costs.seen == (["INSERT", "UPDATE"], 2)
    [guard] = setup.runner.guards
    assert isinstance(guard, SharedGuard) and guard.throttle.paused_for() > 0  # every worker holds off
