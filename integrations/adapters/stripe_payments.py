"""PaymentIntents and Refunds as Stripe's v1 API documents them: the parameters of creating one, with
Stripe's limits, and the objects Stripe answers with (without what must not be kept).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Stripe's metadata limits: 50 keys, keys up to 40 characters without square brackets, values up to 500.
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_LENGTH = 40
MAX_METADATA_VALUE_LENGTH = 500


def _metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    if value is None:
        return None
    if len(value) > MAX_METADATA_KEYS:
        raise ValueError(f"at most {MAX_METADATA_KEYS} keys (Stripe's limit), not {len(value)}")
    for key, item in value.items():
        if not 0 < len(key) <= MAX_METADATA_KEY_LENGTH or "[" in key or "]" in key:
            raise ValueError(
                f"key {key!r}: 1 to {MAX_METADATA_KEY_LENGTH} characters without square brackets"
            )
        if len(item) > MAX_METADATA_VALUE_LENGTH:
            raise ValueError(f"value of {key!r}: at most {MAX_METADATA_VALUE_LENGTH} characters")
    return value


Amount = Annotated[int, Field(strict=True, ge=1, le=99_999_999)]  # smallest currency unit, up to 8 digits
Currency = Annotated[str, Field(pattern=r"^[a-z]{3}$")]  # ISO 4217, lower-case
StatementDescriptor = Annotated[str, Field(min_length=1, max_length=22)]


class _Request(BaseModel):
    # A typo must not be dropped silently: it is refused, naming the field.
    model_config = ConfigDict(extra="forbid")


class AutomaticPaymentMethods(_Request):
    enabled: bool
    allow_redirects: Literal["always", "never"] | None = None


class CreatePaymentIntent(_Request):
    """Payload of ``integrations.<provider>.create_payment_intent``: Stripe's documented parameters of
    ``POST /v1/payment_intents`` that an asynchronous, server-side caller uses."""

    amount: Amount
    currency: Currency
    customer: str | None = None
    payment_method: str | None = None
    payment_method_types: list[str] | None = None
    automatic_payment_methods: AutomaticPaymentMethods | None = None
    confirm: bool | None = None
    off_session: bool | Literal["one_off", "recurring"] | None = None
    error_on_requires_action: bool | None = None
    return_url: str | None = None
    capture_method: Literal["automatic", "automatic_async", "manual"] | None = None
    setup_future_usage: Literal["off_session", "on_session"] | None = None
    description: str | None = None
    metadata: dict[str, str] | None = None
    receipt_email: str | None = None
    statement_descriptor: StatementDescriptor | None = None
    statement_descriptor_suffix: StatementDescriptor | None = None
    transfer_group: str | None = None

    _check_metadata = field_validator("metadata")(_metadata)

    @model_validator(mode="after")
    def _confirm_only_parameters(self) -> CreatePaymentIntent:
        # Stripe: "This parameter can only be used with confirm=true".
        given = [
            name
            for name in ("off_session", "error_on_requires_action", "return_url")
            if getattr(self, name) not in (None, False)
        ]
        if given and self.confirm is not True:
            raise ValueError(f"{', '.join(given)} can only be used with confirm=true")
        return self


class CreateRefund(_Request):
    """Payload of ``integrations.<provider>.create_refund``: ``POST /v1/refunds`` of one PaymentIntent
    or one charge, in full or for ``amount``."""

    payment_intent: str | None = None
    charge: str | None = None
    amount: Amount | None = None
    reason: Literal["duplicate", "fraudulent", "requested_by_customer"] | None = None
    metadata: dict[str, str] | None = None
    instructions_email: str | None = None
    refund_application_fee: bool | None = None
    reverse_transfer: bool | None = None

    _check_metadata = field_validator("metadata")(_metadata)

    @model_validator(mode="after")
    def _one_payment(self) -> CreateRefund:
        if (self.payment_intent is None) == (self.charge is None):
            raise ValueError("give exactly one of payment_intent or charge: the payment to refund")
        return self


class StripeObject(BaseModel):
    """An object in a Stripe answer, read leniently."""

    # Stripe adds fields within an API version; only the fields declared here are relied on and kept.
    model_config = ConfigDict(extra="ignore")


class PaymentError(StripeObject):
    """``last_payment_error``: why the latest payment attempt failed (without the payment method's details)."""

    type: str | None = None
    code: str | None = None
    decline_code: str | None = None
    message: str | None = None
    doc_url: str | None = None


class PaymentIntent(StripeObject):
    """A PaymentIntent as this adapter returns and the ledger keeps it.

    ``client_secret`` is left out on purpose: Stripe says it "should not be stored, logged, or exposed to
    anyone other than the customer", and results and the ledger store this response. An application that
    confirms on the client fetches the secret from Stripe when it needs it.
    """

    id: str
    object: Literal["payment_intent"]
    amount: int
    currency: str
    status: Literal[
        "requires_payment_method",
        "requires_confirmation",
        "requires_action",
        "processing",
        "requires_capture",
        "canceled",
        "succeeded",
    ]
    created: int
    livemode: bool
    amount_received: int | None = None
    capture_method: str | None = None
    customer: str | None = None
    payment_method: str | None = None
    latest_charge: str | None = None
    description: str | None = None
    receipt_email: str | None = None
    metadata: dict[str, str] = {}
    cancellation_reason: str | None = None
    last_payment_error: PaymentError | None = None


class Refund(StripeObject):
    """A Refund as this adapter returns it; ``status`` is nullable in Stripe's documentation."""

    id: str
    object: Literal["refund"]
    amount: int
    currency: str
    status: Literal["pending", "requires_action", "succeeded", "failed", "canceled"] | None
    created: int
    payment_intent: str | None = None
    charge: str | None = None
    reason: str | None = None
    failure_reason: str | None = None
    metadata: dict[str, str] = {}
