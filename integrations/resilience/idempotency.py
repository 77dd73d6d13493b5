"""Idempotency rules: what a message does given the ledger row for its (provider, key).

Pure functions over a record and the clock, so the rules are tested directly; the ledger makes the
chosen step atomic (see ``Ledger.start`` / ``Ledger.claim``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from integrations.ledger.models import OperationStatus
from integrations.ledger.records import OperationRecord
from integrations.outcome import WaitReason

GUARD_WAIT_TOLERANCE = timedelta(milliseconds=100)


def fingerprint(operation: str, payload: Any) -> str:
    """What makes two requests "the same": the operation and the payload, whatever the key order, and
    whatever a database did to whole numbers (PostgreSQL's JSONB hands ``1e16`` back as an integer)."""
    canonical = json.dumps(
        [operation, _canonical(payload)], sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value


@dataclass(frozen=True)
class Start:
    """Nobody has used the key: insert the operation and make the first attempt."""


@dataclass(frozen=True)
class Claim:
    """Make the next attempt of ``record`` (``takeover``: a valid request replaces an invalid one)."""

    record: OperationRecord
    takeover: bool = False


@dataclass(frozen=True)
class Replay:
    """The operation has ended: hand back its stored outcome without calling the provider."""

    record: OperationRecord


@dataclass(frozen=True)
class Conflict:
    """The key was used for another operation or payload."""

    record: OperationRecord


@dataclass(frozen=True)
class Wait:
    """Another attempt is in flight, or the next attempt is not due yet."""

    until: datetime
    reason: WaitReason


@dataclass(frozen=True)
class Exhausted:
    """The worker of the last allowed attempt was lost (its lease ran out): the operation ends dead."""

    record: OperationRecord


Decision = Start | Claim | Replay | Conflict | Wait | Exhausted


def decide(
    record: OperationRecord | None,
    request_fingerprint: str,
    now: datetime,
    *,
    max_attempts: int | None = None,
) -> Decision:
    if record is None:
        return Start()
    if record.invalid_request:
        return Claim(
            record, takeover=True
        )  # an invalid message binds nothing: a corrected one may use the key
    if record.fingerprint != request_fingerprint:
        return Conflict(record)
    if record.status.terminal:
        return Replay(record)
    if record.status is OperationStatus.RUNNING:
        if record.lease_expires_at is not None and record.lease_expires_at > now:
            return Wait(record.lease_expires_at, WaitReason.IN_FLIGHT)
        # The worker that held it is gone: its lease ran out. It may have been the last attempt allowed.
        if max_attempts is not None and record.attempts >= max_attempts:
            return Exhausted(record)
        return Claim(record)
    # A guard's wait is checked again by the guard itself, so a message back a hair early goes on.
    tolerance = GUARD_WAIT_TOLERANCE if record.waiting else timedelta(0)
    if record.next_attempt_at is not None and record.next_attempt_at - tolerance > now:
        return Wait(record.next_attempt_at, _stored_reason(record.waiting))
    return Claim(record)


def _stored_reason(waiting: str | None) -> WaitReason:
    """The reason a guard gave, as the row keeps it. One this code does not know (written by another
    version) is waited out all the same, as a backoff."""
    try:
        return WaitReason(waiting) if waiting else WaitReason.BACKOFF
    except ValueError:
        return WaitReason.BACKOFF
