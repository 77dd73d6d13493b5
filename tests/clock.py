"""A clock the test moves by hand, for the ledger (datetimes) and the Redis guards (milliseconds)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

START = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def timestamp(self) -> float:
        return self.now.timestamp()

    def ms(self) -> int:
        return int(self.now.timestamp() * 1000)

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def set(self, now: datetime) -> None:
        self.now = now
