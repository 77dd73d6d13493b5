"""The breaker and throttle as guards of the pipeline: real Redis, real ledger, the simulator over HTTP.

Two runners on one Redis stand for two workers. One clock drives the ledger, breaker and throttle."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import requests

from integrations import keys
from integrations.adapters.http import HttpAdapter
from integrations.guard import INLINE_WAIT
from integrations.ledger.models import OperationStatus
from integrations.ledger.store import Ledger
from integrations.message import Delivery
from integrations.outcome import Defer, Done, Failed, Outcome, Retry
from integrations.pipeline import OperationRunner
from integrations.providers import ProviderSettings
from integrations.resilience.breaker import BreakerState, SharedBreaker
from integrations.resilience.scripts import Script, redis_client
from integrations.resilience.throttle import Throttle
from integrations.runtime import build_runner
from integrations.testing.provider import ProviderSimulator
from tests.clock import Clock
from tests.providers import provider_settings


class Fleet:
    """Runners for one provider, as separate workers would have them."""

    def __init__(
        self, provider: ProviderSettings, ledger_url: str, client: redis.Redis, clock: Clock
    ) -> None:
        self.provider, self.client, self.clock = provider, client, clock
        self.ledger = Ledger.connect(ledger_url, clock=clock)
        self.breaker = SharedBreaker(client, provider.name, provider.breaker, probe_ttl=10, clock=clock.ms)
        self.throttle = Throttle(client, provider, clock=clock.ms)

    def runner(self, client: redis.Redis | None = None) -> OperationRunner:
        adapter = HttpAdapter(self.provider, requests.Session())
        return build_runner(
            self.provider,
            adapter,
            self.ledger,
            client or self.client,
            clock=self.clock,
            clock_ms=self.clock.ms,
        )


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2030, 1, 1, tzinfo=UTC))


@pytest.fixture
def make_fleet(
    ledger_url: str, shared_redis: redis.Redis, provider_name: str, simulator: ProviderSimulator, clock: Clock
) -> Iterator[Any]:
    fleets: list[Fleet] = []

    def make(**table: Any) -> Fleet:
        retry = {"max_attempts": 5, "backoff_base": 0.1, "backoff_max": 0.5}
        defaults = {"base_url": simulator.url, "timeout": 2.0, "headroom": 0, "retry": retry}
        fleet = Fleet(provider_settings(provider_name, **(defaults | table)), ledger_url, shared_redis, clock)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.ledger.dispose()


def send(runner: OperationRunner, key: str, path: str = "/v1/x", message_id: str | None = None) -> Outcome:
    kwargs = {"payload": {"method": "POST", "path": path}, "idempotency_key": key}
    return runner.run(Delivery("request", kwargs, message_id=message_id or f"msg-{key}"))


def test_an_open_breaker_defers_without_a_call_or_an_attempt_and_says_why(
    make_fleet: Any, simulator: ProviderSimulator, clock: Clock
) -> None:
    fleet = make_fleet(breaker={"fail_max": 2, "reset_timeout": 30})
    worker_a, worker_b = fleet.runner(), fleet.runner()
    assert isinstance(send(worker_a, "k1", "/v1/x?status=503"), Retry)
    assert isinstance(send(worker_b, "k2", "/v1/x?status=503"), Retry)
    assert fleet.breaker.status().state == BreakerState.OPEN
    calls = len(simulator.calls())

    deferred = send(worker_a, "k3")
    assert isinstance(deferred, Defer) and deferred.reason == "breaker_open" and deferred.delay == 30
    clock.advance(1)  # k1's backoff is over, but the breaker is still open: no attempt is used
    again = send(worker_b, "k1", "/v1/x?status=503")
    assert isinstance(again, Defer) and again.reason == "breaker_open"
    assert len(simulator.calls()) == calls
    waiting = fleet.ledger.find(fleet.provider.name, "k3")
    assert waiting is not None and (waiting.status, waiting.attempts) == (OperationStatus.QUEUED, 0)
    assert waiting.waiting == "breaker_open" and waiting.next_attempt_at == clock.now - timedelta(
        seconds=1
    ) + timedelta(seconds=30)
    first = fleet.ledger.find(fleet.provider.name, "k1")
    assert first is not None and first.attempts == 1 and first.waiting == "breaker_open"


def test_after_reset_timeout_one_probe_goes_and_its_success_closes_the_breaker(
    make_fleet: Any, simulator: ProviderSimulator, clock: Clock
) -> None:
    fleet = make_fleet(breaker={"fail_max": 1, "reset_timeout": 30})
    worker_a, worker_b = fleet.runner(), fleet.runner()
    assert isinstance(send(worker_a, "k1", "/v1/x?status=503"), Retry)
    clock.advance(30)
    assert fleet.breaker.admit("probe").probe  # another worker's probe is in flight
    waiting = send(worker_b, "k2")
    assert isinstance(waiting, Defer) and waiting.reason == "breaker_half_open" and waiting.delay <= 1
    fleet.breaker.record("probe", failed=False)  # ... and it succeeded
    assert fleet.breaker.status().state == BreakerState.CLOSED
    clock.advance(1)
    assert isinstance(send(worker_b, "k2"), Done)


@pytest.mark.parametrize("path", ["/v1/x?status=422", "/v1/x?status=404", "/v1/x?fail=1&fail_status=429"])
def test_rejections_and_429s_never_trip_the_breaker(make_fleet: Any, path: str) -> None:
    fleet = make_fleet(breaker={"fail_max": 1})
    runner = fleet.runner()
    for i in range(3):
        send(runner, f"k{i}", path)
    assert fleet.breaker.status().state == BreakerState.CLOSED


def test_a_slow_call_counts_as_a_failure(make_fleet: Any) -> None:
    fleet = make_fleet(breaker={"fail_max": 1, "slow_call": 0.05})
    assert isinstance(send(fleet.runner(), "k1", "/v1/x?delay=0.1"), Done)
    assert fleet.breaker.status().state == BreakerState.OPEN


def test_a_429_pauses_the_provider_for_every_worker(
    make_fleet: Any, simulator: ProviderSimulator, clock: Clock
) -> None:
    fleet = make_fleet()
    worker_a, worker_b = fleet.runner(), fleet.runner()
    assert isinstance(send(worker_a, "k1", "/v1/x?fail=1&fail_status=429&retry_after=3"), Retry)
    held = send(worker_b, "k2")
    assert isinstance(held, Defer) and held.reason == "paused" and held.delay == 3
    assert len(simulator.calls()) == 1
    clock.advance(3)
    assert isinstance(send(worker_b, "k2"), Done)


def test_a_spent_quota_in_the_headers_pauses_before_a_429(
    make_fleet: Any, simulator: ProviderSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    simulator.set_rate_limit(2, window=5.0, headers=True)
    fleet = make_fleet()
    runner = fleet.runner()
    with caplog.at_level(logging.WARNING, logger="integrations.resilience"):
        assert isinstance(send(runner, "k1"), Done)
        assert isinstance(send(runner, "k2"), Done)  # X-RateLimit-Remaining: 0
        held = send(runner, "k3")
    assert isinstance(held, Defer) and held.reason == "paused" and 0 < held.delay <= 5
    assert [c.status for c in simulator.calls()] == [200, 200]  # no 429 was needed
    warnings = [r.getMessage() for r in caplog.records if "rate limit used" in r.getMessage()]
    assert len(warnings) == 1  # one per window, although two calls were above 80 %


def test_per_account_buckets_hold_one_account_back_and_not_another(
    make_fleet: Any, simulator: ProviderSimulator
) -> None:
    fleet = make_fleet(per_key={"field": "json.account", "rate_limit": "1/m", "burst": 1})
    runner = fleet.runner()

    def pay(key: str, account: str) -> Outcome:
        payload = {"method": "POST", "path": "/v1/x", "json": {"account": account}}
        return runner.run(Delivery("request", {"payload": payload, "idempotency_key": key}, message_id=key))

    assert isinstance(pay("k1", "acct_1"), Done)
    held = pay("k2", "acct_1")
    assert isinstance(held, Defer) and held.reason == "throttled" and held.delay == 60 - INLINE_WAIT
    assert isinstance(pay("k3", "acct_2"), Done)


def test_when_redis_is_down_the_default_is_to_wait(make_fleet: Any, simulator: ProviderSimulator) -> None:
    down = redis_client("redis://127.0.0.1:1/0")
    outcome = send(make_fleet().runner(client=down), "k1")
    assert isinstance(outcome, Defer) and outcome.reason == "redis_unavailable"
    assert simulator.calls() == []


def test_when_redis_is_down_a_provider_may_choose_to_be_called(
    make_fleet: Any, simulator: ProviderSimulator
) -> None:
    down = redis_client("redis://127.0.0.1:1/0")
    outcome = send(make_fleet(when_redis_down="call").runner(client=down), "k1")
    assert isinstance(outcome, Done)
    assert len(simulator.calls()) == 1


def test_a_corrected_message_deferred_by_a_guard_later_runs_as_itself(
    make_fleet: Any, simulator: ProviderSimulator, clock: Clock
) -> None:
    fleet = make_fleet()
    runner = fleet.runner()
    invalid = runner.run(Delivery("request", {"payload": {"method": "POST"}, "idempotency_key": "k1"}))
    assert isinstance(invalid, Failed)
    fleet.breaker.force_open()
    deferred = send(runner, "k1")
    assert isinstance(deferred, Defer) and deferred.reason == "breaker_forced_open"
    waiting = fleet.ledger.find(fleet.provider.name, "k1")
    assert waiting is not None and (waiting.status, waiting.attempts, waiting.error) == (
        OperationStatus.QUEUED,
        0,
        None,
    )
    assert waiting.payload == {"method": "POST", "path": "/v1/x"}
    fleet.breaker.close()
    clock.advance(10)
    done = send(runner, "k1")
    assert isinstance(done, Done) and done.result["attempts"] == 1
    assert len(simulator.calls()) == 1


def test_a_probe_that_another_guard_holds_back_is_given_up(make_fleet: Any, clock: Clock) -> None:
    fleet = make_fleet(breaker={"fail_max": 1, "reset_timeout": 30})
    runner = fleet.runner()
    assert isinstance(send(runner, "k1", "/v1/x?status=503"), Retry)
    clock.advance(30)
    fleet.throttle.pause(5)
    held = send(runner, "k2", message_id="m2")  # gets the probe, then the throttle's pause holds it
    assert isinstance(held, Defer) and held.reason == "paused"
    assert fleet.breaker.admit("m3").probe  # so another message may probe, not wait for m2's lease


def test_a_slow_rejection_does_not_trip_the_breaker(make_fleet: Any) -> None:
    fleet = make_fleet(breaker={"fail_max": 1, "slow_call": 0.05})
    assert isinstance(send(fleet.runner(), "k1", "/v1/x?status=422&delay=0.1"), Failed)
    assert fleet.breaker.status().state == BreakerState.CLOSED


def test_redis_answering_with_an_error_is_not_taken_for_redis_down(
    make_fleet: Any, shared_redis: redis.Redis, simulator: ProviderSimulator
) -> None:
    fleet = make_fleet(rate_limit="10/s")
    shared_redis.set(keys.bucket(fleet.provider.name), "not a hash")  # e.g. a key of an older version
    outcome = send(fleet.runner(), "k1")
    assert isinstance(outcome, Defer) and outcome.reason == "internal_error"
    assert simulator.calls() == []


def test_a_redis_that_lost_the_scripts_is_given_them_again(
    make_fleet: Any, shared_redis: redis.Redis, simulator: ProviderSimulator
) -> None:
    """A Redis restarted empty (or flushed) knows no script: the guards load theirs again and go on, with
    the breaker counting as before."""
    fleet = make_fleet(breaker={"fail_max": 2, "reset_timeout": 30})
    runner = fleet.runner()
    assert isinstance(send(runner, "k1", "/v1/x?status=503"), Retry)
    shared_redis.script_flush()

    assert isinstance(send(runner, "k2", "/v1/x?status=503"), Retry)
    assert fleet.breaker.status().state == BreakerState.OPEN  # both failures counted
    assert isinstance(send(runner, "k3"), Defer)
    assert len(simulator.calls()) == 2


def test_a_script_is_sent_its_arguments_as_redis_py_would_and_refuses_other_types(
    shared_redis: redis.Redis,
) -> None:
    """Text, bytes and numbers go as redis-py sends them (a float by its repr); anything else is refused
    before anything is sent, as redis-py refuses it."""
    echo = Script(shared_redis, "return ARGV")
    assert echo(args=["é", b"raw", 7, 0.1, -2.5]) == ["é", "raw", "7", "0.1", "-2.5"]
    for wrong in (True, None):
        with pytest.raises(redis.DataError, match=type(wrong).__name__):
            echo(args=[wrong])  # type: ignore[list-item]
