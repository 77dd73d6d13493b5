"""The Prometheus metrics of the fleet, in two kinds.

**Per process** (counters, a histogram, the provider's reported quota): counted by each worker process where
the thing happens, kept in prometheus-client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``) and summed
over the machine's processes by ``integrations metrics serve``. Each machine's exporter serves its own
machine's counts, so Prometheus sums them across ``instance`` as usual.

**Fleet-wide** (gauges): read from the shared state (Redis, the ledger, the broker) when scraped, by
``FleetCollector`` (``integrations/fleet.py``). Every exporter that serves them serves the same values, so
they carry no ``instance`` meaning: aggregate them with ``max``, never ``sum``, or serve them from one exporter
only (``integrations metrics serve --no-fleet`` on the others).
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

from integrations.errors import ErrorType
from integrations.guard import Attempt, Observation
from integrations.outcome import Defer, Done, Failed, Outcome, Retry
from integrations.providers import ProviderSettings

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

# Names of the metrics this project serves, as Prometheus sees them (counters get ``_total``): the alert
# rules and the dashboard are checked against this list.
OPERATIONS_TOTAL = "integrations_operations_total"
ATTEMPTS_TOTAL = "integrations_attempts_total"
ATTEMPT_DURATION = "integrations_attempt_duration_seconds"
DEFERRALS_TOTAL = "integrations_deferrals_total"
COST_TOTAL = "integrations_cost_total"
BREAKER_STATE = "integrations_breaker_state"
RATE_LIMIT_USAGE = "integrations_rate_limit_usage_ratio"
DEAD_LETTERS = "integrations_dead_letters"
QUEUE_DEPTH = "integrations_queue_depth"
OVERDUE_SECONDS = "integrations_overdue_seconds"
WEBHOOKS_RECEIVED_TOTAL = "integrations_webhooks_received_total"

SERVED = (
    OPERATIONS_TOTAL,
    ATTEMPTS_TOTAL,
    ATTEMPT_DURATION,
    DEFERRALS_TOTAL,
    COST_TOTAL,
    BREAKER_STATE,
    RATE_LIMIT_USAGE,
    DEAD_LETTERS,
    QUEUE_DEPTH,
    OVERDUE_SECONDS,
    WEBHOOKS_RECEIVED_TOTAL,
)

# Provider calls last from milliseconds to the longest timeout (300 s, cut at 3 x timeout).
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)

log = logging.getLogger("integrations.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _stem(name: str) -> str:
    return name.removesuffix("_total")


class _Instruments:
    """The per-process metrics, made once per process (prometheus-client refuses a name registered twice)."""

    def __init__(self) -> None:
        # Imported here: prometheus-client reads PROMETHEUS_MULTIPROC_DIR when it is first imported, and
        # the worker sets it before that (``multiprocess_dir``).
        from prometheus_client import Counter, Gauge, Histogram, values

        if os.environ.get(MULTIPROC_ENV):
            # Files named by host and process id, not the process id alone: worker containers that share
            # one metrics volume have the same process ids, and would write into each other's files.
            # prometheus-client asks for the name at every count, to see a fork: it is made again in the
            # child when one happens, rather than asking the system for the process id every time.
            host = socket.gethostname().replace("_", "-")
            name = [f"{host}-{os.getpid()}"]
            os.register_at_fork(after_in_child=lambda: name.__setitem__(0, f"{host}-{os.getpid()}"))
            values.ValueClass = values.MultiProcessValue(lambda: name[0])  # type: ignore[no-untyped-call]
        self.operations: Counter = Counter(
            _stem(OPERATIONS_TOTAL),
            "Operations ended, and messages answered from the ledger or refused, by outcome.",
            ["provider", "operation", "outcome"],
        )
        self.attempts: Counter = Counter(
            _stem(ATTEMPTS_TOTAL),
            "Provider calls, by result: succeeded, or the error's type.",
            ["provider", "operation", "result"],
        )
        self.duration: Histogram = Histogram(
            ATTEMPT_DURATION,
            "How long provider calls took, in seconds.",
            ["provider", "operation"],
            buckets=DURATION_BUCKETS,
        )
        self.deferrals: Counter = Counter(
            _stem(DEFERRALS_TOTAL),
            "Messages put back to wait without using an attempt, by reason.",
            ["provider", "reason"],
        )
        self.cost: Counter = Counter(
            _stem(COST_TOTAL),
            "What the provider calls cost (cost_per_call in the providers file, in its currency unit).",
            ["provider"],
        )
        self.quota: Gauge = Gauge(
            RATE_LIMIT_USAGE,
            "Share of a rate limit used: of ours over the last minute (source=limit), or of the provider's "
            "own quota as it last reported it (source=quota).",
            ["provider", "source"],
            multiprocess_mode="mostrecent",
        )
        self.webhooks: Counter = Counter(
            _stem(WEBHOOKS_RECEIVED_TOTAL),
            "Webhook events received (accepted, duplicate), and deliveries refused, by why (bad_signature, "
            "stale, too_large, invalid, unknown_provider).",
            ["provider", "type", "result"],
        )
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def labelled(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, looked up once per process: prometheus-client checks and converts
        the values, under a lock, at every call. (No metric here ever has a child removed.)"""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child


@cache
def _instruments() -> _Instruments:
    return _Instruments()


class Metrics:
    """What the pipeline counts. It watches calls as a guard does (it never says wait), and sees the
    outcome of every delivery."""

    def admit(self, attempt: Attempt) -> Defer | None:
        return None

    def release(self, attempt: Attempt) -> None:
        return None

    def observe(self, attempt: Attempt, observation: Observation) -> None:
        with _never_failing("an attempt"):
            self._observe(attempt, observation)

    def delivered(self, provider: ProviderSettings, operation: str, outcome: Outcome) -> None:
        with _never_failing("a delivery"):
            self._delivered(provider, operation, outcome)

    def _observe(self, attempt: Attempt, observation: Observation) -> None:
        meters = _instruments()
        provider, operation = attempt.provider, attempt.operation
        error = observation.error
        result = "succeeded" if error is None else error.error_type.value
        meters.labelled(meters.attempts, provider.name, operation, result).inc()
        meters.labelled(meters.duration, provider.name, operation).observe(observation.seconds)
        if provider.cost_per_call:
            meters.labelled(meters.cost, provider.name).inc(provider.cost_per_call)
        state = observation.rate_limit
        if state is not None and state.usage is not None:
            meters.labelled(meters.quota, provider.name, "quota").set(state.usage)

    def _delivered(self, provider: ProviderSettings, operation: str, outcome: Outcome) -> None:
        meters = _instruments()
        if isinstance(outcome, Defer):
            meters.labelled(meters.deferrals, provider.name, outcome.reason.value).inc()
        elif not isinstance(outcome, Retry):  # a retry's attempt is counted by ``observe``
            meters.labelled(meters.operations, provider.name, operation, ended_as(outcome)).inc()


@contextmanager
def _never_failing(what: str) -> Iterator[None]:
    """Counting must never change an operation's course (a metrics folder that cannot be written, say):
    the failure is logged, once per process, and the attempt goes on as if counted."""
    global _failure_logged
    try:
        yield
    except Exception:
        if not _failure_logged:
            _failure_logged = True
            log.exception("metrics: %s could not be counted (further failures are not logged)", what)


_failure_logged = False


def webhook_received(provider: str, event_type: str, result: str) -> None:
    """Count a webhook delivery: ``provider`` and ``event_type`` empty when not known to be authentic (a
    refused delivery's type, the name of a provider with no webhooks), so no sender can make new series.
    Counting never changes the receiver's answer."""
    with _never_failing("a webhook delivery"):
        _instruments().webhooks.labels(provider, event_type, result).inc()


def ended_as(outcome: Done | Failed) -> str:
    """The ``outcome`` label of a delivery that ended: succeeded, partial, failed, dead, replayed, conflict,
    or invalid."""
    if isinstance(outcome, Done):
        result: Mapping[str, Any] = outcome.result
        return "replayed" if result.get("replayed") else str(result.get("status", "succeeded"))
    if outcome.replayed:
        return "replayed"
    if outcome.error.type is ErrorType.IDEMPOTENCY_CONFLICT:
        return "conflict"
    if outcome.error.type is ErrorType.INVALID_REQUEST:
        return "invalid"
    return outcome.status.value


def metrics_dir() -> str:
    """Where this machine's worker processes keep their counts and its exporter reads them:
    ``PROMETHEUS_MULTIPROC_DIR``, or ``integrations-metrics`` in the temporary folder (then set in the
    environment, for the pool processes to inherit). Created if missing. Called before prometheus-client
    is first imported, which reads it once."""
    folder = os.environ.setdefault(MULTIPROC_ENV, os.path.join(tempfile.gettempdir(), "integrations-metrics"))
    os.makedirs(folder, exist_ok=True)
    return folder
