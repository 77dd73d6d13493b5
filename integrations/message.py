"""Step 1 of a delivery: the message's kwargs, validated into a ``Request`` the other steps work from.

The kwargs are the whole contract between an application and the workers: ``payload``,
``idempotency_key`` and ``request_id``. Anything else is an ``InvalidRequest`` that names the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from integrations.errors import InvalidRequest
from integrations.ledger.models import MAX_KEY_LENGTH
from integrations.ledger.records import NewOperation
from integrations.resilience import idempotency


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
        )


def parse_message(delivery: Delivery, where: str) -> OperationMessage:
    """The kwargs as an ``OperationMessage``; ``InvalidRequest`` names every problem."""
    if delivery.args:
        raise InvalidRequest(
            f"{where}: positional arguments are not accepted; send "
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
        raise InvalidRequest(f"{where}: {problems}") from None
    if has_nul(message.payload):
        raise InvalidRequest(
            f"{where}: payload contains a NUL character (\\u0000), which the ledger cannot store; remove it"
        )
    return message


def has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_nul(item) for item in value)
    return False
