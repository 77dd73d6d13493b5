"""The ``stripe`` adapter: PaymentIntents and Refunds through Stripe's v1 API.

Requests are form-encoded the way Stripe documents (``metadata[key]=value``, ``list[0]=...``,
``true``/``false``), pinned to one API version, and authenticated with ``Authorization: Bearer <secret
key>`` from ``[providers.<p>.auth]``. Stripe's error bodies decide what is retried: card errors, invalid
requests, authentication and idempotency errors fail at once; rate limits, lock timeouts, conflicts and
server errors are retried; a ``Stripe-Should-Retry`` header overrides both ways. PaymentIntent client
secrets are never kept (Stripe: they "should not be stored, logged, or exposed").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

import requests
from pydantic import BaseModel, ValidationError

from integrations.adapters.answers import answer_mismatch, reclassified, response_body
from integrations.adapters.base import Adapter, HttpCall, OperationSpec, operation
from integrations.adapters.stripe_payments import (
    CreatePaymentIntent,
    CreateRefund,
    PaymentIntent,
    Refund,
    StripeObject,
)
from integrations.errors import (
    ErrorType,
    OperationError,
    ProviderRejected,
    TransientError,
)
from integrations.ledger.models import MAX_KEY_LENGTH
from integrations.webhooks.events import Event, EventLink
from integrations.webhooks.store import Relation

# An API key as Stripe writes one, masked or not (an answer to a bad key quotes it masked).
_API_KEY = re.compile(r"\b(?:sk|rk|pk)_(?:test|live)_[0-9A-Za-z*]+")

# The PaymentIntent events that say how the payment went: it succeeded, or the attempt failed.
# (https://docs.stripe.com/api/events/types; the event's ``data.object`` is the PaymentIntent.)
PAYMENT_INTENT_EVENTS = {
    "payment_intent.succeeded": Relation.CONFIRMS,
    "payment_intent.payment_failed": Relation.CONTRADICTS,
}


def form_encode(params: Mapping[str, Any]) -> dict[str, str]:
    """Stripe's form encoding: nested objects as ``key[sub]``, arrays as ``key[0]``, booleans as
    ``true``/``false``; ``None`` is left out and ``""`` is kept (Stripe reads it as "unset")."""
    fields: dict[str, str] = {}
    for key, value in params.items():
        _encode_into(fields, str(key), value)
    return fields


def _encode_into(fields: dict[str, str], key: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, Mapping):
        for sub, item in value.items():
            _encode_into(fields, f"{key}[{sub}]", item)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _encode_into(fields, f"{key}[{index}]", item)
    elif isinstance(value, bool):  # before int: a bool is an int
        fields[key] = "true" if value else "false"
    elif isinstance(value, str | int | float | Decimal):
        fields[key] = str(value)
    else:
        raise TypeError(f"{key}: {type(value).__name__} has no form encoding")


class _ErrorDetail(StripeObject):
    type: str | None = None
    code: str | None = None
    message: str | None = None
    param: str | None = None
    decline_code: str | None = None


class _ErrorBody(StripeObject):
    error: _ErrorDetail


@dataclass(frozen=True)
class _Verdict:
    """Stripe's reading of an error answer, before ``Stripe-Should-Retry`` has its say: the problem in its
    words and, where Stripe's rules differ from HTTP's, whether it is retried and as what."""

    what: str  # the problem in Stripe's words, after "<provider>.<operation>: "
    hint: str = ""  # what to do, when it is not retried
    retry: bool | None = None  # None: as the base classification says
    error_type: ErrorType | None = None  # when retried; None: the base classification's


@dataclass(frozen=True)
class _Rejection:
    """A row of Stripe's rejections: the statuses or error types it stands for, the problem in Stripe's
    words (``{said}`` is Stripe's status, type, code and message) and what to do."""

    statuses: frozenset[int]
    types: frozenset[str]
    what: str
    hint: str

    def fits(self, status: int, kind: str | None) -> bool:
        return status in self.statuses or kind in self.types


# Checked in order, the first row that fits wins: an idempotency error comes as a 400, a card error as a 402.
_REJECTIONS = (
    _Rejection(
        statuses=frozenset(),
        types=frozenset({"idempotency_error"}),
        what="Stripe refused the idempotency key ({said})",
        hint="Stripe saw this key with other parameters: use a new key for a new operation",
    ),
    _Rejection(
        statuses=frozenset({402}),
        types=frozenset({"card_error"}),
        what="the payment failed ({said})",
        hint=(
            "Stripe keeps this answer for this idempotency key: ask the customer for another "
            "payment method and send it under a new key"
        ),
    ),
    _Rejection(
        statuses=frozenset({403}),
        types=frozenset(),
        what="the API key may not do this ({said})",
        hint="give the provider's key this permission (restricted keys) or use another key",
    ),
    _Rejection(
        statuses=frozenset({400, 404}),
        types=frozenset({"invalid_request_error"}),
        what="Stripe refused the request as invalid ({said})",
        hint="correct the payload and send it under a new idempotency key",
    ),
)


class StripeAdapter(Adapter):
    """Stripe's PaymentIntents and Refunds.

    Every request carries ``Stripe-Version: STRIPE_VERSION``, so the shape of requests and answers does
    not move with the account's default API version. Upgrading it is a deliberate change: read Stripe's
    changelog for the versions in between, check the models of ``stripe_payments`` against it, and change
    the constant and the tests together.
    """

    name = "stripe"
    STRIPE_VERSION: ClassVar[str] = "2026-09-30.endive"

    @operation(payload=CreatePaymentIntent, response=PaymentIntent)
    def create_payment_intent(self, payload: CreatePaymentIntent) -> HttpCall:
        return self._post("/v1/payment_intents", payload)

    @operation(payload=CreateRefund, response=Refund)
    def create_refund(self, payload: CreateRefund) -> HttpCall:
        return self._post("/v1/refunds", payload)

    def reference(self, operation: str, response: Any) -> str | None:
        """The created object's id: the PaymentIntent's ``pi_…``, the Refund's ``re_…``."""
        return _object_id(response)

    def event_link(self, event: Event) -> EventLink | None:
        """``payment_intent.succeeded`` confirms, ``payment_intent.payment_failed`` contradicts, the
        operation that created the PaymentIntent, found by its id (``data.object.id``). The adapter puts
        no idempotency key in a PaymentIntent's metadata, so the id is the only link."""
        relation = PAYMENT_INTENT_EVENTS.get(event.type)
        if relation is None or not isinstance(event.payload, dict):
            return None
        data = event.payload.get("data")
        found = data.get("object") if isinstance(data, dict) else None
        if not isinstance(found, dict) or found.get("object", "payment_intent") != "payment_intent":
            return None
        reference = _object_id(found)
        return EventLink(relation, reference=reference) if reference is not None else None

    def _post(self, path: str, payload: BaseModel) -> HttpCall:
        return HttpCall(
            method="POST",
            path=path,
            data=form_encode(payload.model_dump(exclude_none=True)),
            headers={"Stripe-Version": self.STRIPE_VERSION},
        )

    def classify(self, operation: str, response: requests.Response) -> OperationError | None:
        """The base classification in Stripe's words and by Stripe's rules, as its own libraries read
        answers: conflicts and ``rate_limit`` codes are retried, a lock timeout is no rate limit, and
        ``Stripe-Should-Retry`` (``true``/``false``), when present, decides whether the answer is retried."""
        error = super().classify(operation, response)
        if error is None:
            return None
        status = response.status_code
        error.body = without_secrets(error.body)
        verdict = self._verdict(status, _error_detail(error.body), response.headers)
        # HTTP retries a 408; Stripe documents none and its libraries do not retry one.
        retry = verdict.retry if verdict.retry is not None else error.retryable and status != 408
        what = f"{self.where(operation)}: {verdict.what}"
        should_retry = response.headers.get("Stripe-Should-Retry")
        if should_retry == "false" and retry:
            hint = "Stripe answered Stripe-Should-Retry: false (another attempt would have no further effect)"
            if status >= 500:
                hint += "; its outcome is uncertain: check the object in the Stripe Dashboard"
            return reclassified(error, response, ProviderRejected, f"{what}; {hint}")
        if should_retry == "true" and not retry:
            return reclassified(
                error, response, TransientError, f"{what}; Stripe answered Stripe-Should-Retry: true"
            )
        if retry:
            error_type = verdict.error_type or error.error_type
            return reclassified(error, response, TransientError, what, error_type=error_type)
        hint = f"; {verdict.hint}" if verdict.hint else ""
        return reclassified(error, response, ProviderRejected, what + hint)

    def _verdict(self, status: int, detail: _ErrorDetail | None, headers: Mapping[str, str]) -> _Verdict:
        """What Stripe's status, error type and code say; only conflicts and ``rate_limit`` codes on a
        status HTTP would not retry change whether the answer is retried."""
        if status == 401:
            return self._key_refused()
        said = _stripe_said(status, detail)
        code = detail.code if detail else None
        if status == 429 or code == "rate_limit":  # rate limits used to come as 400 rate_limit
            return _too_busy(status, code, said, headers)
        if status == 409:
            # Stripe's libraries retry every conflict (another request with the same key in progress).
            return _Verdict(
                retry=True,
                what=f"the request conflicts with another one ({said})",
                error_type=ErrorType.RESOURCE_LOCKED,
            )
        if status >= 500:
            return _Verdict(what=f"Stripe server error ({said})")
        return _rejection(status, detail.type if detail else None, said)

    def _key_refused(self) -> _Verdict:
        """A 401: Stripe's message quotes the key (masked); the key is the operator's business, not the
        log's, so only where to look is said."""
        return _Verdict(
            what="Stripe did not accept the API key (HTTP 401)",
            hint=(
                f"check the provider's secret key ([providers.{self.provider.name}.auth] secret) on "
                "the workers: a live key for live mode, a test key for test mode, not rolled or revoked"
            ),
        )

    def parse_response(self, spec: OperationSpec, response: requests.Response) -> BaseModel:
        """The answer without client secrets, parsed into the operation's model; a mismatch is a
        ``ContractViolation`` naming the fields (never quoting the answer, which may hold secrets)."""
        body = without_secrets(response_body(response))
        try:
            return spec.response.model_validate(without_secrets(response.json()))
        except ValueError as exc:
            violation = answer_mismatch(self.where(spec.name), spec.response, exc, response, body)
            violation.message += f" (requests pin Stripe-Version {self.STRIPE_VERSION})"
            raise violation from None


def without_secrets(value: Any) -> Any:
    """``value`` with every ``client_secret`` dropped and API keys (even masked ones) replaced, at any
    depth: a card error's body carries the PaymentIntent, client secret included."""
    if isinstance(value, dict):
        return {key: without_secrets(item) for key, item in value.items() if key != "client_secret"}
    if isinstance(value, list):
        return [without_secrets(item) for item in value]
    if isinstance(value, str):
        return _API_KEY.sub("[api key]", value)
    return value


def _object_id(value: Any) -> str | None:
    """The ``id`` of a Stripe object as JSON, if it has one the ledger can keep."""
    found = value.get("id") if isinstance(value, dict) else None
    return found if isinstance(found, str) and 0 < len(found) <= MAX_KEY_LENGTH else None


def _error_detail(body: Any) -> _ErrorDetail | None:
    try:
        return _ErrorBody.model_validate(body).error
    except ValidationError:
        return None


def _too_busy(status: int, code: str | None, said: str, headers: Mapping[str, str]) -> _Verdict:
    """A 429 or a ``rate_limit`` code: a lock timeout, or a rate limit (retried, whatever the status)."""
    if status == 429 and code == "lock_timeout":
        # Lock contention on one object, not a rate limit: the fleet is not paused for it, and the
        # breaker does not count it.
        return _Verdict(
            error_type=ErrorType.RESOURCE_LOCKED,
            what=(
                f"the object is locked by another request or Stripe process ({said}); if this "
                "recurs, send changes to the same object one after another"
            ),
        )
    reason = headers.get("Stripe-Rate-Limited-Reason")
    because = f", Stripe-Rate-Limited-Reason: {reason}" if reason else ""
    return _Verdict(
        retry=True,
        what=f"rate limited by Stripe ({said}{because})",
        error_type=ErrorType.RATE_LIMITED,
    )


def _rejection(status: int, kind: str | None, said: str) -> _Verdict:
    """The first row of ``_REJECTIONS`` that fits the status or error type; any other answer is a plain
    rejection in Stripe's words."""
    for row in _REJECTIONS:
        if row.fits(status, kind):
            return _Verdict(what=row.what.format(said=said), hint=row.hint)
    return _Verdict(what=f"Stripe rejected the request ({said})")


def _stripe_said(status: int, detail: _ErrorDetail | None) -> str:
    """``HTTP 402 card_error/card_declined, decline_code generic_decline: Your card was declined.``"""
    if detail is None:
        return f"HTTP {status}"
    text = f"HTTP {status}"
    if detail.type:
        text += f" {detail.type}"
        if detail.code:
            text += f"/{detail.code}"
    elif detail.code:
        text += f" {detail.code}"
    if detail.decline_code:
        text += f", decline_code {detail.decline_code}"
    if detail.param:
        text += f", param {detail.param}"
    return f"{text}: {detail.message}" if detail.message else text
