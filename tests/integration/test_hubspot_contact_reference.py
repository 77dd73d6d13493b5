"""The closed loop for HubSpot, with real parts: ``create_contact`` run through the pipeline against a local
server playing HubSpot, with the real ledger (both backends), Redis, breaker and throttle, keeps the created
contact's id in its row, and the ``contact.creation`` event naming that id finds the operation; after an
answer lost in transit, the retry's conflict is read as the first call's success, with the same id."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
import requests

from integrations.adapters.hubspot import HubSpotAdapter
from integrations.auth import BearerAuth, static_credentials
from integrations.errors import ErrorType
from integrations.ledger.models import OperationStatus
from integrations.ledger.records import OperationRecord
from integrations.ledger.store import Ledger
from integrations.message import Delivery
from integrations.outcome import Done, Failed, Outcome, Retry
from integrations.pipeline import OperationRunner
from integrations.runtime import build_runner
from integrations.webhooks.events import Event
from integrations.webhooks.store import Relation
from tests.clock import Clock
from tests.fakes.hubspot import FakeHubSpot
from tests.providers import provider_settings

TOKEN = "pat-na1-canary-0123456789"
ADA = {"email": "ada@example.com", "firstname": "Ada", "lastname": "Lovelace"}


@pytest.fixture
def fake() -> Iterator[FakeHubSpot]:
    with FakeHubSpot(TOKEN) as server:
        yield server


@pytest.fixture
def runner(
    fake: FakeHubSpot,
    provider_name: str,
    ledger_url: str,
    shared_redis: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[OperationRunner]:
    monkeypatch.setenv("HUBSPOT_TOKEN", TOKEN)
    provider = provider_settings(
        provider_name,
        adapter="hubspot",
        base_url=fake.url,
        timeout=2.0,
        auth={"type": "bearer", "secret": "env:HUBSPOT_TOKEN"},
        retry={"max_attempts": 3, "backoff_base": 0.1, "backoff_max": 0.5},
    )
    assert isinstance(provider.auth, BearerAuth)
    clock = Clock(datetime.now(UTC))
    ledger = Ledger.connect(ledger_url, clock=clock)
    with requests.Session() as session:
        adapter = HubSpotAdapter(provider, session, static_credentials(provider.name, provider.auth))
        yield build_runner(provider, adapter, ledger, shared_redis, clock=clock, clock_ms=clock.ms)
    ledger.dispose()


def run(runner: OperationRunner, properties: dict[str, str], key: str) -> list[Outcome]:
    """Deliver the message until it ends, as the broker would after each retry's delay (the runner's clock
    is moved on instead of waiting); every outcome, in order."""
    message = {"payload": {"properties": properties}, "idempotency_key": key}
    outcomes: list[Outcome] = []
    for redelivery in range(5):
        outcome = runner.run(
            Delivery("create_contact", message, message_id=f"m-{key}", redeliveries=redelivery)
        )
        outcomes.append(outcome)
        if not isinstance(outcome, Retry):
            return outcomes
        runner.clock.advance(outcome.delay)  # type: ignore[attr-defined]
    raise AssertionError(f"create_contact {key} did not end: {outcomes}")


def contact_creation(provider: str, contact_id: str) -> Event:
    """HubSpot's webhook body for the contact's creation (https://developers.hubspot.com/docs/api/webhooks):
    a list of events, ``objectId`` the contact's id as a number."""
    body: list[dict[str, Any]] = [
        {
            "objectId": int(contact_id),
            "changeSource": "INTEGRATION",
            "eventId": 3816279480,
            "subscriptionId": 22,
            "portalId": 33,
            "appId": 1160452,
            "occurredAt": 1462216307945,
            "subscriptionType": "contact.creation",
            "attemptNumber": 0,
        }
    ]
    return Event("e-1", provider, "3816279480", "contact.creation", datetime.now(UTC), body)


def linked(runner: OperationRunner, event: Event) -> OperationRecord | None:
    link = runner.adapter.event_link(event)
    assert link is not None and link.relation is Relation.CONFIRMS and link.reference is not None
    return runner.ledger.find_by_reference(runner.provider.name, link.reference)


def test_a_created_contacts_id_is_the_reference_and_its_creation_event_finds_the_operation(
    runner: OperationRunner, fake: FakeHubSpot
) -> None:
    [done] = run(runner, ADA, "crm-ada")

    assert isinstance(done, Done)
    contact_id = fake.contacts["ada@example.com"]
    assert done.result["response"]["id"] == contact_id and done.result["response"]["existing"] is False
    row = runner.ledger.find(runner.provider.name, "crm-ada")
    assert row is not None and (row.status, row.reference) == (OperationStatus.SUCCEEDED, contact_id)

    found = linked(runner, contact_creation(runner.provider.name, contact_id))

    assert found is not None and found.id == row.id


def test_after_a_lost_answer_the_conflict_is_the_first_calls_success_with_the_same_reference(
    runner: OperationRunner, fake: FakeHubSpot
) -> None:
    fake.lose_answers = 1  # HubSpot creates the contact; its answer never arrives

    lost, done = run(runner, ADA, "crm-ada")

    assert isinstance(lost, Retry) and lost.error.type is ErrorType.CONNECTION_ERROR
    assert isinstance(done, Done) and done.result["attempts"] == 2
    contact_id = fake.contacts["ada@example.com"]
    assert len(fake.records) == 1  # created once
    assert done.result["response"]["id"] == contact_id and done.result["response"]["existing"] is True
    row = runner.ledger.find(runner.provider.name, "crm-ada")
    assert row is not None and row.reference == contact_id
    found = linked(runner, contact_creation(runner.provider.name, contact_id))
    assert found is not None and found.id == row.id


def test_a_contact_made_elsewhere_fails_the_operation_and_links_it_to_nothing(
    runner: OperationRunner, fake: FakeHubSpot
) -> None:
    [first] = run(runner, ADA, "crm-ada")
    [refused] = run(runner, ADA | {"firstname": "Augusta"}, "crm-augusta")

    assert isinstance(first, Done) and isinstance(refused, Failed)
    assert refused.error.type is ErrorType.PROVIDER_REJECTED
    contact_id = fake.contacts["ada@example.com"]
    assert f"contact {contact_id} holds other values of firstname" in refused.error.message
    row = runner.ledger.find(runner.provider.name, "crm-augusta")
    assert row is not None and (row.status, row.reference) == (OperationStatus.FAILED, None)
    # The contact's creation event is the first operation's.
    found = linked(runner, contact_creation(runner.provider.name, contact_id))
    assert found is not None and found.idempotency_key == "crm-ada"
