"""The values the ledger hands out and takes: an operation's record, a new operation, a batch item's state,
an entry of an operation's attempt history, an operator's recorded action.

Rows are converted to and from these at the ledger's edge (``store.py``): the rest of the core never sees
a row, and batch items only as ``ItemState``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, TypedDict

from pydantic import BaseModel

from integrations.errors import ErrorInfo, ErrorType
from integrations.ledger.models import OperationStatus


class ItemStatus(StrEnum):
    QUEUED = "queued"  # not sent yet, or to be sent again
    RUNNING = "running"  # in the call under way (or in one whose worker was lost)
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # for good: rejected, invalid, or retries exhausted


class ItemState(BaseModel):
    """One item of a batch operation, as the ledger keeps it."""

    key: str
    status: ItemStatus = ItemStatus.QUEUED
    attempts: int = 0
    error: ErrorInfo | None = None
    response: Any = None

    def to_json(self) -> dict[str, Any]:
        """``{key, status, attempts, error?, response?}``: what results and ``ops show`` give."""
        return self.model_dump(mode="json", exclude_none=True)


Items = tuple[ItemState, ...]


class AttemptEntry(TypedDict):
    """One attempt as the operation's history keeps it: never the payload nor what the provider answered."""

    attempt: int  # its number, counted from 1 again after a replay or a takeover
    started_at: str | None  # ISO 8601, UTC: when it was claimed
    seconds: float | None  # from its claim to its end; None when its worker was lost
    outcome: str  # succeeded, retry, continued (a batch's next chunk), failed, dead, partial, or lost
    status_code: int | None
    error_type: str | None
    error: str | None  # the error's message, cut to MAX_HISTORY_ERROR characters


History = tuple[AttemptEntry, ...]


@dataclass(frozen=True)
class NewOperation:
    """What identifies an operation a message asks for, before the ledger has a row for it."""

    provider: str
    operation: str
    idempotency_key: str | None  # None only for a message whose key itself was invalid
    fingerprint: str
    payload: Any
    request_id: str | None
    task_id: str | None = None  # the message's id, kept for the messages that follow it


@dataclass(frozen=True)
class OperationRecord:
    """A ledger row, detached from any database session. ``items``: a batch's item states, in the
    order of the message's items (``None`` for a single operation)."""

    id: str
    provider: str
    operation: str
    idempotency_key: str | None
    fingerprint: str
    payload: Any
    request_id: str | None
    status: OperationStatus
    attempts: int
    replays: int
    version: int
    error: dict[str, Any] | None
    response: Any
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    next_attempt_at: datetime | None
    lease_expires_at: datetime | None
    waiting: str | None
    items: Items | None = None
    task_id: str | None = None
    swept_at: datetime | None = None
    history: History = ()
    conflicts: int = 0
    last_conflict_at: datetime | None = None
    discarded_at: datetime | None = None
    discarded_by: str | None = None
    discard_reason: str | None = None
    # The provider's id of what the operation made, when it succeeded and its adapter reads one from the
    # answer (``Adapter.reference``): a Stripe PaymentIntent's ``pi_…``. Inbound events find it by this.
    reference: str | None = None

    @property
    def discarded(self) -> bool:
        """A dead letter an operator settled (``dlq discard``): out of ``dlq list`` and of filtered replays."""
        return self.discarded_at is not None

    @property
    def invalid_request(self) -> bool:
        """The row of a message that broke the contract: it binds nothing, and a corrected message may
        take its key over."""
        return (
            self.status is OperationStatus.FAILED
            and (self.error or {}).get("type") == ErrorType.INVALID_REQUEST
        )

    @property
    def where(self) -> str:
        """``<provider>.<operation>``, as messages and logs name an operation."""
        return f"{self.provider}.{self.operation}"

    def to_json(self) -> dict[str, Any]:
        """The record as operators see it (``integrations ops show --json``)."""
        data = {"operation_id": self.id} | asdict(self)
        del data["id"], data["fingerprint"], data["version"]
        data["status"] = self.status.value
        data["items"] = dump_items(self.items)
        data["history"] = [dict(entry) for entry in self.history]
        for name, value in data.items():
            if isinstance(value, datetime):
                data[name] = value.isoformat()
        return data


class AuditAction(StrEnum):
    """What an operator did, as ``audit list`` names it."""

    LIMITS_SET = "limits.set"
    LIMITS_RESET = "limits.reset"
    BREAKER_OPEN = "breaker.open"
    BREAKER_CLOSE = "breaker.close"
    DLQ_REPLAY = "dlq.replay"
    DLQ_DISCARD = "dlq.discard"
    EVENTS_REPLAY = "events.replay"


@dataclass(frozen=True)
class ActionRecord:
    """One operator action: who (``actor``), when (``at``), what (``action`` on ``target``), why
    (``reason``), and what changed (``details``: e.g. the old and the new limit)."""

    id: int
    at: datetime
    actor: str
    action: str
    target: str
    reason: str | None
    details: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"at": self.at.isoformat()}


def dump_items(items: Items | None) -> list[dict[str, Any]] | None:
    return None if items is None else [item.to_json() for item in items]


def load_items(raw: Any) -> Items | None:
    return None if raw is None else tuple(ItemState.model_validate(item) for item in raw)
