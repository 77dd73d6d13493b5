"""The operation pipeline in one process: real ledger (both backends), real HTTP to the simulator,
an injected clock so backoff and leases are crossed without waiting."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests

from integrations.adapters.http import HttpAdapter
from integrations.errors import ErrorType, LedgerUnavailable
from integrations.ledger import schema
from integrations.ledger.engine import create_ledger_engine
from integrations.ledger.models import OperationStatus
from integrations.ledger.records import NewOperation
from integrations.ledger.store import Ledger
from integrations.message import Delivery
from integrations.outcome import Defer, Done, Failed, Outcome, Retry
from integrations.pipeline import MAX_INTERNAL_ERROR_REDELIVERIES, OperationRunner
from integrations.providers import MAX_COUNTDOWN
from integrations.resilience.idempotency import fingerprint
from integrations.testing.provider import ProviderSimulator
from tests.clock import Clock
from tests.providers import provider_settings


@pytest.fixture
def clock() -> Clock:
    return Clock()


def deliver(runner: OperationRunner, key: Any, path: str = "/charges", **kwargs: Any) -> Outcome:
    message = {"payload": {"method": "POST", "path": path, "json": {"amount": 100}}, "idempotency_key": key}
    return runner.run(Delivery("request", message | kwargs))


def test_success_returns_the_documented_result_and_records_it(
    runner: OperationRunner, simulator: ProviderSimulator
) -> None:
    outcome = deliver(runner, "order-1")
    assert isinstance(outcome, Done)
    result = outcome.result
    assert set(result) == {
        "status",
        "provider",
        "operation",
        "idempotency_key",
        "operation_id",
        "attempts",
        "replayed",
        "response",
    }
    assert result["status"] == "succeeded"
    assert (result["provider"], result["operation"], result["idempotency_key"]) == (
        "sim",
        "request",
        "order-1",
    )
    assert (result["attempts"], result["replayed"]) == (1, False)
    assert result["response"]["status_code"] == 200
    assert result["response"]["body"]["json"] == {"amount": 100}
    [call] = simulator.calls()
    assert call.headers["idempotency-key"] == "order-1"
    assert call.headers["x-request-id"]  # generated, since the caller gave none
    record = runner.ledger.find("sim", "order-1")
    assert record is not None
    assert (record.status, record.attempts, record.id) == (
        OperationStatus.SUCCEEDED,
        1,
        result["operation_id"],
    )
    assert record.response == result["response"]


def test_transient_failures_retry_with_the_same_headers_then_succeed(
    runner: OperationRunner, simulator: ProviderSimulator, clock: Clock
) -> None:
    outcomes = []
    for _ in range(3):
        outcomes.append(deliver(runner, "order-2", path="/charges?fail=2", request_id="req-abc"))
        clock.advance(2)
    assert [type(o) for o in outcomes] == [Retry, Retry, Done]
    assert all(0 <= o.delay <= 1.0 for o in outcomes[:2] if isinstance(o, Retry))
    assert isinstance(outcomes[2], Done) and outcomes[2].result["attempts"] == 3
    calls = simulator.calls(idempotency_key="order-2")
    assert [c.status for c in calls] == [503, 503, 200]
    assert {c.headers["x-request-id"] for c in calls} == {"req-abc"}


def test_generated_request_id_is_kept_across_attempts(
    runner: OperationRunner, simulator: ProviderSimulator, clock: Clock
) -> None:
    assert isinstance(deliver(runner, "order-3", path="/charges?fail=1"), Retry)
    clock.advance(2)
    assert isinstance(deliver(runner, "order-3", path="/charges?fail=1"), Done)
    assert len({c.headers["x-request-id"] for c in simulator.calls(idempotency_key="order-3")}) == 1


def test_next_attempt_is_not_made_before_it_is_due(
    runner: OperationRunner, simulator: ProviderSimulator, clock: Clock
) -> None:
    first = deliver(runner, "order-4", path="/charges?fail=1")
    assert isinstance(first, Retry)
    record = runner.ledger.find("sim", "order-4")
    assert record is not None and record.status is OperationStatus.QUEUED
    assert record.next_attempt_at is not None and record.next_attempt_at > clock.now
    assert record.error is not None and record.error["type"] == "provider_unavailable"
    early = deliver(runner, "order-4", path="/charges?fail=1")
    assert isinstance(early, Defer) and early.reason == "backoff"
    assert len(simulator.calls(idempotency_key="order-4")) == 1


def test_retries_exhausted_ends_dead_with_the_last_error(
    runner: OperationRunner, simulator: ProviderSimulator, clock: Clock
) -> None:
    outcomes = []
    for _ in range(3):
        outcomes.append(deliver(runner, "order-5", path="/charges?status=503"))
        clock.advance(2)
    assert [type(o) for o in outcomes] == [Retry, Retry, Failed]
    dead = outcomes[2]
    assert isinstance(dead, Failed) and dead.status is OperationStatus.DEAD
    assert dead.error.type is ErrorType.RETRIES_EXHAUSTED
    assert dead.error.status_code == 503 and "3 attempts" in dead.error.message
    assert dead.message.startswith("retries_exhausted: ")
    assert len(simulator.calls(idempotency_key="order-5")) == 3
    record = runner.ledger.find("sim", "order-5")
    assert record is not None and (record.status, record.attempts) == (OperationStatus.DEAD, 3)
    assert record.error is not None and record.error["body"]["error"]["status"] == 503
    # the same message again replays the outcome; the provider is not called again
    again = deliver(runner, "order-5", path="/charges?status=503")
    assert isinstance(again, Failed) and again.replayed and again.status is OperationStatus.DEAD
    assert len(simulator.calls(idempotency_key="order-5")) == 3


def test_rejection_fails_at_once_with_status_and_body(
    runner: OperationRunner, simulator: ProviderSimulator
) -> None:
    outcome = deliver(runner, "order-6", path="/charges?status=422")
    assert isinstance(outcome, Failed) and outcome.status is OperationStatus.FAILED
    assert outcome.error.type is ErrorType.PROVIDER_REJECTED
    assert outcome.error.status_code == 422
    assert outcome.error.body == {"error": {"type": "simulated", "message": "simulated 422", "status": 422}}
    assert len(simulator.calls()) == 1


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses(runner: OperationRunner, status: int) -> None:
    assert isinstance(deliver(runner, f"s-{status}", path=f"/x?fail=1&fail_status={status}"), Retry)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_rejected_statuses(runner: OperationRunner, simulator: ProviderSimulator, status: int) -> None:
    outcome = deliver(runner, f"s-{status}", path=f"/x?status={status}")
    assert isinstance(outcome, Failed) and outcome.error.type is ErrorType.PROVIDER_REJECTED
    assert len(simulator.calls()) == 1


def test_retry_after_sets_the_earliest_next_attempt(
    runner: OperationRunner, simulator: ProviderSimulator, clock: Clock
) -> None:
    start = clock.now
    first = deliver(runner, "order-7", path="/charges?fail=1&fail_status=429&retry_after=30")
    assert isinstance(first, Retry) and first.delay >= 30  # above backoff_max (1 s): the provider asked
    assert first.error.type is ErrorType.RATE_LIMITED
    record = runner.ledger.find("sim", "order-7")
    assert record is not None and record.next_attempt_at is not None
    assert record.next_attempt_at >= start + timedelta(seconds=30)
    clock.advance(29)
    assert isinstance(
        deliver(runner, "order-7", path="/charges?fail=1&fail_status=429&retry_after=30"), Defer
    )
    clock.advance(2)
    assert isinstance(deliver(runner, "order-7", path="/charges?fail=1&fail_status=429&retry_after=30"), Done)
    assert len(simulator.calls(idempotency_key="order-7")) == 2


def test_retry_after_as_http_date(runner: OperationRunner) -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    http_date = when.strftime("%a, %d %b %Y %H:%M:%S GMT").replace(" ", "%20").replace(",", "%2C")
    outcome = deliver(runner, "order-8", path=f"/c?fail=1&fail_status=503&retry_after={http_date}")
    assert isinstance(outcome, Retry) and 100 < outcome.delay <= 121


def test_a_far_retry_after_is_waited_out_in_hops(
    runner: OperationRunner, simulator: ProviderSimulator, clock: Clock
) -> None:
    path = "/charges?fail=1&fail_status=429&retry_after=2000"
    first = deliver(runner, "order-9", path=path)
    assert isinstance(first, Retry) and first.delay == MAX_COUNTDOWN
    clock.advance(MAX_COUNTDOWN)
    hop = deliver(runner, "order-9", path=path)
    assert isinstance(hop, Defer) and hop.reason == "backoff" and hop.delay == MAX_COUNTDOWN
    clock.advance(MAX_COUNTDOWN)
    last_hop = deliver(runner, "order-9", path=path)
    assert isinstance(last_hop, Defer) and last_hop.delay == pytest.approx(2000 - 2 * MAX_COUNTDOWN, abs=1)
    assert len(simulator.calls(idempotency_key="order-9")) == 1
    clock.advance(last_hop.delay)
    assert isinstance(deliver(runner, "order-9", path=path), Done)


def test_same_key_and_payload_after_success_replays_without_a_call(
    runner: OperationRunner, simulator: ProviderSimulator
) -> None:
    first = deliver(runner, "order-10")
    second = deliver(runner, "order-10")
    assert isinstance(first, Done) and isinstance(second, Done)
    assert second.result["replayed"] is True
    assert second.result["operation_id"] == first.result["operation_id"]
    assert second.result["response"] == first.result["response"]
    assert len(simulator.calls()) == 1


def test_same_key_other_payload_is_a_conflict(runner: OperationRunner, simulator: ProviderSimulator) -> None:
    assert isinstance(deliver(runner, "order-11"), Done)
    other = runner.run(
        Delivery(
            "request", {"payload": {"method": "POST", "path": "/refunds"}, "idempotency_key": "order-11"}
        )
    )
    assert isinstance(other, Failed) and other.error.type is ErrorType.IDEMPOTENCY_CONFLICT
    assert "order-11" in other.error.message and "new key" in other.error.message
    assert len(simulator.calls()) == 1
    record = runner.ledger.find("sim", "order-11")
    assert record is not None and record.status is OperationStatus.SUCCEEDED


@pytest.mark.parametrize(
    ("kwargs", "args", "expected"),
    [
        ({"payload": {"method": "GET", "path": "/x"}}, (), "idempotency_key: Field required"),
        ({"payload": {"method": "GET", "path": "/x"}, "idempotency_key": ""}, (), "idempotency_key"),
        ({"payload": {"method": "GET", "path": "/x"}, "idempotency_key": "k" * 256}, (), "idempotency_key"),
        ({"payload": {"method": "GET", "path": "/x"}, "idempotency_key": "a\nb"}, (), "printable"),
        ({"payload": {"method": "GET", "path": "/x"}, "idempotency_key": 42}, (), "idempotency_key"),
        ({"payload": "GET /x", "idempotency_key": "k-1"}, (), "payload"),
        ({"payload": {"method": "GET", "path": "/x"}, "idempotency_key": "k-2", "secret": "x"}, (), "secret"),
        ({"payload": {"method": "GET"}, "idempotency_key": "k-3"}, (), "payload.path"),
        (
            {
                "payload": {"method": "GET", "path": "/x", "headers": {"Authorization": "Bearer x"}},
                "idempotency_key": "k-4",
            },
            (),
            "credentials",
        ),
        ({}, ({"method": "GET", "path": "/x"},), "positional"),
    ],
)
def test_invalid_messages_fail_at_once_recorded_and_uncalled(
    runner: OperationRunner,
    simulator: ProviderSimulator,
    kwargs: dict[str, Any],
    args: tuple[Any, ...],
    expected: str,
) -> None:
    outcome = runner.run(Delivery("request", kwargs, args))
    assert isinstance(outcome, Failed) and outcome.error.type is ErrorType.INVALID_REQUEST
    assert expected in outcome.error.message and "sim.request" in outcome.error.message
    assert simulator.calls() == []
    assert outcome.operation_id is not None
    record = runner.ledger.get(outcome.operation_id)
    assert record is not None and record.status is OperationStatus.FAILED
    assert record.error is not None and record.error["type"] == "invalid_request"


def test_a_fixed_payload_may_reuse_the_key_of_an_invalid_one(
    runner: OperationRunner, simulator: ProviderSimulator
) -> None:
    bad = runner.run(Delivery("request", {"payload": {"method": "POST"}, "idempotency_key": "order-12"}))
    assert isinstance(bad, Failed)
    good = deliver(runner, "order-12")
    assert isinstance(good, Done) and good.result["attempts"] == 1
    assert good.result["operation_id"] == bad.operation_id
    assert len(simulator.calls()) == 1


def test_an_attempt_in_flight_makes_duplicates_wait_then_a_lost_lease_is_taken_over(
    runner: OperationRunner, simulator: ProviderSimulator, clock: Clock
) -> None:
    payload = {"method": "POST", "path": "/charges", "json": {"amount": 100}}
    held = runner.ledger.start(
        NewOperation("sim", "request", "order-13", fingerprint("request", payload), payload, "r-1"),
        lease=timedelta(seconds=runner.provider.lease_seconds),
    )
    assert held is not None  # another worker's attempt, which then dies
    waiting = deliver(runner, "order-13")
    assert isinstance(waiting, Defer) and waiting.reason == "in_flight"
    assert simulator.calls() == []
    clock.advance(runner.provider.lease_seconds + 1)
    done = deliver(runner, "order-13")
    assert isinstance(done, Done) and done.result["attempts"] == 2
    assert [c.headers["x-request-id"] for c in simulator.calls()] == ["r-1"]


def test_concurrent_duplicates_make_one_call(runner: OperationRunner, simulator: ProviderSimulator) -> None:
    barrier = threading.Barrier(8)
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def send() -> None:
        barrier.wait()
        outcome = deliver(runner, "order-14", path="/charges?delay=0.3")
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(simulator.calls(idempotency_key="order-14")) == 1
    assert sum(isinstance(o, Done) for o in outcomes) == 1
    assert all(isinstance(o, Defer) and o.reason == "in_flight" for o in outcomes if not isinstance(o, Done))


def test_an_unmigrated_ledger_defers_without_calling(
    tmp_path: Any, simulator: ProviderSimulator, clock: Clock
) -> None:
    provider = provider_settings(base_url=simulator.url)
    ledger = Ledger.connect(f"sqlite:///{tmp_path / 'empty.sqlite3'}", clock=clock)
    runner = OperationRunner(provider, HttpAdapter(provider, requests.Session()), ledger, clock=clock)
    outcome = deliver(runner, "order-15")
    assert isinstance(outcome, Defer) and outcome.reason == "ledger_unavailable"
    assert simulator.calls() == []


def test_a_refused_credential_is_not_kept_in_the_ledger(
    runner: OperationRunner, simulator: ProviderSimulator
) -> None:
    canary = "sk_live_canary_7f3a9"
    payload = {"method": "POST", "path": "/x", "headers": {"X-Api-Key": canary, "Accept": "application/json"}}
    outcome = runner.run(Delivery("request", {"payload": payload, "idempotency_key": "order-16"}))
    assert isinstance(outcome, Failed) and outcome.error.type is ErrorType.INVALID_REQUEST
    assert canary not in outcome.message
    record = runner.ledger.find("sim", "order-16")
    assert record is not None
    assert record.payload["headers"] == {"X-Api-Key": "[redacted]", "Accept": "application/json"}
    assert canary not in json.dumps(record.to_json(), default=str)
    assert simulator.calls() == []


def test_a_payload_with_a_nul_character_is_refused(
    runner: OperationRunner, simulator: ProviderSimulator
) -> None:
    payload = {"method": "POST", "path": "/x", "json": {"name": "a\x00b"}}
    outcome = runner.run(Delivery("request", {"payload": payload, "idempotency_key": "order-18"}))
    assert isinstance(outcome, Failed) and outcome.error.type is ErrorType.INVALID_REQUEST
    assert "NUL" in outcome.error.message
    assert simulator.calls() == []


def compact_size(payload: Any) -> int:
    """A payload's size as the limit counts it: compact JSON in UTF-8."""
    return len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())


def test_a_payload_at_the_size_limit_is_sent(runner: OperationRunner, simulator: ProviderSimulator) -> None:
    assert runner.provider.max_payload_bytes == 1024 * 1024  # the default
    payload: dict[str, Any] = {"method": "POST", "path": "/charges", "json": ""}
    payload["json"] = "x" * (1024 * 1024 - compact_size(payload))
    assert compact_size(payload) == 1024 * 1024
    outcome = runner.run(Delivery("request", {"payload": payload, "idempotency_key": "order-30"}))
    assert isinstance(outcome, Done)
    assert len(simulator.calls()) == 1


def test_a_payload_over_the_size_limit_is_refused_by_name_and_only_noted_in_the_ledger(
    runner: OperationRunner, simulator: ProviderSimulator
) -> None:
    payload: dict[str, Any] = {"method": "POST", "path": "/charges", "json": ""}
    payload["json"] = "x" * (1024 * 1024 + 1 - compact_size(payload))
    outcome = runner.run(Delivery("request", {"payload": payload, "idempotency_key": "order-31"}))
    assert isinstance(outcome, Failed) and outcome.error.type is ErrorType.INVALID_REQUEST
    assert outcome.error.message == (
        "sim.request: payload is 1,048,577 bytes as compact JSON, over the limit of 1,048,576; send a "
        "smaller payload, or raise max_payload_bytes in [providers.sim] of the providers file"
    )
    assert simulator.calls() == []
    record = runner.ledger.find("sim", "order-31")
    assert record is not None and record.status is OperationStatus.FAILED
    # The row keeps why, not the megabyte: a payload of 50 MB would otherwise be a row of 50 MB.
    assert record.payload == {"not_kept": outcome.error.message.removeprefix("sim.request: ")}
    assert compact_size(record.payload) < 300
    # The key is not bound: the payload cut down goes through under it.
    payload["json"] = "x"
    assert isinstance(
        runner.run(Delivery("request", {"payload": payload, "idempotency_key": "order-31"})), Done
    )


def test_the_size_limit_is_the_providers_and_counts_utf8_bytes(
    tmp_path: Any, simulator: ProviderSimulator, clock: Clock
) -> None:
    provider = provider_settings(base_url=simulator.url, max_payload_bytes=100)
    url = f"sqlite:///{tmp_path / 'small.sqlite3'}"
    schema.upgrade(url)
    runner = OperationRunner(
        provider, HttpAdapter(provider, requests.Session()), Ledger.connect(url), clock=clock
    )
    payload: dict[str, Any] = {"method": "POST", "path": "/charges", "json": ""}
    payload["json"] = "é" * ((100 - compact_size(payload)) // 2)  # two bytes each
    assert compact_size(payload) in (99, 100)
    assert isinstance(runner.run(Delivery("request", {"payload": payload, "idempotency_key": "k-1"})), Done)
    payload["json"] += "é"
    outcome = runner.run(Delivery("request", {"payload": payload, "idempotency_key": "k-2"}))
    assert isinstance(outcome, Failed) and outcome.error.type is ErrorType.INVALID_REQUEST
    assert "over the limit of 100;" in outcome.error.message
    assert len(simulator.calls()) == 1


def nested(depth: int) -> Any:
    """A list ``depth`` levels deep."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (float("nan"), "payload.json: nan is not a JSON number"),
        ({"amount": float("inf")}, "payload.json.amount: inf is not a JSON number"),
        ({"amount": Decimal("1.5")}, "payload.json.amount: a Decimal is not JSON"),
        ([datetime(2026, 1, 1, tzinfo=UTC)], "payload.json.0: a datetime is not JSON"),
        ({"tags": frozenset({"a"})}, "payload.json.tags: a frozenset is not JSON"),
        ({1: "a", "b": 2}, "payload.json: key 1 is a int; JSON object keys are strings"),
        (10**5000, "payload.json: an integer too long to write as JSON"),
        ({"name": "\ud800"}, "payload.json.name: contains a lone surrogate"),
        ({"\udfff": 1}, "payload.json key '\\udfff': contains a lone surrogate"),
        (("a\x00",), "payload.json.0: contains a NUL character"),
        (nested(101), "nested more than 100 levels deep"),
        (nested(5000), "nested more than 100 levels deep"),
    ],
    ids=[
        "nan",
        "inf",
        "decimal",
        "datetime",
        "frozenset",
        "int-key",
        "long-int",
        "surrogate",
        "surrogate-key",
        "nul-in-tuple",
        "deep",
        "very-deep",
    ],
)
def test_a_payload_that_is_not_json_is_refused_by_path_and_not_retried(
    runner: OperationRunner, simulator: ProviderSimulator, body: Any, expected: str
) -> None:
    payload = {"method": "POST", "path": "/charges", "json": body}
    outcome = runner.run(Delivery("request", {"payload": payload, "idempotency_key": "order-32"}))
    assert isinstance(outcome, Failed) and outcome.error.type is ErrorType.INVALID_REQUEST
    assert outcome.error.message.startswith("sim.request: ") and expected in outcome.error.message
    assert simulator.calls() == []
    record = runner.ledger.find("sim", "order-32")
    assert record is not None and record.error is not None and record.error["type"] == "invalid_request"
    assert set(record.payload) == {"not_kept"} and expected in record.payload["not_kept"]  # noted, not kept


@pytest.mark.parametrize("kwargs", [None, [("payload", {})], "payload", 42])
def test_kwargs_that_are_no_mapping_are_an_invalid_request(
    runner: OperationRunner, simulator: ProviderSimulator, kwargs: Any
) -> None:
    outcome = runner.run(Delivery("request", kwargs))
    assert isinstance(outcome, Failed) and outcome.error.type is ErrorType.INVALID_REQUEST
    assert f"the message's kwargs are {type(kwargs).__name__}, not a mapping" in outcome.error.message
    assert outcome.operation_id is not None and runner.ledger.get(outcome.operation_id) is not None
    assert simulator.calls() == []


@pytest.mark.parametrize("field", ["idempotency_key", "request_id"])
def test_a_key_or_request_id_beyond_latin_1_is_refused_as_it_travels_as_a_header(
    runner: OperationRunner, simulator: ProviderSimulator, field: str
) -> None:
    message = {"payload": {"method": "POST", "path": "/charges"}, "idempotency_key": "order-33", field: "ĀB"}
    outcome = runner.run(Delivery("request", message))
    assert isinstance(outcome, Failed) and outcome.error.type is ErrorType.INVALID_REQUEST
    assert f"{field}: Value error, must contain Latin-1 characters only" in outcome.error.message
    assert simulator.calls() == []


def test_an_unprintable_request_id_of_an_invalid_message_is_not_kept(runner: OperationRunner) -> None:
    message = {"payload": {"method": "POST"}, "idempotency_key": "order-34", "request_id": "\ud800"}
    outcome = runner.run(Delivery("request", message))
    assert isinstance(outcome, Failed) and outcome.error.type is ErrorType.INVALID_REQUEST
    record = runner.ledger.find("sim", "order-34")
    assert record is not None and record.request_id is None


def test_the_reason_for_refusing_a_huge_field_name_is_cut(runner: OperationRunner) -> None:
    payload = {"method": "POST", "path": "/charges", "k" * 100_000: 1}
    outcome = runner.run(Delivery("request", {"payload": payload, "idempotency_key": "order-35"}))
    assert isinstance(outcome, Failed) and outcome.error.type is ErrorType.INVALID_REQUEST
    assert len(outcome.error.message) < 2100 and outcome.error.message.endswith(" more characters)")
    record = runner.ledger.find("sim", "order-35")
    assert record is not None and record.error is not None
    assert record.error["message"] == outcome.error.message


def test_a_lost_last_attempt_ends_dead_without_another_call(
    runner: OperationRunner, simulator: ProviderSimulator, clock: Clock
) -> None:
    for _ in range(2):
        assert isinstance(deliver(runner, "order-19", path="/charges?status=503"), Retry)
        clock.advance(2)
    record = runner.ledger.find("sim", "order-19")
    assert record is not None
    lease = timedelta(seconds=runner.provider.lease_seconds)
    last = runner.ledger.claim(record, lease=lease, request_id=record.request_id or "r")
    assert last is not None and last.attempts == 3  # the third and last attempt, whose worker then dies
    clock.advance(runner.provider.lease_seconds + 1)
    outcome = deliver(runner, "order-19", path="/charges?status=503")
    assert isinstance(outcome, Failed) and outcome.status is OperationStatus.DEAD
    assert outcome.error.type is ErrorType.RETRIES_EXHAUSTED and "was lost" in outcome.error.message
    assert len(simulator.calls(idempotency_key="order-19")) == 2


class BrokenLedger(Ledger):
    """A ledger with a bug in it: the real thing cannot be made to have one on purpose."""

    def take(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    def find(self, provider: str, idempotency_key: str) -> Any:
        raise RuntimeError("a bug")


def test_an_internal_error_puts_the_message_back_a_few_times_then_fails_it(
    ledger_url: str, simulator: ProviderSimulator, clock: Clock
) -> None:
    provider = provider_settings(base_url=simulator.url)
    broken = BrokenLedger(create_ledger_engine(ledger_url), clock=clock)
    runner = OperationRunner(provider, HttpAdapter(provider, requests.Session()), broken, clock=clock)
    message = {"payload": {"method": "POST", "path": "/x"}, "idempotency_key": "order-20"}
    early = runner.run(Delivery("request", message, redeliveries=0))
    assert isinstance(early, Defer) and early.reason == "internal_error"
    late = runner.run(Delivery("request", message, redeliveries=MAX_INTERNAL_ERROR_REDELIVERIES))
    assert isinstance(late, Failed) and late.error.type is ErrorType.INTERNAL_ERROR
    assert "RuntimeError" in late.error.message and "worker's log" in late.error.message
    assert simulator.calls() == []
    broken.dispose()


class BrokenClaim(Ledger):
    """A ledger whose claim has a bug: the row is found, and the next attempt cannot start."""

    def take(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    def claim(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")


def test_an_operation_given_up_for_internal_errors_is_recorded_as_a_dead_letter(
    runner: OperationRunner, ledger_url: str, clock: Clock
) -> None:
    first = deliver(runner, "order-21", path="/charges?status=503")
    assert isinstance(first, Retry)
    clock.advance(first.delay)
    broken = BrokenClaim(create_ledger_engine(ledger_url), clock=clock)
    message = {"payload": {"method": "POST", "path": "/charges?status=503", "json": {"amount": 100}}}
    late = OperationRunner(runner.provider, runner.adapter, broken, clock=clock).run(
        Delivery(
            "request", message | {"idempotency_key": "order-21"}, redeliveries=MAX_INTERNAL_ERROR_REDELIVERIES
        )
    )

    assert isinstance(late, Failed) and late.error.type is ErrorType.INTERNAL_ERROR
    record = runner.ledger.find("sim", "order-21")
    assert record is not None and late.operation_id == record.id
    assert record.status is OperationStatus.FAILED and record.error == late.error.model_dump(mode="json")
    assert [letter.id for letter in runner.ledger.dead_letters("sim")] == [record.id]
    broken.dispose()


def test_the_ledger_keeps_the_task_id_of_the_message_that_brought_the_operation(
    runner: OperationRunner,
) -> None:
    message = {
        "payload": {"method": "POST", "path": "/charges", "json": {"amount": 100}},
        "idempotency_key": "t-1",
    }
    assert isinstance(runner.run(Delivery("request", message, message_id="task-first")), Done)
    again = runner.run(Delivery("request", message, message_id="task-second"))  # the same key, sent again

    assert isinstance(again, Done) and again.result["replayed"] is True
    record = runner.ledger.find("sim", "t-1")
    assert record is not None and record.task_id == "task-first"


class FinishAfterARestart(Ledger):
    """A ledger whose database restarts just as attempts end: the first writes of an outcome fail."""

    failures = 2

    def finish(self, *args: Any, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise LedgerUnavailable("ledger at test: OperationalError: the database system is shutting down")
        return super().finish(*args, **kwargs)


def test_an_outcome_the_ledger_cannot_take_at_once_is_written_again_without_a_second_call(
    runner: OperationRunner, ledger_url: str, simulator: ProviderSimulator, clock: Clock
) -> None:
    restarting = FinishAfterARestart(create_ledger_engine(ledger_url), clock=clock)
    slept: list[float] = []
    patient = OperationRunner(runner.provider, runner.adapter, restarting, clock=clock, sleep=slept.append)

    outcome = patient.run(
        Delivery("request", {"payload": {"method": "POST", "path": "/x"}, "idempotency_key": "r-1"})
    )

    assert isinstance(outcome, Done) and outcome.result["status"] == "succeeded"
    assert slept == [0.25, 0.5] and len(simulator.calls(idempotency_key="r-1")) == 1
    restarting.dispose()


def test_an_outcome_is_not_held_past_the_attempts_lease(
    runner: OperationRunner, ledger_url: str, simulator: ProviderSimulator, clock: Clock
) -> None:
    down = FinishAfterARestart(create_ledger_engine(ledger_url), clock=clock)
    down.failures = 1000  # it does not come back
    patient = OperationRunner(runner.provider, runner.adapter, down, clock=clock, sleep=clock.advance)

    outcome = patient.run(
        Delivery("request", {"payload": {"method": "POST", "path": "/x"}, "idempotency_key": "r-2"})
    )

    assert isinstance(outcome, Defer) and outcome.reason == "ledger_unavailable"  # the message comes back
    assert len(simulator.calls(idempotency_key="r-2")) == 1
    down.dispose()
