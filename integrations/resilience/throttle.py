"""One token bucket per provider (and optionally per account) in Redis, for the whole fleet of workers.

The bucket is the generic cell rate algorithm, a token bucket kept as one timestamp: atomic in one Lua
script, on the Redis server's clock, never more than ``burst + rate x t`` calls in any ``t``. The live
override that ``integrations limits set`` writes is read by that same script on every call, so every
worker sees a change at its next call. A 429, or a provider's own quota headers reaching zero, pause the
provider for every worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import redis

from integrations import keys
from integrations.providers import ProviderSettings, Rate
from integrations.resilience.scripts import script, server_time_ms

# A reservation outlives its slot by this much, for a message that comes back late (a busy worker).
RESERVATION_GRACE_MS = 10 * 60 * 1000


# The ring of usage slots throttle.lua keeps in the bucket: 10 s each, the last six read as "the last minute".
USAGE_SLOT_MS = 10_000
USAGE_SLOTS = 7
USAGE_WINDOW_SLOTS = 6


class TakeResult(StrEnum):
    """Why the bucket answered as it did."""

    ADMITTED = "admitted"  # a token was free
    RESERVED = "reserved"  # a slot is held for this message (now, or when it comes back)
    PAUSED = "paused"  # every worker holds off: a 429 or a spent quota
    THROTTLED = "throttled"  # no token: come back at the slot given
    SPACING = "spacing"  # a message back early for its slot: wait the rest


@dataclass(frozen=True)
class Take:
    """The bucket's answer: go ahead, or come back in ``wait`` seconds (a slot is held for you)."""

    allowed: bool
    wait: float
    why: TakeResult
    at: float  # when the bucket answered: seconds on its clock

    @classmethod
    def of(cls, answer: Any) -> Take:
        """From ``throttle.lua``'s answer."""
        allowed, wait_ms, why, at = answer
        return cls(bool(int(allowed)), int(wait_ms) / 1000, TakeResult(why), float(at) / 1000)


def paused_for(answer: Any) -> float:
    """Seconds until the pause ends, from ``pause.lua``'s answer: its end and its clock's now, in ms."""
    until_ms, now_ms = answer
    return max(0.0, (float(until_ms) - float(now_ms)) / 1000)


@dataclass(frozen=True)
class Limits:
    rate: float | None  # calls per second; None: no limit
    burst: int | None
    overridden: bool


class Throttle:
    """The bucket(s) and pause of one provider."""

    def __init__(
        self, client: redis.Redis, provider: ProviderSettings, *, clock: Callable[[], float] | None = None
    ) -> None:
        """``clock`` (ms) replaces the Redis server's clock, for tests that must not wait."""
        self.client = client
        self.clock = clock
        self.provider = provider
        name = provider.name
        self.bucket_key = keys.bucket(name)
        self.limits_key = keys.limits(name)
        self._take = script(client, "throttle")
        self._pause = script(client, "pause")

    def take(self, token: str, account: str | None = None) -> Take:
        keys_, args = self.taking(token, account)
        return Take.of(self._take(keys=keys_, args=args))

    def taking(self, token: str, account: str | None = None) -> tuple[list[str], list[Any]]:
        """The keys and arguments of ``throttle.lua`` for ``token``'s call (``account``: its per-key value)."""
        provider = self.provider
        rate = provider.rate_limit.per_second if provider.rate_limit else 0
        per_key = provider.per_key if account is not None else None
        return [
            self.bucket_key,
            keys.account_bucket(provider.name, account or ""),
            self.limits_key,
            keys.reservation(provider.name, token),
        ], [
            repr(rate),
            provider.capacity or 1,
            repr(per_key.rate_limit.per_second) if per_key else 0,
            per_key.capacity if per_key else 1,
            RESERVATION_GRACE_MS,
            self._injected(),
            repr(1 - provider.headroom),
            provider.headroom * 500,
        ]

    def pause(self, seconds: float) -> float:
        """Pause the provider for every worker for ``seconds`` (kept if already paused for longer);
        returns the seconds until the pause ends."""
        return paused_for(self._pause(keys=[self.bucket_key], args=self.pausing(seconds)))

    def pausing(self, seconds: float) -> list[Any]:
        """The arguments of ``pause.lua`` (on the bucket's key) for a pause of ``seconds``."""
        return [max(1, int(seconds * 1000)), self._injected()]

    def paused_for(self) -> float:
        value = cast(str | None, self.client.hget(self.bucket_key, "pause"))
        now = self._now_ms()
        return max(0.0, (float(value or 0) - now) / 1000)

    def _now_ms(self) -> float:
        return self.clock() if self.clock else server_time_ms(self.client, self.bucket_key)

    def used(self) -> int:
        """Calls let through by every worker over about the last minute: the current 10-second slot of
        the bucket's ring (``throttle.lua``) and the five before it."""
        fields = cast(dict[str, str], self.client.hgetall(self.bucket_key))
        now = self._now_ms()
        period = int(now // USAGE_SLOT_MS)
        return sum(
            int(fields.get(f"u{ring}", 0))
            for ring in range(USAGE_SLOTS)
            if period - USAGE_WINDOW_SLOTS < int(fields.get(f"p{ring}", -1)) <= period
        )

    def usage(self) -> float | None:
        """Share of the effective rate limit used over about the last minute; ``None`` without a limit."""
        rate = self.limits().rate
        if not rate:
            return None
        return self.used() / (rate * USAGE_SLOT_MS * USAGE_WINDOW_SLOTS / 1000)

    def _injected(self) -> str:
        return "" if self.clock is None else repr(self.clock())

    def limits(self) -> Limits:
        override = cast(dict[str, str], self.client.hgetall(self.limits_key))
        if override:
            return Limits(float(override["rate"]), int(override["burst"]), overridden=True)
        rate = self.provider.rate_limit
        return Limits(rate.per_second if rate else None, self.provider.capacity, overridden=False)

    def set_limits(self, rate: Rate, burst: int | None = None) -> Limits:
        """Override the file's rate (and burst) for every worker, until ``reset_limits``."""
        size = burst or max(1, round(rate.per_second))
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.limits_key, mapping={"rate": repr(rate.per_second), "burst": size, "text": rate.text}
            )
            # Both clocks start again at the new rate: new callers do not queue behind a backlog paced at
            # the old one, and messages already holding slots are held to the new rate by the real clock.
            pipe.hdel(self.bucket_key, "v", "a")
            pipe.execute()
        return Limits(rate.per_second, size, overridden=True)

    def reset_limits(self) -> Limits:
        """Back to the providers file's rate, and end any pause."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self.limits_key)
            pipe.hdel(self.bucket_key, "v", "a", "pause")
            pipe.execute()
        return self.limits()
