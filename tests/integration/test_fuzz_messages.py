"""Messages of every shape through the real pipeline (ledger on both backends, HTTP to the simulator): each
ends in an ``Outcome``; a bad one fails at once as ``invalid_request``, recorded in the ledger, with no call
to the provider and nothing retried."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete

from integrations.adapters.http import HttpAdapter
from integrations.errors import ErrorType
from integrations.ledger.models import Operation, OperationStatus
from integrations.ledger.store import Ledger
from integrations.message import MAX_INVALID_MESSAGE, Delivery
from integrations.outcome import Done, Failed, Outcome
from integrations.pipeline import OperationRunner
from integrations.testing.provider import ProviderSimulator
from tests.clock import Clock
from tests.providers import provider_settings

FUZZ = settings(
    max_examples=60,
    deadline=None,
    database=None,  # no example database in the work tree
    # One runner serves every example of a test; each example starts from an empty ledger and call log.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
LIMIT = 1024 * 1024  # the default max_payload_bytes
# Query parameters the simulator reads as a script (fail, answer slowly, ...): a valid message must not
# ask for anything but a plain 200.
SCRIPT_WORDS = {"cut", "delay", "drop", "fail", "fail_status", "limit", "limit_window", "ok_status"}
SCRIPT_WORDS |= {"retry_after", "status", "text", "trickle"}


@pytest.fixture
def runner(ledger_url: str, simulator: ProviderSimulator) -> Iterator[OperationRunner]:
    provider = provider_settings(base_url=simulator.url, timeout=5.0)
    session = requests.Session()
    clock = Clock()
    ledger = Ledger.connect(ledger_url, clock=clock)
    yield OperationRunner(provider, HttpAdapter(provider, session), ledger, clock=clock)
    session.close()
    ledger.dispose()


# -- what goes into a message ----------------------------------------------------------------------

# Text of any code point: control characters, NUL, lone surrogates, the unassigned, very long.
any_text = (
    st.text(st.characters(exclude_categories=()), max_size=12)
    | st.sampled_from(["", "\x00", "\ud800", "\udfff", "a\nb", "\u2028", "\x85", "é" * 300, "key\x7f"])
    | st.integers(250, 70_000).map(lambda n: "k" * n)
)
numbers = (
    st.integers()
    | st.integers(min_value=10**300, max_value=10**5000)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324])
)
json_scalars = st.none() | st.booleans() | numbers | any_text
# What a broker's serializer may hand over besides JSON (kombu's JSON revives dates, decimals and UUIDs).
not_json = (
    st.binary(max_size=8)
    | st.datetimes(timezones=st.just(UTC))
    | st.decimals(allow_nan=True)
    | st.uuids()
    | st.frozensets(st.integers(), max_size=3)
    | st.complex_numbers(max_magnitude=10)
    | st.builds(object)
)
# Dictionary keys a JSON object cannot have, and the ones it can.
keys = any_text | st.integers() | st.none() | st.booleans() | st.tuples(st.integers())
values = st.recursive(
    json_scalars | not_json,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(any_text, inner, max_size=4)
        | st.dictionaries(keys, inner, max_size=3)
    ),
    max_leaves=15,
)


def nested(depth: int, shape: str) -> Any:
    """A value ``depth`` levels deep, built without recursion."""
    value: Any = 1
    for _ in range(depth):
        value = [value] if shape == "list" else {"a": value}
    return value


deep = st.builds(nested, st.integers(1, 5000), st.sampled_from(["list", "dict"]))
huge = (
    st.integers(LIMIT - 64, LIMIT + 64).map(lambda n: "x" * n)
    | st.integers(0, 4 * LIMIT).map(lambda n: "é" * (n // 2))
    | st.integers(0, LIMIT // 2).map(lambda n: [0] * n)
    | st.integers(0, 2000).map(lambda n: {f"k{i}": "v" * 600 for i in range(n)})
)
bodies = values | deep | huge
json_bodies = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=15,
)

paths = (
    st.sampled_from(["/charges", "/v1/orders/ü", "/a/../b", "charges", "/a b", "http://evil.example/x"])
    | st.text(st.characters(exclude_categories=()), max_size=12).map(lambda p: "/" + p)
    | any_text
    | values
).filter(lambda path: not (isinstance(path, str) and ("?" in path or "#" in path)))
# Header values are Latin-1 text, control characters and all: what lies beyond Latin-1 is
# test_a_header_value_beyond_latin_1_is_an_invalid_request's.
header_values = st.text(st.characters(max_codepoint=0xFF), max_size=12)
# Each part of the http adapter's payload: values it takes, and values it does not.
PARTS: dict[str, st.SearchStrategy[Any]] = {
    "method": st.sampled_from(["POST", "get", "PUT", "DELETE", "FETCH", ""]) | values,
    "path": paths,
    "json": json_bodies | bodies,
    "params": st.dictionaries(
        any_text.filter(lambda name: name not in SCRIPT_WORDS),
        st.text() | st.integers() | st.lists(st.text(), max_size=2) | values,
        max_size=3,
    )
    | values,
    "headers": st.dictionaries(any_text | st.sampled_from(["X-Note", "Accept"]), header_values, max_size=3)
    | st.sampled_from([{"Authorization": "Bearer x"}, {"Idempotency-Key": "other"}])
    | values,
}


@st.composite
def payloads(draw: st.DrawFn) -> Any:
    """A payload: mostly a valid request with a part or two made anything, sometimes anything at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(values | st.dictionaries(any_text, values, max_size=4))
    payload: dict[str, Any] = {"method": "POST", "path": "/charges", "json": {"amount": 100}}
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        part = draw(st.sampled_from(sorted(PARTS)) | any_text)
        payload[part] = draw(PARTS.get(part, values))
    if draw(st.integers(0, 7)) == 0:
        del payload[draw(st.sampled_from(sorted(payload)))]
    return payload


valid_keys = st.uuids().map(str)  # unique, so no example finds the row of another


@st.composite
def kwargs(draw: st.DrawFn) -> Any:
    """A message's kwargs: mostly the contract's three keys with any values, some extra keys, or none."""
    shape = draw(st.integers(0, 9))
    if shape == 0:
        return draw(values)  # not a mapping at all, or a mapping of anything
    message: dict[Any, Any] = {"payload": draw(payloads())}
    if draw(st.integers(0, 9)):
        message["idempotency_key"] = draw(valid_keys) if draw(st.integers(0, 2)) else draw(any_text | values)
    if draw(st.booleans()):
        message["request_id"] = draw(valid_keys) if draw(st.booleans()) else draw(any_text | values)
    if shape == 1:
        message.update(draw(st.dictionaries(keys, values, min_size=1, max_size=2)))
    return message


# -- the property ----------------------------------------------------------------------------------


def check(runner: OperationRunner, simulator: ProviderSimulator, delivery: Delivery) -> Outcome:
    """One delivery from a clean slate: a message ends done after one call, or failed as invalid at
    once, recorded, uncalled; never put back for another try."""
    with runner.ledger.engine.begin() as connection:
        connection.execute(delete(Operation))
    simulator.reset()

    outcome = runner.run(delivery)
    if currently_in_test_context():  # pytest --hypothesis-show-statistics counts the outcomes
        event(f"outcome: {type(outcome).__name__}")

    if isinstance(outcome, Done):
        assert len(simulator.calls()) == 1
        assert outcome.result["status"] == "succeeded"
        return outcome
    assert isinstance(outcome, Failed), outcome
    assert outcome.error.type is ErrorType.INVALID_REQUEST, outcome.error
    assert outcome.status is OperationStatus.FAILED and not outcome.replayed
    message = outcome.error.message
    assert message.startswith("sim.request: ") and len(message) < MAX_INVALID_MESSAGE + 40, message[:3000]
    assert simulator.calls() == []
    assert outcome.operation_id is not None
    record = runner.ledger.get(outcome.operation_id)
    assert record is not None and record.status is OperationStatus.FAILED
    assert record.error is not None and record.error["type"] == "invalid_request"
    assert len(json.dumps(record.payload, separators=(",", ":"), ensure_ascii=False).encode()) <= LIMIT
    return outcome


@FUZZ
@given(message=kwargs())
def test_any_kwargs_end_done_or_invalid_and_recorded(
    runner: OperationRunner, simulator: ProviderSimulator, message: Any
) -> None:
    check(runner, simulator, Delivery("request", message))


@FUZZ
@given(
    body=bodies,
    key=valid_keys | any_text,
    request_id=st.none() | valid_keys | any_text,
)
def test_any_body_keys_and_request_ids_end_done_or_invalid_and_recorded(
    runner: OperationRunner, simulator: ProviderSimulator, body: Any, key: str, request_id: str | None
) -> None:
    message: dict[str, Any] = {
        "payload": {"method": "POST", "path": "/charges", "json": body},
        "idempotency_key": key,
    }
    if request_id is not None:
        message["request_id"] = request_id
    check(runner, simulator, Delivery("request", message))


@FUZZ
@given(args=st.lists(values, min_size=1, max_size=2).map(tuple), message=kwargs())
def test_positional_arguments_end_invalid_and_recorded(
    runner: OperationRunner, simulator: ProviderSimulator, args: tuple[Any, ...], message: Any
) -> None:
    assert isinstance(check(runner, simulator, Delivery("request", message, args)), Failed)


def test_a_valid_message_goes_through_the_same_check(
    runner: OperationRunner, simulator: ProviderSimulator
) -> None:
    """The property's other branch: a message the contract takes is sent once and succeeds."""
    payload = {"method": "POST", "path": "/charges", "json": {"when": datetime.now(UTC).isoformat()}}
    message = {"payload": payload, "idempotency_key": str(uuid.uuid4()), "request_id": "r-1"}
    assert isinstance(check(runner, simulator, Delivery("request", message)), Done)
    assert simulator.calls()[0].headers["x-request-id"] == "r-1"


def test_a_header_value_beyond_latin_1_is_an_invalid_request(
    runner: OperationRunner, simulator: ProviderSimulator
) -> None:
    payload = {"method": "POST", "path": "/charges", "headers": {"X-Note": "Ā"}}
    outcome = check(runner, simulator, Delivery("request", {"payload": payload, "idempotency_key": "k-1"}))
    assert (
        isinstance(outcome, Failed)
        and "X-Note" in outcome.error.message
        and "Latin-1" in outcome.error.message
    )
