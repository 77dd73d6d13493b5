"""`integrations events list|show` against a real ledger (SQLite and PostgreSQL): plain lines that keep
every field whole, filters, the body as received only in `show`, and clear errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from integrations.errors import ErrorInfo, ErrorType
from integrations.ledger.engine import create_ledger_engine
from integrations.webhooks.store import EventRecord, EventStatus, EventStore, Relation
from tests.clock import Clock
from tests.integration.conftest import Operate, operator_cli

BODY = b'{"id": "evt_1",  "type": "payment_intent.succeeded", "data": {"name": "Zo\xc3\xab"}}\n'
# Longer than a terminal line on its own: it must come out whole.
LONG_ID = "evt_" + "9" * 120


@pytest.fixture
def operate(ledger_url: str, redis_url: str, tmp_path: Path) -> Operate:
    providers = tmp_path / "providers.toml"
    providers.write_text('[providers.acme]\nadapter = "http"\nbase_url = "https://a.example"\n')
    return operator_cli(ledger_url, redis_url, providers)


@pytest.fixture
def clock() -> Clock:
    # Recent, so that `--since 2h` reaches the newest events and not the oldest.
    return Clock(datetime.now(UTC) - timedelta(hours=3))


@pytest.fixture
def store(ledger_url: str, clock: Clock) -> Iterator[EventStore]:
    store = EventStore(create_ledger_engine(ledger_url), clock=clock)
    yield store
    store.dispose()


@pytest.fixture
def three(store: EventStore, clock: Clock) -> list[EventRecord]:
    """A stripe event handled for an operation (3 h ago), a hubspot one that failed (2 h 50 m ago), and a
    stripe one still received with a long id (the newest, 1 h ago)."""
    handled, _ = store.store("stripe", "evt_1", "payment_intent.succeeded", BODY)
    store.mark(handled.id, EventStatus.HANDLED, operation_id="op-42", relation=Relation.CONFIRMS)
    clock.advance(600)
    failed, _ = store.store("hubspot", "88", "contact.merged", b"[]")
    error = ErrorInfo(type=ErrorType.CONTRACT_VIOLATION, message="hubspot.handle_event: no contact id")
    store.mark(failed.id, EventStatus.FAILED, error=error)
    clock.advance(6600)
    received, _ = store.store("stripe", LONG_ID, "invoice.paid", b"{}")
    return [handled, failed, received]


def test_list_prints_one_plain_line_per_event_newest_first(
    operate: Operate, three: list[EventRecord]
) -> None:
    handled, failed, received = three

    result = operate("events", "list")

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith(f"{received.id}  received  stripe  invoice.paid  event={LONG_ID}  attempts=0")
    assert lines[1].startswith(f"{failed.id}  failed  hubspot  contact.merged  event=88  attempts=1")
    assert lines[2] == "    contract_violation: hubspot.handle_event: no contact id"
    assert lines[3].startswith(f"{handled.id}  handled  stripe  payment_intent.succeeded  event=evt_1")
    assert lines[4] == "    confirms operation op-42"
    assert lines[5] == "3 event(s)"
    assert "Zo" not in result.output  # bodies only in `show`


def test_list_filters(operate: Operate, three: list[EventRecord]) -> None:
    handled, failed, received = three

    def listed(*args: str) -> list[str]:
        result = operate("events", "list", "--json", *args)
        assert result.exit_code == 0, result.output
        return [event["id"] for event in json.loads(result.output)]

    assert listed("--provider", "stripe") == [received.id, handled.id]
    assert listed("--type", "contact.merged") == [failed.id]
    assert listed("--status", "handled") == [handled.id]
    assert listed("--since", "2h") == [received.id]
    assert listed("--limit", "1") == [received.id]
    [as_json] = json.loads(operate("events", "list", "--json", "--status", "handled").output)
    assert as_json["operation_id"] == "op-42" and as_json["relation"] == "confirms"
    assert "body" not in as_json and "body_base64" not in as_json


def test_a_status_that_does_not_exist_is_refused_with_the_choices(operate: Operate) -> None:
    result = operate("events", "list", "--status", "done")

    assert result.exit_code == 2
    assert "'received', 'handled', 'unhandled', 'failed', 'dead'" in result.output


def test_show_prints_the_event_and_its_body_as_received(operate: Operate, three: list[EventRecord]) -> None:
    handled = three[0]

    by_id = operate("events", "show", handled.id)
    by_provider = operate("events", "show", "evt_1", "--provider", "stripe")
    by_both = operate("events", "show", "stripe", "evt_1")

    assert by_id.exit_code == 0, by_id.output
    assert by_id.output == by_provider.output == by_both.output
    assert f"id: {handled.id}\n" in by_id.output
    assert "operation_id: op-42\n" in by_id.output and "relation: confirms\n" in by_id.output
    assert by_id.output.endswith(f"body ({len(BODY)} bytes, as received):\n{BODY.decode()}\n")


def test_show_json_has_the_body_as_text_or_else_as_base64(operate: Operate, store: EventStore) -> None:
    text, _ = store.store("stripe", "evt_text", "invoice.paid", BODY)
    binary, _ = store.store("stripe", "evt_bin", "invoice.paid", b"\xff\xfe{}")

    shown = json.loads(operate("events", "show", text.id, "--json").output)
    shown_binary = json.loads(operate("events", "show", binary.id, "--json").output)
    plain_binary = operate("events", "show", binary.id)

    assert shown["body"] == BODY.decode() and shown["event_id"] == "evt_text"
    assert shown_binary["body_base64"] == "//57fQ=="
    assert plain_binary.output.endswith("body (4 bytes, not UTF-8; `--json` gives it as base64)\n")


def test_show_of_an_unknown_event_says_how_to_name_one(operate: Operate) -> None:
    unknown = operate("events", "show", "evt_404")
    unknown_of_provider = operate("events", "show", "evt_404", "--provider", "stripe")
    too_many = operate("events", "show", "a", "b", "c")

    assert unknown.exit_code == 1
    assert "no event with id 'evt_404'" in unknown.output
    assert "integrations events show evt_404 --provider PROVIDER" in unknown.output
    assert unknown_of_provider.exit_code == 1
    assert "no event 'evt_404' of provider 'stripe'" in unknown_of_provider.output
    assert too_many.exit_code == 2 and "name one event" in too_many.output
