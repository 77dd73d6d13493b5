"""Step 1 of a delivery: the message's kwargs, the whole contract between an application and the
workers, validated into a ``Request`` the other steps work from.

The kwargs are ``payload`` (JSON within the provider's ``max_payload_bytes``), ``idempotency_key`` and
``request_id``. Anything else is an ``InvalidRequest`` that names the field: never retried, no provider call.
Workers and ``integrations.client.enqueue`` check a message the same way (``parse_request``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from integrations.adapters.base import Adapter, BatchPayload
from integrations.batch import BatchItem
from integrations.errors import InvalidRequest
from integrations.ledger.models import MAX_KEY_LENGTH
from integrations.ledger.records import NewOperation
from integrations.providers import ProviderSettings
from integrations.resilience import idempotency

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


def parse_message(delivery: Delivery, provider: ProviderSettings) -> OperationMessage:
    """The kwargs as an ``OperationMessage``, its payload JSON within the provider's size limit;
    ``InvalidRequest`` names every problem."""
    where = f"{provider.name}.{delivery.operation}"
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
    return message


def payload_problem(payload: Any, provider: ProviderSettings) -> str | None:
    """Why a payload cannot be sent and kept, or ``None``: it must be JSON (string keys, finite numbers,
    Unicode text without NUL, at most ``MAX_PAYLOAD_DEPTH`` deep) of at most the provider's
    ``max_payload_bytes`` as compact JSON in UTF-8. The encoder measures first, so an oversized payload
    is never walked; one walk finds everything else."""
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
        if "\x00" in value:
            return f"{path}: contains a NUL character (\\u0000), which the ledger cannot store; remove it"
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
    message = parse_message(delivery, adapter.provider)
    payload = adapter.parse_payload(delivery.operation, message.payload)
    request = Request.of(delivery, adapter.provider.name, message, payload)
    if not isinstance(payload, BatchPayload):
        return request, None
    items = adapter.parse_batch(delivery.operation, payload, request.key)
    if all(item.problem is not None for item in items):
        problems = "; ".join(item.problem for item in items[:5] if item.problem)
        raise InvalidRequest(f"{where}: no item is valid: {problems}")
    return request, tuple(items)
