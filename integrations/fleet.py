"""The fleet as one view: each provider's shared state (breaker, limits, pause, usage, from Redis), what the
ledger says of it (dead letters, overdue operations, the last minutes' outcomes) and its queue's depth.

``integrations status`` prints it; ``FleetCollector`` serves the fleet-wide gauges of it to Prometheus
(``integrations/metrics.py`` says why those are aggregated with ``max``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import redis

from integrations import metrics
from integrations.ledger import stats
from integrations.ledger.engine import Clock, utcnow
from integrations.ledger.models import OperationStatus
from integrations.ledger.store import Ledger
from integrations.providers import ProviderSettings
from integrations.resilience.breaker import BreakerState, SharedBreaker
from integrations.resilience.throttle import Throttle

# What `status` looks back over.
WINDOW = timedelta(minutes=5)
# A provider is degraded below this share of successes over the window (with at least MIN_ENDED ended)...
DEGRADED_SUCCESS_RATE = 0.9
MIN_ENDED = 5
# ... or when an operation is this far past its due time.
DEGRADED_OVERDUE = timedelta(minutes=5)

BREAKER_VALUES = {
    BreakerState.CLOSED: 0,
    BreakerState.HALF_OPEN: 1,
    BreakerState.OPEN: 2,
    BreakerState.FORCED_OPEN: 2,
}

QueueDepths = Callable[[], Mapping[str, int | None]]


class Health(StrEnum):
    OPERATIONAL = "operational"
    DEGRADED = "degraded"
    DOWN = "down"


@dataclass(frozen=True)
class ProviderStatus:
    """One row of ``integrations status``."""

    provider: str
    description: str | None
    owner: str | None
    adapter: str
    queue: str
    queue_depth: int | None
    rate_limit: str | None
    usage: float | None
    breaker: str
    breaker_until: datetime | None
    paused_until: datetime | None
    succeeded: int
    failed: int
    dead: int
    success_rate: float | None
    p95_seconds: float | None
    dead_letters: int
    overdue_seconds: float
    health: Health
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            name: value.isoformat() if isinstance(value, datetime) else value
            for name, value in self.__dict__.items()
        }


@dataclass(frozen=True)
class Fleet:
    """The shared state of every provider in the providers file."""

    providers: Mapping[str, ProviderSettings]
    client: redis.Redis
    ledger: Ledger
    queue_depths: QueueDepths | None = None
    clock: Clock = utcnow

    def breaker(self, provider: ProviderSettings) -> SharedBreaker:
        return SharedBreaker(self.client, provider.name, provider.breaker, probe_ttl=provider.lease_seconds)

    def throttle(self, provider: ProviderSettings) -> Throttle:
        return Throttle(self.client, provider)

    def depths(self) -> Mapping[str, int | None]:
        return self.queue_depths() if self.queue_depths is not None else {}

    def status(self) -> list[ProviderStatus]:
        now = self.clock()
        depths = self.depths()
        dead_letters = stats.dead_letters(self.ledger)
        overdue = stats.overdue_seconds(self.ledger, now)
        recent = stats.recent(self.ledger, now - WINDOW)
        rows = []
        for name, provider in sorted(self.providers.items()):
            breaker = self.breaker(provider).status()
            throttle = self.throttle(provider)
            limits = throttle.limits()
            paused = throttle.paused_for()
            window = recent.get(name, stats.Recent())
            state = breaker.shown_state
            health, reason = _health(
                state, paused, window, overdue.get(name, 0.0), breaker.opened_at, breaker.forced_until
            )
            rate = None
            if limits.rate:
                rate = f"{limits.rate:g}/s" + (" (live override)" if limits.overridden else "")
            rows.append(
                ProviderStatus(
                    provider=name,
                    description=provider.description,
                    owner=provider.owner,
                    adapter=provider.adapter,
                    queue=provider.queue,
                    queue_depth=depths.get(provider.queue),
                    rate_limit=rate,
                    usage=throttle.usage(),
                    breaker=state.value,
                    breaker_until=breaker.forced_until if breaker.forced else breaker.half_open_at,
                    paused_until=now + timedelta(seconds=paused) if paused else None,
                    succeeded=window.count(OperationStatus.SUCCEEDED),
                    failed=window.count(OperationStatus.FAILED) + window.count(OperationStatus.PARTIAL),
                    dead=window.count(OperationStatus.DEAD),
                    success_rate=window.success_rate,
                    p95_seconds=window.p95_seconds,
                    dead_letters=dead_letters.get(name, 0),
                    overdue_seconds=round(overdue.get(name, 0.0), 1),
                    health=health,
                    reason=reason,
                )
            )
        return rows


def _health(
    breaker: BreakerState,
    paused: float,
    window: stats.Recent,
    overdue: float,
    opened_at: datetime | None,
    forced_until: datetime | None,
) -> tuple[Health, str]:
    if breaker is BreakerState.FORCED_OPEN:
        until = f" until {forced_until:%H:%M:%S} UTC" if forced_until else " until closed"
        return Health.DOWN, f"breaker forced open by an operator{until}"
    if breaker is BreakerState.OPEN:
        since = f" since {opened_at:%H:%M:%S} UTC" if opened_at else ""
        return Health.DOWN, f"breaker open{since}: the provider is failing"
    reasons = []
    if breaker is BreakerState.HALF_OPEN:
        reasons.append("breaker half-open: a probe call decides")
    if paused:
        reasons.append(f"paused for {paused:.0f}s after the provider's 429 or spent quota")
    rate = window.success_rate
    if rate is not None and window.ended >= MIN_ENDED and rate < DEGRADED_SUCCESS_RATE:
        reasons.append(f"{rate:.0%} of the last {WINDOW.seconds // 60} minutes' operations succeeded")
    if overdue >= DEGRADED_OVERDUE.total_seconds():
        reasons.append(f"an operation is {overdue:.0f}s past its due time: are workers consuming its queue?")
    if reasons:
        return Health.DEGRADED, "; ".join(reasons)
    return Health.OPERATIONAL, ""


class FleetCollector:
    """The fleet-wide gauges, read from the shared state at each scrape (a prometheus-client collector)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        fleet = self.fleet
        breaker = GaugeMetricFamily(
            metrics.BREAKER_STATE, "Circuit breaker: 0 closed, 1 half-open, 2 open.", labels=["provider"]
        )
        usage = GaugeMetricFamily(
            metrics.RATE_LIMIT_USAGE,
            "Share of a rate limit used: of ours over the last minute (source=limit), or of the provider's "
            "own quota as it last reported it (source=quota).",
            labels=["provider", "source"],
        )
        dead = GaugeMetricFamily(metrics.DEAD_LETTERS, "Dead letters in the ledger.", labels=["provider"])
        overdue = GaugeMetricFamily(
            metrics.OVERDUE_SECONDS,
            "How long past its due time the most overdue waiting operation is (0: none).",
            labels=["provider"],
        )
        depth = GaugeMetricFamily(metrics.QUEUE_DEPTH, "Messages waiting in the broker.", labels=["queue"])
        dead_letters = stats.dead_letters(fleet.ledger)
        late = stats.overdue_seconds(fleet.ledger, fleet.clock())
        for name, provider in sorted(fleet.providers.items()):
            status = fleet.breaker(provider).status()
            state = status.shown_state
            breaker.add_metric([name], BREAKER_VALUES[state])
            used = fleet.throttle(provider).usage()
            if used is not None:
                usage.add_metric([name, "limit"], used)
            dead.add_metric([name], dead_letters.get(name, 0))
            overdue.add_metric([name], late.get(name, 0.0))
        for queue, messages in sorted(fleet.depths().items()):
            if messages is not None:
                depth.add_metric([queue], messages)
        yield from (breaker, usage, dead, overdue, depth)
