"""The way of one delivery through the core, as the design's numbered steps.

``OperationRunner.run`` takes one delivery of a message and returns an ``Outcome``; ``tasks/`` turns that
into Celery terms. Nothing else decides retries. The steps, each its own function or object:

1. parse        the kwargs (the whole contract) and the payload (``message.py``); a bad message is
                recorded as invalid
2. idempotency  the ledger row for (provider, key) decides: start, claim, replay, conflict, wait
                (``resilience/idempotency.py``)
3. plan         what the call sends: one request, or a chunk of a batch (``strategies.py``)
4. claim        the attempt, by compare-and-set on the row (``ledger/store.py``)
5. admit        the guards, breaker then throttle (``guard.py``); a "wait" gives the attempt back
6. execute      the call, and its outcome recorded (``strategies.py``)

The ledger claims before the guards are asked, so a replay or a duplicate in flight never takes a token;
a guard's wait gives the claimed attempt back. The hot path, a single operation's attempt on a new key or
a retry that is due, costs two ledger statements (``Ledger.take`` finds and claims, the finish ends) and
two Redis round trips (the guards' admission, then their record of the call).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import assert_never

from integrations.adapters.base import Adapter
from integrations.adapters.message_rules import redact_credentials
from integrations.errors import ErrorInfo, ErrorType, InvalidRequest, LedgerUnavailable
from integrations.guard import Attempt, Guard, GuardChain
from integrations.ledger.engine import Clock, utcnow
from integrations.ledger.models import MAX_KEY_LENGTH, OperationStatus
from integrations.ledger.records import Items, NewOperation, OperationRecord
from integrations.ledger.rows import storable
from integrations.ledger.store import Ledger
from integrations.message import MAX_INVALID_MESSAGE, Delivery, Request, parse_request, payload_problem
from integrations.metrics import Metrics
from integrations.outcome import Defer, Done, Failed, Outcome, WaitReason, poll_delay
from integrations.providers import MAX_COUNTDOWN, ProviderSettings
from integrations.resilience import idempotency
from integrations.resilience.backoff import MAX_RETRY_AFTER
from integrations.resilience.retry import RetryPolicy
from integrations.strategies import Batch, Plan, Recorder, Single, Strategy, result

log = logging.getLogger("integrations.operations")

MAX_INTERNAL_ERROR_REDELIVERIES = 5
# A claim lost to another worker re-reads the row and decides again, this many times.
CLAIM_TRIES = 3


@dataclass(frozen=True)
class OperationRunner:
    """Runs the operations of one provider through its adapter. Frozen: the guard chain, the retry policy
    and the recorder are made from the fields once, so the fields cannot change under them."""

    provider: ProviderSettings
    adapter: Adapter
    ledger: Ledger
    clock: Clock = utcnow
    guards: Sequence[Guard] = ()
    sleep: Callable[[float], None] = time.sleep
    metrics: Metrics | None = None
    policy: RetryPolicy = field(init=False)
    chain: GuardChain = field(init=False)
    recorder: Recorder = field(init=False)

    def __post_init__(self) -> None:
        # The one way to set derived fields of a frozen dataclass.
        object.__setattr__(self, "policy", RetryPolicy.of(self.provider.retry))
        watchers = (self.metrics,) if self.metrics is not None else ()
        object.__setattr__(self, "chain", GuardChain((*self.guards, *watchers), self.sleep))
        object.__setattr__(self, "recorder", Recorder(self.ledger, self.clock, self.sleep))

    def run(self, delivery: Delivery) -> Outcome:
        """One delivery, whatever happens, counted by its outcome."""
        outcome = self._run(delivery)
        if self.metrics is not None:
            self.metrics.delivered(self.provider, delivery.operation, outcome)
        return outcome

    def _run(self, delivery: Delivery) -> Outcome:
        """The ledger out of reach puts the message back, and so does a bug, a few times, before the
        operation ends failed with the fault named."""
        try:
            return self._deliver(delivery)
        except LedgerUnavailable as exc:
            delay = poll_delay(delivery.redeliveries + 2)
            log.error(
                "%s: ledger unavailable, message put back for %.1fs: %s", self.where(delivery), delay, exc
            )
            return Defer(delay, WaitReason.LEDGER_UNAVAILABLE)
        except Exception as exc:
            # The traceback is in the worker's log.
            log.exception(
                "%s: internal error on delivery %d", self.where(delivery), delivery.redeliveries + 1
            )
            if delivery.redeliveries < MAX_INTERNAL_ERROR_REDELIVERIES:
                return Defer(poll_delay(delivery.redeliveries + 2), WaitReason.INTERNAL_ERROR)
            message = f"{self.where(delivery)}: internal error: {type(exc).__name__}; see the worker's log"
            error = ErrorInfo(type=ErrorType.INTERNAL_ERROR, message=message)
            return Failed(OperationStatus.FAILED, error, self._record_internal_error(delivery, error))

    def where(self, delivery: Delivery) -> str:
        return f"{self.provider.name}.{delivery.operation}"

    # -- the steps ---------------------------------------------------------------------------------

    def _deliver(self, delivery: Delivery) -> Outcome:
        try:
            request, strategy = self._parse(delivery)  # 1
        except InvalidRequest as exc:
            return self._invalid(delivery, exc)
        if (
            strategy.claims_unread
        ):  # 2 and 4, the common case in one statement: a new key, or a retry that is due
            taken = self.ledger.take(
                request.new_operation(request.message.request_id or str(uuid.uuid4())),
                lease=self._lease,
                request_id=request.message.request_id,
                tolerance=idempotency.GUARD_WAIT_TOLERANCE,
            )
            if taken is not None:
                return self._attempt(request, strategy, taken, strategy.plan(None), restore=None)
        for _ in range(CLAIM_TRIES):
            record = self.ledger.find(self.provider.name, request.key)
            decision = idempotency.decide(
                record, request.fingerprint, self.clock(), max_attempts=strategy.max_attempts
            )
            match decision:  # 2
                case idempotency.Replay(record=ended):
                    return replay(ended)
                case idempotency.Conflict(record=other):
                    return self._conflict(request, other)
                case idempotency.Wait():
                    return self._wait(delivery, decision)
                case idempotency.Exhausted(record=lost):
                    outcome = self.recorder.lost_last_attempt(lost)
                case idempotency.Start() | idempotency.Claim():
                    outcome = self._claim(request, strategy, decision)
                case _:
                    assert_never(decision)
            if outcome is not None:
                return outcome
        return Defer(poll_delay(delivery.redeliveries), WaitReason.CONTENDED)

    def _parse(self, delivery: Delivery) -> tuple[Request, Strategy]:
        """Step 1: the message and its payload, and the strategy that serves its operation."""
        request, items = parse_request(delivery, self.adapter)
        parts = (self.adapter, self.chain, self.policy, self.recorder)
        if items is None:
            return request, Single(*parts)
        max_items = self.adapter.batch_spec(delivery.operation).max_items
        return request, Batch(*parts, items, max_items, request.where)

    @property
    def _lease(self) -> timedelta:
        return timedelta(seconds=self.provider.lease_seconds)

    def _claim(
        self, request: Request, strategy: Strategy, decision: idempotency.Start | idempotency.Claim
    ) -> Outcome | None:
        """Steps 3 and 4 for a key that is free or due, as the rules decided on the row as read; ``None``
        when another worker changed the row first."""
        record = decision.record if isinstance(decision, idempotency.Claim) else None
        takeover = isinstance(decision, idempotency.Claim) and decision.takeover
        plan = strategy.plan(None if takeover else record)  # 3
        if plan.nothing_to_send and record is not None:
            return strategy.settle(record, plan)
        request_id = (
            request.message.request_id or (record.request_id if record else None) or str(uuid.uuid4())
        )
        if record is None:
            new = request.new_operation(request_id)
            claimed = self.ledger.start(new, lease=self._lease, items=plan.started)  # 4
        else:
            claimed = self.ledger.claim(
                record,
                lease=self._lease,
                request_id=request_id,
                takeover=request.new_operation() if takeover else None,
                items=plan.started,
            )
        if claimed is None:
            return None
        # A guard's wait gives the row back its items as they were: those of a lost call are still known
        # as such at the next claim (and sent again together).
        restore = plan.items if record is None or takeover else record.items
        return self._attempt(request, strategy, claimed, plan, restore=restore)

    def _attempt(
        self,
        request: Request,
        strategy: Strategy,
        claimed: OperationRecord,
        plan: Plan,
        restore: Items | None,
    ) -> Outcome:
        """Steps 5 and 6 for a claimed attempt: the guards, then the call. A guard's wait gives the attempt
        back (``restore``: a batch's items as they were before the claim)."""
        attempt = Attempt(
            self.provider,
            request.delivery.operation,
            request.payload,
            request.message.payload,
            request.key,
            token=request.delivery.message_id or str(uuid.uuid4()),
        )
        deferral = self.chain.admit(attempt)  # 5
        if deferral is not None:
            return self._deferred(claimed, plan, deferral, restore)
        return strategy.execute(attempt, claimed, plan)  # 6

    # -- what ends a delivery without a call ---------------------------------------------------------

    def _deferred(
        self, claimed: OperationRecord, plan: Plan, deferral: Defer, restore: Items | None
    ) -> Outcome:
        """A guard said wait: the claimed attempt is given back, unused, and the ledger says why and until
        when (``ops show``)."""
        delay = min(deferral.delay, MAX_RETRY_AFTER)
        until = self.clock() + timedelta(seconds=delay)
        items = restore if plan.started is not None else None
        if self.ledger.unclaim(claimed, reason=deferral.reason, until=until, items=items) is None:
            return self.recorder.taken_over(claimed)
        return Defer(min(delay, MAX_COUNTDOWN), deferral.reason)

    def _conflict(self, request: Request, record: OperationRecord) -> Outcome:
        error = ErrorInfo(
            type=ErrorType.IDEMPOTENCY_CONFLICT,
            message=(
                f"{request.where}: idempotency key {request.key!r} was already used by operation "
                f"{record.id} ({record.where}) with a different operation or payload; use a new key for a "
                "new operation"
            ),
        )
        log.warning("%s", error.message)
        try:
            self.ledger.record_conflict(self.provider.name, request.key)  # `ops conflicts` lists them
        except LedgerUnavailable as exc:  # a count is not worth a redelivery
            log.warning("%s: the conflict could not be counted: %s", request.where, exc)
        return Failed(OperationStatus.FAILED, error, record.id)

    def _wait(self, delivery: Delivery, wait: idempotency.Wait) -> Outcome:
        remaining = max(0.0, (wait.until - self.clock()).total_seconds())
        if wait.reason is WaitReason.IN_FLIGHT:
            remaining = min(remaining, poll_delay(delivery.redeliveries))
        return Defer(min(remaining, MAX_COUNTDOWN), wait.reason)

    def _invalid(self, delivery: Delivery, exc: InvalidRequest) -> Outcome:
        kwargs = delivery.kwargs if isinstance(delivery.kwargs, Mapping) else {}
        key = kwargs.get("idempotency_key")
        valid_key = isinstance(key, str) and 0 < len(key) <= MAX_KEY_LENGTH and key.isprintable()
        request_id = kwargs.get("request_id")
        usable_request_id = (
            isinstance(request_id, str) and 0 < len(request_id) <= MAX_KEY_LENGTH and request_id.isprintable()
        )
        # A refused message may carry what must not or cannot be kept (a credential header, a NUL
        # character): it is stored redacted. A payload over the size limit, or one the ledger cannot hold
        # (not JSON, a lone surrogate, nested too deeply), is not stored at all: in its place, a note of
        # why, with the size and the limit for an oversized one, so a 50 MB message never fills a row.
        raw = kwargs.get("payload")
        problem = payload_problem(raw, self.provider)
        if problem is None:  # JSON, so read back as the ledger will (a tuple as a list) to be redacted
            payload = storable(redact_credentials(json.loads(json.dumps(raw))))
        else:
            payload = {"not_kept": problem}
        new = NewOperation(
            provider=self.provider.name,
            operation=delivery.operation,
            idempotency_key=key if valid_key else None,
            fingerprint=idempotency.fingerprint(delivery.operation, payload),
            payload=payload,
            request_id=storable(request_id) if usable_request_id else None,
        )
        error = exc.info()
        if len(error.message) > MAX_INVALID_MESSAGE:
            # A message that names a field quotes its name, which a bad payload may make megabytes long.
            cut = len(error.message) - MAX_INVALID_MESSAGE
            error.message = f"{error.message[:MAX_INVALID_MESSAGE]}... ({cut:,} more characters)"
        record = self.ledger.record_invalid(new, error)
        log.warning("invalid request %s operation_id=%s: %s", self.where(delivery), record.id, error.message)
        return Failed(OperationStatus.FAILED, error, record.id)

    def _record_internal_error(self, delivery: Delivery, error: ErrorInfo) -> str | None:
        """End the operation's row as failed, so it is a dead letter that can be replayed rather than a
        row left queued with no message; not while another worker's attempt holds it."""
        key = delivery.kwargs.get("idempotency_key") if isinstance(delivery.kwargs, Mapping) else None
        if not isinstance(key, str):
            return None
        try:
            record = self.ledger.find(self.provider.name, key)
            if record is None or record.status.terminal:
                return record.id if record else None
            lease = record.lease_expires_at
            if record.status is OperationStatus.RUNNING and lease is not None and lease > self.clock():
                return record.id
            self.ledger.finish(record, OperationStatus.FAILED, error=error)
            return record.id
        except Exception:
            log.exception("%s key=%s: the internal error could not be recorded", self.where(delivery), key)
            return None


def replay(record: OperationRecord) -> Outcome:
    """The stored outcome of an ended operation, handed back without calling the provider."""
    if record.status is OperationStatus.SUCCEEDED or record.items is not None:
        return Done(result(record, replayed=True))
    error = ErrorInfo.model_validate(record.error)
    return Failed(record.status, error, record.id, replayed=True)
