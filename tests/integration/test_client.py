"""``enqueue``: the ledger row first, then the message; checked before anything is written or sent.

A real ledger on both backends; the publisher is a list, since sending is Celery's part (the end-to-end
test sends through a real broker to a real worker)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import requests
from sqlalchemy.orm import Session

from integrations.adapters.http import HttpAdapter
from integrations.client import Client, Handle
from integrations.errors import IdempotencyConflict, InvalidRequest, UnknownOperation
from integrations.ledger.models import OperationStatus
from integrations.ledger.store import Ledger
from integrations.message import Delivery
from integrations.pipeline import OperationRunner
from integrations.sweeper import Sweeper
from tests.clock import Clock
from tests.providers import provider_settings
from tests.published import Published

PAYLOAD = {"method": "POST", "path": "/v1/payments", "json": {"amount": 1200}}


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(ledger_url: str, published: Published, clock: Clock) -> Iterator[Client]:
    ledger = Ledger.connect(ledger_url, clock=clock)
    acme = provider_settings("acme")
    yield Client({"acme": acme}, {"acme": HttpAdapter}, ledger, published)
    ledger.dispose()


def enqueue(client: Client, key: str = "order-8812-payment", **changes: Any) -> Handle:
    arguments: dict[str, Any] = {"payload": PAYLOAD, "idempotency_key": key} | changes
    return client.enqueue("acme", "request", **arguments)


def test_the_row_is_queued_before_the_message_goes_under_the_rows_task_id(
    client: Client, published: Published
) -> None:
    handle = enqueue(client)

    assert handle.created and handle.task_id is not None
    [message] = published
    assert (message.id, message.task_id, message.payload) == (handle.operation_id, handle.task_id, PAYLOAD)
    row = client.ledger.get(handle.operation_id)
    assert row is not None and row.status is OperationStatus.QUEUED and row.task_id == handle.task_id


def test_the_same_key_and_payload_again_names_the_same_operation_and_sends_nothing(
    client: Client, published: Published
) -> None:
    first = enqueue(client)
    again = enqueue(client)

    assert (again.operation_id, again.task_id, again.created) == (first.operation_id, first.task_id, False)
    assert len(published) == 1


def test_a_key_used_for_another_payload_is_a_conflict_and_nothing_is_sent(
    client: Client, published: Published
) -> None:
    first = enqueue(client)
    with pytest.raises(IdempotencyConflict, match=f"already used by operation {first.operation_id}"):
        enqueue(client, payload=PAYLOAD | {"json": {"amount": 1300}})
    assert len(published) == 1


@pytest.mark.parametrize(
    ("provider", "operation", "message"),
    [
        ("acne", "request", "no provider 'acne' in the providers file (known: acme)"),
        ("acme", "refund", "acme: adapter 'http' has no operation 'refund' (it has: request)"),
    ],
)
def test_an_unknown_provider_or_operation_raises_naming_the_known_ones(
    client: Client, published: Published, provider: str, operation: str, message: str
) -> None:
    with pytest.raises(UnknownOperation, match=message.replace("(", r"\(").replace(")", r"\)")):
        client.enqueue(provider, operation, payload=PAYLOAD, idempotency_key="k")
    assert published == [] and client.ledger.dead_letters() == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"payload": {"path": "/x"}}, "payload.method"),
        ({"payload": "not a dict"}, "payload"),
        ({"key": ""}, "idempotency_key"),
        ({"request_id": "line\nbreak"}, "request_id"),
    ],
)
def test_an_invalid_message_raises_naming_the_field_and_writes_nothing(
    client: Client, published: Published, changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequest, match=field):
        enqueue(client, **changes)
    assert published == [] and client.ledger.find("acme", changes.get("key", "order-8812-payment")) is None


def test_in_a_session_the_message_goes_after_commit_and_never_after_a_rollback(
    client: Client, published: Published
) -> None:
    with Session(client.ledger.engine) as session:
        kept = enqueue(client, "kept", connection=session)
        assert published == []  # not yet: the row is not committed
        session.commit()
    with Session(client.ledger.engine) as session:
        enqueue(client, "dropped", connection=session)
        session.rollback()
        session.commit()  # a later commit of the same session sends nothing for the rolled-back row

    assert [message.idempotency_key for message in published] == ["kept"]
    assert client.ledger.get(kept.operation_id) is not None and client.ledger.find("acme", "dropped") is None


def test_on_a_bare_connection_the_committed_row_is_sent_by_the_sweeper(
    client: Client, published: Published, clock: Clock
) -> None:
    with client.ledger.engine.connect() as connection:
        handle = enqueue(client, connection=connection)
        connection.commit()
    assert published == []  # Core has no hook after a connection's commit

    clock.advance(31)
    [swept] = Sweeper(client.ledger, published, {"acme"}, grace=timedelta(seconds=30), clock=clock).sweep()

    assert swept.record.id == handle.operation_id and published[0].task_id == handle.task_id


def test_a_worker_runs_the_enqueued_operation_once_under_its_key(
    client: Client, published: Published, simulator: Any, clock: Clock
) -> None:
    acme = provider_settings("acme", base_url=simulator.url)
    runner = OperationRunner(acme, HttpAdapter(acme, requests.Session()), client.ledger, clock=clock)
    handle = enqueue(client)
    [message] = published
    kwargs = {"payload": message.payload, "idempotency_key": message.idempotency_key}

    first = runner.run(Delivery("request", kwargs, message_id=message.task_id))
    second = runner.run(Delivery("request", kwargs, message_id=message.task_id))  # the sweeper's, say

    assert first.result["operation_id"] == handle.operation_id  # type: ignore[union-attr]
    assert second.result["replayed"] is True  # type: ignore[union-attr]
    assert len(simulator.calls(idempotency_key="order-8812-payment")) == 1
