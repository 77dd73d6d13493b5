"""Steps 3 and 6 of a delivery for the two kinds of operation: a single call, or a batch in chunks.

The pipeline picks a strategy once, after parsing, and asks it three things: ``plan`` what the next call
sends (given the ledger row, if any), ``execute`` the call once the attempt is claimed, and ``settle`` a
batch that has nothing left to send. No step of an attempt asks "is this a batch?". Both end an attempt through
the ``Recorder``, which writes the ledger, logs, and hands back the ``Outcome``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Protocol

from integrations import batch
from integrations.adapters.base import Adapter
from integrations.batch import BatchItem
from integrations.errors import ErrorInfo, ErrorType, LedgerUnavailable, OperationError, last_attempt_lost
from integrations.guard import Attempt, GuardChain
from integrations.ledger.engine import Clock
from integrations.ledger.models import MAX_KEY_LENGTH, OperationStatus
from integrations.ledger.records import Items, ItemStatus, OperationRecord, dump_items
from integrations.ledger.store import Ledger
from integrations.outcome import Defer, Done, Failed, Outcome, Retry, WaitReason, poll_delay
from integrations.providers import MAX_COUNTDOWN
from integrations.resilience.retry import GiveUp, RetryPolicy

log = logging.getLogger("integrations.operations")

# Writing an attempt's outcome again while the ledger is out of reach: first after this many seconds,
# doubling up to the longest, and never so late that the lease might run out first.
FINISH_RETRY_FIRST = 0.25
FINISH_RETRY_LONGEST = 2.0
FINISH_RETRY_MARGIN = 1.0


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

    @property
    def claims_unread(self) -> bool:
        """Whether the next call is the same whatever the row says (a single call): the ledger may then
        claim a due attempt without the row being read first."""
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

    claims_unread = True

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
            response = reply.model.model_dump(mode="json", by_alias=True)
            reference = reference_of(self.adapter, claimed, response)
            return self.recorder.succeeded(claimed, response, reference)
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
            extra=self.recorder.context(claimed, "retry"),
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
    claims_unread = False  # what the next chunk sends depends on the items' states in the row

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
            extra=self.recorder.context(claimed, "retry"),
        )
        return Retry(min(delay, MAX_COUNTDOWN), retried)


@dataclass(frozen=True)
class Recorder:
    """The end of an attempt written to the ledger, logged, and turned into an ``Outcome``. Every write
    compares the row's version, so ``None`` from the ledger means the row changed since it was read: for a
    claimed attempt, another worker took the operation over after our lease ran out, and its outcome is
    the one that counts.

    When the ledger cannot be reached just as an attempt ends (the database restarting), the outcome is
    kept and written again, for as long as the attempt's lease leaves room: otherwise the operation would
    wait out its lease and call the provider a second time for an outcome it already has."""

    ledger: Ledger
    clock: Clock
    sleep: Callable[[float], None] = time.sleep

    def _finish(
        self, record: OperationRecord, status: OperationStatus, **values: Any
    ) -> OperationRecord | None:
        wait = FINISH_RETRY_FIRST
        while True:
            try:
                return self.ledger.finish(record, status, **values)
            except LedgerUnavailable as exc:
                lease = record.lease_expires_at
                if lease is None or self.clock() + timedelta(seconds=wait + FINISH_RETRY_MARGIN) >= lease:
                    raise
                log.warning(
                    "%s key=%s: the ledger cannot be reached to record the attempt's outcome; trying again "
                    "in %.2fs: %s",
                    record.where,
                    record.idempotency_key,
                    wait,
                    exc,
                )
                self.sleep(wait)
                wait = min(wait * 2, FINISH_RETRY_LONGEST)

    def succeeded(self, claimed: OperationRecord, response: Any, reference: str | None = None) -> Outcome:
        finished = self._finish(claimed, OperationStatus.SUCCEEDED, response=response, reference=reference)
        if finished is None:
            return self.taken_over(claimed)
        log.info(
            "succeeded %s key=%s attempts=%d",
            finished.where,
            finished.idempotency_key,
            finished.attempts,
            extra=self.context(claimed, "succeeded"),
        )
        return Done(result(finished, replayed=False))

    def queued(
        self,
        claimed: OperationRecord,
        error: ErrorInfo | None,
        delay: float | None,
        items: Items | None = None,
    ) -> bool:
        """The operation waits for its next attempt, ``delay`` seconds from now (``None``: at once, as a
        batch's next chunk does); False if another worker took it over meanwhile."""
        due = None if delay is None else self.clock() + timedelta(seconds=delay)
        finished = self._finish(
            claimed, OperationStatus.QUEUED, error=error, next_attempt_at=due, items=items
        )
        return finished is not None

    def gave_up(self, claimed: OperationRecord, verdict: GiveUp) -> Outcome:
        finished = self._finish(claimed, verdict.status, error=verdict.error)
        if finished is None:
            return self.taken_over(claimed)
        log.warning(
            "%s %s key=%s operation_id=%s: %s",
            verdict.status.value,
            claimed.where,
            claimed.idempotency_key,
            claimed.id,
            verdict.error.message,
            extra=self.context(claimed, verdict.status.value),
        )
        return Failed(verdict.status, verdict.error, claimed.id)

    def settled(
        self,
        record: OperationRecord,
        items: Items,
        status: OperationStatus | None = None,
        error: ErrorInfo | None = None,
    ) -> Outcome | None:
        """End a batch whose items all have an outcome; ``None`` if the row changed meanwhile."""
        status = status or batch.final_status(items) or OperationStatus.FAILED
        finished = self._finish(record, status, error=error, items=items)
        if finished is None:
            return None
        log.info(
            "%s %s key=%s calls=%d items: %s",
            status.value,
            finished.where,
            finished.idempotency_key,
            finished.attempts,
            batch.summary(items),
            extra=self.context(record, status.value),
        )
        return Done(result(finished, replayed=False))

    def lost_last_attempt(self, record: OperationRecord) -> Outcome | None:
        """The worker of the last allowed attempt was lost: the operation ends dead."""
        error = last_attempt_lost(record.where, record.attempts)
        finished = self.ledger.finish(record, OperationStatus.DEAD, error=error)
        if finished is None:
            return None
        log.warning(
            "dead %s key=%s operation_id=%s: %s",
            record.where,
            record.idempotency_key,
            record.id,
            error.message,
            extra=self.context(record, OperationStatus.DEAD.value),
        )
        return Failed(OperationStatus.DEAD, error, record.id)

    def taken_over(self, claimed: OperationRecord) -> Defer:
        # Our lease ran out and another worker claimed the operation: its outcome is the one that counts.
        log.warning(
            "%s key=%s: lease lost to another worker; will report its outcome",
            claimed.where,
            claimed.idempotency_key,
            extra=self.context(claimed, WaitReason.TAKEN_OVER.value),
        )
        return Defer(poll_delay(0), WaitReason.TAKEN_OVER)

    def context(self, record: OperationRecord, outcome: str) -> dict[str, Any]:
        """The fields of an attempt's last log line, as ``extra``: a JSON log (``INTEGRATIONS_LOG_FORMAT``)
        shows them as its own fields. ``duration_ms`` runs from the claim to now."""
        started = record.started_at
        duration = (self.clock() - started).total_seconds() * 1000 if started is not None else None
        return {
            "context": {
                "provider": record.provider,
                "operation": record.operation,
                "idempotency_key": record.idempotency_key,
                "request_id": record.request_id,
                "attempt": record.attempts,
                "outcome": outcome,
                "duration_ms": None if duration is None else round(duration, 1),
            }
        }


def reference_of(adapter: Adapter, record: OperationRecord, response: Any) -> str | None:
    """The adapter's ``reference`` for the succeeded ``record``: ``None``, logged, if the adapter fails
    or gives something the ledger cannot keep, so the success is recorded all the same."""
    try:
        reference = adapter.reference(record.operation, response)
    except Exception as exc:
        log.error(
            "%s key=%s operation_id=%s: the adapter's reference() raised %s; the success is recorded "
            "without a reference",
            record.where,
            record.idempotency_key,
            record.id,
            type(exc).__name__,
        )
        return None
    if reference is None or (isinstance(reference, str) and 0 < len(reference) <= MAX_KEY_LENGTH):
        return reference
    log.error(
        "%s key=%s operation_id=%s: the adapter's reference() gave a %s, not 1 to %d characters; the "
        "success is recorded without a reference",
        record.where,
        record.idempotency_key,
        record.id,
        type(reference).__name__,
        MAX_KEY_LENGTH,
    )
    return None


def log_contract_violation(record: OperationRecord, error: OperationError) -> None:
    log.error(
        "%s key=%s operation_id=%s: the provider's answer does not match the adapter's model: the "
        "provider's API has changed (update the adapter); not retried, the answer is in the ledger: %s",
        record.where,
        record.idempotency_key,
        record.id,
        error.message,
    )


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
