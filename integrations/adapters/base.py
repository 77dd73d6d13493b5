"""The adapter base class that integration developers subclass.

An adapter declares its operations with ``@operation``; each operation turns a validated payload model
into an ``HttpCall``. The base class sends the call through the worker's ``requests.Session`` with the
provider's timeout and the idempotency headers, classifies the answer, and parses success into the
operation's response model. Foreign exceptions are mapped to ``integrations.errors`` here and only here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, TypeVar

import requests
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from integrations.adapters.answers import (
    answer_mismatch,
    classify_http_response,
    response_body,
    validation_problems,
)
from integrations.auth import Credentials
from integrations.batch import MAX_BATCH_ITEMS, BatchItem, ItemResult, item_key
from integrations.errors import (
    ContractViolation,
    ErrorType,
    InvalidRequest,
    OperationError,
    TransientError,
)
from integrations.ledger.models import MAX_KEY_LENGTH
from integrations.providers import ProviderSettings
from integrations.webhooks.events import Event, EventLink


@dataclass(frozen=True)
class HttpCall:
    """One HTTP request an operation makes, relative to the provider's ``base_url``."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    data: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """A successful answer: the operation's response model and the answer's headers."""

    model: BaseModel
    headers: Mapping[str, str]


@dataclass(frozen=True)
class OperationSpec:
    """What ``@operation`` records about one operation of an adapter."""

    name: str
    payload: type[BaseModel]
    response: type[BaseModel]
    build: Callable[[Any, Any], HttpCall]


@dataclass(frozen=True)
class BatchSpec:
    """What ``@batch_operation`` records: the item model, how many items one call may carry, and which
    item field holds the caller's key for the item (when none is set, a key is derived)."""

    name: str
    item: type[BaseModel]
    max_items: int
    key: str | None
    build: Callable[[Any, Sequence[BatchItem]], HttpCall]


@dataclass(frozen=True)
class BatchReply:
    """A batch call's answer read item by item, and the answer's headers."""

    results: Mapping[str, ItemResult]
    headers: Mapping[str, str]


class BatchPayload(BaseModel):
    """The payload of every batch operation."""

    model_config = ConfigDict(extra="forbid")

    items: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


AdapterMethod = TypeVar("AdapterMethod", bound=Callable[..., HttpCall])
Answered = TypeVar("Answered", Reply, BatchReply)


def operation(
    *, payload: type[BaseModel], response: type[BaseModel], name: str | None = None
) -> Callable[[AdapterMethod], AdapterMethod]:
    """Declare an adapter method as an operation: ``build(self, payload) -> HttpCall``."""

    def mark(method: AdapterMethod) -> AdapterMethod:
        spec = OperationSpec(name=name or method.__name__, payload=payload, response=response, build=method)
        method.__integrations_operation__ = spec  # type: ignore[attr-defined]
        return method

    return mark


def batch_operation(
    *, item: type[BaseModel], max_items: int, key: str | None = None, name: str | None = None
) -> Callable[[AdapterMethod], AdapterMethod]:
    """Declare an adapter method as a batch operation: ``build(self, items) -> HttpCall`` for one chunk of
    at most ``max_items`` items; the adapter's ``item_results`` reads the answer item by item."""

    def mark(method: AdapterMethod) -> AdapterMethod:
        spec = BatchSpec(name=name or method.__name__, item=item, max_items=max_items, key=key, build=method)
        method.__integrations_operation__ = spec  # type: ignore[attr-defined]
        return method

    return mark


class Adapter:
    """Base class of provider adapters; subclasses set ``name`` and declare operations."""

    name: ClassVar[str]
    operations: ClassVar[Mapping[str, OperationSpec | BatchSpec]] = {}
    idempotency_header: ClassVar[str] = "Idempotency-Key"
    request_id_header: ClassVar[str] = "X-Request-ID"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        specs = dict(cls.operations)
        for attribute in vars(cls).values():
            spec = getattr(attribute, "__integrations_operation__", None)
            if isinstance(spec, OperationSpec | BatchSpec):
                specs[spec.name] = spec
        cls.operations = specs

    def __init__(
        self, provider: ProviderSettings, session: requests.Session, credentials: Credentials | None = None
    ) -> None:
        self.provider = provider
        self.session = session
        self.credentials = credentials or Credentials({})
        # The environment's proxy and CA settings, read once: with ``trust_env`` a session reads them on
        # every call (half a millisecond with a large environment). ``no_proxy`` is applied to base_url.
        self.proxies = requests.utils.get_environ_proxies(provider.base_url)
        self.verify: str | bool = (
            os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        )

    def where(self, operation: str) -> str:
        return f"{self.provider.name}.{operation}"

    def parse_payload(self, operation: str, payload: Any) -> BaseModel:
        """Validate a message's payload; a bad one is an ``InvalidRequest`` naming each field."""
        spec = self.spec(operation)
        model = BatchPayload if isinstance(spec, BatchSpec) else spec.payload
        try:
            return model.model_validate(payload)
        except ValidationError as exc:
            raise InvalidRequest(f"{self.where(operation)}: {validation_problems(exc, 'payload')}") from None

    def parse_batch(self, operation: str, payload: BatchPayload, idempotency_key: str) -> list[BatchItem]:
        """The items of a batch message, each with its key: the caller's (the spec's ``key`` field) or
        ``<idempotency key>#<position>``. An invalid item is kept with its problem (it fails alone); keys
        used twice make the whole message invalid."""
        spec = self.batch_spec(operation)
        items: list[BatchItem] = []
        seen: dict[str, int] = {}
        for position, raw in enumerate(payload.items):
            field = f"payload.items.{position}"
            problem = None
            key = raw.get(spec.key) if spec.key else None
            if key is None:
                key = item_key(idempotency_key, position)
            elif not (isinstance(key, str) and 0 < len(key) <= MAX_KEY_LENGTH and key.isprintable()):
                problem = f"{field}.{spec.key}: must be 1 to {MAX_KEY_LENGTH} printable characters"
                key = item_key(idempotency_key, position)
            if key in seen:
                raise InvalidRequest(
                    f"{self.where(operation)}: payload.items.{seen[key]} and {field} have the same key "
                    f"{key!r}; each item's {spec.key!r} must be unique within the operation"
                )
            seen[key] = position
            try:
                value = spec.item.model_validate(raw)
            except ValidationError as exc:
                items.append(BatchItem(key, position, None, validation_problems(exc, field)))
                continue
            items.append(BatchItem(key, position, None if problem else value, problem))
        return items

    def spec(self, operation: str) -> OperationSpec | BatchSpec:
        try:
            return self.operations[operation]
        except KeyError:
            known = ", ".join(sorted(self.operations))
            raise InvalidRequest(
                f"{self.provider.name}: adapter {self.name!r} has no operation {operation!r} (it has: {known})"
            ) from None

    def batch_spec(self, operation: str) -> BatchSpec:
        spec = self.spec(operation)
        if not isinstance(spec, BatchSpec):
            raise TypeError(f"{self.where(operation)} is not a batch operation")
        return spec

    def call(self, operation: str, payload: BaseModel, *, idempotency_key: str, request_id: str) -> Reply:
        """Make one attempt; return the parsed response or raise an ``OperationError`` (whose
        ``headers`` are the answer's, when there was one). A 401 with credentials that can be renewed
        (OAuth2) renews them once and sends once more, within the same attempt."""
        spec = self.spec(operation)
        if isinstance(spec, BatchSpec):
            raise TypeError(f"{self.where(operation)} is a batch operation: use call_batch")
        response = self._exchange(operation, spec.build(self, payload), idempotency_key, request_id)
        return self._read(operation, response, lambda: Reply(self.parse_response(spec, response), {}))

    def call_batch(
        self, operation: str, items: Sequence[BatchItem], *, idempotency_key: str, request_id: str
    ) -> BatchReply:
        """Send one chunk of a batch operation and read the answer item by item. An error raised here
        (the provider refused or failed the whole call) is every item's."""
        spec = self.batch_spec(operation)
        response = self._exchange(operation, spec.build(self, items), idempotency_key, request_id)

        def read() -> BatchReply:
            results = {result.key: result for result in self.item_results(operation, items, response)}
            expected = {item.key for item in items}
            if set(results) != expected:
                missing = sorted(expected - set(results))[:5]
                raise ContractViolation(
                    f"{self.where(operation)}: the provider's answer does not account for every item sent "
                    f"(has its API changed?); without an outcome: {missing}",
                    status_code=response.status_code,
                    body=response_body(response),
                )
            return BatchReply(results, {})

        return self._read(operation, response, read)

    def _read(self, operation: str, response: requests.Response, read: Callable[[], Answered]) -> Answered:
        """Classify the answer and read a success with ``read``; the answer's headers go with the reply
        or the error (the guards read rate limits from both)."""
        headers = dict(response.headers)
        try:
            error = self.classify(operation, response)
            if error is not None:
                raise error
            return replace(read(), headers=headers)
        except OperationError as exc:
            exc.headers = headers
            raise

    def item_results(
        self, operation: str, items: Sequence[BatchItem], response: requests.Response
    ) -> list[ItemResult]:
        """Read a batch call's successful answer item by item; batch adapters implement this (a
        malformed answer raises ``ContractViolation``)."""
        raise NotImplementedError(f"{type(self).__name__} does not read batch answers")

    def _exchange(
        self, operation: str, call: HttpCall, idempotency_key: str, request_id: str
    ) -> requests.Response:
        """Send ``call`` with the credentials and the idempotency headers; on a 401 with credentials that
        can be renewed, renew them and send once more."""
        credentials = self.credentials.headers()
        headers = {
            **call.headers,
            **credentials,
            self.idempotency_header: idempotency_key,
            self.request_id_header: request_id,
        }
        response = self._send(operation, call, headers)
        if response.status_code == 401 and self.credentials.refresh(credentials):
            response = self._send(operation, call, headers | self.credentials.headers())
        return response

    def _send(self, operation: str, call: HttpCall, headers: Mapping[str, str]) -> requests.Response:
        """Send ``call``; foreign exceptions become ours here."""
        where = self.where(operation)
        url = self.provider.base_url + call.path
        try:
            # Prepared here and handed to the session's transport adapter, rather than through
            # ``Session.request``: that merges the session's cookies, hooks, settings and redirect handling
            # into every call, a fifth of an attempt's HTTP time, and keeps the cookies a provider sets for
            # later calls, which one operation's call should not carry into another's.
            prepared = requests.PreparedRequest()
            prepared.prepare(
                method=call.method,
                url=url,
                headers={**self.session.headers, **headers},
                params=call.params,
                json=call.json,
                data=call.data,
            )
            response = self.session.get_adapter(url).send(
                prepared,
                stream=False,
                timeout=self.provider.timeout,
                verify=self.verify,
                cert=None,
                proxies=self.proxies,
            )
            response.content  # noqa: B018 - the whole answer is read here, under the attempt's deadline
            return response
        except requests.Timeout as exc:
            raise TransientError(
                f"{where}: no answer within {self.provider.timeout:g}s", error_type=ErrorType.TIMEOUT
            ) from exc
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as exc:
            raise TransientError(
                f"{where}: the answer was cut off or garbled: {type(exc).__name__}",
                error_type=ErrorType.CONNECTION_ERROR,
            ) from exc
        except requests.ConnectionError as exc:
            raise TransientError(
                f"{where}: cannot connect to {self.provider.base_url}: {type(exc).__name__}",
                error_type=ErrorType.CONNECTION_ERROR,
            ) from exc
        except requests.RequestException as exc:
            # The exception's text may quote a header value, so only its kind is kept.
            raise InvalidRequest(
                f"{where}: the request cannot be sent ({type(exc).__name__}); check the payload"
            ) from exc

    def classify(self, operation: str, response: requests.Response) -> OperationError | None:
        """Map a non-success answer to an error; ``None`` means success. Adapters refine this."""
        return classify_http_response(self.where(operation), response)

    def reference(self, operation: str, response: Any) -> str | None:
        """The provider's id of what the single operation ``operation`` made, read from its succeeded
        ``response`` (the response model as JSON, as the ledger keeps it): Stripe's PaymentIntent id.
        The ledger keeps it with the success, and an inbound event that names only that object finds
        the operation by it (``event_link``). ``None`` (the default): the answer names nothing that
        events will name. At most 255 characters; anything else, or an exception, is logged and dropped,
        never failing an operation that succeeded."""
        return None

    def event_link(self, event: Event) -> EventLink | None:
        """The operation of this project that the webhook ``event`` confirms or contradicts, as the
        event's body names it: by the idempotency key the operation was sent with, or by the provider's
        id of what it made (the ``reference`` above); ``None`` (the default) if the event is about no
        operation this adapter sends. Called on the queue for every stored event of the provider, with
        bodies the adapter may not know: anything unexpected is ``None``, never an exception."""
        return None

    def event_handlers(self) -> Mapping[str, Sequence[Callable[[Event], None]]]:
        """Handlers of this provider's webhook events, by event type (``"*"``: any type), run on the queue
        before those application packages register, with the same retries (``handling.py`` says how a
        handler fails). An adapter's own, since they may use its session and credentials: to read back
        the object an event names, say. None by default."""
        return {}

    def parse_response(self, spec: OperationSpec, response: requests.Response) -> BaseModel:
        """Parse a success into the operation's response model; a mismatch is a contract violation."""
        try:
            return spec.response.model_validate(response.json())
        except ValueError as exc:  # not JSON, or a pydantic ValidationError
            raise answer_mismatch(self.where(spec.name), spec.response, exc, response) from None
