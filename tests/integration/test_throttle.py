"""The fleet-wide token bucket on real Redis: burst, rate, reservations, accounts, pauses, live limits."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import redis

from integrations import keys
from integrations.providers import ProviderSettings, Rate
from integrations.resilience.scripts import redis_client
from integrations.resilience.throttle import Throttle
from tests.clock import Clock
from tests.processes import at_once
from tests.providers import provider_settings


def provider(name: str, **table: Any) -> ProviderSettings:
    """A provider whose bucket runs at its full limit (no headroom), unless the test says otherwise."""
    return provider_settings(name, **({"headroom": 0} | table))


def bucket(client: redis.Redis, name: str, clock: Clock, **table: Any) -> Throttle:
    """A provider's throttle on the test's clock, so nothing here waits."""
    return Throttle(client, provider(name, **table), clock=clock.ms)


def test_burst_then_the_rate_and_a_reserved_slot_for_each_deferral(
    shared_redis: redis.Redis, provider_name: str
) -> None:
    clock = Clock()
    throttle = bucket(shared_redis, provider_name, clock, rate_limit="10/s", burst=3)
    takes = [throttle.take(f"m{i}") for i in range(5)]
    assert [t.allowed for t in takes] == [True, True, True, False, False]
    assert [t.wait for t in takes[3:]] == [0.1, 0.2]  # each deferred message is told its own slot
    assert throttle.take("m3").why == "reserved" and not throttle.take("m3").allowed
    clock.advance(0.1)
    assert throttle.take("m3").allowed  # its reservation, without taking another token
    assert not throttle.take("m4").allowed
    clock.advance(0.1)
    assert throttle.take("m4").allowed


def test_headroom_runs_the_bucket_that_share_below_the_limit(
    shared_redis: redis.Redis, provider_name: str
) -> None:
    clock = Clock()
    throttle = bucket(shared_redis, provider_name, clock, rate_limit="10/s", burst=1, headroom=0.2)
    assert throttle.take("m0").allowed
    assert throttle.take("m1").wait == 0.125  # 8/s, not 10/s


def test_a_provider_without_a_limit_is_not_throttled(shared_redis: redis.Redis, provider_name: str) -> None:
    throttle = Throttle(shared_redis, provider(provider_name))
    assert all(throttle.take(f"m{i}").allowed for i in range(100))


def test_an_account_has_its_own_bucket_inside_the_provider_s(
    shared_redis: redis.Redis, provider_name: str
) -> None:
    clock = Clock()
    table = {
        "rate_limit": "100/s",
        "burst": 100,
        "per_key": {"field": "account", "rate_limit": "1/s", "burst": 2},
    }
    throttle = bucket(shared_redis, provider_name, clock, **table)
    assert [throttle.take(f"a{i}", "acct_1").allowed for i in range(3)] == [True, True, False]
    assert throttle.take("b0", "acct_2").allowed  # another account is not held back
    assert throttle.take("c0", None).allowed  # nor an operation without one


def test_a_pause_holds_every_caller_and_keeps_the_longer_one(
    shared_redis: redis.Redis, provider_name: str
) -> None:
    clock = Clock()
    throttle = bucket(shared_redis, provider_name, clock)
    assert throttle.pause(5) == 5
    assert throttle.pause(2) == 5  # a shorter pause does not cut a longer one
    take = throttle.take("m")
    assert (take.allowed, take.why, take.wait) == (False, "paused", 5)
    clock.advance(5)
    assert throttle.take("m").allowed


def test_a_live_limit_applies_at_the_next_call_and_reset_returns_to_the_file(
    shared_redis: redis.Redis, provider_name: str
) -> None:
    clock = Clock()
    throttle = bucket(shared_redis, provider_name, clock, rate_limit="100/s", burst=100)
    other_worker = Throttle(
        shared_redis, provider(provider_name, rate_limit="100/s", burst=100), clock=clock.ms
    )
    throttle.set_limits(Rate.parse("1/s"), burst=1)
    assert other_worker.limits().rate == 1 and other_worker.limits().overridden
    assert [other_worker.take(f"m{i}").allowed for i in range(2)] == [True, False]
    limits = throttle.reset_limits()
    assert (limits.rate, limits.burst, limits.overridden) == (100, 100, False)


def _hammer(start: Any, results: Any, url: str, name: str, seconds: float) -> None:
    client = redis_client(url)
    throttle = Throttle(client, provider(name, rate_limit="50/s", burst=10))
    start.wait()
    admitted: list[float] = []
    first = None
    n = 0
    while first is None or admitted[-1] - first < seconds:
        token = f"{multiprocessing.current_process().pid}-{n}"
        n += 1
        take = throttle.take(token)
        while not take.allowed:  # as a deferred message does: come back at the slot it was given
            time.sleep(take.wait)
            take = throttle.take(token)
        admitted.append(take.at)
        first = first if first is not None else take.at
    results.put(admitted)


def test_the_bucket_never_admits_more_than_burst_plus_rate_times_t_across_processes(
    redis_url: str, provider_name: str
) -> None:
    admitted = sorted(t for each in at_once(_hammer, 4, redis_url, provider_name, 1.5) for t in each)
    # Every window [admitted[i], admitted[j]] of granted slots, on the Redis clock, holds at most
    # burst + rate x its length.
    for i in range(len(admitted)):
        for j in range(i, len(admitted)):
            assert j - i + 1 <= 10 + 50 * (admitted[j] - admitted[i] + 1e-6)  # 1 µs: float seconds
    assert len(admitted) >= 10 + 50 * 1.0  # and it did let the rate through


def test_a_pause_moves_every_reserved_slot_after_it_keeping_their_spacing(
    shared_redis: redis.Redis, provider_name: str
) -> None:
    clock = Clock()
    throttle = bucket(shared_redis, provider_name, clock, rate_limit="10/s", burst=1)
    assert throttle.take("m0").allowed
    assert [throttle.take(f"m{i}").wait for i in (1, 2, 3)] == [0.1, 0.2, 0.3]
    throttle.pause(1)  # a 429 arrives
    assert [throttle.take(f"m{i}").wait for i in (1, 2, 3)] == [1.1, 1.2, 1.3]
    assert throttle.take("new").wait == 1.4  # a newcomer queues behind them
    clock.advance(1.1)
    assert throttle.take("m1").allowed and not throttle.take("m2").allowed


def test_messages_that_come_back_late_together_are_spaced_again(
    shared_redis: redis.Redis, provider_name: str
) -> None:
    clock = Clock()
    throttle = bucket(shared_redis, provider_name, clock, rate_limit="10/s", burst=1)
    assert throttle.take("m0").allowed
    assert [throttle.take(f"m{i}").wait for i in (1, 2, 3)] == [0.1, 0.2, 0.3]
    clock.advance(0.5)  # a busy worker runs all three late, at once
    first, second, third = (throttle.take(f"m{i}") for i in (1, 2, 3))
    assert first.allowed
    assert (second.allowed, second.why, second.wait) == (False, "spacing", 0.1)
    assert (third.allowed, third.why) == (False, "spacing")
    clock.advance(0.1)
    assert throttle.take("m2").allowed


def test_a_new_limit_does_not_queue_new_calls_behind_a_backlog_paced_at_the_old_one(
    shared_redis: redis.Redis, provider_name: str
) -> None:
    clock = Clock()
    throttle = bucket(shared_redis, provider_name, clock, rate_limit="1/s", burst=1)
    waits = [throttle.take(f"m{i}").wait for i in range(6)]
    assert waits[-1] == 5  # a backlog paced at 1/s
    throttle.set_limits(Rate.parse("100/s"), burst=1)
    assert throttle.take("new").wait <= 0.01


def test_a_reservation_outlives_a_pause_that_moves_it(shared_redis: redis.Redis, provider_name: str) -> None:
    clock = Clock()
    throttle = bucket(shared_redis, provider_name, clock, rate_limit="1/s", burst=1)
    throttle.take("m0")
    assert throttle.take("m1").wait == 1
    throttle.pause(3600)  # an hourly quota spent
    assert throttle.take("m1").why == "paused"
    ttl_ms = shared_redis.pttl(keys.reservation(provider_name, "m1"))
    assert isinstance(ttl_ms, int) and ttl_ms > 3600 * 1000


def test_limits_reset_ends_a_pause(shared_redis: redis.Redis, provider_name: str) -> None:
    clock = Clock()
    throttle = bucket(shared_redis, provider_name, clock)
    throttle.pause(600)
    throttle.reset_limits()
    assert throttle.take("m").allowed
