"""What the built-in adapters read from webhook bodies shaped like the providers' documented examples:
which operation an event confirms or contradicts (``event_link``), and the provider's id of what a
succeeded operation made (``reference``)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from integrations.adapters.base import Adapter
from integrations.adapters.http import HttpAdapter
from integrations.adapters.hubspot import HubSpotAdapter
from integrations.adapters.sendgrid import SendGridAdapter
from integrations.adapters.stripe import StripeAdapter
from integrations.webhooks.events import Event, EventLink
from integrations.webhooks.store import Relation
from tests.fakes.stripe import payment_intent
from tests.providers import provider_settings

RECEIVED = datetime(2026, 12, 5, 9, 30, tzinfo=UTC)
INTENT_ID = "pi_3MtwBwLkdIwHu7ix28a3tqPa"

# https://docs.stripe.com/api/events/object, as a payment_intent.succeeded event delivers it.
STRIPE_SUCCEEDED: dict[str, Any] = {
    "id": "evt_3MtwBwLkdIwHu7ix0lWqCyyd",
    "object": "event",
    "api_version": "2026-09-30.endive",
    "created": 1680064028,
    "data": {
        "object": payment_intent(
            INTENT_ID, status="succeeded", amount_received=2000, latest_charge="ch_3MtwBwLkdIwHu7ix"
        )
    },
    "livemode": False,
    "pending_webhooks": 1,
    "request": {"id": "req_dbF7P9AbgHVlDt", "idempotency_key": "order-8812-payment"},
    "type": "payment_intent.succeeded",
}

# https://www.twilio.com/docs/sendgrid/for-developers/tracking-events/event: a list of events, each with
# the message's custom arguments as fields of its own.
SENDGRID_EVENTS: list[dict[str, Any]] = [
    {
        "email": "ada@example.com",
        "timestamp": 1513299569,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
        "event": "delivered",
        "ip": "168.1.1.1",
        "category": "cat facts",
        "sg_event_id": "rbtnWrG1DVDGGGFHFyun0A==",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        "response": "250 OK",
        "tls": 1,
        "idempotency_key": "welcome-ada",
    },
    {
        "email": "grace@example.com",
        "timestamp": 1513299570,
        "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-556>",
        "event": "processed",
        "category": "cat facts",
        "sg_event_id": "sZROwMGMagFgnOEmSdvhig==",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.1",
        "idempotency_key": "welcome-grace",
    },
]
SENDGRID_BOUNCE: dict[str, Any] = {
    "email": "alan@example",
    "timestamp": 1513299571,
    "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-557>",
    "event": "bounce",
    "bounce_classification": "Invalid Address",
    "category": "cat facts",
    "sg_event_id": "6g4ZI7SA-xmRDv57GoPIPw==",
    "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.2",
    "reason": "500 unknown recipient",
    "status": "5.0.0",
    "type": "bounce",
    "idempotency_key": "welcome-alan",
}
SENDGRID_DROPPED: dict[str, Any] = {
    "email": "joan@example.com",
    "timestamp": 1513299572,
    "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-558>",
    "event": "dropped",
    "category": "cat facts",
    "sg_event_id": "zmzJhfJgAfUSOW80yEbPyw==",
    "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.3",
    "reason": "Bounced Address",
    "status": "5.0.0",
    "idempotency_key": "welcome-joan",
}

# https://developers.hubspot.com/docs/api/webhooks: a list of events of the app's subscriptions.
HUBSPOT_EVENTS: list[dict[str, Any]] = [
    {
        "objectId": 1246978,
        "changeSource": "CRM_UI",
        "eventId": 3816279480,
        "subscriptionId": 22,
        "portalId": 33,
        "appId": 1160452,
        "occurredAt": 1462216307945,
        "subscriptionType": "contact.creation",
        "attemptNumber": 0,
    },
    {
        "objectId": 1246965,
        "propertyName": "lifecyclestage",
        "propertyValue": "subscriber",
        "changeSource": "ACADEMY",
        "eventId": 3816279340,
        "subscriptionId": 25,
        "portalId": 33,
        "appId": 1160452,
        "occurredAt": 1462216307945,
        "subscriptionType": "contact.propertyChange",
        "attemptNumber": 0,
    },
]


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def adapter_of(kind: type[Adapter], name: str, session: requests.Session) -> Adapter:
    return kind(provider_settings(name, adapter=name), session)


@pytest.fixture
def stripe(session: requests.Session) -> Adapter:
    return adapter_of(StripeAdapter, "stripe", session)


@pytest.fixture
def sendgrid(session: requests.Session) -> Adapter:
    return adapter_of(SendGridAdapter, "sendgrid", session)


@pytest.fixture
def hubspot(session: requests.Session) -> Adapter:
    return adapter_of(HubSpotAdapter, "hubspot", session)


def event(provider: str, event_type: str, payload: Any, event_id: str = "evt-1") -> Event:
    return Event("ledger-id-1", provider, event_id, event_type, RECEIVED, payload)


def stripe_event(event_type: str, **intent: Any) -> Event:
    body = copy.deepcopy(STRIPE_SUCCEEDED) | {"type": event_type}
    body["data"]["object"] |= intent
    return event("stripe", event_type, body, body["id"])


# -- Stripe --------------------------------------------------------------------------------------


def test_stripe_payment_intent_succeeded_confirms_the_operation_that_created_the_intent(
    stripe: Adapter,
) -> None:
    link = stripe.event_link(stripe_event("payment_intent.succeeded"))

    # By the PaymentIntent's id: the adapter sets no idempotency key in its metadata.
    assert link == EventLink(Relation.CONFIRMS, reference=INTENT_ID)


def test_stripe_payment_intent_payment_failed_contradicts_it(stripe: Adapter) -> None:
    failed = stripe_event(
        "payment_intent.payment_failed",
        status="requires_payment_method",
        last_payment_error={"type": "card_error", "code": "card_declined"},
    )

    assert stripe.event_link(failed) == EventLink(Relation.CONTRADICTS, reference=INTENT_ID)


@pytest.mark.parametrize(
    "event_type",
    ["payment_intent.created", "payment_intent.processing", "charge.succeeded", "charge.refunded"],
)
def test_stripe_other_events_name_no_operation(stripe: Adapter, event_type: str) -> None:
    assert stripe.event_link(stripe_event(event_type)) is None


@pytest.mark.parametrize(
    "payload",
    [
        [],
        "payment_intent.succeeded",
        {"type": "payment_intent.succeeded"},
        {"type": "payment_intent.succeeded", "data": {"object": {"object": "charge", "id": "ch_1"}}},
        {"type": "payment_intent.succeeded", "data": {"object": {"object": "payment_intent", "id": 7}}},
        {"type": "payment_intent.succeeded", "data": {"object": {"object": "payment_intent", "id": ""}}},
    ],
    ids=["list", "text", "no-data", "not-an-intent", "id-not-text", "id-empty"],
)
def test_stripe_a_body_it_does_not_know_names_no_operation(stripe: Adapter, payload: Any) -> None:
    assert stripe.event_link(event("stripe", "payment_intent.succeeded", payload)) is None


def test_stripe_reference_is_the_created_objects_id(stripe: Adapter) -> None:
    intent = payment_intent(INTENT_ID, status="succeeded")
    refund = {"id": "re_1Nispe2eZvKYlo2C", "object": "refund", "amount": 2000, "status": "succeeded"}

    assert stripe.reference("create_payment_intent", intent) == INTENT_ID
    assert stripe.reference("create_refund", refund) == "re_1Nispe2eZvKYlo2C"
    assert stripe.reference("create_payment_intent", {"object": "payment_intent"}) is None
    assert stripe.reference("create_payment_intent", {"id": "x" * 256}) is None


# -- SendGrid ------------------------------------------------------------------------------------


def test_sendgrid_delivered_confirms_the_send_whose_key_is_in_its_custom_args(sendgrid: Adapter) -> None:
    delivery = event("sendgrid", "delivered", SENDGRID_EVENTS, SENDGRID_EVENTS[0]["sg_event_id"])

    # The body names the delivery by its first event; the first is read.
    assert sendgrid.event_link(delivery) == EventLink(Relation.CONFIRMS, idempotency_key="welcome-ada")


@pytest.mark.parametrize("body", [SENDGRID_BOUNCE, SENDGRID_DROPPED], ids=["bounce", "dropped"])
def test_sendgrid_bounce_and_dropped_contradict_it(sendgrid: Adapter, body: dict[str, Any]) -> None:
    key = body["idempotency_key"]

    as_list = event("sendgrid", body["event"], [body, *SENDGRID_EVENTS])
    as_object = event("sendgrid", body["event"], body)

    assert sendgrid.event_link(as_list) == EventLink(Relation.CONTRADICTS, idempotency_key=key)
    assert sendgrid.event_link(as_object) == EventLink(Relation.CONTRADICTS, idempotency_key=key)


def test_sendgrid_reads_the_key_nested_in_unique_args(sendgrid: Adapter) -> None:
    body = {k: v for k, v in SENDGRID_EVENTS[0].items() if k != "idempotency_key"}
    body["unique_args"] = {"idempotency_key": "welcome-ada", "campaign": "autumn"}

    link = sendgrid.event_link(event("sendgrid", "delivered", [body]))

    assert link == EventLink(Relation.CONFIRMS, idempotency_key="welcome-ada")


@pytest.mark.parametrize(
    "payload",
    [
        [SENDGRID_EVENTS[1]],  # processed: says nothing of delivery
        [{k: v for k, v in SENDGRID_EVENTS[0].items() if k != "idempotency_key"}],  # sent elsewhere
        [SENDGRID_EVENTS[0] | {"idempotency_key": 42}],
        [],
        ["delivered"],
        None,
    ],
    ids=["processed", "no-key", "key-not-text", "empty", "not-objects", "null"],
)
def test_sendgrid_events_without_a_delivery_outcome_or_key_name_no_operation(
    sendgrid: Adapter, payload: Any
) -> None:
    assert sendgrid.event_link(event("sendgrid", "delivered", payload)) is None


def test_sendgrid_gives_no_reference(sendgrid: Adapter) -> None:
    answer = {"status_code": 202, "message_id": "14c5d75ce93.dfd.64b469"}

    assert sendgrid.reference("send_mail", answer) is None


# -- HubSpot -------------------------------------------------------------------------------------


def test_hubspot_contact_creation_confirms_the_operation_that_created_the_contact(
    hubspot: Adapter,
) -> None:
    delivery = event("hubspot", "contact.creation", HUBSPOT_EVENTS, "3816279480")

    # HubSpot's objectId is a number; the contact's id in its API answers is the same digits as text.
    assert hubspot.event_link(delivery) == EventLink(Relation.CONFIRMS, reference="1246978")
    assert hubspot.event_link(event("hubspot", "contact.creation", HUBSPOT_EVENTS[0])) == EventLink(
        Relation.CONFIRMS, reference="1246978"
    )


@pytest.mark.parametrize(
    "payload",
    [
        [HUBSPOT_EVENTS[1], HUBSPOT_EVENTS[0]],  # the delivery is named by its first event
        [HUBSPOT_EVENTS[0] | {"subscriptionType": "contact.deletion"}],
        [HUBSPOT_EVENTS[0] | {"objectId": None}],
        [HUBSPOT_EVENTS[0] | {"objectId": True}],
        {},
        [],
    ],
    ids=["property-change-first", "deletion", "no-object", "object-not-an-id", "empty-object", "empty"],
)
def test_hubspot_other_events_name_no_operation(hubspot: Adapter, payload: Any) -> None:
    assert hubspot.event_link(event("hubspot", "contact.creation", payload)) is None


def test_hubspot_reference_is_a_created_contacts_id(hubspot: Adapter) -> None:
    contact = {
        "id": "1246978",
        "properties": {"email": "ada@example.com", "firstname": "Ada"},
        "createdAt": "2026-12-05T09:30:00.000Z",
        "updatedAt": "2026-12-05T09:30:00.000Z",
        "archived": False,
    }

    assert hubspot.reference("create_contact", contact) == "1246978"
    assert hubspot.reference("create_contact", {"properties": {}}) is None


# -- the defaults ---------------------------------------------------------------------------------


def test_an_adapter_that_says_nothing_links_nothing(session: requests.Session) -> None:
    http = adapter_of(HttpAdapter, "http", session)

    assert http.event_link(stripe_event("payment_intent.succeeded")) is None
    assert http.reference("request", {"status_code": 200, "body": {"id": "x"}}) is None
