"""Batch operations: the state of each item, which items the next call sends, and how a batch ends.

A batch operation's payload is ``{"items": [...]}``; each item has a key unique within the operation. The
ledger keeps one state per item, in the order of the message's items, and the pipeline writes them with
each claim and finish. The rules are pure functions over that list, so they are tested directly:

- a call sends at most the provider's batch size, taken from the items sent the fewest times: fresh items
  go first, and items that failed in a round wait for the backoff before the next round; the items of a
  call whose worker was lost go again together, as they were sent (same ``Idempotency-Key``);
- an item that succeeded is never sent again; one that failed for good is never retried;
- the batch ends ``succeeded`` (every item), ``failed`` (no item) or ``partial``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from integrations.errors import ErrorInfo, ErrorType, OperationError, last_attempt_lost
from integrations.ledger.models import MAX_KEY_LENGTH, OperationStatus
from integrations.ledger.records import Items, ItemState, ItemStatus
from integrations.resilience.retry import RetryPolicy

# A batch message is kept whole in the ledger row, with one state per item, rewritten after each call:
# this bounds the row and the work per call.
MAX_BATCH_ITEMS = 1000


@dataclass(frozen=True)
class BatchItem:
    """One item of a batch message: its key, its position in ``payload.items`` and its validated value
    (``None``, with ``problem`` naming the field, when the item itself is invalid). ``sent_unanswered``:
    the item's last call may have been carried out without its answer reaching us (a timeout, a cut
    connection, a lost worker), so an adapter may read "already exists" as that call's success."""

    key: str
    position: int
    value: BaseModel | None
    problem: str | None = None
    sent_unanswered: bool = False


@dataclass(frozen=True)
class ItemResult:
    """How one item of a call went, as the adapter reads it from the answer: ``error`` None is success."""

    key: str
    error: OperationError | None = None
    response: Any = None


def initial_states(items: Sequence[BatchItem], where: str) -> Items:
    """Every item queued, except invalid ones, which fail at once without being sent."""
    return tuple(
        ItemState(key=item.key)
        if item.problem is None
        else ItemState(
            key=item.key,
            status=ItemStatus.FAILED,
            error=ErrorInfo(type=ErrorType.INVALID_REQUEST, message=f"{where}: {item.problem}"),
        )
        for item in items
    )


def plan(states: Items, *, max_items: int, max_attempts: int, where: str) -> tuple[Items, list[int]]:
    """The states as the next claim finds them, and the positions of the items its call sends.

    Items left running belong to a call whose worker was lost (the operation's lease ran out): each goes
    back to the queue, or fails if that call was its last attempt, and those queued again are sent first,
    together, so the provider sees the same call with the same ``Idempotency-Key``."""
    reopened = []
    lost = []
    for position, state in enumerate(states):
        if state.status is ItemStatus.RUNNING:
            if state.attempts >= max_attempts:
                error = last_attempt_lost(f"{where}: item {state.key!r}", state.attempts)
                state = state.model_copy(update={"status": ItemStatus.FAILED, "error": error})
            else:
                message = f"{where}: item {state.key!r}: the worker of its call was lost before it recorded an outcome"
                error = ErrorInfo(type=ErrorType.TIMEOUT, message=message)
                state = state.model_copy(update={"status": ItemStatus.QUEUED, "error": error})
                lost.append(position)
        reopened.append(state)
    return tuple(reopened), lost[:max_items] or next_chunk(reopened, max_items)


def for_replay(states: Items) -> Items:
    """The states of a batch sent again by ``dlq replay``: items that failed go back to the queue with a
    fresh attempt budget, except those never sent (invalid: the same item would be invalid again)."""
    return tuple(
        ItemState(key=state.key) if state.status is ItemStatus.FAILED and state.attempts > 0 else state
        for state in states
    )


def sent_unanswered(state: ItemState) -> bool:
    """Whether the item's last call may have been carried out though no answer came back."""
    return state.error is not None and state.error.type in (ErrorType.TIMEOUT, ErrorType.CONNECTION_ERROR)


def next_chunk(states: Sequence[ItemState], max_items: int) -> list[int]:
    """Positions of the items the next call sends: queued ones sent the fewest times, in order."""
    queued = [i for i, state in enumerate(states) if state.status is ItemStatus.QUEUED]
    if not queued:
        return []
    fewest = min(states[i].attempts for i in queued)
    return [i for i in queued if states[i].attempts == fewest][:max_items]


def start_chunk(states: Items, chunk: Sequence[int]) -> Items:
    """The states as the claim writes them: the chunk's items running, their attempt counted."""
    started = list(states)
    for i in chunk:
        started[i] = started[i].model_copy(
            update={"status": ItemStatus.RUNNING, "attempts": started[i].attempts + 1}
        )
    return tuple(started)


def record_results(
    states: Items, results: Mapping[str, ItemResult] | OperationError, *, policy: RetryPolicy, where: str
) -> Items:
    """The states after a call: each running item takes its result, or the call's error when the whole
    call failed (without its body, which the operation keeps once). The retry policy says whether a
    failed item goes back to the queue or fails for good."""
    whole_call = isinstance(results, OperationError)
    recorded = []
    for state in states:
        if state.status is ItemStatus.RUNNING:
            result = (
                ItemResult(state.key, results) if isinstance(results, OperationError) else results[state.key]
            )
            state = _recorded(state, result, policy, f"{where}: item {state.key!r}", keep_body=not whole_call)
        recorded.append(state)
    return tuple(recorded)


def _recorded(
    state: ItemState, result: ItemResult, policy: RetryPolicy, what: str, *, keep_body: bool
) -> ItemState:
    if result.error is None:
        return state.model_copy(
            update={"status": ItemStatus.SUCCEEDED, "error": None, "response": result.response}
        )
    given_up = policy.give_up(result.error, state.attempts, what)
    if given_up is None:
        status, info = ItemStatus.QUEUED, result.error.info()
    else:
        status, info = ItemStatus.FAILED, given_up.error
    if not keep_body:
        info = info.model_copy(update={"body": None})
    return state.model_copy(update={"status": status, "error": info})


def round_delay(
    policy: RetryPolicy, attempts: int, results: Mapping[str, ItemResult] | OperationError
) -> float:
    """How long the items that failed in a round wait: the backoff after their ``attempts``, and never
    less than the longest ``Retry-After`` the provider gave in the call."""
    errors = [results] if isinstance(results, OperationError) else [r.error for r in results.values()]
    retry_after = max((e.retry_after or 0.0 for e in errors if e is not None), default=0.0)
    return policy.delay(attempts, retry_after or None)


def retry_error(states: Items) -> ErrorInfo | None:
    """The error of an item waiting for another try, to report with the retry."""
    return next((s.error for s in states if s.status is ItemStatus.QUEUED and s.error is not None), None)


def sent_this_round(states: Items, chunk_attempts: int) -> bool:
    """Whether items of the round just sent (those sent fewer times than the chunk) are still queued:
    the next chunk goes at once; otherwise the queued items failed in this round and wait the backoff."""
    return any(s.status is ItemStatus.QUEUED and s.attempts < chunk_attempts for s in states)


def final_status(states: Items) -> OperationStatus | None:
    """How the batch ended, or ``None`` while items are queued or running."""
    if any(s.status in (ItemStatus.QUEUED, ItemStatus.RUNNING) for s in states):
        return None
    succeeded = sum(s.status is ItemStatus.SUCCEEDED for s in states)
    if succeeded == len(states):
        return OperationStatus.SUCCEEDED
    return OperationStatus.PARTIAL if succeeded else OperationStatus.FAILED


def counts(states: Items) -> dict[str, int]:
    """How many items are in each status."""
    found: dict[str, int] = {}
    for state in states:
        found[state.status.value] = found.get(state.status.value, 0) + 1
    return found


def summary(states: Items) -> str:
    """``2 succeeded, 1 failed``-style counts, for people."""
    return ", ".join(f"{count} {status}" for status, count in sorted(counts(states).items()))


def item_key(idempotency_key: str, position: int) -> str:
    """The key of an item that has none of its own: stable across retries, unique in the operation."""
    key = f"{idempotency_key}#{position}"
    if len(key) > MAX_KEY_LENGTH:
        key = f"{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}#{position}"
    return key


def chunk_idempotency_key(idempotency_key: str, keys: Sequence[str]) -> str:
    """The ``Idempotency-Key`` of one call: the same for the same items of the same operation, and
    different for each chunk, so a provider that honours the header never answers one chunk with
    another's stored answer."""
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
    key = f"{idempotency_key}/{digest}"
    if len(key) > MAX_KEY_LENGTH:
        key = f"{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}/{digest}"
    return key
