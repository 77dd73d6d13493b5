"""Idempotency rules: what a message does given the ledger row for its (provider, key).

Pure functions over a record and the clock, so the rules are tested directly; the ledger makes the
chosen step atomic (see ``Ledger.start`` / ``Ledger.claim``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from integrations.errors import ErrorType
from integrations.ledger.models import OperationStatus
from integrations.ledger.store import OperationRecord


def fingerprint(operation: str, payload: Any) -> str:
    """What makes two requests "the same": the operation and the payload, whatever the key order."""
    canonical = json.dumps([operation, payload], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


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
    reason: str


Decision = Start | Claim | Replay | Conflict | Wait


def decide(record: OperationRecord | None, request_fingerprint: str, now: datetime) -> Decision:
    if record is None:
        return Start()
    if record.fingerprint != request_fingerprint:
        invalid = record.status is OperationStatus.FAILED and (record.error or {}).get("type") == str(
            ErrorType.INVALID_REQUEST
        )
        return Claim(record, takeover=True) if invalid else Conflict(record)
    if record.status.terminal:
        return Replay(record)
    if record.status is OperationStatus.RUNNING:
        if record.lease_expires_at is not None and record.lease_expires_at > now:
            return Wait(record.lease_expires_at, "in_flight")
        return Claim(record)  # the worker that held it is gone: its lease ran out
    if record.next_attempt_at is not None and record.next_attempt_at > now:
        return Wait(record.next_attempt_at, "backoff")
    return Claim(record)
