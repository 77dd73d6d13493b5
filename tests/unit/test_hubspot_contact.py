"""The hubspot adapter's single ``create_contact``: its payload and answer models, how HubSpot's answers are
classified (a conflict naming an existing contact included), and the reference it gives, against a local
server playing HubSpot's contacts API (tests/fakes/hubspot.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from integrations.adapters.base import Reply
from integrations.adapters.hubspot import Contact, CreateContact, HubSpotAdapter
from integrations.auth import BearerAuth, static_credentials
from integrations.errors import ErrorType, InvalidRequest, OperationError, ProviderRejected, TransientError
from tests.fakes.hubspot import CONTACTS, FakeHubSpot
from tests.fakes.server import Answer
from tests.providers import provider_settings

TOKEN = "pat-na1-canary-0123456789"
ADA = {"email": "ada@example.com", "firstname": "Ada", "lastname": "Lovelace"}


@pytest.fixture
def fake() -> Iterator[FakeHubSpot]:
    with FakeHubSpot(TOKEN) as server:
        yield server


@pytest.fixture
def adapter(fake: FakeHubSpot, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubSpotAdapter]:
    monkeypatch.setenv("HUBSPOT_TOKEN", TOKEN)
    provider = provider_settings(
        "hubspot",
        adapter="hubspot",
        base_url=fake.url,
        auth={"type": "bearer", "secret": "env:HUBSPOT_TOKEN"},
    )
    assert isinstance(provider.auth, BearerAuth)
    with requests.Session() as session:
        yield HubSpotAdapter(provider, session, static_credentials(provider.name, provider.auth))


def create(adapter: HubSpotAdapter, payload: dict[str, Any]) -> Reply:
    parsed = adapter.parse_payload("create_contact", payload)
    return adapter.call("create_contact", parsed, idempotency_key="crm-42", request_id="req-1")


def rejection(adapter: HubSpotAdapter, payload: dict[str, Any]) -> OperationError:
    with pytest.raises(OperationError) as raised:
        create(adapter, payload)
    return raised.value


# -- models --------------------------------------------------------------------------------------


def test_the_payload_is_hubspots_input_for_create() -> None:
    payload = {
        "properties": ADA,
        "associations": [
            {
                "to": {"id": "101"},
                "types": [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 1}],
            }
        ],
    }

    assert CreateContact.model_validate(payload).model_dump(mode="json", exclude_none=True) == payload


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ({"properties": {}}, "payload.properties: Dictionary should have at least 1 item"),
        ({"properties": {"age": 36}}, "payload.properties.age: Input should be a valid string"),
        ({"properties": ADA, "objectId": "1"}, "payload.objectId: Extra inputs are not permitted"),
        ({"email": "ada@example.com"}, "payload.properties: Field required"),
    ],
    ids=["no-property", "value-not-text", "unknown-field", "properties-missing"],
)
def test_a_bad_payload_is_refused_naming_the_field(
    adapter: HubSpotAdapter, payload: dict[str, Any], problem: str
) -> None:
    with pytest.raises(InvalidRequest) as raised:
        adapter.parse_payload("create_contact", payload)

    assert str(raised.value).startswith("hubspot.create_contact: ")
    assert problem in str(raised.value)
    assert "ada@example.com" not in str(raised.value)  # names the field, never the value


def test_the_answer_model_reads_hubspots_contact_and_ignores_other_fields() -> None:
    contact = Contact.model_validate(
        {
            "id": "1246978",
            "properties": {"email": "ada@example.com", "phone": None},
            "createdAt": "2026-12-05T09:30:00.000Z",
            "updatedAt": "2026-12-05T09:30:00.000Z",
            "archived": False,
            "url": "https://app.hubspot.com/contacts/33/record/0-1/1246978",
        }
    )

    assert contact.id == "1246978" and contact.existing is False
    assert "url" not in contact.model_dump()


# -- the call and its classification -------------------------------------------------------------


def test_a_create_is_hubspots_single_create_and_its_answer_the_contact(
    adapter: HubSpotAdapter, fake: FakeHubSpot
) -> None:
    reply = create(adapter, {"properties": ADA})

    [request] = fake.received()
    assert (request.method, request.path, request.json()) == ("POST", CONTACTS, {"properties": ADA})
    assert request.header("authorization") == f"Bearer {TOKEN}"
    assert isinstance(reply.model, Contact)
    assert reply.model.id == fake.contacts["ada@example.com"]
    assert reply.model.properties["firstname"] == "Ada" and reply.model.existing is False


def test_an_invalid_property_value_is_a_rejection_in_hubspots_words(adapter: HubSpotAdapter) -> None:
    error = rejection(adapter, {"properties": {"email": "ada-at-example.com"}})

    assert isinstance(error, ProviderRejected) and error.status_code == 400
    assert error.message.startswith(
        "hubspot.create_contact: provider rejected the request (HTTP 400): VALIDATION_ERROR: "
        "Property values were not valid"
    )


def test_a_rate_limit_is_retried(adapter: HubSpotAdapter, fake: FakeHubSpot) -> None:
    fake.script(
        Answer(
            429,
            {
                "status": "error",
                "message": "You have reached your secondly limit.",
                "category": "RATE_LIMITS",
            },
            headers={"Retry-After": "1"},
        )
    )

    error = rejection(adapter, {"properties": ADA})

    assert isinstance(error, TransientError) and error.error_type is ErrorType.RATE_LIMITED
    assert error.retry_after == 1.0


def test_a_conflict_with_a_contact_holding_every_value_sent_is_that_contacts_creation(
    adapter: HubSpotAdapter, fake: FakeHubSpot
) -> None:
    made = create(adapter, {"properties": ADA})

    # Sent again (an answer lost in transit, say): the address is taken, HubSpot compares it without case.
    again = create(adapter, {"properties": ADA | {"email": "Ada@Example.com"}})

    assert isinstance(made.model, Contact) and isinstance(again.model, Contact)
    assert again.model.id == made.model.id and again.model.existing is True
    post, read = fake.received()[1:]
    assert (post.method, read.method, read.path) == ("POST", "GET", f"{CONTACTS}/{made.model.id}")
    assert read.query == {"properties": "email,firstname,lastname"}
    assert len(fake.records) == 1


def test_a_conflict_with_a_contact_holding_other_values_is_a_rejection_naming_it(
    adapter: HubSpotAdapter, fake: FakeHubSpot
) -> None:
    made = create(adapter, {"properties": ADA})
    assert isinstance(made.model, Contact)

    error = rejection(adapter, {"properties": ADA | {"firstname": "Augusta", "lastname": "King"}})

    assert isinstance(error, ProviderRejected) and error.status_code == 409
    assert error.message == (
        "hubspot.create_contact: provider rejected the request (HTTP 409): CONFLICT: Contact already exists. "
        f"Existing ID: {made.model.id}; contact {made.model.id} holds other values of firstname, lastname, so "
        "this operation did not make it: update that contact, or create one with another e-mail address "
        "under a new idempotency key"
    )
    assert "Augusta" not in error.message and "Ada" not in error.message
    assert error.body["category"] == "CONFLICT"


def test_a_conflict_whose_contact_cannot_be_read_says_so(adapter: HubSpotAdapter, fake: FakeHubSpot) -> None:
    create(adapter, {"properties": ADA})
    fake.records.clear()  # merged away between the create and the read

    error = rejection(adapter, {"properties": ADA})

    assert isinstance(error, ProviderRejected) and error.status_code == 404
    existing = fake.contacts["ada@example.com"]
    assert error.message.startswith(
        f"hubspot.create_contact: reading contact {existing}, named by a conflict: provider rejected the "
        "request (HTTP 404): OBJECT_NOT_FOUND: resource not found"
    )


def test_a_conflict_naming_no_contact_is_a_rejection_without_a_read(
    adapter: HubSpotAdapter, fake: FakeHubSpot
) -> None:
    fake.script(Answer(409, {"status": "error", "message": "Conflict", "category": "CONFLICT"}))

    error = rejection(adapter, {"properties": ADA})

    assert isinstance(error, ProviderRejected)
    assert error.message.endswith("(HTTP 409): CONFLICT: Conflict")
    assert [r.method for r in fake.received()] == ["POST"]


# -- reference -----------------------------------------------------------------------------------


def test_the_reference_is_the_contacts_id_created_or_found(adapter: HubSpotAdapter) -> None:
    created = create(adapter, {"properties": ADA}).model.model_dump(mode="json")
    found = create(adapter, {"properties": ADA}).model.model_dump(mode="json")

    assert adapter.reference("create_contact", created) == created["id"]
    assert adapter.reference("create_contact", found) == created["id"] and found["existing"] is True
