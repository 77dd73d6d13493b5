"""The webhook receiver: an ASGI application (FastAPI) that providers deliver their events to.

``POST /webhooks/{provider}`` reads the body up to the provider's ``max_body_bytes``, checks its
signature over the raw bytes (``verify``), and stores its events in the ledger, once per (provider, event
id), before it answers ``202 Accepted``; a delivery of events already stored answers the same, and
stores nothing more. A body that is an array of events (SendGrid and HubSpot batch them, each with its
own id) is one event per element, kept as the element's canonical JSON since the signature covered the
whole delivery and was checked at receipt; a redelivery batched otherwise stores only the events not
stored yet. A body that is one event is kept as the bytes received. A refused delivery is counted and
logged in one line (provider, reason, remote address; never the body or a header's value) and leaves
nothing in the ledger. A ledger out of reach
answers 503 with ``Retry-After``: the provider delivers again later. ``GET /healthz`` says whether the
ledger answers; ``GET /openapi.json`` describes both, generated from this code.

The receiver stores and acknowledges; handling is the queue's. Once a delivery's events are stored and
answered, ``publish`` (given by the wiring: the receiver knows no broker) sends the handling message of
each new one, ``integrations.<provider>.handle_event``; a duplicate publishes nothing. A publish that
fails is logged and the delivery still answers 202: the event stays ``received`` in the ledger, and the
sweeper sends it.

Reading the body, checking it and the ledger's statements block, so each delivery is handled in a worker
thread of the event loop's thread pool; the body's chunks are awaited on the loop from there, as
``read_body`` asks for them, so the loop itself never waits on the database or a slow client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import anyio.from_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from integrations.errors import ConfigError, LedgerUnavailable
from integrations.metrics import webhook_received
from integrations.providers import ProviderSettings
from integrations.webhooks.settings import WebhookSettings, resolve_keys
from integrations.webhooks.store import EventRecord, EventStore, NewEvent
from integrations.webhooks.verify import (
    BodyTooLarge,
    PayloadInvalid,
    SignatureInvalid,
    TimestampOutOfTolerance,
    WebhookRefused,
    read_body,
    verify,
)

log = logging.getLogger("integrations.webhooks")

# What a provider is told to wait before delivering again while the ledger is out of reach.
RETRY_AFTER_SECONDS = 30
# An unknown provider's name comes from the sender: it is logged this long at most, quoted.
_LOGGED_NAME_LENGTH = 64


class Received(StrEnum):
    """The ``result`` of ``integrations_webhooks_received_total``: stored, already stored, or why refused."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    BAD_SIGNATURE = "bad_signature"
    STALE = "stale"
    TOO_LARGE = "too_large"
    INVALID = "invalid"
    UNKNOWN_PROVIDER = "unknown_provider"


def received_as(refusal: WebhookRefused) -> Received:
    """The counter's result for a refusal."""
    if isinstance(refusal, SignatureInvalid):
        return Received.BAD_SIGNATURE
    if isinstance(refusal, TimestampOutOfTolerance):
        return Received.STALE
    if isinstance(refusal, BodyTooLarge):
        return Received.TOO_LARGE
    return Received.INVALID


# -- what the receiver answers (the OpenAPI document's schemas) ---------------------------------------


class StoredEvent(BaseModel):
    """An event in the ledger."""

    id: str = Field(description="The ledger's id of the event (`integrations events show ID`).")
    provider: str
    event_id: str = Field(description="The provider's id of the event, which deliveries are deduplicated on.")
    type: str = Field(description="The event's type, as the provider names it.")
    status: str = Field(description="How the event's handling stands in the ledger (`received` when stored).")


class Stored(StoredEvent):
    """Every event of the delivery is in the ledger: the answer to its first delivery and to every later
    one. The fields of the event are those of the delivery's first event, so a delivery of one event is
    answered as one event; ``events`` lists all of them."""

    events: list[StoredEvent] = Field(
        description="Each event of the delivery, in the order of the body: one for a JSON object, one per "
        "element for an array of events (SendGrid's, HubSpot's)."
    )


def _described(record: EventRecord) -> StoredEvent:
    return StoredEvent(
        id=record.id,
        provider=record.provider,
        event_id=record.event_id,
        type=record.type,
        status=record.status.value,
    )


class Refused(BaseModel):
    """A delivery refused: nothing of it was stored."""

    error: str = Field(
        description="Why, in one word: signature_invalid, signature_missing, timestamp_out_of_tolerance, "
        "body_too_large, payload_invalid, unknown_provider, or ledger_unavailable."
    )
    detail: str = Field(description="What is wrong, naming headers and fields, never their values.")


class Health(BaseModel):
    ledger: Literal["ok", "unavailable"]


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, JSON body, extra headers."""

    status: int
    body: BaseModel
    headers: Mapping[str, str] = field(default_factory=dict)
    # What to do once the answer is sent: publish a new event's handling message, so that neither the
    # provider's wait for its acknowledgement nor the receiver's throughput pays for the broker.
    then: Callable[[], None] | None = None


@dataclass(frozen=True)
class Endpoint:
    """A provider that delivers webhooks: how it signs them, and its HMAC keys, resolved."""

    provider: str
    settings: WebhookSettings
    keys: tuple[bytes, ...] = field(repr=False)


def endpoints(providers: Mapping[str, ProviderSettings], *, source: str | None = None) -> dict[str, Endpoint]:
    """An endpoint for each provider with a ``[providers.<name>.webhooks]`` table, its secrets resolved
    now; a ``ConfigError`` naming every provider and secret reference that cannot be resolved, and one
    when no provider has webhooks at all."""
    found: dict[str, Endpoint] = {}
    problems: list[str] = []
    for name, provider in providers.items():
        if provider.webhooks is None:
            continue
        try:
            keys = resolve_keys(name, provider.webhooks, source=source)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        found[name] = Endpoint(name, provider.webhooks, keys)
    if problems:
        raise ConfigError("\n".join(problems))
    if not found:
        raise ConfigError(
            f"{source or 'the providers file'}: no provider has a [providers.<name>.webhooks] table, so "
            'there is nothing to receive; add one (scheme = "stripe", secrets = ["env:NAME"], ...) to '
            "each provider that delivers webhooks"
        )
    return found


class _BlockingBody:
    """A request's body as the blocking stream ``read_body`` reads, for code in a worker thread of the
    event loop: each chunk is awaited on the loop when asked for."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""
        self._ended = False

    def read(self, size: int, /) -> bytes:
        while not self._pending and not self._ended:
            self._pending = anyio.from_thread.run(self._next)
        part, self._pending = self._pending[:size], self._pending[size:]
        return part

    async def _next(self) -> bytes:
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            self._ended = True
            return b""


@dataclass(frozen=True)
class Delivery:
    """One ``POST /webhooks/{provider}`` as the receiver reads it."""

    provider: str
    method: str
    url: str
    headers: Mapping[str, str]
    remote: str
    body: _BlockingBody


class Receiver:
    """Verifies deliveries and stores their events; the application's routes call it in a worker thread."""

    def __init__(
        self,
        endpoints: Mapping[str, Endpoint],
        store: EventStore,
        *,
        clock: Callable[[], float] = time.time,
        publish: Callable[[EventRecord], None] | None = None,
    ) -> None:
        self.endpoints = dict(endpoints)
        self.store = store
        self.clock = clock
        self.publish = publish

    def receive(self, delivery: Delivery) -> Answer:
        """Store the delivery's events and answer 202, or refuse it."""
        endpoint = self.endpoints.get(delivery.provider)
        if endpoint is None:
            name = delivery.provider[:_LOGGED_NAME_LENGTH]
            log.warning(
                "webhook refused: provider=%r reason=unknown_provider remote=%s: no webhooks are "
                "configured for this provider",
                name,
                delivery.remote,
            )
            webhook_received("", "", Received.UNKNOWN_PROVIDER)
            return Answer(
                404,
                Refused(
                    error=Received.UNKNOWN_PROVIDER.value,
                    detail="no webhooks are configured for this provider",
                ),
            )
        settings = endpoint.settings
        try:
            body = read_body(
                delivery.body, settings.max_body_bytes, content_length=delivery.headers.get("content-length")
            )
            verified = verify(
                settings,
                endpoint.keys,
                method=delivery.method,
                url=delivery.url,
                headers=delivery.headers,
                body=body,
                now=self.clock(),
            )
            stored = self.store.store_all(
                endpoint.provider,
                [NewEvent(event.event_id, event.event_type, event.body) for event in verified],
            )
        except WebhookRefused as exc:
            return self._refused(endpoint.provider, exc, delivery.remote)
        except ValueError as exc:  # an authentic event the ledger cannot keep (a NUL in its id, ...)
            return self._refused(endpoint.provider, PayloadInvalid(str(exc)), delivery.remote)
        except LedgerUnavailable as exc:
            log.error("webhook of provider %s not stored, answered 503: %s", endpoint.provider, exc)
            return Answer(
                503,
                Refused(error="ledger_unavailable", detail="the event could not be stored; deliver it again"),
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        for record, new in stored:
            result = Received.ACCEPTED if new else Received.DUPLICATE
            webhook_received(endpoint.provider, record.type, result)
            log.info(
                "webhook %s: provider=%s type=%s event_id=%s id=%s",
                result.value,
                record.provider,
                record.type,
                record.event_id,
                record.id,
            )
        fresh = [record for record, new in stored if new]
        then = (lambda: self._publish_all(fresh)) if fresh and self.publish is not None else None
        described = [_described(record) for record, _ in stored]
        return Answer(202, Stored(**described[0].model_dump(), events=described), then=then)

    def _publish_all(self, records: list[EventRecord]) -> None:
        """Send each new event's handling message, in the order of the body."""
        for record in records:
            self._publish(record)

    def _publish(self, record: EventRecord) -> None:
        """Send the stored event's handling message; a failure leaves it to the sweeper."""
        assert self.publish is not None
        try:
            self.publish(record)
        except Exception as exc:
            log.error(
                "webhook event %s of %s stored but its handling message was not sent (%s: %s): it stays "
                "received, and the sweeper sends it",
                record.id,
                record.provider,
                type(exc).__name__,
                exc,
            )

    def _refused(self, provider: str, refusal: WebhookRefused, remote: str) -> Answer:
        result = received_as(refusal)
        log.warning(
            "webhook refused: provider=%s reason=%s remote=%s: %s", provider, refusal.reason, remote, refusal
        )
        webhook_received(provider, "", result)
        return Answer(refusal.status, Refused(error=refusal.reason, detail=str(refusal)))

    def health(self) -> Answer:
        """200 when the ledger answers a query on the events, else 503."""
        try:
            self.store.list(limit=1)
        except LedgerUnavailable as exc:
            log.error("health: the ledger does not answer: %s", exc)
            return Answer(503, Health(ledger="unavailable"), {"Retry-After": str(RETRY_AFTER_SECONDS)})
        return Answer(200, Health(ledger="ok"))


def _json(answer: Answer) -> JSONResponse:
    after = BackgroundTask(answer.then) if answer.then is not None else None  # run in the thread pool
    return JSONResponse(
        answer.body.model_dump(mode="json"), answer.status, headers=dict(answer.headers), background=after
    )


def _package_version() -> str:
    try:
        return version("integrations")
    except PackageNotFoundError:
        return "0"


_PROVIDER_PARAMETER: dict[str, Any] = {
    "name": "provider",
    "in": "path",
    "required": True,
    "description": "A provider of the providers file with a [providers.<name>.webhooks] table.",
    "schema": {"type": "string"},
}
_REFUSED = {"model": Refused}


def create_app(receiver: Receiver) -> FastAPI:
    """The ASGI application serving ``receiver``. No interactive docs: they load scripts from a CDN, and
    the document itself is at ``/openapi.json``."""
    app = FastAPI(
        title="integrations webhook receiver",
        summary="Receives providers' signed webhook events and stores them in the ledger, once each.",
        version=_package_version(),
        docs_url=None,
        redoc_url=None,
    )

    @app.post(
        "/webhooks/{provider}",
        status_code=202,
        response_model=Stored,
        response_description="The delivery's events are in the ledger: stored now, or by an earlier delivery",
        summary="Deliver webhook events",
        responses={
            400: {**_REFUSED, "description": "Signed too long ago (or ahead), or a body that does not parse"},
            401: {
                **_REFUSED,
                "description": "A signature missing, or matching none of the provider's secrets",
            },
            404: {**_REFUSED, "description": "No webhooks are configured for this provider"},
            413: {**_REFUSED, "description": "The body is larger than the provider's max_body_bytes"},
            503: {
                **_REFUSED,
                "description": "The ledger is out of reach: deliver again after Retry-After seconds",
                "headers": {"Retry-After": {"schema": {"type": "integer"}}},
            },
        },
        # The name is read from the path, not validated by FastAPI: an unknown one answers 404, never 422.
        openapi_extra={
            "parameters": [_PROVIDER_PARAMETER],
            "requestBody": {
                "required": True,
                "description": "The event, or an array of events, as the provider signed it, its "
                "signature in the scheme's headers.",
                "content": {"application/json": {"schema": {}}},
            },
        },
    )
    async def deliver(request: Request) -> JSONResponse:
        """Verify the delivery's signature over the bytes received and store its events (one, or one per
        element of an array), once per provider and event id, before answering 202; a delivery already
        stored gets the same answer."""
        chunks = request.stream()
        delivery = Delivery(
            provider=request.path_params["provider"],
            method=request.method,
            url=str(request.url),
            headers=request.headers,
            remote=request.client.host if request.client else "-",
            body=_BlockingBody(chunks),
        )
        try:
            answer = await run_in_threadpool(receiver.receive, delivery)
        except ClientDisconnect:
            return JSONResponse({}, 400)  # nobody is left to read it
        finally:
            await chunks.aclose()
        return _json(answer)

    @app.get(
        "/healthz",
        response_model=Health,
        response_description="The ledger answers",
        summary="Whether the ledger answers",
        responses={503: {"model": Health, "description": "The ledger does not answer"}},
    )
    async def healthz() -> JSONResponse:
        """200 when the ledger answers, 503 when it does not."""
        return _json(await run_in_threadpool(receiver.health))

    return app
