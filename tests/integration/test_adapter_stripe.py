"""The Stripe adapter against a local server playing Stripe (real HTTP), and through the pipeline with the
real ledger (both backends), Redis, breaker and throttle."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
from sqlalchemy import select

from integrations.adapters.base import Reply
from integrations.adapters.stripe import StripeAdapter, form_encode
from integrations.adapters.stripe_payments import PaymentIntent, Refund
from integrations.auth import BearerAuth, static_credentials
from integrations.errors import (
    ContractViolation,
    ErrorType,
    InvalidRequest,
    OperationError,
    ProviderRejected,
    TransientError,
)
from integrations.ledger.models import Operation, OperationStatus
from integrations.ledger.store import Ledger
from integrations.message import Delivery
from integrations.outcome import Done, Failed, Retry
from integrations.pipeline import OperationRunner
from integrations.providers import ProviderSettings
from integrations.resilience.breaker import BreakerState
from integrations.resilience.guards import SharedGuard
from integrations.resilience.throttle import Throttle
from integrations.runtime import build_runner
from tests.clock import Clock
from tests.fakes.server import Answer
from tests.fakes.stripe import (
    API_ERROR_MESSAGE,
    LOCK_TIMEOUT_MESSAGE,
    RATE_LIMIT_MESSAGE,
    FakeStripe,
    error,
    payment_intent,
)
from tests.providers import provider_settings

SECRET_KEY = "sk_test_51FakeKeyForTheStripeAdapterTests0000QkX9"
CHARGE = {
    "amount": 2000,
    "currency": "usd",
    "customer": "cus_NffrFeUfNV2Hib",
    "payment_method": "pm_card_visa",
}
CONFIRMED = CHARGE | {"confirm": True, "off_session": True}
LOCK_TIMEOUT = error(429, "invalid_request_error", LOCK_TIMEOUT_MESSAGE, code="lock_timeout")
RATE_LIMITED = error(
    429,
    "invalid_request_error",
    RATE_LIMIT_MESSAGE,
    code="rate_limit",
    headers={"Stripe-Rate-Limited-Reason": "global-rate"},
)


def stripe_provider(base_url: str, name: str = "stripe", **table: Any) -> ProviderSettings:
    """A provider as the providers file declares it: ``[providers.<name>.auth] type="bearer"``."""
    entry = {
        "timeout": 2.0,
        "auth": {"type": "bearer", "secret": "env:STRIPE_SECRET_KEY"},
        "retry": {"max_attempts": 3, "backoff_base": 0.1, "backoff_max": 0.5},
    }
    return provider_settings(name, adapter="stripe", base_url=base_url, **(entry | table))


def stripe_adapter(provider: ProviderSettings, session: requests.Session) -> StripeAdapter:
    """The adapter with the credentials a worker resolves from the provider's auth table."""
    assert isinstance(provider.auth, BearerAuth)
    return StripeAdapter(provider, session, static_credentials(provider.name, provider.auth))


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe(SECRET_KEY) as server:
        yield server


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture
def adapter(fake: FakeStripe, session: requests.Session, monkeypatch: pytest.MonkeyPatch) -> StripeAdapter:
    monkeypatch.setenv("STRIPE_SECRET_KEY", SECRET_KEY)
    provider = stripe_provider(fake.url)
    return stripe_adapter(provider, session)


def call(adapter: StripeAdapter, operation: str, payload: dict[str, Any], key: str = "order-1") -> Reply:
    parsed = adapter.parse_payload(operation, payload)
    return adapter.call(operation, parsed, idempotency_key=key, request_id="req-1")


def failure(adapter: StripeAdapter, operation: str, payload: dict[str, Any], key: str = "order-1") -> Any:
    with pytest.raises(OperationError) as caught:
        call(adapter, operation, payload, key)
    return caught.value


def test_form_encoding_nests_objects_indexes_arrays_and_spells_booleans() -> None:
    params = {
        "amount": 2000,
        "confirm": True,
        "off_session": False,
        "customer": None,
        "description": "",
        "metadata": {"order_id": "6735", "note": "a b&c=d"},
        "payment_method_types": ["card", "link"],
        "items": [{"price": "price_1", "quantity": 2}],
        "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
    }
    assert form_encode(params) == {
        "amount": "2000",
        "confirm": "true",
        "off_session": "false",
        "description": "",
        "metadata[order_id]": "6735",
        "metadata[note]": "a b&c=d",
        "payment_method_types[0]": "card",
        "payment_method_types[1]": "link",
        "items[0][price]": "price_1",
        "items[0][quantity]": "2",
        "automatic_payment_methods[enabled]": "true",
        "automatic_payment_methods[allow_redirects]": "never",
    }


def test_create_payment_intent_sends_the_documented_request_and_parses_the_object(
    adapter: StripeAdapter, fake: FakeStripe
) -> None:
    payload = CONFIRMED | {
        "metadata": {"order_id": "6735", "channel": "web shop"},
        "payment_method_types": ["card"],
        "description": "Order 6735",
        "statement_descriptor_suffix": "ORDER 6735",
    }
    reply = call(adapter, "create_payment_intent", payload, key="order-6735-payment")

    [sent] = fake.received()
    assert (sent.method, sent.path) == ("POST", "/v1/payment_intents")
    assert sent.form() == {
        "amount": "2000",
        "currency": "usd",
        "customer": "cus_NffrFeUfNV2Hib",
        "payment_method": "pm_card_visa",
        "confirm": "true",
        "off_session": "true",
        "metadata[order_id]": "6735",
        "metadata[channel]": "web shop",
        "payment_method_types[0]": "card",
        "description": "Order 6735",
        "statement_descriptor_suffix": "ORDER 6735",
    }
    assert b"metadata%5Border_id%5D=6735" in sent.body  # brackets percent-encoded on the wire
    assert sent.header("Authorization") == f"Bearer {SECRET_KEY}"
    assert sent.header("Idempotency-Key") == "order-6735-payment"
    assert sent.header("Stripe-Version") == StripeAdapter.STRIPE_VERSION == "2026-09-30.endive"
    assert sent.header("Content-Type") == "application/x-www-form-urlencoded"

    intent = reply.model
    assert isinstance(intent, PaymentIntent)
    assert (intent.object, intent.amount, intent.currency, intent.status) == (
        "payment_intent",
        2000,
        "usd",
        "succeeded",
    )
    assert intent.id in fake.payment_intents and intent.latest_charge is not None
    assert intent.metadata == {"order_id": "6735", "channel": "web shop"}
    kept = intent.model_dump(mode="json")
    assert "client_secret" not in kept and "_secret_" not in json.dumps(kept)


def test_a_cookie_the_provider_sets_is_not_sent_with_the_next_operation(
    adapter: StripeAdapter, fake: FakeStripe
) -> None:
    """Each operation's call stands alone: a cookie one answer sets (a load balancer's, a session's) does
    not ride along on the calls of other operations, which may be another customer's."""
    fake.script(
        Answer(
            200,
            payment_intent("pi_cookie", status="succeeded"),
            headers={"Set-Cookie": "machine=m1; Path=/"},
        )
    )
    call(adapter, "create_payment_intent", CONFIRMED, key="order-1")
    call(adapter, "create_payment_intent", CONFIRMED, key="order-2")

    first, second = fake.received()
    assert second.header("Idempotency-Key") == "order-2"
    assert second.header("Cookie") is None
    assert first.header("User-Agent") == second.header("User-Agent") == requests.utils.default_user_agent()


def test_an_unconfirmed_payment_intent_waits_for_a_payment_method(
    adapter: StripeAdapter, fake: FakeStripe
) -> None:
    reply = call(adapter, "create_payment_intent", {"amount": 1099, "currency": "eur"})
    assert isinstance(reply.model, PaymentIntent) and reply.model.status == "requires_payment_method"
    assert fake.received()[0].form() == {"amount": "1099", "currency": "eur"}


def test_create_refund_sends_the_documented_request_and_parses_the_object(
    adapter: StripeAdapter, fake: FakeStripe
) -> None:
    charged = call(adapter, "create_payment_intent", CONFIRMED, key="order-7-payment").model
    assert isinstance(charged, PaymentIntent)
    payload = {
        "payment_intent": charged.id,
        "amount": 500,
        "reason": "requested_by_customer",
        "metadata": {"ticket": "T-88"},
    }
    reply = call(adapter, "create_refund", payload, key="order-7-refund-1")

    sent = fake.received("/v1/refunds")[0]
    assert sent.method == "POST"
    assert sent.form() == {
        "payment_intent": charged.id,
        "amount": "500",
        "reason": "requested_by_customer",
        "metadata[ticket]": "T-88",
    }
    assert sent.header("Authorization") == f"Bearer {SECRET_KEY}"
    assert sent.header("Idempotency-Key") == "order-7-refund-1"
    assert sent.header("Stripe-Version") == StripeAdapter.STRIPE_VERSION
    assert sent.header("Content-Type") == "application/x-www-form-urlencoded"
    refund = reply.model
    assert isinstance(refund, Refund)
    assert (refund.object, refund.amount, refund.currency, refund.status) == (
        "refund",
        500,
        "usd",
        "succeeded",
    )
    assert (refund.payment_intent, refund.charge) == (charged.id, charged.latest_charge)
    assert (refund.reason, refund.metadata) == ("requested_by_customer", {"ticket": "T-88"})


@pytest.mark.parametrize(
    ("operation", "payload", "expected"),
    [
        ("create_payment_intent", CHARGE | {"metdata": {"a": "b"}}, "payload.metdata: Extra inputs"),
        ("create_payment_intent", CHARGE | {"amount": "2000"}, "payload.amount"),
        ("create_payment_intent", CHARGE | {"currency": "EUR"}, "payload.currency"),
        ("create_payment_intent", CHARGE | {"capture_method": "later"}, "payload.capture_method"),
        (
            "create_payment_intent",
            CHARGE | {"off_session": True},
            "off_session can only be used with confirm",
        ),
        ("create_payment_intent", CHARGE | {"metadata": {"a[b]": "c"}}, "square brackets"),
        (
            "create_payment_intent",
            CHARGE | {"statement_descriptor": "x" * 23},
            "payload.statement_descriptor",
        ),
        ("create_refund", {"payment_intent": "pi_1", "reason": "changed_mind"}, "payload.reason"),
        ("create_refund", {"payment_intent": "pi_1", "charge": "ch_1"}, "exactly one of payment_intent"),
        ("create_refund", {"amount": 100}, "exactly one of payment_intent"),
    ],
)
def test_a_payload_stripe_would_refuse_is_an_invalid_request_naming_the_field(
    adapter: StripeAdapter, fake: FakeStripe, operation: str, payload: dict[str, Any], expected: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        adapter.parse_payload(operation, payload)
    assert expected in caught.value.message and f"stripe.{operation}" in caught.value.message
    assert fake.received() == []


def test_a_card_decline_fails_at_once_in_stripes_words_without_the_client_secret(
    adapter: StripeAdapter, fake: FakeStripe
) -> None:
    declined = failure(
        adapter, "create_payment_intent", CONFIRMED | {"payment_method": "pm_card_visa_chargeDeclined"}
    )
    assert isinstance(declined, ProviderRejected) and not declined.retryable
    assert declined.error_type is ErrorType.PROVIDER_REJECTED and declined.status_code == 402
    assert declined.message.startswith(
        "stripe.create_payment_intent: the payment failed (HTTP 402 card_error/"
    )
    assert "card_declined, decline_code generic_decline: Your card was declined." in declined.message
    assert "another payment method" in declined.message
    error = declined.body["error"]
    assert (error["type"], error["code"], error["decline_code"]) == (
        "card_error",
        "card_declined",
        "generic_decline",
    )
    assert error["payment_intent"]["status"] == "requires_payment_method"
    assert "client_secret" not in error["payment_intent"] and "_secret_" not in json.dumps(declined.body)
    assert len(fake.received()) == 1


def test_an_invalid_request_fails_at_once_naming_the_parameter(
    adapter: StripeAdapter, fake: FakeStripe
) -> None:
    refused = failure(adapter, "create_refund", {"payment_intent": "pi_unknown"})
    assert isinstance(refused, ProviderRejected) and refused.status_code == 400
    assert refused.message == (
        "stripe.create_refund: Stripe refused the request as invalid (HTTP 400 invalid_request_error/"
        "resource_missing, param payment_intent: No such payment_intent: 'pi_unknown'); correct the payload "
        "and send it under a new idempotency key"
    )
    assert refused.body["error"]["doc_url"] == "https://stripe.com/docs/error-codes/resource-missing"


def test_a_key_reused_with_other_parameters_is_an_idempotency_error_that_fails_at_once(
    adapter: StripeAdapter, fake: FakeStripe
) -> None:
    call(adapter, "create_payment_intent", CHARGE, key="order-9")
    refused = failure(adapter, "create_payment_intent", CHARGE | {"amount": 2500}, key="order-9")
    assert isinstance(refused, ProviderRejected) and refused.status_code == 400
    assert (
        "Stripe refused the idempotency key (HTTP 400 idempotency_error: Keys for idempotent"
        in refused.message
    )
    assert refused.message.endswith("use a new key for a new operation")


def test_the_same_request_under_the_same_key_gets_stripes_saved_answer(
    adapter: StripeAdapter, fake: FakeStripe
) -> None:
    first = call(adapter, "create_payment_intent", CHARGE, key="order-10")
    again = call(adapter, "create_payment_intent", CHARGE, key="order-10")
    assert again.model == first.model
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert len(fake.payment_intents) == 1


def test_a_rejected_key_fails_at_once_and_says_to_check_the_secret_key_without_showing_it(
    fake: FakeStripe, session: requests.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "sk_test_51WrongKeyRolledLastWeek00000000000000abcd"
    monkeypatch.setenv("STRIPE_SECRET_KEY", wrong)
    provider = stripe_provider(fake.url)
    adapter = stripe_adapter(provider, session)
    refused = failure(adapter, "create_payment_intent", CHARGE)
    assert isinstance(refused, ProviderRejected) and refused.status_code == 401
    assert refused.message.startswith(
        "stripe.create_payment_intent: Stripe did not accept the API key (HTTP 401)"
    )
    assert "check the provider's secret key ([providers.stripe.auth] secret)" in refused.message
    shown = refused.message + json.dumps(refused.body)
    assert "sk_test" not in shown and "abcd" not in shown and wrong not in shown
    assert refused.body["error"]["message"] == "Invalid API Key provided: [api key]"
    assert fake.received()[0].header("Authorization") == f"Bearer {wrong}"


def test_a_rate_limit_is_retried_as_rate_limited(adapter: StripeAdapter, fake: FakeStripe) -> None:
    fake.script(RATE_LIMITED)
    limited = failure(adapter, "create_payment_intent", CHARGE)
    assert isinstance(limited, TransientError) and limited.retryable
    assert limited.error_type is ErrorType.RATE_LIMITED and limited.status_code == 429
    assert limited.message == (
        "stripe.create_payment_intent: rate limited by Stripe (HTTP 429 invalid_request_error/rate_limit: "
        f"{RATE_LIMIT_MESSAGE}, Stripe-Rate-Limited-Reason: global-rate)"
    )


def test_a_lock_timeout_is_retried_but_is_not_a_rate_limit(adapter: StripeAdapter, fake: FakeStripe) -> None:
    fake.script(LOCK_TIMEOUT)
    locked = failure(adapter, "create_refund", {"charge": "ch_1NirD82eZvKYlo2CIvbtLWuY"})
    assert isinstance(locked, TransientError) and locked.retryable and locked.status_code == 429
    assert locked.error_type is not ErrorType.RATE_LIMITED
    assert "the object is locked by another request or Stripe process (HTTP 429" in locked.message
    assert "lock_timeout" in locked.message and "one after another" in locked.message


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried_with_the_same_idempotency_key(
    adapter: StripeAdapter, fake: FakeStripe, status: int
) -> None:
    fake.script(error(status, "api_error", API_ERROR_MESSAGE, headers={"Retry-After": "3"}))
    failed = failure(adapter, "create_payment_intent", CHARGE, key="order-11")
    assert isinstance(failed, TransientError) and failed.error_type is ErrorType.PROVIDER_UNAVAILABLE
    assert failed.retry_after == 3 and f"Stripe server error (HTTP {status} api_error" in failed.message
    call(adapter, "create_payment_intent", CHARGE, key="order-11")
    assert [r.header("Idempotency-Key") for r in fake.received()] == ["order-11", "order-11"]


def test_a_conflict_is_retried_as_stripes_libraries_do(adapter: StripeAdapter, fake: FakeStripe) -> None:
    fake.script(
        error(
            409,
            "idempotency_error",
            "There is currently another in-progress request using this idempotent key (that probably means "
            "you submitted twice, and the other request is still going through): order-12. Please try "
            "again later.",
            code="idempotency_key_in_use",
        )
    )
    conflict = failure(adapter, "create_payment_intent", CHARGE, key="order-12")
    assert isinstance(conflict, TransientError) and conflict.status_code == 409
    assert "conflicts with another one (HTTP 409 idempotency_error/idempotency_key_in_use" in conflict.message


@pytest.mark.parametrize(
    ("answer", "retried"),
    [
        (error(500, "api_error", API_ERROR_MESSAGE, headers={"Stripe-Should-Retry": "false"}), False),
        (
            error(
                429,
                "invalid_request_error",
                LOCK_TIMEOUT_MESSAGE,
                code="lock_timeout",
                headers={"Stripe-Should-Retry": "false"},
            ),
            False,
        ),
        (
            error(
                400,
                "invalid_request_error",
                "This PaymentIntent's amount could not be updated.",
                code="payment_intent_unexpected_state",
                headers={"Stripe-Should-Retry": "true"},
            ),
            True,
        ),
        (
            error(
                402,
                "card_error",
                "An error occurred while processing your card. Try again in a little bit.",
                code="processing_error",
                headers={"Stripe-Should-Retry": "true"},
            ),
            True,
        ),
    ],
)
def test_stripe_should_retry_decides_both_ways(
    adapter: StripeAdapter, fake: FakeStripe, answer: Answer, retried: bool
) -> None:
    fake.script(answer)
    failed = failure(adapter, "create_payment_intent", CHARGE)
    assert failed.retryable is retried and failed.status_code == answer.status
    assert isinstance(failed, TransientError if retried else ProviderRejected)
    assert f"Stripe-Should-Retry: {'true' if retried else 'false'}" in failed.message
    if answer.status == 500:
        assert "outcome is uncertain: check the object in the Stripe Dashboard" in failed.message


@pytest.mark.parametrize("missing", ["status", "amount", "object"])
def test_an_answer_without_a_field_relied_on_is_a_contract_violation(
    adapter: StripeAdapter, fake: FakeStripe, missing: str
) -> None:
    body = payment_intent("pi_3MtwBwLkdIwHu7ix28a3tqPa")
    del body[missing]
    fake.script(Answer(200, body))
    violation = failure(adapter, "create_payment_intent", CHARGE)
    assert isinstance(violation, ContractViolation) and violation.status_code == 200
    assert violation.message == (
        "stripe.create_payment_intent: the provider's answer does not match PaymentIntent (has its API "
        f"changed?): answer.{missing}: Field required (requests pin Stripe-Version 2026-09-30.endive)"
    )
    assert violation.body["id"] == "pi_3MtwBwLkdIwHu7ix28a3tqPa"
    assert "_secret_" not in violation.message + json.dumps(violation.body)


def test_an_unknown_status_is_a_contract_violation(adapter: StripeAdapter, fake: FakeStripe) -> None:
    fake.script(Answer(200, payment_intent("pi_3MtwBwLkdIwHu7ix28a3tqPa", status="requires_review")))
    violation = failure(adapter, "create_payment_intent", CHARGE)
    assert isinstance(violation, ContractViolation) and "status: Input should be" in violation.message


# Through the pipeline: the real ledger on both backends, Redis, the shared breaker and throttle.


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def pipeline(
    fake: FakeStripe,
    session: requests.Session,
    ledger_url: str,
    shared_redis: redis.Redis,
    provider_name: str,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[OperationRunner]:
    monkeypatch.setenv("STRIPE_SECRET_KEY", SECRET_KEY)
    provider = stripe_provider(fake.url, name=provider_name)
    adapter = stripe_adapter(provider, session)
    ledger = Ledger.connect(ledger_url, clock=clock)
    yield build_runner(provider, adapter, ledger, shared_redis, clock=clock, clock_ms=clock.ms)
    ledger.dispose()


def run(runner: OperationRunner, operation: str, payload: dict[str, Any], key: str) -> Any:
    return runner.run(
        Delivery(operation, {"payload": payload, "idempotency_key": key}, message_id=f"m-{key}")
    )


def ledger_row(runner: OperationRunner, key: str) -> str:
    """Every column of the operation's ledger row, as text."""
    with runner.ledger.engine.connect() as connection:
        row = connection.execute(select(Operation.__table__).where(Operation.idempotency_key == key)).one()
    return json.dumps(dict(row._mapping), default=str)


def throttle_of(runner: OperationRunner) -> Throttle:
    guard = runner.guards[0]
    assert isinstance(guard, SharedGuard)
    return guard.throttle


def test_a_card_decline_ends_failed_after_one_call_and_the_ledger_keeps_no_secret(
    pipeline: OperationRunner, fake: FakeStripe, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    payload = CONFIRMED | {"payment_method": "pm_card_visa_chargeDeclinedInsufficientFunds"}
    outcome = run(pipeline, "create_payment_intent", payload, "order-21")

    assert isinstance(outcome, Failed) and outcome.status is OperationStatus.FAILED
    assert outcome.error.type is ErrorType.PROVIDER_REJECTED and outcome.error.status_code == 402
    assert outcome.message.startswith(f"provider_rejected: {pipeline.provider.name}.create_payment_intent: ")
    assert "decline_code insufficient_funds: Your card has insufficient funds." in outcome.message
    assert len(fake.received()) == 1
    record = pipeline.ledger.find(pipeline.provider.name, "order-21")
    assert record is not None and (record.status, record.attempts) == (OperationStatus.FAILED, 1)
    row = ledger_row(pipeline, "order-21")
    assert SECRET_KEY not in row and "_secret_" not in row and "client_secret" not in row
    assert SECRET_KEY not in caplog.text
    again = run(pipeline, "create_payment_intent", payload, "order-21")
    assert isinstance(again, Failed) and again.replayed and len(fake.received()) == 1


def test_a_lock_timeout_then_success_ends_done_after_two_calls_with_one_key_and_no_fleet_pause(
    pipeline: OperationRunner, fake: FakeStripe, clock: Clock
) -> None:
    fake.script(LOCK_TIMEOUT)
    first = run(pipeline, "create_payment_intent", CONFIRMED, "order-22")
    assert isinstance(first, Retry) and first.error.status_code == 429
    assert first.error.type is not ErrorType.RATE_LIMITED and "lock_timeout" in first.error.message
    assert throttle_of(pipeline).paused_for() == 0  # one locked object does not stop the other payments

    clock.advance(1)
    done = run(pipeline, "create_payment_intent", CONFIRMED, "order-22")
    assert isinstance(done, Done) and done.result["attempts"] == 2
    response = done.result["response"]
    assert (response["object"], response["status"], response["amount"]) == (
        "payment_intent",
        "succeeded",
        2000,
    )
    calls = fake.received()
    assert [c.header("Idempotency-Key") for c in calls] == ["order-22", "order-22"]
    assert {c.header("Authorization") for c in calls} == {f"Bearer {SECRET_KEY}"}
    row = ledger_row(pipeline, "order-22")
    assert SECRET_KEY not in row and "_secret_" not in row and "client_secret" not in row
    guard = pipeline.guards[0]
    assert isinstance(guard, SharedGuard)
    status = guard.breaker.status()  # a locked object says nothing of Stripe's health
    assert (status.state, status.window_failures, status.window_calls) == (BreakerState.CLOSED, 0, 2)


def test_a_rate_limit_pauses_stripe_for_the_whole_fleet(
    pipeline: OperationRunner, fake: FakeStripe, clock: Clock
) -> None:
    fake.script(
        error(
            429,
            "invalid_request_error",
            RATE_LIMIT_MESSAGE,
            code="rate_limit",
            headers={"Stripe-Rate-Limited-Reason": "endpoint-rate", "Retry-After": "2"},
        )
    )
    first = run(pipeline, "create_refund", {"charge": "ch_1NirD82eZvKYlo2CIvbtLWuY"}, "refund-23")
    assert isinstance(first, Retry) and first.error.type is ErrorType.RATE_LIMITED
    assert throttle_of(pipeline).paused_for() == pytest.approx(2, abs=0.01)
    clock.advance(3)
    done = run(pipeline, "create_refund", {"charge": "ch_1NirD82eZvKYlo2CIvbtLWuY"}, "refund-23")
    assert isinstance(done, Done) and done.result["response"]["object"] == "refund"
    assert len(fake.received()) == 2


def test_an_answer_stripe_changed_ends_failed_at_once_logged_as_an_api_change(
    pipeline: OperationRunner, fake: FakeStripe, caplog: pytest.LogCaptureFixture
) -> None:
    changed = payment_intent("pi_3MtwBwLkdIwHu7ix28a3tqPa")
    del changed["status"]
    fake.script(Answer(200, changed))

    with caplog.at_level(logging.ERROR, logger="integrations.operations"):
        outcome = run(pipeline, "create_payment_intent", CONFIRMED, "order-30")

    assert isinstance(outcome, Failed) and outcome.error.type is ErrorType.CONTRACT_VIOLATION
    assert len(fake.received()) == 1
    record = pipeline.ledger.find(pipeline.provider.name, "order-30")
    assert record is not None and record.error is not None
    assert record.error["body"]["id"] == "pi_3MtwBwLkdIwHu7ix28a3tqPa"  # kept, for the diagnosis
    assert "client_secret" not in json.dumps(record.error["body"])
    [logged] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert logged.startswith(
        f"{pipeline.provider.name}.create_payment_intent key=order-30 operation_id={record.id}"
    )
    assert "the provider's API has changed (update the adapter)" in logged
