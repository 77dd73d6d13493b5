"""The way of one operation through the core: message -> idempotency -> guards -> adapter -> ledger.

``OperationRunner.run`` takes one delivery of a message and returns an ``Outcome``; ``tasks/`` turns
that into Celery terms. Nothing else decides retries. The hot path costs one ledger read and two ledger
writes (claim, finish) per attempt.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from integrations import batch
from integrations.adapters.base import Adapter, BatchPayload, redact_credentials
from integrations.batch import BatchItem, ItemState
from integrations.errors import (
    ErrorInfo,
    ErrorType,
    InvalidRequest,
    LedgerUnavailable,
    OperationError,
    TransientError,
    last_attempt_lost,
    retries_exhausted,
)
from integrations.ledger.models import MAX_KEY_LENGTH, OperationStatus
from integrations.ledger.store import Clock, Ledger, OperationRecord, utcnow
from integrations.providers import MAX_COUNTDOWN, ProviderSettings
from integrations.resilience import idempotency
from integrations.resilience.backoff import MAX_RETRY_AFTER, ExponentialBackoff, next_delay

log = logging.getLogger("integrations.operations")

# A guard's wait up to this long is slept through in the worker instead of re-queueing the message.
INLINE_WAIT = 0.05
MAX_INTERNAL_ERROR_REDELIVERIES = 5


class _Answer(Protocol):
    @property
    def headers(self) -> Mapping[str, str]: ...


R = TypeVar("R", bound=_Answer)


def _printable(value: str | None) -> str | None:
    if value is not None and not value.isprintable():
        raise ValueError("must contain printable characters only (no control characters or newlines)")
    return value


class OperationMessage(BaseModel):
    """The kwargs of a message: the whole contract between an application and the workers."""

    model_config = ConfigDict(extra="forbid", strict=True)

    payload: dict[str, Any]
    idempotency_key: str = Field(min_length=1, max_length=MAX_KEY_LENGTH)
    request_id: str | None = Field(default=None, min_length=1, max_length=MAX_KEY_LENGTH)

    _check_printable = field_validator("idempotency_key", "request_id")(_printable)


@dataclass(frozen=True)
class Delivery:
    """One delivery of a message to a worker."""

    operation: str
    kwargs: Mapping[str, Any]
    args: Sequence[Any] = ()
    message_id: str | None = None  # the broker message's id, kept across its redeliveries
    redeliveries: int = 0  # how often this message was already put back (deferred or retried)


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
    reason: str


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


@dataclass(frozen=True)
class Attempt:
    """What a guard sees of the attempt about to be made."""

    provider: ProviderSettings
    operation: str
    payload: BaseModel
    raw_payload: Mapping[str, Any]
    idempotency_key: str
    token: str  # stable across the redeliveries of one message: its id


@dataclass(frozen=True)
class Observation:
    """How the call went: ``error`` is None on success; ``headers`` are the answer's, if one came."""

    error: OperationError | None
    seconds: float
    headers: Mapping[str, str]


class Guard(Protocol):
    """A check around the provider call (the shared breaker and throttle are guards).

    ``admit`` runs before an attempt is claimed, so a deferral never uses an attempt; ``observe`` sees
    how the call went. Guards run in order, observers in reverse.
    """

    def admit(self, attempt: Attempt) -> Defer | None: ...

    def observe(self, attempt: Attempt, observation: Observation) -> None: ...

    def release(self, attempt: Attempt) -> None:
        """The attempt it admitted will not be made (a later guard said wait, or another worker
        claimed the operation): give back what was granted for it."""
        ...


def poll_delay(redeliveries: int) -> float:
    """How soon a message waiting on another attempt looks again: 0.25 s doubling to 5 s."""
    return min(5.0, 0.25 * 2.0 ** min(redeliveries, 8))


@dataclass
class OperationRunner:
    """Runs the operations of one provider through its adapter."""

    provider: ProviderSettings
    adapter: Adapter
    ledger: Ledger
    clock: Clock = utcnow
    guards: Sequence[Guard] = ()
    # Exceptions by which the host interrupts an attempt that runs too long (Celery's soft time limit):
    # such an attempt counts as timed out and is retried.
    interrupts: tuple[type[Exception], ...] = ()
    sleep: Callable[[float], None] = time.sleep
    backoff: ExponentialBackoff = field(init=False)

    def __post_init__(self) -> None:
        retry = self.provider.retry
        self.backoff = ExponentialBackoff(base=retry.backoff_base, cap=retry.backoff_max)

    def run(self, delivery: Delivery) -> Outcome:
        try:
            return self._run(delivery)
        except LedgerUnavailable as exc:
            delay = poll_delay(delivery.redeliveries + 2)
            log.error(
                "%s: ledger unavailable, message put back for %.1fs: %s", self.where(delivery), delay, exc
            )
            return Defer(delay, "ledger_unavailable")
        except Exception as exc:
            # A bug must not lose the message: it is put back a few times (the fault may pass), then the
            # operation ends failed with the fault named; the traceback is in the worker's log.
            log.exception(
                "%s: internal error on delivery %d", self.where(delivery), delivery.redeliveries + 1
            )
            if delivery.redeliveries < MAX_INTERNAL_ERROR_REDELIVERIES:
                return Defer(poll_delay(delivery.redeliveries + 2), "internal_error")
            message = f"{self.where(delivery)}: internal error: {type(exc).__name__}; see the worker's log"
            error = ErrorInfo(type=ErrorType.INTERNAL_ERROR, message=message)
            return Failed(OperationStatus.FAILED, error, self._record_internal_error(delivery, error))

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

    def where(self, delivery: Delivery) -> str:
        return f"{self.provider.name}.{delivery.operation}"

    def _run(self, delivery: Delivery) -> Outcome:
        try:
            message = self._parse(delivery)
            payload = self.adapter.parse_payload(delivery.operation, message.payload)
            items = self._batch_items(delivery, payload, message.idempotency_key)
        except InvalidRequest as exc:
            return self._invalid(delivery, exc)
        request_fingerprint = idempotency.fingerprint(delivery.operation, message.payload)
        # A batch's attempts are counted per item; the operation's count is of calls.
        max_attempts = None if items is not None else self.provider.retry.max_attempts

        claimed: OperationRecord | None = None
        for _ in range(3):  # a claim lost to another worker re-reads the row and decides again
            record = self.ledger.find(self.provider.name, message.idempotency_key)
            decision = idempotency.decide(
                record, request_fingerprint, self.clock(), max_attempts=max_attempts
            )
            if isinstance(decision, idempotency.Replay):
                return self._replay(decision.record)
            if isinstance(decision, idempotency.Conflict):
                return self._conflict(delivery, message, decision.record)
            if isinstance(decision, idempotency.Wait):
                return self._wait(delivery, decision)
            if isinstance(decision, idempotency.Exhausted):
                ended = self._lost_last_attempt(decision.record)
                if ended is None:
                    continue
                return ended
            taking_over = isinstance(decision, idempotency.Claim) and decision.takeover
            states: list[ItemState] | None = None
            chunk: list[int] = []
            if items is not None:
                if record is None or record.items is None or taking_over:
                    states = batch.initial_states(items, self.where(delivery))
                else:
                    states = batch.load(record.items)
                states, chunk = batch.plan(
                    states,
                    max_items=self.adapter.batch_spec(delivery.operation).max_items,
                    max_attempts=self.provider.retry.max_attempts,
                    where=self.where(delivery),
                )
                if not chunk and record is not None:
                    settled = self._settle(record, states)
                    if settled is None:
                        continue
                    return settled
            attempt = Attempt(
                self.provider,
                delivery.operation,
                payload,
                message.payload,
                message.idempotency_key,
                token=delivery.message_id or str(uuid.uuid4()),
            )
            deferral = self._admit(attempt)
            if deferral is not None:
                # A new row gets its items; an existing one keeps them as they are, so items of a lost call
                # are still known as such at the next claim (and sent again together).
                fresh = record is None or taking_over
                waiting_items = batch.dump(states) if states is not None and fresh else None
                return self._deferred(
                    delivery, message, request_fingerprint, record, deferral, taking_over, waiting_items
                )
            request_id = message.request_id or (record.request_id if record else None) or str(uuid.uuid4())
            lease = timedelta(seconds=self.provider.lease_seconds)
            started_items = batch.dump(batch.start_chunk(states, chunk)) if states is not None else None
            if isinstance(decision, idempotency.Start):
                claimed = self.ledger.start(
                    provider=self.provider.name,
                    operation=delivery.operation,
                    idempotency_key=message.idempotency_key,
                    fingerprint=request_fingerprint,
                    payload=message.payload,
                    request_id=request_id,
                    lease=lease,
                    items=started_items,
                )
            else:
                takeover = (delivery.operation, request_fingerprint, message.payload) if taking_over else None
                claimed = self.ledger.claim(
                    decision.record,
                    lease=lease,
                    request_id=request_id,
                    takeover=takeover,
                    items=started_items,
                )
            if claimed is not None:
                if items is not None and states is not None:
                    sent = [
                        replace(items[i], sent_unanswered=batch.sent_unanswered(states[i])) for i in chunk
                    ]
                    return self._attempt_batch(attempt, claimed, sent)
                return self._attempt(attempt, claimed)
            self._release(attempt, self.guards)  # another worker claimed it first: give back what we took
        return Defer(poll_delay(delivery.redeliveries), "contended")

    def _batch_items(self, delivery: Delivery, payload: Any, idempotency_key: str) -> list[BatchItem] | None:
        """A batch message's items (``None`` for a single operation); one with no valid item is invalid."""
        if not isinstance(payload, BatchPayload):
            return None
        items = self.adapter.parse_batch(delivery.operation, payload, idempotency_key)
        if all(item.problem is not None for item in items):
            problems = "; ".join(item.problem for item in items[:5] if item.problem)
            raise InvalidRequest(f"{self.where(delivery)}: no item is valid: {problems}")
        return items

    def _admit(self, attempt: Attempt) -> Defer | None:
        """Ask each guard in turn; a wait of a few ms is waited here, cheaper than a round through the
        broker. If one says wait, those that already said yes give back what they granted."""
        for position, guard in enumerate(self.guards):
            deferral = guard.admit(attempt)
            for _ in range(3):
                if deferral is None or deferral.delay > INLINE_WAIT:
                    break
                self.sleep(deferral.delay)
                deferral = guard.admit(attempt)
            if deferral is not None:
                self._release(attempt, self.guards[:position])
                return deferral
        return None

    def _release(self, attempt: Attempt, guards: Sequence[Guard]) -> None:
        for guard in reversed(guards):
            guard.release(attempt)

    def _parse(self, delivery: Delivery) -> OperationMessage:
        if delivery.args:
            raise InvalidRequest(
                f"{self.where(delivery)}: positional arguments are not accepted; send "
                "kwargs={'payload': ..., 'idempotency_key': ..., 'request_id': ...}"
            )
        try:
            message = OperationMessage.model_validate(dict(delivery.kwargs))
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(kwargs)'}: "
                + (
                    "unexpected key; the message takes payload, idempotency_key and request_id"
                    if e["type"] == "extra_forbidden"
                    else e["msg"]
                )
                for e in exc.errors()
            )
            raise InvalidRequest(f"{self.where(delivery)}: {problems}") from None
        if _has_nul(message.payload):
            raise InvalidRequest(
                f"{self.where(delivery)}: payload contains a NUL character (\\u0000), which the ledger "
                "cannot store; remove it"
            )
        return message

    def _call(self, attempt: Attempt, call: Callable[[], R]) -> tuple[R | None, OperationError | None]:
        """Make the provider call and show the guards how it went; any failure becomes an error."""
        started = time.monotonic()
        error: OperationError | None = None
        reply: R | None = None
        try:
            reply = call()
        except OperationError as exc:
            error = exc
        except self.interrupts as exc:
            error = TransientError(
                f"{self.provider.name}.{attempt.operation}: the attempt ran past its time limit "
                f"({type(exc).__name__})",
                error_type=ErrorType.TIMEOUT,
            )
        except Exception as exc:  # an adapter bug must end as a dead letter, not vanish with the message
            log.exception("%s.%s: adapter raised unexpectedly", self.provider.name, attempt.operation)
            error = OperationError(f"{self.provider.name}.{attempt.operation}: adapter error: {exc!r}")
        answer = reply.headers if reply is not None else error.headers if error is not None else {}
        observation = Observation(error, time.monotonic() - started, answer)
        for guard in reversed(self.guards):
            guard.observe(attempt, observation)
        return reply, error

    def _attempt(self, attempt: Attempt, claimed: OperationRecord) -> Outcome:
        assert claimed.idempotency_key is not None and claimed.request_id is not None
        key, request_id = claimed.idempotency_key, claimed.request_id
        reply, error = self._call(
            attempt,
            lambda: self.adapter.call(
                attempt.operation, attempt.payload, idempotency_key=key, request_id=request_id
            ),
        )
        if error is None:
            assert reply is not None
            finished = self.ledger.finish(
                claimed,
                OperationStatus.SUCCEEDED,
                response=_without_nul(reply.model.model_dump(mode="json", by_alias=True)),
            )
            if finished is None:
                return self._taken_over(claimed)
            log.info(
                "succeeded %s.%s key=%s attempts=%d",
                finished.provider,
                finished.operation,
                finished.idempotency_key,
                finished.attempts,
            )
            return Done(result(finished, replayed=False))
        return self._failed_attempt(claimed, error)

    def _attempt_batch(self, attempt: Attempt, claimed: OperationRecord, chunk: list[BatchItem]) -> Outcome:
        """One call with one chunk of a batch's items; the ledger takes each item's outcome."""
        assert claimed.idempotency_key is not None and claimed.request_id is not None
        where = f"{claimed.provider}.{claimed.operation}"
        call_key = batch.chunk_idempotency_key(claimed.idempotency_key, [item.key for item in chunk])
        request_id = claimed.request_id
        reply, error = self._call(
            attempt,
            lambda: self.adapter.call_batch(
                attempt.operation, chunk, idempotency_key=call_key, request_id=request_id
            ),
        )
        if error is not None and error.error_type is ErrorType.CONTRACT_VIOLATION:
            _log_contract_violation(where, claimed, error)
        results = reply.results if reply is not None else error
        assert results is not None
        states = batch.record_results(
            batch.load(claimed.items), results, max_attempts=self.provider.retry.max_attempts, where=where
        )
        # The whole call's error, with the provider's answer, is kept once, on the operation.
        call_error = error.info() if error is not None else None
        if call_error is not None:
            call_error.body = _without_nul(call_error.body)
        status = batch.final_status(states)
        if status is not None:
            return self._settle(claimed, states, status, call_error) or self._taken_over(claimed)
        chunk_attempts = states[chunk[0].position].attempts
        delay, due = 0.0, None
        if not batch.sent_this_round(states, chunk_attempts):
            # Every item of the round was sent: those that failed and may be retried wait for the backoff.
            errors = [error] if reply is None else [r.error for r in reply.results.values()]
            retry_after = max((getattr(e, "retry_after", None) or 0.0 for e in errors), default=0.0)
            delay = next_delay(self.backoff, chunk_attempts, retry_after or None)
            due = self.clock() + timedelta(seconds=delay)
        finished = self.ledger.finish(
            claimed,
            OperationStatus.QUEUED,
            error=call_error,
            next_attempt_at=due,
            items=_without_nul(batch.dump(states)),
        )
        if finished is None:
            return self._taken_over(claimed)
        if due is None:
            return Defer(0.0, "next_chunk")  # the round goes on with the next chunk, at once
        retried = batch.retry_error(states)
        assert retried is not None  # items are queued, and only a retryable failure queues one again
        log.warning(
            "retrying %d item(s) of %s key=%s in %.2fs (attempt %d/%d): %s",
            batch.counts(states).get(batch.ItemStatus.QUEUED.value, 0),
            where,
            claimed.idempotency_key,
            delay,
            chunk_attempts,
            self.provider.retry.max_attempts,
            retried.message,
        )
        return Retry(min(delay, MAX_COUNTDOWN), retried)

    def _settle(
        self,
        record: OperationRecord,
        states: list[ItemState],
        status: OperationStatus | None = None,
        error: ErrorInfo | None = None,
    ) -> Outcome | None:
        """End a batch whose items all have an outcome; ``None`` if the row changed meanwhile."""
        status = status or batch.final_status(states) or OperationStatus.FAILED
        finished = self.ledger.finish(record, status, error=error, items=_without_nul(batch.dump(states)))
        if finished is None:
            return None
        log.info(
            "%s %s.%s key=%s calls=%d items: %s",
            status.value,
            finished.provider,
            finished.operation,
            finished.idempotency_key,
            finished.attempts,
            batch.summary(states),
        )
        return Done(result(finished, replayed=False))

    def _failed_attempt(self, claimed: OperationRecord, error: OperationError) -> Outcome:
        where = f"{claimed.provider}.{claimed.operation}"
        info = error.info()
        info.body = _without_nul(info.body)
        if error.error_type is ErrorType.CONTRACT_VIOLATION:
            _log_contract_violation(where, claimed, error)
        retry_after = getattr(error, "retry_after", None)
        if error.retryable and claimed.attempts < self.provider.retry.max_attempts:
            delay = next_delay(self.backoff, claimed.attempts, retry_after)
            due = self.clock() + timedelta(seconds=delay)
            if self.ledger.finish(claimed, OperationStatus.QUEUED, error=info, next_attempt_at=due) is None:
                return self._taken_over(claimed)
            log.warning(
                "retrying %s key=%s attempt %d/%d in %.2fs: %s",
                where,
                claimed.idempotency_key,
                claimed.attempts,
                self.provider.retry.max_attempts,
                delay,
                info.message,
            )
            return Retry(min(delay, MAX_COUNTDOWN), info)
        status = OperationStatus.FAILED
        if error.retryable:
            status = OperationStatus.DEAD
            info = retries_exhausted(where, claimed.attempts, info)
        finished = self.ledger.finish(claimed, status, error=info)
        if finished is None:
            return self._taken_over(claimed)
        log.warning(
            "%s %s key=%s operation_id=%s: %s",
            status.value,
            where,
            claimed.idempotency_key,
            claimed.id,
            info.message,
        )
        return Failed(status, info, claimed.id)

    def _lost_last_attempt(self, record: OperationRecord) -> Outcome | None:
        where = f"{record.provider}.{record.operation}"
        error = last_attempt_lost(where, record.attempts)
        finished = self.ledger.finish(record, OperationStatus.DEAD, error=error)
        if finished is None:
            return None
        log.warning(
            "dead %s key=%s operation_id=%s: %s", where, record.idempotency_key, record.id, error.message
        )
        return Failed(OperationStatus.DEAD, error, record.id)

    def _deferred(
        self,
        delivery: Delivery,
        message: OperationMessage,
        request_fingerprint: str,
        record: OperationRecord | None,
        deferral: Defer,
        takeover: bool,
        items: list[dict[str, Any]] | None,
    ) -> Outcome:
        """A guard said wait: the ledger says so too (``ops show``), and no attempt is used."""
        delay = min(deferral.delay, MAX_RETRY_AFTER)
        self.ledger.record_wait(
            record,
            provider=self.provider.name,
            operation=delivery.operation,
            idempotency_key=message.idempotency_key,
            fingerprint=request_fingerprint,
            payload=message.payload,
            request_id=message.request_id,
            reason=deferral.reason,
            until=self.clock() + timedelta(seconds=delay),
            takeover=takeover,
            items=items,
        )
        return Defer(min(delay, MAX_COUNTDOWN), deferral.reason)

    def _taken_over(self, claimed: OperationRecord) -> Outcome:
        # Our lease ran out and another worker claimed the operation: its outcome is the one that counts.
        log.warning(
            "%s.%s key=%s: lease lost to another worker; will report its outcome",
            claimed.provider,
            claimed.operation,
            claimed.idempotency_key,
        )
        return Defer(poll_delay(0), "taken_over")

    def _replay(self, record: OperationRecord) -> Outcome:
        if record.status is OperationStatus.SUCCEEDED or record.items is not None:
            return Done(result(record, replayed=True))
        error = ErrorInfo.model_validate(record.error)
        return Failed(record.status, error, record.id, replayed=True)

    def _conflict(self, delivery: Delivery, message: OperationMessage, record: OperationRecord) -> Outcome:
        error = ErrorInfo(
            type=ErrorType.IDEMPOTENCY_CONFLICT,
            message=(
                f"{self.where(delivery)}: idempotency key {message.idempotency_key!r} was already used by "
                f"operation {record.id} ({record.provider}.{record.operation}) with a different "
                "operation or payload; use a new key for a new operation"
            ),
        )
        log.warning("%s", error.message)
        return Failed(OperationStatus.FAILED, error, record.id)

    def _wait(self, delivery: Delivery, wait: idempotency.Wait) -> Outcome:
        remaining = max(0.0, (wait.until - self.clock()).total_seconds())
        if wait.reason == "in_flight":
            remaining = min(remaining, poll_delay(delivery.redeliveries))
        return Defer(min(remaining, MAX_COUNTDOWN), wait.reason)

    def _invalid(self, delivery: Delivery, exc: InvalidRequest) -> Outcome:
        kwargs = delivery.kwargs if isinstance(delivery.kwargs, Mapping) else {}
        key = kwargs.get("idempotency_key")
        valid_key = isinstance(key, str) and 0 < len(key) <= MAX_KEY_LENGTH and key.isprintable()
        request_id = kwargs.get("request_id")
        usable_request_id = isinstance(request_id, str) and 0 < len(request_id) <= MAX_KEY_LENGTH
        # A refused message may carry what must not or cannot be kept (a credential header, a NUL
        # character): it is stored redacted.
        payload = _without_nul(redact_credentials(kwargs.get("payload")))
        record = self.ledger.record_invalid(
            provider=self.provider.name,
            operation=delivery.operation,
            idempotency_key=key if valid_key else None,
            fingerprint=idempotency.fingerprint(delivery.operation, payload),
            payload=payload,
            request_id=_without_nul(request_id) if usable_request_id else None,
            error=exc.info(),
        )
        log.warning("invalid request %s operation_id=%s: %s", self.where(delivery), record.id, exc.message)
        return Failed(OperationStatus.FAILED, exc.info(), record.id)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def _without_nul(value: Any) -> Any:
    """A provider's answer as the ledger can keep it: NUL characters (refused by PostgreSQL) replaced."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


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
        return common | {"items": batch.dump(batch.load(record.items))}
    return common | {"response": record.response}


def _log_contract_violation(where: str, record: OperationRecord, error: OperationError) -> None:
    log.error(
        "%s key=%s operation_id=%s: the provider's answer does not match the adapter's model: the "
        "provider's API has changed (update the adapter); not retried, the answer is in the ledger: %s",
        where,
        record.idempotency_key,
        record.id,
        error.message,
    )
