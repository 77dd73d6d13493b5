"""Batch operations: the state of each item, which items the next call sends, and how a batch ends.

A batch operation's payload is ``{"items": [...]}``; each item has a key unique within the operation. The
ledger keeps one state per item, in the order of the message's items, and the pipeline writes them with
each claim and finish. The rules are pure functions over that list, so they are tested directly:

- a call sends at most the provider's batch size, taken from the items sent the fewest times: fresh items
  go first, and items that failed in a round wait for the backoff before the next round;
- an item that succeeded is never sent again; one that failed for good is never retried;
- the batch ends ``succeeded`` (every item), ``failed`` (no item) or ``partial``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from integrations.errors import ErrorInfo, ErrorType, OperationError
from integrations.ledger.models import OperationStatus

# A batch message is kept whole in the ledger row, with one state per item: this bounds the row.
MAX_BATCH_ITEMS = 10_000
MAX_ITEM_KEY_LENGTH = 255


class ItemStatus(StrEnum):
    QUEUED = "queued"  # not sent yet, or to be sent again
    RUNNING = "running"  # in the call under way (or in one whose worker was lost)
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # for good: rejected, invalid, or retries exhausted


@dataclass(frozen=True)
class BatchItem:
    """One item of a batch message: its key, its position in ``payload.items`` and its validated value
    (``None``, with ``problem`` saying why, when the item itself is invalid)."""

    key: str
    position: int
    value: BaseModel | None
    problem: str | None = None


@dataclass(frozen=True)
class ItemResult:
    """How one item of a call went, as the adapter reads it from the answer: ``error`` None is success."""

    key: str
    error: OperationError | None = None
    response: Any = None


class ItemState(BaseModel):
    """An item as the ledger keeps it."""

    key: str
    status: ItemStatus = ItemStatus.QUEUED
    attempts: int = 0
    error: ErrorInfo | None = None
    response: Any = None

    def to_json(self) -> dict[str, Any]:
        """``{key, status, attempts, error?, response?}``: what results and ``ops show`` give."""
        return self.model_dump(mode="json", exclude_none=True)


def initial_states(items: Sequence[BatchItem]) -> list[ItemState]:
    """Every item queued, except invalid ones, which fail at once without being sent."""
    return [
        ItemState(key=item.key)
        if item.problem is None
        else ItemState(
            key=item.key,
            status=ItemStatus.FAILED,
            error=ErrorInfo(type=ErrorType.INVALID_REQUEST, message=item.problem),
        )
        for item in items
    ]


def load(raw: Any) -> list[ItemState]:
    return [ItemState.model_validate(item) for item in raw or []]


def dump(states: Sequence[ItemState]) -> list[dict[str, Any]]:
    return [state.to_json() for state in states]


def reopen(states: Sequence[ItemState], *, max_attempts: int, where: str) -> list[ItemState]:
    """Before a claim: items left running belong to a call whose worker was lost (the operation's lease
    ran out). Each goes back to the queue, or fails if that call was its last attempt."""
    reopened = []
    for state in states:
        if state.status is ItemStatus.RUNNING:
            if state.attempts >= max_attempts:
                message = (
                    f"{where}: item {state.key!r}: gave up after {state.attempts} attempts; the worker of the "
                    "last one was lost before it recorded an outcome (check with the provider whether it "
                    "carried it out)"
                )
                state = state.model_copy(
                    update={
                        "status": ItemStatus.FAILED,
                        "error": ErrorInfo(type=ErrorType.RETRIES_EXHAUSTED, message=message),
                    }
                )
            else:
                state = state.model_copy(update={"status": ItemStatus.QUEUED})
        reopened.append(state)
    return reopened


def for_replay(states: Sequence[ItemState]) -> list[ItemState]:
    """The states of a batch sent again by ``dlq replay``: items that failed go back to the queue with a
    fresh attempt budget, except invalid ones (the same item would be invalid again)."""
    return [
        ItemState(key=state.key)
        if state.status is ItemStatus.FAILED
        and (state.error is None or state.error.type is not ErrorType.INVALID_REQUEST)
        else state
        for state in states
    ]


def next_chunk(states: Sequence[ItemState], max_items: int) -> list[int]:
    """Positions of the items the next call sends: queued ones sent the fewest times, in order."""
    queued = [i for i, state in enumerate(states) if state.status is ItemStatus.QUEUED]
    if not queued:
        return []
    fewest = min(states[i].attempts for i in queued)
    return [i for i in queued if states[i].attempts == fewest][:max_items]


def start_chunk(states: Sequence[ItemState], chunk: Sequence[int]) -> list[ItemState]:
    """The states as the claim writes them: the chunk's items running, their attempt counted."""
    started = list(states)
    for i in chunk:
        started[i] = started[i].model_copy(
            update={"status": ItemStatus.RUNNING, "attempts": started[i].attempts + 1}
        )
    return started


def record_results(
    states: Sequence[ItemState],
    results: Mapping[str, ItemResult],
    *,
    max_attempts: int,
    where: str,
) -> list[ItemState]:
    """The states after a call: each running item takes its result. A retryable failure goes back to
    the queue while attempts remain; the last one fails the item as ``retries_exhausted``."""
    recorded = []
    for state in states:
        if state.status is ItemStatus.RUNNING:
            result = results[state.key]
            error = result.error
            if error is None:
                state = state.model_copy(
                    update={"status": ItemStatus.SUCCEEDED, "error": None, "response": result.response}
                )
            else:
                info = error.info()
                status = ItemStatus.FAILED
                if error.retryable and state.attempts < max_attempts:
                    status = ItemStatus.QUEUED
                elif error.retryable:
                    info = ErrorInfo(
                        type=ErrorType.RETRIES_EXHAUSTED,
                        message=(
                            f"{where}: item {state.key!r}: gave up after {state.attempts} attempts; "
                            f"last error: {info.message}"
                        ),
                        status_code=info.status_code,
                        body=info.body,
                    )
                state = state.model_copy(update={"status": status, "error": info})
        recorded.append(state)
    return recorded


def sent_this_round(states: Sequence[ItemState], chunk_attempts: int) -> bool:
    """Whether items of the round just sent (those sent fewer times than the chunk) are still queued:
    the next chunk goes at once; otherwise the queued items failed in this round and wait the backoff."""
    return any(s.status is ItemStatus.QUEUED and s.attempts < chunk_attempts for s in states)


def final_status(states: Sequence[ItemState]) -> OperationStatus | None:
    """How the batch ended, or ``None`` while items are queued or running."""
    if any(s.status in (ItemStatus.QUEUED, ItemStatus.RUNNING) for s in states):
        return None
    succeeded = sum(s.status is ItemStatus.SUCCEEDED for s in states)
    if succeeded == len(states):
        return OperationStatus.SUCCEEDED
    return OperationStatus.PARTIAL if succeeded else OperationStatus.FAILED


def counts(states: Sequence[ItemState]) -> dict[str, int]:
    """How many items are in each status."""
    found: dict[str, int] = {}
    for state in states:
        found[state.status.value] = found.get(state.status.value, 0) + 1
    return found


def chunk_idempotency_key(idempotency_key: str, keys: Sequence[str]) -> str:
    """The ``Idempotency-Key`` of one call: the same for the same items of the same operation, and
    different for each chunk, so a provider that honours the header never answers one chunk with
    another's stored answer."""
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
    key = f"{idempotency_key}/{digest}"
    if len(key) > MAX_ITEM_KEY_LENGTH:
        key = f"{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}/{digest}"
    return key
