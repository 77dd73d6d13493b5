"""A clock the test moves by hand, for the ledger (datetimes) and the Redis guards (milliseconds), so no
test waits for time to pass."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

START = datetime(2026, 1, 1, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Clock:
    """Now is ``now`` until the test moves it; calling it gives a datetime, as the ledger's clock does."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def timestamp(self) -> float:
        """Seconds since the epoch, as ``time.time`` gives them (the OAuth token cache, the fakes)."""
        return self.now.timestamp()

    def ms(self) -> int:
        """Milliseconds since the epoch, as the breaker and the throttle read the Redis server's clock;
        counted on timedeltas, so moving it by 0.1 s moves it by exactly 100 ms."""
        return (self.now - EPOCH) // timedelta(milliseconds=1)

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def set(self, now: datetime) -> None:
        self.now = now
