"""What one delivery of a message comes to: the ``Outcome`` that ``tasks/`` turns into Celery terms.

A leaf module: the pipeline, its strategies and the guards all speak these values.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from integrations.errors import ErrorInfo
from integrations.ledger.models import OperationStatus
from integrations.ledger.records import OperationRecord, dump_items


class WaitReason(StrEnum):
    """Why a message goes back to its queue without using an attempt; the ledger's ``waiting`` column
    and ``ops show`` name the reasons a guard or a backoff gave."""

    IN_FLIGHT = "in_flight"  # another worker's attempt holds the operation
    BACKOFF = "backoff"  # the next attempt is not due yet
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


def result(record: OperationRecord, *, replayed: bool) -> dict[str, Any]:
    """The task result of a succeeded operation, or of an ended batch, as ``AsyncResult.get()`` returns
    it. A batch has ``items`` (``{key, status, attempts, error?, response?}`` each) for ``response``, and
    ``status`` ``succeeded``, ``partial`` or ``failed``; ``attempts`` counts its calls."""
    common = {
        "status": record.status.value,
        "provider": record.provider,
        "operation": record.operation,
        "idempotency_key": record.idempotency_key,
        "operation_id": record.id,
        "attempts": record.attempts,
        "replayed": replayed,
    }
    if record.items is not None:
        return common | {"items": dump_items(record.items)}
    return common | {"response": record.response}
