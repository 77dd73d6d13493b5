"""The provider simulator's rate limits: strict sliding windows over request arrival times.

One window is provider-wide (``ProviderSimulator.set_rate_limit``), one more per path that asks for it
(``limit=N&limit_window=S``). The simulator's lock guards them all.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from dataclasses import dataclass, field

from integrations.testing.scenario import Answer, error_answer


class Arrivals:
    """Arrival times of the requests one sliding window counts, oldest first; the simulator's lock guards it."""

    def __init__(self) -> None:
        self._times: deque[float] = deque()

    def admit(self, arrived: float, limit: int, window: float) -> float | None:
        """Count a request if fewer than ``limit`` arrived in the ``window`` seconds up to it.

        Returns the time it is counted at (to release it with), or ``None`` when the window is full. Requests
        decided out of arrival order by concurrent handlers count at the latest time seen, so the log stays
        sorted and no window ever holds more than ``limit``.
        """
        if self._times:
            arrived = max(arrived, self._times[-1])
        while self._times and self._times[0] <= arrived - window:
            self._times.popleft()
        if len(self._times) >= limit:
            return None
        self._times.append(arrived)
        return arrived

    def release(self, counted_at: float) -> None:
        with contextlib.suppress(ValueError):
            self._times.remove(counted_at)

    def in_window(self, window: float, now: float) -> int:
        return sum(1 for arrived in self._times if arrived > now - window)

    def seconds_until_free(self, window: float, now: float) -> int:
        """Whole seconds, rounded up, until the oldest request in the window leaves it; 0 when it is empty."""
        oldest = next((arrived for arrived in self._times if arrived > now - window), None)
        return 0 if oldest is None else max(0, math.ceil(oldest + window - now))


@dataclass(frozen=True, slots=True)
class RateLimit:
    """The provider-wide limit: at most ``limit`` requests in any ``window`` seconds."""

    limit: int
    window: float
    headers: bool  # whether answers carry the X-RateLimit-* headers
    arrivals: Arrivals


@dataclass(slots=True)
class Admission:
    """What the rate limiters did with one request: the provider-wide limit it met and the slots it took."""

    rate_limit: RateLimit | None = None
    counted: list[tuple[Arrivals, float]] = field(default_factory=list)

    def release(self) -> None:
        for arrivals, counted_at in self.counted:
            arrivals.release(counted_at)
        self.counted.clear()


def too_many(arrivals: Arrivals, window: float) -> Answer:
    """The 429 for a full window, with ``Retry-After`` in whole seconds (at least 1) until a slot frees."""
    retry_after = max(1, arrivals.seconds_until_free(window, time.monotonic()))
    return error_answer(429, str(retry_after))


def limit_headers(rate_limit: RateLimit) -> tuple[tuple[str, str], ...]:
    """The ``X-RateLimit-*`` headers describing the provider-wide window as it is now."""
    now = time.monotonic()
    arrivals, window = rate_limit.arrivals, rate_limit.window
    return (
        ("X-RateLimit-Limit", str(rate_limit.limit)),
        ("X-RateLimit-Remaining", str(max(0, rate_limit.limit - arrivals.in_window(window, now)))),
        ("X-RateLimit-Reset", str(arrivals.seconds_until_free(window, now))),
    )
