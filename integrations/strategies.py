"""Steps 5 and 6 of a delivery for the two kinds of operation: a single call, or a batch in chunks.

The pipeline picks a strategy once, after parsing, and asks it three things: ``plan`` what the next call
sends (given the ledger row, if any), ``execute`` the call once the attempt is claimed, and ``settle`` a
batch that has nothing left to send. No other step asks "is this a batch?".
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Protocol

from integrations import batch
from integrations.adapters.base import Adapter
from integrations.batch import BatchItem
from integrations.errors import ErrorType
from integrations.guard import Attempt, GuardChain
from integrations.ledger.records import Items, ItemStatus, OperationRecord
from integrations.outcome import Defer, Outcome, Retry, WaitReason
from integrations.providers import MAX_COUNTDOWN
from integrations.recorder import Recorder, log_contract_violation
from integrations.resilience.retry import GiveUp, RetryPolicy

log = logging.getLogger("integrations.operations")


@dataclass(frozen=True)
class Plan:
    """What the next call sends. For a batch: ``items``, the item states as found (calls of lost workers
    reopened); ``chunk``, the positions the call sends; ``started``, the states the claim writes."""

    items: Items | None = None
    chunk: tuple[int, ...] = ()
    started: Items | None = None

    @property
    def nothing_to_send(self) -> bool:
        return self.items is not None and not self.chunk


class Strategy(Protocol):
    @property
    def max_attempts(self) -> int | None:
        """The attempt budget of the operation, or None when each item counts its own (a batch)."""
        ...

    def plan(self, record: OperationRecord | None) -> Plan:
        """What to send, given the operation's row (``None``: start afresh)."""
        ...

    def execute(self, attempt: Attempt, claimed: OperationRecord, plan: Plan) -> Outcome:
        """Make the call the claimed attempt stands for, and record how it went."""
        ...

    def settle(self, record: OperationRecord, plan: Plan) -> Outcome | None:
        """End an operation with nothing left to send; ``None`` if the row changed meanwhile."""
        ...


@dataclass(frozen=True)
class Single:
    """One call per attempt; the retry policy decides after a failure."""

    adapter: Adapter
    guards: GuardChain
    policy: RetryPolicy
    recorder: Recorder

    @property
    def max_attempts(self) -> int | None:
        return self.policy.max_attempts

    def plan(self, record: OperationRecord | None) -> Plan:
        return Plan()

    def settle(self, record: OperationRecord, plan: Plan) -> Outcome | None:
        raise AssertionError("a single operation always has its call to make")

    def execute(self, attempt: Attempt, claimed: OperationRecord, plan: Plan) -> Outcome:
        assert claimed.idempotency_key is not None and claimed.request_id is not None
        key, request_id = claimed.idempotency_key, claimed.request_id
        reply, error = self.guards.call(
            attempt,
            lambda: self.adapter.call(
                attempt.operation, attempt.payload, idempotency_key=key, request_id=request_id
            ),
        )
        if error is None:
            assert reply is not None
            return self.recorder.succeeded(claimed, reply.model.model_dump(mode="json", by_alias=True))
        if error.error_type is ErrorType.CONTRACT_VIOLATION:
            log_contract_violation(claimed, error)
        verdict = self.policy.after(error, claimed.attempts, claimed.where)
        if isinstance(verdict, GiveUp):
            return self.recorder.gave_up(claimed, verdict)
        info = error.info()
        if not self.recorder.queued(claimed, info, verdict.seconds):
            return self.recorder.taken_over(claimed)
        log.warning(
            "retrying %s key=%s attempt %d/%d in %.2fs: %s",
            claimed.where,
            claimed.idempotency_key,
            claimed.attempts,
            self.policy.max_attempts,
            verdict.seconds,
            info.message,
        )
        return Retry(min(verdict.seconds, MAX_COUNTDOWN), info)


@dataclass(frozen=True)
class Batch:
    """Items in chunks of the provider's batch size: a call per chunk, each item's outcome recorded, only
    unsucceeded retryable items sent again (the rules are in ``integrations.batch``)."""

    adapter: Adapter
    guards: GuardChain
    policy: RetryPolicy
    recorder: Recorder
    items: tuple[BatchItem, ...]
    max_items: int
    where: str

    max_attempts = None  # each item counts its own; the operation's count is of calls

    def plan(self, record: OperationRecord | None) -> Plan:
        found = record.items if record is not None and record.items is not None else None
        states = found if found is not None else batch.initial_states(self.items, self.where)
        states, chunk = batch.plan(
            states, max_items=self.max_items, max_attempts=self.policy.max_attempts, where=self.where
        )
        return Plan(states, tuple(chunk), batch.start_chunk(states, chunk))

    def settle(self, record: OperationRecord, plan: Plan) -> Outcome | None:
        assert plan.items is not None
        return self.recorder.settled(record, plan.items)

    def execute(self, attempt: Attempt, claimed: OperationRecord, plan: Plan) -> Outcome:
        assert claimed.idempotency_key is not None and claimed.request_id is not None
        assert plan.items is not None and claimed.items is not None
        sent = [
            replace(self.items[i], sent_unanswered=batch.sent_unanswered(plan.items[i])) for i in plan.chunk
        ]
        call_key = batch.chunk_idempotency_key(claimed.idempotency_key, [item.key for item in sent])
        request_id = claimed.request_id
        reply, error = self.guards.call(
            attempt,
            lambda: self.adapter.call_batch(
                attempt.operation, sent, idempotency_key=call_key, request_id=request_id
            ),
        )
        if error is not None and error.error_type is ErrorType.CONTRACT_VIOLATION:
            log_contract_violation(claimed, error)
        results = reply.results if reply is not None else error
        assert results is not None
        states = batch.record_results(claimed.items, results, policy=self.policy, where=claimed.where)
        # The whole call's error, with the provider's answer, is kept once, on the operation.
        call_error = error.info() if error is not None else None
        status = batch.final_status(states)
        if status is not None:
            return self.recorder.settled(claimed, states, status, call_error) or self.recorder.taken_over(
                claimed
            )
        chunk_attempts = states[plan.chunk[0]].attempts
        if batch.sent_this_round(states, chunk_attempts):
            # The round goes on with the next chunk, at once.
            if not self.recorder.queued(claimed, call_error, None, states):
                return self.recorder.taken_over(claimed)
            return Defer(0.0, WaitReason.NEXT_CHUNK)
        # Every item of the round was sent: those that failed and may be retried wait for the backoff.
        delay = batch.round_delay(self.policy, chunk_attempts, results)
        if not self.recorder.queued(claimed, call_error, delay, states):
            return self.recorder.taken_over(claimed)
        retried = batch.retry_error(states)
        assert retried is not None  # items are queued, and only a retryable failure queues one again
        log.warning(
            "retrying %d item(s) of %s key=%s in %.2fs (attempt %d/%d): %s",
            batch.counts(states).get(ItemStatus.QUEUED.value, 0),
            claimed.where,
            claimed.idempotency_key,
            delay,
            chunk_attempts,
            self.policy.max_attempts,
            retried.message,
        )
        return Retry(min(delay, MAX_COUNTDOWN), retried)
