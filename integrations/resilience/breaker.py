"""A circuit breaker per provider whose state lives in Redis, shared by every worker on every machine.

It keeps pybreaker's model and vocabulary (closed, open, half-open; ``fail_max``, ``reset_timeout``;
business errors excluded) but not its state machine: pybreaker decides transitions in each process by
reading its storage and writing it back, so with Redis storage concurrent failures overwrite each other's
counts, every process probes at once when it half-opens, a success can close over an open, and a Redis
error falls back to "closed". Here each decision is one Lua script on the Redis server's clock: counts
are exact, the crossing call alone opens the breaker, and exactly one probe is let through.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import pybreaker
import redis

from integrations import keys
from integrations.providers import BreakerSettings
from integrations.resilience.scripts import script, server_time_ms


class BreakerState(StrEnum):
    """pybreaker's state names, and the state an operator's ``breaker open`` forces."""

    CLOSED = pybreaker.STATE_CLOSED
    OPEN = pybreaker.STATE_OPEN
    HALF_OPEN = pybreaker.STATE_HALF_OPEN
    FORCED_OPEN = "forced_open"  # what admission answers while an operator holds the breaker open


class Transition(StrEnum):
    """What a call's result did to the breaker."""

    NONE = ""
    OPENED = "opened"
    CLOSED = "closed"

    @classmethod
    def of(cls, answer: Any) -> Transition:
        """From ``breaker_record.lua``'s answer."""
        return cls(answer[0])


WINDOW_SLOTS = 20
KEY_TTL_MS = 7 * 24 * 3600 * 1000  # a breaker nobody used for a week starts afresh, closed


@dataclass(frozen=True)
class Admission:
    """The breaker's answer before a call: go ahead (maybe as the probe), or wait ``wait`` seconds."""

    allowed: bool
    probe: bool
    wait: float
    state: BreakerState

    @classmethod
    def of(cls, answer: Any) -> Admission:
        """From ``breaker_admit.lua``'s answer."""
        verdict, wait_ms, state = answer
        return cls(
            allowed=int(verdict) > 0,
            probe=int(verdict) == 2,
            wait=int(wait_ms) / 1000,
            state=BreakerState(state),
        )


@dataclass(frozen=True)
class BreakerStatus:
    provider: str
    state: BreakerState
    forced: str | None
    forced_until: datetime | None
    consecutive_failures: int
    window_calls: int
    window_failures: int
    failures: int
    successes: int
    transitions: int
    opened_at: datetime | None
    half_open_at: datetime | None
    probe_in_flight: bool

    @property
    def shown_state(self) -> BreakerState:
        """The state as operators see it: forced open by an operator, or the breaker's own."""
        return BreakerState.FORCED_OPEN if self.forced == "open" else self.state

    def to_json(self) -> dict[str, object]:
        return {
            name: value.isoformat() if isinstance(value, datetime) else value
            for name, value in self.__dict__.items()
        }


def _time(ms: str | None) -> datetime | None:
    if not ms or float(ms) == 0:
        return None
    return datetime.fromtimestamp(int(float(ms)) / 1000, UTC)


class SharedBreaker:
    """The breaker of one provider."""

    def __init__(
        self,
        client: redis.Redis,
        provider: str,
        settings: BreakerSettings,
        *,
        probe_ttl: float,
        clock: Callable[[], int] | None = None,
    ) -> None:
        """``client`` decodes responses (``scripts.redis_client``); ``clock`` (ms) replaces the Redis
        server's clock, for tests that must not wait."""
        self.client = client
        self.clock = clock
        self.provider = provider
        self.settings = settings
        self.probe_ttl = probe_ttl
        self.key = keys.breaker(provider)
        self.window_key = keys.breaker_window(provider)
        self._admit = script(client, "breaker_admit")
        self._record = script(client, "breaker_record")
        self._release = script(client, "breaker_release")

    def admit(self, token: str) -> Admission:
        keys_, args = self.admission(token)
        return Admission.of(self._admit(keys=keys_, args=args))

    def admission(self, token: str) -> tuple[list[str], list[Any]]:
        """The keys and arguments of ``breaker_admit.lua`` for ``token``'s call."""
        return [self.key], [token, int(self.probe_ttl * 1000), KEY_TTL_MS, self._injected()]

    def record(self, token: str, *, failed: bool) -> Transition:
        """Count a call's result; returns the transition it caused."""
        keys_, args = self.recording(token, failed=failed)
        return Transition.of(self._record(keys=keys_, args=args))

    def recording(self, token: str, *, failed: bool) -> tuple[list[str], list[Any]]:
        """The keys and arguments of ``breaker_record.lua`` for how ``token``'s call went."""
        s = self.settings
        return [self.key, self.window_key], [
            token,
            1 if failed else 0,
            s.fail_max,
            repr(s.failure_rate),
            s.min_calls,
            int(s.window * 1000),
            WINDOW_SLOTS,
            int(s.reset_timeout * 1000),
            KEY_TTL_MS,
            self._injected(),
        ]

    def release_probe(self, token: str) -> None:
        """Give up the half-open probe if ``token`` holds it (its attempt will not be made)."""
        self._release(keys=[self.key], args=[token])

    def force_open(self, seconds: float | None = None) -> None:
        """Hold the breaker open (a maintenance window) until ``close`` or for ``seconds``."""
        now_ms = self._now_ms()
        until = 0 if seconds is None else now_ms + int(seconds * 1000)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.key, mapping={"forced": "open", "forced_until": until})
            pipe.persist(self.key) if seconds is None else pipe.pexpire(self.key, KEY_TTL_MS)
            pipe.execute()

    def close(self) -> None:
        """End any forcing and start closed with fresh counts."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self.key, self.window_key)
            pipe.execute()

    def status(self) -> BreakerStatus:
        with self.client.pipeline() as pipe:
            pipe.hgetall(self.key)
            pipe.hgetall(self.window_key)
            fields, window = pipe.execute()
        now = self._now_ms()
        slots = {k: int(v) for k, v in window.items()}
        period = int(now // (self.settings.window * 1000 / WINDOW_SLOTS))
        calls = failures = 0
        for slot in range(WINDOW_SLOTS):
            if slots.get(f"t{slot}", -1) > period - WINDOW_SLOTS:
                calls += slots.get(f"c{slot}", 0)
                failures += slots.get(f"f{slot}", 0)
        current = BreakerState(fields.get("state", BreakerState.CLOSED))
        forced_until = int(fields.get("forced_until") or 0)
        forced = fields.get("forced") or None
        if forced and forced_until and forced_until <= now:
            forced, forced_until = None, 0
        return BreakerStatus(
            provider=self.provider,
            state=current,
            forced=forced,
            forced_until=_time(str(forced_until)),
            consecutive_failures=int(fields.get("consecutive", 0)),
            window_calls=calls,
            window_failures=failures,
            failures=int(fields.get("failures", 0)),
            successes=int(fields.get("successes", 0)),
            transitions=int(fields.get("transitions", 0)),
            opened_at=_time(fields.get("opened_at")) if current is not BreakerState.CLOSED else None,
            half_open_at=_time(fields.get("open_until")) if current is BreakerState.OPEN else None,
            probe_in_flight=current is BreakerState.HALF_OPEN
            and int(fields.get("probe_until", 0) or 0) > now,
        )

    def _now_ms(self) -> int:
        return self.clock() if self.clock else server_time_ms(self.client, self.key)

    def _injected(self) -> str:
        return "" if self.clock is None else str(self.clock())
