"""The hubspot adapter and batch operations in the core, against a local server playing HubSpot's batch create
of contacts (tests/fakes/hubspot.py), with the real ledger on both backends."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from integrations.adapters.hubspot import HubSpotAdapter
from integrations.auth import static_credentials
from integrations.errors import ErrorType
from integrations.guard import Attempt, Observation
from integrations.ledger.models import OperationStatus
from integrations.ledger.store import Ledger
from integrations.message import Delivery
from integrations.outcome import Defer, Done, Failed, Outcome, Retry, WaitReason
from integrations.pipeline import OperationRunner
from integrations.replay import reset_for_replay
from tests.clock import Clock
from tests.fakes.hubspot import PATH, FakeHubSpot
from tests.fakes.server import Answer
from tests.providers import provider_settings

TOKEN = "pat-na1-canary-0123456789"
OPERATION = "batch_create_contacts"


@pytest.fixture
def hubspot() -> Iterator[FakeHubSpot]:
    with FakeHubSpot(TOKEN) as server:
        yield server


@pytest.fixture
def runner(
    ledger_url: str, hubspot: FakeHubSpot, monkeypatch: pytest.MonkeyPatch
) -> Iterator[OperationRunner]:
    monkeypatch.setenv("HUBSPOT_TOKEN", TOKEN)
    provider = provider_settings(
        "hubspot",
        adapter="hubspot",
        base_url=hubspot.url,
        timeout=2.0,
        auth={"type": "bearer", "secret": "env:HUBSPOT_TOKEN"},
        retry={"max_attempts": 3, "backoff_base": 1.0, "backoff_max": 10.0},
    )
    session = requests.Session()
    clock = Clock()
    ledger = Ledger.connect(ledger_url, clock=clock)
    adapter = HubSpotAdapter(provider, session, static_credentials("hubspot", provider.auth))  # type: ignore[arg-type]
    yield OperationRunner(provider, adapter, ledger, clock=clock)
    session.close()
    ledger.dispose()


def contact(n: int, email: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"properties": {"email": email or f"person{n}@example.com", "firstname": f"Person {n}"}, **extra}


def run(runner: OperationRunner, items: list[dict[str, Any]], key: str = "import-1") -> Outcome:
    """Deliver the message until it ends, as the broker would: at once after a deferral, after the delay
    on a retry (the runner's clock is moved on instead of waiting)."""
    message = {"payload": {"items": items}, "idempotency_key": key}
    for redelivery in range(100):
        outcome = runner.run(Delivery(OPERATION, message, redeliveries=redelivery))
        if isinstance(outcome, Done | Failed):
            return outcome
        assert isinstance(outcome, Retry | Defer)
        if isinstance(outcome, Defer):
            assert outcome.reason == "next_chunk", outcome
        runner.clock.advance(outcome.delay)  # type: ignore[attr-defined]
    raise AssertionError("the batch did not end")


def items_by_key(outcome: Outcome) -> dict[str, dict[str, Any]]:
    assert isinstance(outcome, Done), outcome
    return {item["key"]: item for item in outcome.result["items"]}


def test_the_request_is_hubspots_batch_create_with_a_trace_id_per_input(
    runner: OperationRunner, hubspot: FakeHubSpot
) -> None:
    outcome = run(runner, [contact(0), contact(1, objectWriteTraceId="crm-row-1")], key="imp-7")

    [request] = hubspot.received()
    assert (request.method, request.path) == ("POST", PATH)
    assert request.header("authorization") == f"Bearer {TOKEN}"
    assert request.header("content-type") == "application/json"
    assert request.json() == {
        "inputs": [
            {
                "properties": {"email": "person0@example.com", "firstname": "Person 0"},
                "objectWriteTraceId": "imp-7#0",
            },
            {
                "properties": {"email": "person1@example.com", "firstname": "Person 1"},
                "objectWriteTraceId": "crm-row-1",
            },
        ]
    }
    assert isinstance(outcome, Done)
    assert outcome.result["status"] == "succeeded"
    assert outcome.result["attempts"] == 1
    assert [(i["key"], i["status"], i["attempts"]) for i in outcome.result["items"]] == [
        ("imp-7#0", "succeeded", 1),
        ("crm-row-1", "succeeded", 1),
    ]
    created = outcome.result["items"][1]["response"]
    assert created["id"] == hubspot.contacts["person1@example.com"]
    assert created["properties"]["email"] == "person1@example.com"


def test_the_documented_multi_status_answer_maps_each_error_to_its_item(
    runner: OperationRunner, hubspot: FakeHubSpot
) -> None:
    # The example of HubSpot's error-handling guide, for the contacts sent here.
    hubspot.script(
        Answer(
            207,
            {
                "status": "COMPLETE",
                "results": [
                    {
                        "id": "1145814089",
                        "properties": {"email": "person0@example.com", "hs_object_id": "1145814089"},
                        "createdAt": "2024-08-15T17:09:13.648Z",
                        "updatedAt": "2024-08-15T17:09:13.648Z",
                        "archived": False,
                    }
                ],
                "numErrors": 1,
                "errors": [
                    {
                        "status": "error",
                        "category": "VALIDATION_ERROR",
                        "message": 'Property values were not valid: [{"isValid":false,"message":"Property \\"missing\\" does not exist","error":"PROPERTY_DOESNT_EXIST","name":"missing"}]',
                        "context": {"objectWriteTraceId": ["549b1c2a9351"]},
                    }
                ],
                "startedAt": "2024-08-15T17:09:13.610Z",
                "completedAt": "2024-08-15T17:09:13.910Z",
            },
        )
    )
    outcome = run(
        runner,
        [
            contact(0, objectWriteTraceId="549b1c2a9350"),
            {"properties": {"missing": "1"}, "objectWriteTraceId": "549b1c2a9351"},
        ],
    )

    assert isinstance(outcome, Done) and outcome.result["status"] == "partial"
    items = items_by_key(outcome)
    assert items["549b1c2a9350"]["status"] == "succeeded"
    assert items["549b1c2a9350"]["response"]["id"] == "1145814089"
    failed = items["549b1c2a9351"]
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert failed["error"]["type"] == "provider_rejected"
    assert failed["error"]["message"].startswith(
        "hubspot.batch_create_contacts: item '549b1c2a9351': VALIDATION_ERROR: "
    )
    assert failed["error"]["body"]["category"] == "VALIDATION_ERROR"
    assert len(hubspot.received()) == 1


@pytest.mark.parametrize(
    "category", ["VALIDATION_ERROR", "CONFLICT", "OBJECT_ALREADY_EXISTS", "INVALID_EMAIL"]
)
def test_permanent_categories_fail_the_item_without_a_retry(
    runner: OperationRunner, hubspot: FakeHubSpot, category: str
) -> None:
    hubspot.script(
        Answer(
            207,
            {
                "status": "COMPLETE",
                "results": [],
                "numErrors": 1,
                "errors": [
                    {
                        "status": "error",
                        "category": category,
                        "message": "no",
                        "context": {"objectWriteTraceId": ["import-1#0"]},
                    }
                ],
                "startedAt": "2026-11-21T10:00:00Z",
                "completedAt": "2026-11-21T10:00:00Z",
            },
        )
    )
    outcome = run(runner, [contact(0)])

    assert isinstance(outcome, Done) and outcome.result["status"] == "failed"
    [item] = outcome.result["items"]
    assert (item["status"], item["attempts"], item["error"]["type"]) == ("failed", 1, "provider_rejected")
    assert len(hubspot.received()) == 1


def test_other_categories_are_retried_and_only_those_items_are_sent_again(
    runner: OperationRunner, hubspot: FakeHubSpot
) -> None:
    hubspot.transient = {"import-1#1": 1}

    outcome = run(runner, [contact(0), contact(1), contact(2)])

    assert isinstance(outcome, Done) and outcome.result["status"] == "succeeded"
    first, second = (r.json()["inputs"] for r in hubspot.received())
    assert [i["objectWriteTraceId"] for i in first] == ["import-1#0", "import-1#1", "import-1#2"]
    assert [i["objectWriteTraceId"] for i in second] == ["import-1#1"]
    assert [i["attempts"] for i in outcome.result["items"]] == [1, 2, 1]
    assert outcome.result["attempts"] == 2


def test_a_retryable_item_that_keeps_failing_fails_with_retries_exhausted(
    runner: OperationRunner, hubspot: FakeHubSpot
) -> None:
    hubspot.transient = {"import-1#0": 10}

    outcome = run(runner, [contact(0), contact(1)])

    assert isinstance(outcome, Done) and outcome.result["status"] == "partial"
    item = items_by_key(outcome)["import-1#0"]
    assert (item["status"], item["attempts"], item["error"]["type"]) == ("failed", 3, "retries_exhausted")
    assert "gave up after 3 attempts; last error: " in item["error"]["message"]
    assert hubspot.sent["import-1#0"] == 3 and hubspot.sent["import-1#1"] == 1


def test_items_go_in_chunks_of_at_most_100(runner: OperationRunner, hubspot: FakeHubSpot) -> None:
    outcome = run(runner, [contact(n) for n in range(250)])

    assert isinstance(outcome, Done) and outcome.result["status"] == "succeeded"
    assert [len(r.json()["inputs"]) for r in hubspot.received()] == [100, 100, 50]
    # Each call has its own idempotency key, stable for the same items.
    assert len({r.header("idempotency-key") for r in hubspot.received()}) == 3


def test_a_batch_of_250_with_permanent_and_transient_failures_sends_each_succeeded_item_once(
    runner: OperationRunner, hubspot: FakeHubSpot
) -> None:
    items = [contact(n) for n in range(250)]
    invalid = {7, 80, 199}  # not an e-mail address: INVALID_EMAIL
    duplicates = {120: 20, 230: 30}  # the address of an earlier item: CONFLICT
    for n in invalid:
        items[n] = contact(n, email=f"person{n}-at-example.com")
    for n, earlier in duplicates.items():
        items[n] = contact(n, email=f"person{earlier}@example.com")
    transient = {3: 1, 60: 2, 150: 1, 249: 1}  # per-item retryable errors, this many times each
    hubspot.transient = {f"import-1#{n}": times for n, times in transient.items()}
    answer = hubspot.answer
    calls = iter(range(1000))

    def second_call_fails(request: Any) -> Answer:  # the whole second call (items 100-199) fails
        return Answer(502, "<html>Bad Gateway</html>") if next(calls) == 1 else answer(request)

    hubspot.answer = second_call_fails  # type: ignore[method-assign]

    outcome = run(runner, items)

    assert isinstance(outcome, Done) and outcome.result["status"] == "partial"
    result = items_by_key(outcome)
    failed = {key for key, item in result.items() if item["status"] == "failed"}
    assert failed == {f"import-1#{n}" for n in invalid | set(duplicates)}
    assert {result[k]["error"]["body"]["category"] for k in failed} == {"INVALID_EMAIL", "CONFLICT"}
    succeeded = [key for key, item in result.items() if item["status"] == "succeeded"]
    assert len(succeeded) == 245
    # Each contact was created once, and no item was sent again after it succeeded.
    assert all(hubspot.created[key] == 1 for key in succeeded)
    assert sum(hubspot.created.values()) == 245
    assert not hubspot.resent_after_success
    sends = Counter(i["objectWriteTraceId"] for r in hubspot.received() for i in r.json()["inputs"])
    for n in range(250):
        key = f"import-1#{n}"
        expected = 1 + (100 <= n < 200) + transient.get(n, 0)
        assert result[key]["attempts"] == sends[key] == expected, key
    assert all(len(r.json()["inputs"]) <= 100 for r in hubspot.received())


def test_an_answer_that_does_not_match_the_model_is_a_contract_violation(
    runner: OperationRunner, hubspot: FakeHubSpot, caplog: pytest.LogCaptureFixture
) -> None:
    hubspot.script(Answer(201, {"status": "COMPLETE", "objects": [], "startedAt": "x", "completedAt": "y"}))

    with caplog.at_level(logging.ERROR, logger="integrations.operations"):
        outcome = run(runner, [contact(0), contact(1)])

    assert isinstance(outcome, Done) and outcome.result["status"] == "failed"
    for item in outcome.result["items"]:
        assert (item["status"], item["attempts"], item["error"]["type"]) == (
            "failed",
            1,
            "contract_violation",
        )
        assert "body" not in item["error"]  # the answer is kept once, on the operation
    record = runner.ledger.find("hubspot", "import-1")
    assert record is not None and record.error is not None
    assert record.error["type"] == "contract_violation"
    assert record.error["body"] == {"status": "COMPLETE", "objects": [], "startedAt": "x", "completedAt": "y"}
    assert len(hubspot.received()) == 1
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "the provider's API has changed" in record.getMessage()
    assert "hubspot.batch_create_contacts key=import-1" in record.getMessage()


def test_an_answer_that_leaves_items_without_an_outcome_is_a_contract_violation(
    runner: OperationRunner, hubspot: FakeHubSpot
) -> None:
    hubspot.script(Answer(201, {"status": "COMPLETE", "results": [], "startedAt": "x", "completedAt": "y"}))

    outcome = run(runner, [contact(0)])

    [item] = items_by_key(outcome).values()
    assert item["error"]["type"] == "contract_violation"
    assert "do not add up to the 1 sent" in item["error"]["message"]


def test_a_whole_call_rejection_fails_every_item_of_the_call(
    runner: OperationRunner, hubspot: FakeHubSpot
) -> None:
    hubspot.token = "another-token"  # the app's token was revoked

    outcome = run(runner, [contact(0), contact(1)])

    assert isinstance(outcome, Done) and outcome.result["status"] == "failed"
    for item in outcome.result["items"]:
        assert item["error"]["type"] == "provider_rejected"
        assert item["error"]["message"].startswith(
            "hubspot.batch_create_contacts: provider rejected the request (HTTP 401): INVALID_AUTHENTICATION: "
            "Authentication credentials not found.; check the access token of [providers.hubspot.auth]"
        )


def test_an_invalid_item_fails_alone_and_is_never_sent(runner: OperationRunner, hubspot: FakeHubSpot) -> None:
    outcome = run(runner, [contact(0), {"properties": {"email": 5}}, contact(2)])

    assert isinstance(outcome, Done) and outcome.result["status"] == "partial"
    item = items_by_key(outcome)["import-1#1"]
    assert (item["status"], item["attempts"], item["error"]["type"]) == ("failed", 0, "invalid_request")
    assert item["error"]["message"] == (
        "hubspot.batch_create_contacts: payload.items.1.properties.email: Input should be a valid string"
    )
    [request] = hubspot.received()
    assert [i["objectWriteTraceId"] for i in request.json()["inputs"]] == ["import-1#0", "import-1#2"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"items": []}, "payload.items: List should have at least 1 item"),
        ({"inputs": [{}]}, "payload.items: Field required"),
        (
            {"items": [{"properties": {"a": "1"}, "objectWriteTraceId": "x"}] * 2},
            "payload.items.0 and payload.items.1 have the same key 'x'",
        ),
        (
            {"items": [{"properties": {}}]},
            "no item is valid: payload.items.0.properties: Dictionary should have at least 1 item",
        ),
    ],
)
def test_a_malformed_batch_is_an_invalid_request(
    runner: OperationRunner, hubspot: FakeHubSpot, payload: dict[str, Any], message: str
) -> None:
    outcome = runner.run(Delivery(OPERATION, {"payload": payload, "idempotency_key": "bad-1"}))

    assert isinstance(outcome, Failed) and outcome.error.type is ErrorType.INVALID_REQUEST
    assert message in outcome.error.message
    assert outcome.error.message.startswith("hubspot.batch_create_contacts: ")
    assert hubspot.received() == []


def test_the_same_message_again_replays_the_batch_without_a_call(
    runner: OperationRunner, hubspot: FakeHubSpot
) -> None:
    items = [contact(0), contact(1, email="not-an-address")]
    first = run(runner, items)
    again = run(runner, items)

    assert isinstance(first, Done) and isinstance(again, Done)
    assert again.result["replayed"] is True
    assert again.result["items"] == first.result["items"]
    assert len(hubspot.received()) == 1


def test_the_ledger_keeps_each_items_state_and_replay_sends_only_the_failed_ones(
    runner: OperationRunner, hubspot: FakeHubSpot
) -> None:
    hubspot.transient = {"import-1#1": 99}
    run(runner, [contact(0), contact(1), {"properties": {"email": 1}}])
    record = runner.ledger.find("hubspot", "import-1")
    assert record is not None and record.status is OperationStatus.PARTIAL and record.items is not None
    assert [(i.key, i.status) for i in record.items] == [
        ("import-1#0", "succeeded"),
        ("import-1#1", "failed"),
        ("import-1#2", "failed"),
    ]

    reset_for_replay(runner.ledger, record.id)
    hubspot.transient = {}
    outcome = run(runner, [contact(0), contact(1), {"properties": {"email": 1}}])

    assert isinstance(outcome, Done) and outcome.result["status"] == "partial"
    last = hubspot.received()[-1].json()["inputs"]
    assert [i["objectWriteTraceId"] for i in last] == ["import-1#1"]
    assert [i["status"] for i in outcome.result["items"]] == ["succeeded", "succeeded", "failed"]
    assert hubspot.created["import-1#0"] == 1


def test_a_contact_created_by_a_call_whose_answer_was_lost_is_not_created_again(
    runner: OperationRunner, hubspot: FakeHubSpot
) -> None:
    hubspot.lose_answers = 1  # HubSpot creates both contacts; the answer never arrives

    outcome = run(runner, [contact(0), contact(1)])

    assert isinstance(outcome, Done) and outcome.result["status"] == "succeeded"
    for n, item in enumerate(outcome.result["items"]):
        assert item["attempts"] == 2
        assert item["response"] == {"id": hubspot.contacts[f"person{n}@example.com"], "existing": True}
    assert sum(hubspot.created.values()) == 2


def test_a_conflict_on_the_first_attempt_is_a_failure(runner: OperationRunner, hubspot: FakeHubSpot) -> None:
    run(runner, [contact(0)], key="first-import")
    outcome = run(runner, [contact(0)], key="second-import")

    [item] = items_by_key(outcome).values()
    assert (item["status"], item["error"]["body"]["category"]) == ("failed", "CONFLICT")


def test_created_records_are_matched_by_trace_id_when_hubspot_returns_it(
    runner: OperationRunner, hubspot: FakeHubSpot
) -> None:
    hubspot.echo_trace_ids = True
    items = [{"properties": {"firstname": name}} for name in ("Ada", "Grace", "Alan")]

    outcome = run(runner, items)

    names = {key: item["response"]["properties"]["firstname"] for key, item in items_by_key(outcome).items()}
    assert names == {"import-1#0": "Ada", "import-1#1": "Grace", "import-1#2": "Alan"}


class Dies(BaseException):
    """The worker process dies: nothing after the provider call is recorded."""


class DyingLedger(Ledger):
    def finish(self, *args: Any, **kwargs: Any) -> Any:
        raise Dies


def test_the_items_of_a_lost_worker_go_again_together_under_the_same_key(
    runner: OperationRunner, hubspot: FakeHubSpot, ledger_url: str
) -> None:
    items = [contact(n) for n in range(150)]
    message = {"payload": {"items": items}, "idempotency_key": "import-1"}
    dying = DyingLedger(runner.ledger.engine, clock=runner.clock)
    with pytest.raises(Dies):
        OperationRunner(runner.provider, runner.adapter, dying, clock=runner.clock).run(
            Delivery(OPERATION, message)
        )
    record = runner.ledger.find("hubspot", "import-1")
    assert record is not None and record.items is not None
    assert {item.status for item in record.items[:100]} == {"running"}

    runner.clock.advance(runner.provider.lease_seconds + 1)  # type: ignore[attr-defined]
    outcome = run(runner, items)

    assert isinstance(outcome, Done) and outcome.result["status"] == "succeeded"
    lost, again, rest = hubspot.received()
    assert lost.json() == again.json() and len(rest.json()["inputs"]) == 50
    assert lost.header("idempotency-key") == again.header("idempotency-key")
    assert sum(hubspot.created.values()) == 150


class HoldOnce:
    """A guard that says wait to the first call it sees (as the throttle would)."""

    def __init__(self) -> None:
        self.held = False

    def admit(self, attempt: Attempt) -> Defer | None:
        if self.held:
            return None
        self.held = True
        return Defer(2.0, WaitReason.THROTTLED)

    def observe(self, attempt: Attempt, observation: Observation) -> None:
        pass

    def release(self, attempt: Attempt) -> None:
        pass


def test_a_batch_held_back_before_its_first_call_waits_in_the_ledger_then_runs(
    runner: OperationRunner, hubspot: FakeHubSpot
) -> None:
    runner = OperationRunner(
        runner.provider, runner.adapter, runner.ledger, clock=runner.clock, guards=[HoldOnce()]
    )
    message = {"payload": {"items": [contact(0), contact(1)]}, "idempotency_key": "import-1"}

    held = runner.run(Delivery(OPERATION, message))

    assert isinstance(held, Defer) and held.reason == "throttled"
    record = runner.ledger.find("hubspot", "import-1")
    assert record is not None and (record.status, record.waiting) == (OperationStatus.QUEUED, "throttled")
    assert [item.status for item in record.items or ()] == ["queued", "queued"]
    assert hubspot.received() == []
    runner.clock.advance(held.delay)  # type: ignore[attr-defined]
    assert run(runner, [contact(0), contact(1)]).result["status"] == "succeeded"  # type: ignore[union-attr]


def test_a_corrected_batch_takes_over_the_key_of_an_invalid_one(
    runner: OperationRunner, hubspot: FakeHubSpot
) -> None:
    invalid = runner.run(
        Delivery(OPERATION, {"payload": {"items": [{"properties": {}}]}, "idempotency_key": "import-1"})
    )
    assert isinstance(invalid, Failed) and invalid.error.type is ErrorType.INVALID_REQUEST

    outcome = run(runner, [contact(0)])

    assert isinstance(outcome, Done) and outcome.result["status"] == "succeeded"
    assert outcome.result["operation_id"] == invalid.operation_id
