"""The way of one delivery through the core, as the design's numbered steps.

``OperationRunner.run`` takes one delivery of a message and returns an ``Outcome``; ``tasks/`` turns that
into Celery terms. Nothing else decides retries. The steps, each its own function or object:

1. parse        the kwargs (the whole contract) and the payload; a bad message is recorded as invalid
2. idempotency  the ledger row for (provider, key) decides: start, claim, replay, conflict, wait
                (``resilience/idempotency.py``)
3. plan         what the call sends: one request, or a chunk of a batch (``strategies.py``)
4. admit        the guards, breaker then throttle (``guard.py``); a "wait" uses no attempt
5. claim        the attempt, by compare-and-set on the row (``ledger/store.py``)
6. execute      the call, and its outcome recorded (``strategies.py``)

The hot path costs one ledger read and two ledger writes (claim, finish) per attempt.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, assert_never

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from integrations.adapters.base import Adapter, BatchPayload
from integrations.adapters.message_rules import redact_credentials
from integrations.batch import BatchItem
from integrations.errors import ErrorInfo, ErrorType, InvalidRequest, LedgerUnavailable
from integrations.guard import Attempt, Guard, GuardChain
from integrations.ledger.models import MAX_KEY_LENGTH, OperationStatus
from integrations.ledger.records import NewOperation, OperationRecord
from integrations.ledger.store import Clock, Ledger, storable, utcnow
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


# A payload nested deeper than this is refused: deeper than any provider's API goes, and well inside Python's
# recursion limit, which the JSON encoder, the fingerprint and the ledger's walks over a payload all meet.
MAX_PAYLOAD_DEPTH = 100
_SURROGATE = re.compile("[\ud800-\udfff]")
# What is kept of the reason an invalid message was refused, in the ledger and the task's result.
MAX_INVALID_MESSAGE = 2000


def _printable(value: str | None) -> str | None:
    """Keys and request ids travel as HTTP header values: printable, and Latin-1 at most."""
    if value is not None and not value.isprintable():
        raise ValueError("must contain printable characters only (no control characters or newlines)")
    if value is not None and max(value, default="") > "\xff":
        raise ValueError("must contain Latin-1 characters only (it is sent as an HTTP header value)")
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
class Request:
    """A delivery whose message is valid: its kwargs, the payload as the adapter's model, and the
    fingerprint that tells the same request from another under one key."""

    delivery: Delivery
    provider: str
    message: OperationMessage
    payload: BaseModel
    fingerprint: str

    @classmethod
    def of(cls, delivery: Delivery, provider: str, message: OperationMessage, payload: BaseModel) -> Request:
        return cls(
            delivery, provider, message, payload, idempotency.fingerprint(delivery.operation, message.payload)
        )

    @property
    def key(self) -> str:
        return self.message.idempotency_key

    @property
    def where(self) -> str:
        return f"{self.provider}.{self.delivery.operation}"

    def new_operation(self, request_id: str | None = None) -> NewOperation:
        """The operation as this message describes it, for a new ledger row or a takeover."""
        return NewOperation(
            provider=self.provider,
            operation=self.delivery.operation,
            idempotency_key=self.key,
            fingerprint=self.fingerprint,
            payload=self.message.payload,
            request_id=request_id or self.message.request_id,
            task_id=self.delivery.message_id,
        )


def parse_message(delivery: Delivery, where: str, provider: ProviderSettings) -> OperationMessage:
    """The kwargs as an ``OperationMessage``, its payload JSON within the provider's size limit;
    ``InvalidRequest`` names every problem."""
    if delivery.args:
        raise InvalidRequest(
            f"{where}: positional arguments are not accepted; send "
            "kwargs={'payload': ..., 'idempotency_key': ..., 'request_id': ...}"
        )
    if not isinstance(delivery.kwargs, Mapping):
        raise InvalidRequest(
            f"{where}: the message's kwargs are {type(delivery.kwargs).__name__}, not a mapping; send "
            "kwargs={'payload': ..., 'idempotency_key': ..., 'request_id': ...}"
        )
    try:
        message = OperationMessage.model_validate(dict(delivery.kwargs))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(_shown(p) for p in e['loc']) or '(kwargs)'}: "
            + (
                "unexpected key; the message takes payload, idempotency_key and request_id"
                if e["type"] == "extra_forbidden"
                else e["msg"]
            )
            for e in exc.errors()
        )
        raise InvalidRequest(f"{where}: {problems}") from None
    problem = payload_problem(message.payload, provider)
    if problem is not None:
        raise InvalidRequest(f"{where}: {problem}")
    if has_nul(message.payload):
        raise InvalidRequest(
            f"{where}: payload contains a NUL character (\\u0000), which the ledger cannot store; remove it"
        )
    return message


def payload_problem(payload: Any, provider: ProviderSettings) -> str | None:
    """Why a payload cannot be sent and kept, or ``None``: it must be JSON (string keys, finite numbers,
    Unicode text, at most ``MAX_PAYLOAD_DEPTH`` deep) of at most the provider's ``max_payload_bytes`` as
    compact JSON in UTF-8. The encoder measures first, so an oversized payload is never walked."""
    try:
        text = json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        size: int | None = len(text.encode())
    except (TypeError, ValueError, RecursionError):  # a lone surrogate fails the encoding: a ValueError
        size = None
    limit = provider.max_payload_bytes
    if size is not None and size > limit:
        return (
            f"payload is {size:,} bytes as compact JSON, over the limit of {limit:,}; send a smaller "
            f"payload, or raise max_payload_bytes in [providers.{provider.name}] of the providers file"
        )
    problem = _json_problem(payload, "payload", 0)
    if problem is None and size is None:
        problem = "payload: not JSON"  # what the encoder refused and the walk could not name
    return problem


def _json_problem(value: Any, path: str, depth: int) -> str | None:
    """The first thing in ``value`` that is no JSON a provider and the ledger take, named by its path."""
    if depth > MAX_PAYLOAD_DEPTH:
        return f"{path}: nested more than {MAX_PAYLOAD_DEPTH} levels deep; send a flatter payload"
    if isinstance(value, str):
        if _SURROGATE.search(value):
            return f"{path}: contains a lone surrogate (\\ud800 to \\udfff), which is not Unicode text"
        return None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        try:
            str(value)
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            return f"{path}: an integer too long to write as JSON; send it as a string"
        return None
    if isinstance(value, float):
        return (
            None if math.isfinite(value) else f"{path}: {value} is not a JSON number; send null or a string"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path}: key {_shown(key)} is a {type(key).__name__}; JSON object keys are strings"
            problem = _json_problem(key, f"{path} key {_shown(key)}", depth + 1) or _json_problem(
                item, f"{path}.{_shown(key)}", depth + 1
            )
            if problem is not None:
                return problem
        return None
    if isinstance(value, list | tuple):
        for position, item in enumerate(value):
            problem = _json_problem(item, f"{path}.{position}", depth + 1)
            if problem is not None:
                return problem
        return None
    return (
        f"{path}: a {type(value).__name__} is not JSON; send a string, number, boolean, null, array or object"
    )


def _shown(part: Any) -> str:
    """A key as a message names it: as it is when short and printable, else quoted, escaped and cut."""
    if isinstance(part, str) and 0 < len(part) <= 64 and part.isprintable():
        return part
    shown = repr(part[:64] if isinstance(part, str) else part)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def parse_request(delivery: Delivery, adapter: Adapter) -> tuple[Request, tuple[BatchItem, ...] | None]:
    """A delivery's message and payload validated as the adapter's operation takes them, with a batch's
    items (``None`` for a single operation); ``InvalidRequest`` names every problem. Workers and
    ``integrations.client.enqueue`` check a message the same way."""
    where = f"{adapter.provider.name}.{delivery.operation}"
    message = parse_message(delivery, where, adapter.provider)
    payload = adapter.parse_payload(delivery.operation, message.payload)
    request = Request.of(delivery, adapter.provider.name, message, payload)
    if not isinstance(payload, BatchPayload):
        return request, None
    items = adapter.parse_batch(delivery.operation, payload, request.key)
    if all(item.problem is not None for item in items):
        problems = "; ".join(item.problem for item in items[:5] if item.problem)
        raise InvalidRequest(f"{where}: no item is valid: {problems}")
    return request, tuple(items)


def has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(has_nul(item) for item in value)
    return False


@dataclass(frozen=True)
class OperationRunner:
    """Runs the operations of one provider through its adapter. Frozen: the guard chain, the retry policy
    and the recorder are made from the fields once, so the fields cannot change under them."""

    provider: ProviderSettings
    adapter: Adapter
    ledger: Ledger
    clock: Clock = utcnow
    guards: Sequence[Guard] = ()
    # Exceptions by which the host interrupts an attempt that runs too long (Celery's soft time limit):
    # such an attempt counts as timed out and is retried.
    interrupts: tuple[type[Exception], ...] = ()
    sleep: Callable[[float], None] = time.sleep
    policy: RetryPolicy = field(init=False)
    chain: GuardChain = field(init=False)
    recorder: Recorder = field(init=False)

    def __post_init__(self) -> None:
        # The one way to set derived fields of a frozen dataclass.
        object.__setattr__(self, "policy", RetryPolicy.of(self.provider.retry))
        object.__setattr__(self, "chain", GuardChain(self.guards, self.interrupts, self.sleep))
        object.__setattr__(self, "recorder", Recorder(self.ledger, self.clock))

    def run(self, delivery: Delivery) -> Outcome:
        """One delivery, whatever happens: the ledger out of reach puts the message back, and so does a
        bug, a few times, before the operation ends failed with the fault named."""
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
                    outcome = self._attempt(request, strategy, decision)
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

    def _attempt(
        self, request: Request, strategy: Strategy, decision: idempotency.Start | idempotency.Claim
    ) -> Outcome | None:
        """Steps 3 to 6 for a key that is free or due; ``None`` when another worker claimed it first."""
        record = decision.record if isinstance(decision, idempotency.Claim) else None
        takeover = isinstance(decision, idempotency.Claim) and decision.takeover
        plan = strategy.plan(None if takeover else record)  # 3
        if plan.nothing_to_send and record is not None:
            return strategy.settle(record, plan)
        attempt = Attempt(
            self.provider,
            request.delivery.operation,
            request.payload,
            request.message.payload,
            request.key,
            token=request.delivery.message_id or str(uuid.uuid4()),
        )
        deferral = self.chain.admit(attempt)  # 4
        if deferral is not None:
            return self._deferred(request, record, takeover, plan, deferral)
        claimed = self._claim(request, record, takeover, plan)  # 5
        if claimed is None:
            self.chain.release(attempt)  # give back what the guards granted for it
            return None
        return strategy.execute(attempt, claimed, plan)  # 6

    def _claim(
        self, request: Request, record: OperationRecord | None, takeover: bool, plan: Plan
    ) -> OperationRecord | None:
        request_id = (
            request.message.request_id or (record.request_id if record else None) or str(uuid.uuid4())
        )
        lease = timedelta(seconds=self.provider.lease_seconds)
        if record is None:
            return self.ledger.start(request.new_operation(request_id), lease=lease, items=plan.started)
        return self.ledger.claim(
            record,
            lease=lease,
            request_id=request_id,
            takeover=request.new_operation() if takeover else None,
            items=plan.started,
        )

    # -- what ends a delivery without a call ---------------------------------------------------------

    def _deferred(
        self, request: Request, record: OperationRecord | None, takeover: bool, plan: Plan, deferral: Defer
    ) -> Outcome:
        """A guard said wait: the ledger says so too (``ops show``), and no attempt is used. A new row gets
        its items; an existing one keeps them as they are, so items of a lost call are still known as such
        at the next claim (and sent again together)."""
        delay = min(deferral.delay, MAX_RETRY_AFTER)
        fresh = record is None or takeover
        self.ledger.record_wait(
            record,
            reason=deferral.reason,
            until=self.clock() + timedelta(seconds=delay),
            new=request.new_operation() if fresh else None,
            items=plan.items if fresh else None,
        )
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
