"""The shared circuit breaker on real Redis: transitions, counts and the single probe, across processes.

The breaker takes an injected clock (ms), so nothing here waits for a timeout to pass."""

from __future__ import annotations

import multiprocessing
from typing import Any

import redis

from integrations.providers import BreakerSettings
from integrations.resilience.breaker import BreakerState, SharedBreaker, Transition
from integrations.resilience.scripts import redis_client
from tests.clock import Clock
from tests.processes import at_once


def breaker(client: redis.Redis, name: str, clock: Clock, **settings: Any) -> SharedBreaker:
    """A provider's breaker on the test's clock, so nothing here waits for a timeout."""
    return SharedBreaker(client, name, BreakerSettings(**settings), probe_ttl=10, clock=clock.ms)


def test_opens_after_fail_max_consecutive_failures(shared_redis: redis.Redis, provider_name: str) -> None:
    clock = Clock()
    b = breaker(shared_redis, provider_name, clock, fail_max=3, reset_timeout=30)
    assert [b.record("t", failed=True) for _ in range(2)] == ["", ""]
    assert b.record("t", failed=False) == ""  # a success ends the run of failures
    assert [b.record("t", failed=True) for _ in range(3)] == [
        Transition.NONE,
        Transition.NONE,
        Transition.OPENED,
    ]
    status = b.status()
    assert (status.state, status.consecutive_failures, status.transitions) == (BreakerState.OPEN, 3, 1)
    assert status.half_open_at is not None and status.opened_at is not None
    assert (status.half_open_at - status.opened_at).total_seconds() == 30
    admission = b.admit("other")
    assert not admission.allowed and admission.wait == 30


def test_opens_on_the_failure_rate_over_the_window(shared_redis: redis.Redis, provider_name: str) -> None:
    clock = Clock()
    b = breaker(shared_redis, provider_name, clock, fail_max=100, failure_rate=0.5, min_calls=10, window=10)
    outcomes = [b.record("t", failed=i % 2 == 0) for i in range(9)]  # 5 of 9 failed: too few calls yet
    assert Transition.OPENED not in outcomes
    assert b.record("t", failed=True) is Transition.OPENED  # 6 of 10
    assert b.status().window_calls == 10


def test_old_calls_leave_the_window(shared_redis: redis.Redis, provider_name: str) -> None:
    clock = Clock()
    b = breaker(shared_redis, provider_name, clock, fail_max=100, failure_rate=0.5, min_calls=4, window=10)
    for _ in range(3):
        b.record("t", failed=True)
    clock.advance(11)  # those three are now older than the window
    assert b.record("t", failed=True) == ""
    assert (b.status().window_calls, b.status().window_failures) == (1, 1)


def test_half_open_lets_one_probe_through_and_its_success_closes(
    shared_redis: redis.Redis, provider_name: str
) -> None:
    clock = Clock()
    b = breaker(shared_redis, provider_name, clock, fail_max=1, reset_timeout=5)
    assert b.record("a", failed=True) is Transition.OPENED
    clock.advance(5)
    first, second = b.admit("probe"), b.admit("other")
    assert first.allowed and first.probe and first.state == BreakerState.HALF_OPEN
    assert not second.allowed and second.state == BreakerState.HALF_OPEN
    assert b.admit("probe").probe  # the probe's own message, redelivered, is still the probe
    assert b.record("late", failed=True) == ""  # a late answer of another call changes nothing
    assert b.record("probe", failed=False) is Transition.CLOSED
    assert b.status().state == BreakerState.CLOSED and b.admit("other").allowed


def test_a_failed_probe_opens_it_again_for_reset_timeout(
    shared_redis: redis.Redis, provider_name: str
) -> None:
    clock = Clock()
    b = breaker(shared_redis, provider_name, clock, fail_max=1, reset_timeout=5)
    b.record("a", failed=True)
    clock.advance(5)
    assert b.admit("probe").probe
    clock.advance(1)
    assert b.record("probe", failed=True) is Transition.OPENED
    admission = b.admit("next")
    assert not admission.allowed and admission.wait == 5


def test_a_lost_probe_is_replaced_after_its_ttl(shared_redis: redis.Redis, provider_name: str) -> None:
    clock = Clock()
    b = breaker(shared_redis, provider_name, clock, fail_max=1, reset_timeout=5)
    b.record("a", failed=True)
    clock.advance(5)
    assert b.admit("lost").probe
    clock.advance(10)  # probe_ttl: its worker died
    assert b.admit("new").probe


def test_a_maintenance_window_without_an_end_does_not_expire(
    shared_redis: redis.Redis, provider_name: str
) -> None:
    clock = Clock()
    b = breaker(shared_redis, provider_name, clock)
    b.force_open()
    b.record("late", failed=True)  # a call that was in flight when it was forced open
    assert shared_redis.pttl(b.key) == -1


def test_forced_open_and_close(shared_redis: redis.Redis, provider_name: str) -> None:
    clock = Clock()
    b = breaker(shared_redis, provider_name, clock)
    b.force_open()
    assert not b.admit("t").allowed and b.status().forced == "open"
    b.close()
    assert b.admit("t").allowed and b.status().forced is None
    b.force_open(60)
    clock.advance(61)
    assert b.admit("t").allowed  # the maintenance window ended by itself


def _fail_many(start: Any, results: Any, url: str, name: str, times: int) -> None:
    client = redis_client(url)
    b = SharedBreaker(client, name, BreakerSettings(fail_max=200, min_calls=10_000), probe_ttl=10)
    start.wait()
    results.put([b.record("t", failed=True) for _ in range(times)])


def test_sixteen_processes_failing_at_once_lose_no_count_and_open_it_once(
    shared_redis: redis.Redis, redis_url: str, provider_name: str
) -> None:
    transitions = [t for each in at_once(_fail_many, 16, redis_url, provider_name, 25) for t in each if t]
    status = SharedBreaker(shared_redis, provider_name, BreakerSettings(), probe_ttl=10).status()
    assert status.failures == 16 * 25
    assert status.consecutive_failures == 16 * 25
    assert (
        transitions == [Transition.OPENED] and status.transitions == 1 and status.state == BreakerState.OPEN
    )


def _admit(start: Any, results: Any, url: str, name: str, clock: Clock) -> None:
    client = redis_client(url)
    b = SharedBreaker(client, name, BreakerSettings(), probe_ttl=10, clock=clock.ms)
    start.wait()
    results.put(b.admit(f"token-{multiprocessing.current_process().pid}").probe)


def test_half_open_lets_exactly_one_probe_through_across_processes(
    shared_redis: redis.Redis, redis_url: str, provider_name: str
) -> None:
    clock = Clock()
    b = breaker(shared_redis, provider_name, clock, fail_max=1, reset_timeout=30)
    assert b.record("a", failed=True) is Transition.OPENED
    clock.advance(31)
    probes = at_once(_admit, 16, redis_url, provider_name, clock)
    assert probes.count(True) == 1
