"""A local server playing Stripe's v1 API for PaymentIntents and Refunds, as Stripe documents it.

It checks the bearer key, keeps idempotent results per ``Idempotency-Key`` (a replay of the same request
gets the saved answer with ``Idempotent-Replayed: true``; the same key with other parameters gets an
``idempotency_error``), refuses unknown parameters, declines the documented test payment method
``pm_card_visa_chargeDeclined``, and answers with the documented PaymentIntent and Refund objects.
Error bodies follow https://docs.stripe.com/api/errors; ``error()`` builds one for a test to script.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from tests.fakes.server import Answer, FakeAPI, Received

# Messages as Stripe writes them (https://docs.stripe.com/rate-limits#object-lock-timeouts and Stripe's
# answers for the other cases).
LOCK_TIMEOUT_MESSAGE = (
    "This object cannot be accessed right now because another API request or Stripe process is currently "
    "accessing it. If you see this error intermittently, retry the request. If you see this error "
    "frequently and are making multiple concurrent requests to a single object, make your requests "
    "serially or at a lower rate. See https://stripe.com/docs/rate-limits for more information."
)
RATE_LIMIT_MESSAGE = (
    "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits."
)
DECLINED_MESSAGE = "Your card was declined."
INSUFFICIENT_FUNDS_MESSAGE = "Your card has insufficient funds."
API_ERROR_MESSAGE = "An unknown error occurred"

# Stripe's test payment methods that decline (https://docs.stripe.com/testing#declined-payments).
DECLINING_PAYMENT_METHODS = {
    "pm_card_visa_chargeDeclined": ("generic_decline", DECLINED_MESSAGE),
    "pm_card_visa_chargeDeclinedInsufficientFunds": ("insufficient_funds", INSUFFICIENT_FUNDS_MESSAGE),
}

PAYMENT_INTENT_PARAMETERS = {
    "amount",
    "currency",
    "customer",
    "payment_method",
    "payment_method_types",
    "automatic_payment_methods",
    "confirm",
    "off_session",
    "error_on_requires_action",
    "return_url",
    "capture_method",
    "setup_future_usage",
    "description",
    "metadata",
    "receipt_email",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "transfer_group",
}
REFUND_PARAMETERS = {
    "payment_intent",
    "charge",
    "amount",
    "reason",
    "metadata",
    "instructions_email",
    "refund_application_fee",
    "reverse_transfer",
}
CREATED = 1680800504


def error(
    status: int,
    type: str,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    decline_code: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Answer:
    """A Stripe error answer: ``{"error": {"type", "code", "message", "param", "decline_code", "doc_url"}}``."""
    detail: dict[str, Any] = {"type": type, "message": message}
    if code is not None:
        detail["code"] = code
        detail["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
    if param is not None:
        detail["param"] = param
    if decline_code is not None:
        detail["decline_code"] = decline_code
    detail.update(extra)
    return Answer(status, {"error": detail}, {"Request-Id": "req_fake", **(headers or {})})


class FakeStripe(FakeAPI):
    """Stripe for one secret key; ``payment_intents`` holds what was created, by id."""

    def __init__(self, secret_key: str) -> None:
        super().__init__()
        self.secret_key = secret_key
        self.payment_intents: dict[str, dict[str, Any]] = {}
        self.saved: dict[str, tuple[str, dict[str, str], Answer]] = {}  # idempotency key -> request, answer
        self.ids = itertools.count(1)

    def answer(self, request: Received) -> Answer:
        if request.header("Authorization") != f"Bearer {self.secret_key}":
            return self._unauthorized(request)
        routes = {"/v1/payment_intents": self._create_payment_intent, "/v1/refunds": self._create_refund}
        route = routes.get(request.path)
        if request.method != "POST" or route is None:
            return error(
                404,
                "invalid_request_error",
                f"Unrecognized request URL ({request.method}: {request.path}).",
            )
        form = request.form()
        key = request.header("Idempotency-Key")
        if key is not None and key in self.saved:
            path, params, saved = self.saved[key]
            if (path, params) != (request.path, form):
                return error(
                    400,
                    "idempotency_error",
                    "Keys for idempotent requests can only be used with the same parameters they were first "
                    f"used with. Try using a key other than '{key}' if you meant to execute a different "
                    "request.",
                )
            return Answer(saved.status, saved.body, saved.headers | {"Idempotent-Replayed": "true"})
        answer = route(form)
        # Stripe saves the result once the endpoint has begun executing: not for a failed validation.
        if key is not None and answer.status != 400:
            self.saved[key] = (request.path, form, answer)
        return answer

    def _unauthorized(self, request: Received) -> Answer:
        sent = (request.header("Authorization") or "").removeprefix("Bearer ")
        if not sent:
            return error(
                401,
                "invalid_request_error",
                "You did not provide an API key. You need to provide your API key in the Authorization "
                "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
            )
        masked = re.sub(r"^((?:sk|rk)_(?:test|live)_).*(.{4})$", lambda m: m[1] + "*" * 24 + m[2], sent)
        return error(401, "invalid_request_error", f"Invalid API Key provided: {masked}")

    def _create_payment_intent(self, form: dict[str, str]) -> Answer:
        refused = _unknown_or_missing(form, PAYMENT_INTENT_PARAMETERS, ("amount", "currency"))
        if refused is not None:
            return refused
        intent_id = f"pi_3MtwBwLkdIwHu7ix{next(self.ids):010d}"
        confirm = form.get("confirm") == "true"
        payment_method = form.get("payment_method")
        intent: dict[str, Any] = payment_intent(
            intent_id,
            amount=int(form["amount"]),
            currency=form["currency"],
            customer=form.get("customer"),
            payment_method=payment_method,
            capture_method=form.get("capture_method", "automatic"),
            description=form.get("description"),
            receipt_email=form.get("receipt_email"),
            metadata=_nested(form, "metadata"),
        )
        if confirm and payment_method in DECLINING_PAYMENT_METHODS:
            decline_code, message = DECLINING_PAYMENT_METHODS[payment_method]
            charge = f"ch_3MtwBwLkdIwHu7ix{next(self.ids):010d}"
            failure = {
                "charge": charge,
                "code": "card_declined",
                "decline_code": decline_code,
                "doc_url": "https://stripe.com/docs/error-codes/card-declined",
                "message": message,
                "type": "card_error",
            }
            intent |= {"status": "requires_payment_method", "latest_charge": charge}
            intent["last_payment_error"] = failure
            self.payment_intents[intent_id] = intent
            return error(
                402,
                "card_error",
                message,
                code="card_declined",
                decline_code=decline_code,
                charge=charge,
                payment_intent=intent,
            )
        if confirm:
            manual = intent["capture_method"] == "manual"
            intent["status"] = "requires_capture" if manual else "succeeded"
            intent["amount_received"] = 0 if manual else intent["amount"]
            intent["latest_charge"] = f"ch_3MtwBwLkdIwHu7ix{next(self.ids):010d}"
        elif payment_method is not None:
            intent["status"] = "requires_confirmation"
        self.payment_intents[intent_id] = intent
        return Answer(200, intent, {"Request-Id": "req_fake"})

    def _create_refund(self, form: dict[str, str]) -> Answer:
        refused = _unknown_or_missing(form, REFUND_PARAMETERS, ())
        if refused is not None:
            return refused
        intent_id = form.get("payment_intent")
        intent = self.payment_intents.get(intent_id or "")
        if intent_id is not None and intent is None:
            return error(
                400,
                "invalid_request_error",
                f"No such payment_intent: '{intent_id}'",
                code="resource_missing",
                param="payment_intent",
            )
        amount = int(form["amount"]) if "amount" in form else (intent or {}).get("amount_received", 1000)
        body = refund(
            f"re_1Nispe2eZvKYlo2C{next(self.ids):08d}",
            amount=amount,
            currency=(intent or {}).get("currency", "usd"),
            payment_intent=intent_id,
            charge=form.get("charge") or (intent or {}).get("latest_charge"),
            reason=form.get("reason"),
            metadata=_nested(form, "metadata"),
        )
        return Answer(200, body, {"Request-Id": "req_fake"})


def payment_intent(intent_id: str, **fields: Any) -> dict[str, Any]:
    """The PaymentIntent object of https://docs.stripe.com/api/payment_intents/object, with ``fields``."""
    intent: dict[str, Any] = {
        "id": intent_id,
        "object": "payment_intent",
        "amount": 2000,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": 0,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": {"enabled": True},
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": "automatic",
        "client_secret": f"{intent_id}_secret_YrKJUKribcBjcG8HVhfZluoGH",
        "confirmation_method": "automatic",
        "created": CREATED,
        "currency": "usd",
        "customer": None,
        "description": None,
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": False,
        "metadata": {},
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": None,
        "payment_method_options": {
            "card": {
                "installments": None,
                "mandate_options": None,
                "network": None,
                "request_three_d_secure": "automatic",
            },
            "link": {"persistent_token": None},
        },
        "payment_method_types": ["card", "link"],
        "processing": None,
        "receipt_email": None,
        "review": None,
        "setup_future_usage": None,
        "shipping": None,
        "source": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "requires_payment_method",
        "transfer_data": None,
        "transfer_group": None,
    }
    return intent | fields


def refund(refund_id: str, **fields: Any) -> dict[str, Any]:
    """The Refund object of https://docs.stripe.com/api/refunds/object, with ``fields``."""
    body: dict[str, Any] = {
        "id": refund_id,
        "object": "refund",
        "amount": 1000,
        "balance_transaction": "txn_1Nispe2eZvKYlo2CYezqFhEx",
        "charge": "ch_1NirD82eZvKYlo2CIvbtLWuY",
        "created": 1692942318,
        "currency": "usd",
        "destination_details": {
            "card": {
                "reference": "123456789012",
                "reference_status": "available",
                "reference_type": "acquirer_reference_number",
                "type": "refund",
            },
            "type": "card",
        },
        "metadata": {},
        "payment_intent": "pi_1GszsK2eZvKYlo2CfhZyoZLp",
        "reason": None,
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": "succeeded",
        "transfer_reversal": None,
    }
    return body | fields


def _unknown_or_missing(form: dict[str, str], known: set[str], required: tuple[str, ...]) -> Answer | None:
    for field in form:
        name = field.split("[", 1)[0]
        if name not in known:
            return error(
                400,
                "invalid_request_error",
                f"Received unknown parameter: {name}",
                code="parameter_unknown",
                param=name,
            )
    for name in required:
        if name not in form:
            return error(
                400,
                "invalid_request_error",
                f"Missing required param: {name}.",
                code="parameter_missing",
                param=name,
            )
    return None


def _nested(form: dict[str, str], name: str) -> dict[str, str]:
    """``name[key]=value`` fields as a dict."""
    prefix = f"{name}["
    return {field[len(prefix) : -1]: value for field, value in form.items() if field.startswith(prefix)}
