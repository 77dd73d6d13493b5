"""What one delivery of a message comes to: the ``Outcome`` that ``tasks/`` turns into Celery terms.

A leaf module: the pipeline, its strategies and the guards all speak these values.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from integrations.errors import ErrorInfo
from integrations.ledger.models import OperationStatus


class WaitReason(StrEnum):
    """Why a message goes back to its queue without using an attempt. The ledger's ``waiting`` column
    (``ops show``) keeps the reasons a guard gave; the others are said only to the task."""

    IN_FLIGHT = "in_flight"  # another worker's attempt holds the operation
    BACKOFF = "backoff"  # the next attempt is not due yet (``waiting`` is empty then)
    NEXT_CHUNK = "next_chunk"  # a batch goes on with its next chunk at once
    BREAKER_OPEN = "breaker_open"
    BREAKER_HALF_OPEN = "breaker_half_open"  # another worker's probe is in flight
    BREAKER_FORCED_OPEN = "breaker_forced_open"  # an operator holds the breaker open
    THROTTLED = "throttled"
    PAUSED = "paused"  # the provider answered 429 or its quota is spent: every worker holds off
    REDIS_UNAVAILABLE = "redis_unavailable"
    LEDGER_UNAVAILABLE = "ledger_unavailable"
    INTERNAL_ERROR = "internal_error"  # a bug; the message is put back a few times
    CONTENDED = "contended"  # other workers kept winning the claim
    TAKEN_OVER = "taken_over"  # our lease ran out and another worker claimed the operation


@dataclass(frozen=True)
class Done:
    result: dict[str, Any]


@dataclass(frozen=True)
class Retry:
    """The attempt failed in a way worth another try; ``delay`` seconds from now (an attempt was used)."""

    delay: float
    error: ErrorInfo


@dataclass(frozen=True)
class Defer:
    """Not now, and no attempt used: another attempt is in flight, the next is not due, or a guard said wait."""

    delay: float
    reason: WaitReason


@dataclass(frozen=True)
class Failed:
    """The operation ended failed or dead (or the message conflicts with its key)."""

    status: OperationStatus
    error: ErrorInfo
    operation_id: str | None = None
    replayed: bool = False

    @property
    def message(self) -> str:
        return f"{self.error.type.value}: {self.error.message}"


Outcome = Done | Retry | Defer | Failed


def poll_delay(redeliveries: int) -> float:
    """How soon a message waiting on another attempt looks again: 0.25 s doubling to 5 s."""
    return min(5.0, 0.25 * 2.0 ** min(redeliveries, 8))
