"""Finding and fixing operations from the CLI, against a real ledger (SQLite and PostgreSQL), the real
pipeline calling the provider simulator, and real Redis: `ops show` by id, task id or key with the history
of the attempts, `ops list`, `ops conflicts`, `dlq replay` by filter, `dlq discard`, `audit list`."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from integrations.cli import OperatorContext, build_cli
from integrations.cli.audit import default_actor
from integrations.errors import ErrorInfo, ErrorType
from integrations.ledger.models import OperationStatus
from integrations.ledger.records import NewOperation, OperationRecord
from integrations.ledger.store import Ledger
from integrations.message import Delivery
from integrations.outcome import Done, Failed, Outcome
from integrations.pipeline import OperationRunner
from integrations.testing.provider import ProviderSimulator
from tests.clock import Clock
from tests.published import Published

Operate = Callable[..., Result]


@pytest.fixture
def sent() -> Published:
    return Published()


@pytest.fixture
def operate(ledger_url: str, redis_url: str, tmp_path: Path, sent: Published) -> Operate:
    """The operator commands as the wiring builds them, on this ledger, the test Redis and a providers
    file with acme (the http adapter: `request`), mail (SendGrid) and sim (the simulator's)."""
    providers = tmp_path / "providers.toml"
    providers.write_text(
        '[providers.acme]\nadapter = "http"\nbase_url = "https://a.example"\nrate_limit = "20/s"\n'
        '[providers.mail]\nadapter = "sendgrid"\nbase_url = "https://b.example"\n'
        '[providers.sim]\nadapter = "http"\nbase_url = "https://c.example"\n'
    )
    context = OperatorContext(
        database_url=ledger_url,
        redis_url=redis_url,
        providers_file=providers,
        retention=timedelta(days=7),
        dead_letter_retention=timedelta(days=30),
        publish=sent,
        resend=sent,
    )

    def run(*args: str, input: str | None = None) -> Result:
        return CliRunner().invoke(build_cli(lambda: context), list(args), input=input)

    return run


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime.now(UTC))


def deliver(runner: OperationRunner, key: str, path: str, task_id: str | None = None) -> Outcome:
    message = {"payload": {"method": "POST", "path": path, "json": {"amount": 100}}, "idempotency_key": key}
    return runner.run(Delivery("request", message, message_id=task_id))


def ended(
    ledger: Ledger,
    key: str,
    status: OperationStatus = OperationStatus.DEAD,
    *,
    provider: str = "acme",
    operation: str = "request",
    error_type: ErrorType = ErrorType.RETRIES_EXHAUSTED,
) -> OperationRecord:
    """An operation of one attempt that ended with ``status`` and an error of ``error_type``."""
    new = NewOperation(provider, operation, key, key, {"method": "POST", "path": "/x"}, f"req-{key}")
    record = ledger.start(new, lease=timedelta(seconds=30))
    assert record is not None
    error = None if status is OperationStatus.SUCCEEDED else ErrorInfo(type=error_type, message="went wrong")
    finished = ledger.finish(record, status, error=error, response={} if error is None else None)
    assert finished is not None
    return finished


def shown(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


# -- ops show and the attempt history ----------------------------------------------------------------


def test_ops_show_finds_an_operation_by_id_task_id_or_key_with_its_attempts(
    runner: OperationRunner, simulator: ProviderSimulator, clock: Clock, operate: Operate
) -> None:
    moments = []
    for _ in range(3):
        moments.append(clock())
        outcome = deliver(runner, "order-1", "/charges?fail=2", task_id="task-of-order-1")
        clock.advance(2)
    assert isinstance(outcome, Done)
    operation_id = outcome.result["operation_id"]

    by_id = shown(operate("ops", "show", operation_id, "--json"))
    for reference in (["task-of-order-1"], ["order-1", "--provider", "sim"], ["sim", "order-1"]):
        assert shown(operate("ops", "show", *reference, "--json")) == by_id
    history = by_id["history"]
    assert [(e["attempt"], e["outcome"], e["status_code"], e["error_type"]) for e in history] == [
        (1, "retry", 503, "provider_unavailable"),
        (2, "retry", 503, "provider_unavailable"),
        (3, "succeeded", 200, None),
    ]
    assert [datetime.fromisoformat(e["started_at"]) for e in history] == moments
    assert all(e["seconds"] == 0 for e in history)  # the clock stood still during each call
    assert history[0]["error"].startswith("sim.request: ")
    assert "amount" not in json.dumps(history)  # neither the payload nor the answer's body
    assert len(simulator.calls(idempotency_key="order-1")) == 3

    human = operate("ops", "show", "task-of-order-1").output.splitlines()
    assert len([line for line in human if "│ retry " in line and "│ 503 " in line]) == 2
    assert len([line for line in human if "│ succeeded " in line and "│ 200 " in line]) == 1


def test_ops_show_of_an_unknown_reference_says_how_to_name_a_key(operate: Operate) -> None:
    result = operate("ops", "show", "order-9")
    assert result.exit_code == 1
    assert "no operation with operation id or task id 'order-9'" in result.output
    assert "ops show order-9 --provider PROVIDER" in result.output
    both = operate("ops", "show", "sim", "order-9", "--provider", "sim")
    assert both.exit_code == 2 and "name one operation" in both.output


# -- ops list and ops conflicts --------------------------------------------------------------------


def test_ops_list_finds_old_queued_operations_by_provider_and_status(
    ledger_url: str, ledger: Ledger, operate: Operate
) -> None:
    an_hour_ago = Ledger.connect(ledger_url, clock=Clock(datetime.now(UTC) - timedelta(hours=1)))
    payload = {"method": "POST", "path": "/x"}
    old, _ = an_hour_ago.enqueue(NewOperation("acme", "request", "old-1", "fp", payload, None, "t-1"))
    an_hour_ago.dispose()
    fresh, _ = ledger.enqueue(NewOperation("acme", "request", "fresh-1", "fp", payload, None, "t-2"))
    dead = ended(ledger, "dead-1", provider="mail", operation="send_mail")

    every = shown(operate("ops", "list", "--json"))
    assert [row["operation_id"] for row in every] == [dead.id, fresh.id, old.id]
    assert (every[0]["status"], every[0]["error_type"], every[0]["task_id"]) == (
        "dead",
        "retries_exhausted",
        None,
    )
    stuck = shown(operate("ops", "list", "--status", "queued", "--older-than", "10m", "--json"))
    assert [row["idempotency_key"] for row in stuck] == ["old-1"]
    assert [r["idempotency_key"] for r in shown(operate("ops", "list", "-p", "mail", "--json"))] == ["dead-1"]
    two = shown(operate("ops", "list", "-s", "queued", "-s", "dead", "--older-than", "30s", "--json"))
    assert [row["idempotency_key"] for row in two] == ["old-1"]

    human = operate("ops", "list", "--older-than", "2h").output
    assert human.strip() == "0 operation(s)"
    listed = operate("ops", "list").output
    assert f"{old.id}  queued  acme.request  key=old-1  attempts=0" in listed
    assert "retries_exhausted: went wrong" in listed and listed.strip().endswith("3 operation(s)")
    bad = operate("ops", "list", "--older-than", "10x")
    assert (
        bad.exit_code == 2 and "'10x' is not a duration" in bad.output and "30s, 10m, 2h or 1d" in bad.output
    )


def test_ops_conflicts_lists_keys_reused_for_another_operation_how_often_and_when_last(
    ledger: Ledger, operate: Operate
) -> None:
    held = ended(ledger, "order-5", OperationStatus.SUCCEEDED)
    ended(ledger, "order-6", OperationStatus.SUCCEEDED)
    for _ in range(3):
        ledger.record_conflict("acme", "order-5")

    [row] = shown(operate("ops", "conflicts", "--json"))
    assert (row["provider"], row["idempotency_key"], row["conflicts"], row["operation_id"]) == (
        "acme",
        "order-5",
        3,
        held.id,
    )
    last = datetime.fromisoformat(row["last_conflict_at"])
    assert datetime.now(UTC) - timedelta(minutes=1) < last <= datetime.now(UTC)
    later = (last + timedelta(seconds=1)).isoformat()
    assert shown(operate("ops", "conflicts", "--since", later, "--json")) == []
    assert shown(operate("ops", "conflicts", "-p", "mail", "--json")) == []
    listed = operate("ops", "conflicts").output
    assert "acme  key=order-5  3 conflict(s), last " in listed and listed.strip().endswith(
        "1 key(s) with conflicts"
    )
    show = " ".join(operate("ops", "show", "order-5", "-p", "acme").output.split())
    assert "3 message(s) reused the key for another operation or payload" in show


# -- dlq replay by filter ------------------------------------------------------------------------------


def test_dlq_replay_by_filter_lists_asks_replays_and_records_one_action(
    ledger: Ledger, operate: Operate, sent: Published
) -> None:
    dead = [ended(ledger, f"dead-{n}") for n in (1, 2)]
    rejected = ended(ledger, "rejected-1", OperationStatus.FAILED, error_type=ErrorType.PROVIDER_REJECTED)
    invalid = ledger.record_invalid(
        NewOperation("acme", "request", "bad-1", "fp", {}, None),
        ErrorInfo(type=ErrorType.INVALID_REQUEST, message="acme.request: payload.path: Field required"),
    )
    ended(ledger, "mail-1", provider="mail", operation="send_mail")
    settled = ended(ledger, "settled-1")
    assert ledger.discard(settled, actor="alice", reason="refunded by hand") is not None
    before = {record.id: ledger.get(record.id) for record in [*dead, rejected, invalid]}

    dry = operate("dlq", "replay", "--provider", "acme", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "3 dead letter(s) to replay for provider=acme: acme.request (3)" in dry.output
    assert f"left as they are: {invalid.id} (acme.request): it was an invalid request" in dry.output
    for record in [*dead, rejected]:
        assert (
            f"would replay acme.request key={record.idempotency_key} operation_id={record.id}" in dry.output
        )
    assert settled.id not in dry.output and "dry run: nothing was replayed" in dry.output
    declined = operate("dlq", "replay", "-p", "acme", "--error-type", "retries_exhausted", input="n\n")
    assert declined.exit_code == 1 and "Replay these 2 operation(s)?" in declined.output
    assert sent == [] and {r.id: ledger.get(r.id) for r in [*dead, rejected, invalid]} == before

    done = operate(
        "dlq",
        "replay",
        "-p",
        "acme",
        "--error-type",
        "retries_exhausted",
        "--reason",
        "acme is back",
        input="y\n",
    )

    assert done.exit_code == 0, done.output
    assert sorted(sent.keys()) == ["dead-1", "dead-2"] and done.output.strip().endswith(
        "2 operation(s) replayed"
    )
    for record in dead:
        after = ledger.get(record.id)
        assert after is not None and (after.status, after.replays) == (OperationStatus.QUEUED, 1)
    [action] = shown(operate("audit", "list", "--action", "dlq.replay", "--json"))
    assert (action["target"], action["reason"], action["actor"]) == (
        "filter provider=acme error_type=retries_exhausted",
        "acme is back",
        default_actor(),
    )
    assert action["details"]["replayed"] == 2 and sorted(action["details"]["operation_ids"]) == sorted(
        record.id for record in dead
    )
    assert operate(
        "dlq", "replay", "--error-type", "retries_exhausted", "-p", "acme", "--yes"
    ).output.strip() == (
        "0 dead letter(s) to replay for provider=acme error_type=retries_exhausted\nnothing to replay"
    )


def test_dlq_replay_by_filter_refuses_by_name_what_no_worker_serves_and_changes_nothing(
    ledger: Ledger, operate: Operate, sent: Published
) -> None:
    served = ended(ledger, "dead-1")
    unserved = [ended(ledger, f"billing-{n}", provider="billing") for n in (1, 2)]
    gone = ended(ledger, "refund-1", operation="refund")

    result = operate("dlq", "replay", "--error-type", "retries_exhausted", "--yes")

    assert result.exit_code == 1 and sent == []
    assert (
        "nothing was replayed: the filter error_type=retries_exhausted matches 3 operation(s)"
        in result.output
    )
    assert "acme.refund (1), billing.request (2)" in result.output
    for record in [*unserved, gone]:
        assert record.id in result.output
        assert ledger.get(record.id) == record
    assert ledger.get(served.id) == served
    assert "Narrow the filter (--provider" in result.output
    assert (
        operate(
            "dlq", "replay", "--error-type", "retries_exhausted", "-p", "acme", "--since", "1h", "--yes"
        ).exit_code
        == 1
    )
    assert shown(operate("audit", "list", "--json")) == []


def test_dlq_replay_needs_an_id_or_a_filter_not_both(operate: Operate) -> None:
    neither = operate("dlq", "replay")
    assert neither.exit_code == 2 and "name an OPERATION_ID, or filter" in neither.output
    both = operate("dlq", "replay", "some-id", "--provider", "acme")
    assert both.exit_code == 2 and "not both" in both.output
    bad = operate("dlq", "replay", "--error-type", "slow")
    assert bad.exit_code == 2 and "'slow' is not one of" in bad.output
    since = operate("dlq", "replay", "--since", "yesterday")
    assert since.exit_code == 2 and "neither a duration" in since.output


# -- dlq discard -------------------------------------------------------------------------------------


def test_dlq_discard_settles_a_dead_letter_with_who_and_why(
    ledger: Ledger, operate: Operate, sent: Published
) -> None:
    letter = ended(ledger, "dead-1")
    succeeded = ended(ledger, "ok-1", OperationStatus.SUCCEEDED)
    missing = operate("dlq", "discard", letter.id)
    assert missing.exit_code == 2 and "Missing option '--reason'" in missing.output
    blank = operate("dlq", "discard", letter.id, "--reason", "  ")
    assert blank.exit_code == 2 and "say why" in blank.output

    done = operate("dlq", "discard", letter.id, "--reason", "refunded by hand", "--actor", "alice@ops")

    assert done.exit_code == 0, done.output
    assert (
        f"discarded acme.request key=dead-1 operation_id={letter.id} (dead: retries_exhausted)" in done.output
    )
    assert shown(operate("dlq", "list", "--json")) == []
    record = shown(operate("ops", "show", letter.id, "--json"))
    assert (record["status"], record["discarded_by"], record["discard_reason"]) == (
        "dead",
        "alice@ops",
        "refunded by hand",
    )
    assert "by alice@ops: refunded by hand" in " ".join(
        operate("ops", "show", "dead-1", "-p", "acme").output.split()
    )
    [action] = shown(operate("audit", "list", "--json"))
    assert (action["action"], action["target"], action["actor"], action["reason"]) == (
        "dlq.discard",
        letter.id,
        "alice@ops",
        "refunded by hand",
    )
    again = operate("dlq", "discard", letter.id, "--reason", "twice")
    assert again.exit_code == 1 and "already discarded" in again.output and "by alice@ops" in again.output
    alive = operate("dlq", "discard", succeeded.id, "--reason", "no")
    assert alive.exit_code == 1 and "is succeeded; only failed, dead or partial" in alive.output
    assert operate("dlq", "replay", "-p", "acme", "--yes").output.strip().endswith("nothing to replay")

    by_id = operate("dlq", "replay", letter.id)  # named by id, it goes again

    assert by_id.exit_code == 0, by_id.output
    assert "it had been discarded by alice@ops: refunded by hand" in by_id.output
    assert sent.keys() == ["dead-1"]
    replayed = ledger.get(letter.id)
    assert replayed is not None and (replayed.status, replayed.discarded_at) == (OperationStatus.QUEUED, None)


def test_a_message_sent_again_with_a_discarded_key_gets_the_stored_failure_without_a_call(
    runner: OperationRunner, simulator: ProviderSimulator, operate: Operate
) -> None:
    first = deliver(runner, "order-7", "/charges?status=422")
    assert isinstance(first, Failed) and first.error.type is ErrorType.PROVIDER_REJECTED
    assert (
        operate("dlq", "discard", first.operation_id or "", "--reason", "customer cancelled").exit_code == 0
    )

    again = deliver(runner, "order-7", "/charges?status=422")

    assert isinstance(again, Failed) and again.replayed
    assert (again.operation_id, again.error) == (first.operation_id, first.error)
    assert len(simulator.calls(idempotency_key="order-7")) == 1
