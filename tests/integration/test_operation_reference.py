"""The closed loop, with real parts: a Stripe operation run through the pipeline against a local server
playing Stripe, with the real ledger (both backends), Redis, breaker and throttle, keeps the id of what it
made in its row; an event naming that id finds the operation; and `ops show` lists the events linked to
an operation."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from integrations.adapters.stripe import StripeAdapter
from integrations.auth import BearerAuth, static_credentials
from integrations.ledger.models import OperationStatus
from integrations.ledger.records import NewOperation, OperationRecord
from integrations.ledger.store import Ledger
from integrations.message import Delivery
from integrations.outcome import Done
from integrations.pipeline import OperationRunner
from integrations.providers import ProviderSettings
from integrations.resilience.idempotency import fingerprint
from integrations.runtime import build_runner
from integrations.webhooks.events import Event
from integrations.webhooks.store import EventStatus, EventStore, Relation
from tests.clock import Clock
from tests.fakes.stripe import FakeStripe
from tests.integration.conftest import Operate, operator_cli
from tests.providers import provider_settings

SECRET_KEY = "sk_test_51FakeKeyForTheClosedLoopTests000000000QkX9"
CONFIRMED = {
    "amount": 2000,
    "currency": "usd",
    "customer": "cus_NffrFeUfNV2Hib",
    "payment_method": "pm_card_visa",
    "confirm": True,
    "off_session": True,
}


class ReferenceFails(StripeAdapter):
    """Stripe's adapter whose ``reference`` fails, as a faulty adapter's might."""

    def reference(self, operation: str, response: Any) -> str | None:
        raise KeyError(response["id"])


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe(SECRET_KEY) as server:
        yield server


@pytest.fixture
def provider(fake: FakeStripe, provider_name: str, monkeypatch: pytest.MonkeyPatch) -> ProviderSettings:
    monkeypatch.setenv("STRIPE_SECRET_KEY", SECRET_KEY)
    return provider_settings(
        provider_name,
        adapter="stripe",
        base_url=fake.url,
        timeout=2.0,
        auth={"type": "bearer", "secret": "env:STRIPE_SECRET_KEY"},
        retry={"max_attempts": 3, "backoff_base": 0.1, "backoff_max": 0.5},
    )


def runner_with(
    kind: type[StripeAdapter],
    provider: ProviderSettings,
    session: requests.Session,
    ledger: Ledger,
    client: redis.Redis,
) -> OperationRunner:
    assert isinstance(provider.auth, BearerAuth)
    adapter = kind(provider, session, static_credentials(provider.name, provider.auth))
    clock = Clock(datetime.now(UTC))
    return build_runner(provider, adapter, ledger, client, clock=clock, clock_ms=clock.ms)


@pytest.fixture
def stripe_ledger(ledger_url: str) -> Iterator[Ledger]:
    ledger = Ledger.connect(ledger_url)
    yield ledger
    ledger.dispose()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def run(runner: OperationRunner, operation: str, payload: dict[str, Any], key: str) -> Any:
    return runner.run(
        Delivery(operation, {"payload": payload, "idempotency_key": key}, message_id=f"m-{key}")
    )


def test_a_stripe_operation_keeps_the_id_of_what_it_made_and_the_event_naming_it_finds_it(
    provider: ProviderSettings,
    session: requests.Session,
    stripe_ledger: Ledger,
    shared_redis: redis.Redis,
) -> None:
    runner = runner_with(StripeAdapter, provider, session, stripe_ledger, shared_redis)

    paid = run(runner, "create_payment_intent", CONFIRMED, "order-31")
    refunded = run(runner, "create_refund", {"payment_intent": "pi_placeholder"}, "order-31-refund")

    assert isinstance(paid, Done)
    intent_id = paid.result["response"]["id"]
    assert intent_id.startswith("pi_")
    row = stripe_ledger.find(provider.name, "order-31")
    assert row is not None and (row.status, row.reference) == (OperationStatus.SUCCEEDED, intent_id)
    # A refund of an unknown PaymentIntent is refused: no reference for what was not made.
    refused = stripe_ledger.find(provider.name, "order-31-refund")
    assert refused is not None and refused.status is OperationStatus.FAILED and refused.reference is None
    assert not isinstance(refunded, Done)

    refund = run(runner, "create_refund", {"payment_intent": intent_id}, "order-31-refund-2")
    assert isinstance(refund, Done)
    refund_row = stripe_ledger.find(provider.name, "order-31-refund-2")
    assert refund_row is not None and refund_row.reference == refund.result["response"]["id"]
    assert refund_row.reference is not None and refund_row.reference.startswith("re_")

    # Stripe's event of the payment names the PaymentIntent only: that finds the operation that made it.
    succeeded: dict[str, Any] = {
        "id": "evt_3MtwBwLkdIwHu7ix0lWqCyyd",
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {"object": paid.result["response"]},
    }
    event = Event("e-1", provider.name, succeeded["id"], succeeded["type"], datetime.now(UTC), succeeded)
    link = runner.adapter.event_link(event)
    assert link is not None and link.relation is Relation.CONFIRMS and link.reference is not None
    found = stripe_ledger.find_by_reference(provider.name, link.reference)
    assert found is not None and found.id == row.id


def test_an_adapter_whose_reference_fails_still_records_the_success(
    provider: ProviderSettings,
    session: requests.Session,
    stripe_ledger: Ledger,
    shared_redis: redis.Redis,
    fake: FakeStripe,
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = runner_with(ReferenceFails, provider, session, stripe_ledger, shared_redis)
    caplog.set_level(logging.INFO)

    done = run(runner, "create_payment_intent", CONFIRMED, "order-32")

    assert isinstance(done, Done) and len(fake.received()) == 1
    row = stripe_ledger.find(provider.name, "order-32")
    assert row is not None and (row.status, row.reference) == (OperationStatus.SUCCEEDED, None)
    assert "reference() raised KeyError" in caplog.text
    assert done.result["response"]["id"] not in caplog.text  # never the provider's answer
    again = run(runner, "create_payment_intent", CONFIRMED, "order-32")
    assert isinstance(again, Done) and again.result["replayed"] and len(fake.received()) == 1


# -- ops show ---------------------------------------------------------------------------------------


@pytest.fixture
def operate(ledger_url: str, redis_url: str, tmp_path: Path) -> Operate:
    providers = tmp_path / "providers.toml"
    providers.write_text('[providers.stripe]\nadapter = "stripe"\nbase_url = "https://api.stripe.example"\n')
    return operator_cli(ledger_url, redis_url, providers)


def succeeded_operation(ledger: Ledger, key: str, reference: str) -> OperationRecord:
    payload = {"amount": 2000, "currency": "usd"}
    new = NewOperation(
        "stripe",
        "create_payment_intent",
        key,
        fingerprint("create_payment_intent", payload),
        payload,
        "req-1",
    )
    started = ledger.start(new, lease=timedelta(seconds=35))
    assert started is not None
    finished = ledger.finish(
        started, OperationStatus.SUCCEEDED, response={"id": reference}, reference=reference
    )
    assert finished is not None
    return finished


def test_ops_show_lists_the_events_that_confirm_or_contradict_the_operation(
    operate: Operate, stripe_ledger: Ledger
) -> None:
    record = succeeded_operation(stripe_ledger, "order-41", "pi_3MtwBwLkdIwHu7ix0000000041")
    other = succeeded_operation(stripe_ledger, "order-42", "pi_3MtwBwLkdIwHu7ix0000000042")
    store = EventStore(stripe_ledger.engine)
    t0 = datetime(2026, 12, 5, 9, 30, tzinfo=UTC)
    failed, _ = store.store("stripe", "evt_failed", "payment_intent.payment_failed", b'{"secret-ish": 1}', t0)
    paid, _ = store.store("stripe", "evt_paid", "payment_intent.succeeded", b"{}", t0 + timedelta(minutes=3))
    elsewhere, _ = store.store("stripe", "evt_other", "payment_intent.succeeded", b"{}", t0)
    unlinked, _ = store.store("stripe", "evt_none", "charge.succeeded", b"{}", t0)
    store.mark(failed.id, EventStatus.HANDLED, operation_id=record.id, relation=Relation.CONTRADICTS)
    store.mark(paid.id, EventStatus.HANDLED, operation_id=record.id, relation=Relation.CONFIRMS)
    store.mark(elsewhere.id, EventStatus.HANDLED, operation_id=other.id, relation=Relation.CONFIRMS)

    shown = operate("ops", "show", record.id)
    as_json = operate("ops", "show", "stripe", "order-41", "--json")

    assert shown.exit_code == 0, shown.output
    assert "pi_3MtwBwLkdIwHu7ix0000000041" in shown.output  # the reference
    events_part = shown.output[shown.output.index("events (2)") :]
    assert events_part.splitlines()[1:] == [
        f"  2026-12-05 09:30:00  payment_intent.payment_failed  contradicts  handled  {failed.id}",
        f"  2026-12-05 09:33:00  payment_intent.succeeded  confirms  handled  {paid.id}",
    ]
    assert elsewhere.id not in shown.output and unlinked.id not in shown.output
    assert "secret-ish" not in shown.output  # bodies stay in `events show`

    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    assert data["reference"] == "pi_3MtwBwLkdIwHu7ix0000000041"
    assert [
        (e["id"], e["event_id"], e["type"], e["relation"], e["status"], e["received_at"])
        for e in data["events"]
    ] == [
        (failed.id, "evt_failed", "payment_intent.payment_failed", "contradicts", "handled", t0.isoformat()),
        (
            paid.id,
            "evt_paid",
            "payment_intent.succeeded",
            "confirms",
            "handled",
            (t0 + timedelta(minutes=3)).isoformat(),
        ),
    ]
    assert all("body" not in e for e in data["events"])

    plain = operate("ops", "show", other.id, "--json")
    assert [e["event_id"] for e in json.loads(plain.output)["events"]] == ["evt_other"]
    lone = succeeded_operation(stripe_ledger, "order-43", "pi_3MtwBwLkdIwHu7ix0000000043")
    none = operate("ops", "show", lone.id)
    assert none.exit_code == 0 and "events (" not in none.output
    assert json.loads(operate("ops", "show", lone.id, "--json").output)["events"] == []
