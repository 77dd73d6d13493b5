"""When to try again: exponential backoff with full jitter, and the provider's ``Retry-After``.

Full jitter (a uniform draw between 0 and the exponential ceiling) spreads the retries of many workers
instead of bunching them, see https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime


@dataclass(frozen=True)
class ExponentialBackoff:
    """``Backoff(attempt) -> seconds`` for the attempt that just failed (1 for the first)."""

    base: float
    cap: float
    uniform: Callable[[float, float], float] = field(default=random.uniform, compare=False)

    def ceiling(self, attempt: int) -> float:
        # Clamp the exponent: 2**1000 overflows a float long before any cap matters.
        return min(self.cap, self.base * 2.0 ** min(max(attempt, 1) - 1, 64))

    def __call__(self, attempt: int) -> float:
        return self.uniform(0.0, self.ceiling(attempt))


def next_delay(backoff: ExponentialBackoff, attempt: int, retry_after: float | None) -> float:
    """Seconds until the next attempt: the jittered backoff, but never earlier than ``Retry-After``."""
    delay = backoff(attempt)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


# A provider asking for more than a day is taken at its word for a day; the ledger keeps the operation
# waiting in hops meanwhile. (A bogus header must not overflow a datetime.)
MAX_RETRY_AFTER = 86400.0


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110 10.2.3); else None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return min(max(0.0, (when - now).total_seconds()), MAX_RETRY_AFTER)
