"""Exponential backoff with full jitter, and the provider's Retry-After."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from integrations.resilience.backoff import ExponentialBackoff, next_delay, parse_retry_after


class Draws:
    """A ``uniform`` that records the bounds it was asked for and returns the upper one."""

    def __init__(self) -> None:
        self.bounds: list[tuple[float, float]] = []

    def __call__(self, low: float, high: float) -> float:
        self.bounds.append((low, high))
        return high


def lowest(low: float, high: float) -> float:
    return low


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 256.0), (10, 300.0), (11, 300.0), (10_000, 300.0)],
)
def test_ceiling_doubles_from_base_and_caps(attempt: int, ceiling: float) -> None:
    assert ExponentialBackoff(base=1.0, cap=300.0).ceiling(attempt) == ceiling


def test_ceiling_with_fractional_base() -> None:
    backoff = ExponentialBackoff(base=0.5, cap=5.0)

    assert [backoff.ceiling(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


@pytest.mark.parametrize("attempt", [64, 65, 1025, 10_000, 10**18])
def test_huge_attempt_does_not_overflow(attempt: int) -> None:
    draws = Draws()
    backoff = ExponentialBackoff(base=1.0, cap=900.0, uniform=draws)

    assert backoff.ceiling(attempt) == 900.0
    assert backoff(attempt) == 900.0


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 2.0), (2, 4.0), (3, 8.0), (5, 30.0)])
def test_call_draws_uniformly_between_zero_and_ceiling(attempt: int, ceiling: float) -> None:
    draws = Draws()
    backoff = ExponentialBackoff(base=2.0, cap=30.0, uniform=draws)

    assert backoff(attempt) == ceiling
    assert draws.bounds == [(0.0, ceiling)]


def test_default_uniform_stays_within_bounds() -> None:
    backoff = ExponentialBackoff(base=1.0, cap=10.0)

    delays = [backoff(4) for _ in range(200)]

    assert all(0.0 <= delay <= 8.0 for delay in delays)
    assert len(set(delays)) > 1  # jittered, not a fixed delay


def test_backoffs_compare_by_base_and_cap_only() -> None:
    assert ExponentialBackoff(1.0, 60.0, uniform=lowest) == ExponentialBackoff(1.0, 60.0)


@pytest.mark.parametrize(
    ("uniform", "attempt", "retry_after", "expected"),
    [
        (lowest, 3, None, 0.0),  # no Retry-After: the jittered draw
        (Draws(), 3, None, 4.0),
        (lowest, 3, 7.0, 7.0),  # Retry-After later than the draw wins
        (Draws(), 3, 2.0, 4.0),  # the draw later than Retry-After wins
        (Draws(), 20, 3600.0, 3600.0),  # Retry-After above the cap is still honoured
        (lowest, 1, 0.0, 0.0),
    ],
)
def test_next_delay_is_never_earlier_than_retry_after(
    uniform: Callable[[float, float], float], attempt: int, retry_after: float | None, expected: float
) -> None:
    backoff = ExponentialBackoff(base=1.0, cap=60.0, uniform=uniform)

    assert next_delay(backoff, attempt, retry_after) == expected


NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("3", 3.0),
        (" 120 ", 120.0),
        (format_datetime(NOW + timedelta(seconds=90), usegmt=True), 90.0),
        ("Sat, 21 Nov 2026 13:00:00 GMT", 3600.0),
        # An obsolete but valid form (RFC 850), and a date with no zone: taken as UTC.
        ("Saturday, 21-Nov-26 12:00:30 GMT", 30.0),
        ("Sat, 21 Nov 2026 12:00:45 -0000", 45.0),
        # A date in the past: retry at once, never a negative delay.
        ("Sat, 21 Nov 2026 11:59:00 GMT", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(value: str, seconds: float) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def test_parse_retry_after_with_now_in_another_zone() -> None:
    now = NOW.astimezone(timezone(timedelta(hours=2)))

    assert parse_retry_after("Sat, 21 Nov 2026 12:01:00 GMT", now=now) == 60.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "3 seconds", "Sat, 99 Foo 2026", "GMT"])
def test_parse_retry_after_garbage(value: str | None) -> None:
    assert parse_retry_after(value, now=NOW) is None
