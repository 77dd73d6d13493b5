"""The operator CLI against a real ledger: what `integrations ...` prints and how it fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from celery import Celery
from click.testing import CliRunner, Result

from config.cli import main
from integrations.cli import OperatorContext, build_cli
from integrations.errors import ConfigError, ErrorInfo, ErrorType
from integrations.ledger import schema
from integrations.ledger.models import OperationStatus
from integrations.ledger.records import NewOperation, OperationRecord, load_items
from integrations.ledger.store import Ledger
from tasks.registry import check_schema
from tests.clock import Clock
from tests.published import Published


def invoke(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *args: str) -> Result:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def started(ledger: Ledger, key: str, provider: str = "acme", operation: str = "request") -> OperationRecord:
    payload = {"method": "POST", "path": "/x"}
    record = ledger.start(
        NewOperation(provider, operation, key, key, payload, f"req-{key}"), lease=timedelta(seconds=30)
    )
    assert record is not None
    return record


def providers_file(folder: Path) -> Path:
    """A providers file with two providers: acme (the http adapter: `request`) and mail (SendGrid)."""
    path = folder / "providers.toml"
    path.write_text(
        '[providers.acme]\nadapter = "http"\nbase_url = "https://a.example"\n'
        '[providers.mail]\nadapter = "sendgrid"\nbase_url = "https://b.example"\n'
    )
    return path


def operate(ledger_url: str, providers: Path, sent: Published, *args: str) -> Result:
    """The operator commands as the wiring builds them, on this ledger and providers file, sending to
    ``sent``."""
    context = OperatorContext(
        database_url=ledger_url,
        redis_url="redis://127.0.0.1:1/0",
        providers_file=providers,
        retention=timedelta(days=7),
        dead_letter_retention=timedelta(days=30),
        publish=sent,
        resend=sent,
    )
    return CliRunner().invoke(build_cli(lambda: context), list(args))


def test_db_upgrade_creates_the_schema_a_worker_checks_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    with pytest.raises(ConfigError, match="integrations db upgrade"):
        check_schema(url)
    result = invoke(monkeypatch, {"DATABASE_URL": url}, "db", "upgrade")
    assert result.exit_code == 0
    assert f"ledger schema at revision {schema.head_revision()}" in result.output
    check_schema(url)  # a worker would now start


def test_ops_show_prints_the_ledger_record(
    ledger: Ledger, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = started(ledger, "order-1")
    error = ErrorInfo(
        type=ErrorType.PROVIDER_REJECTED, message="HTTP 422", status_code=422, body={"e": "bad"}
    )
    assert ledger.finish(record, OperationStatus.FAILED, error=error) is not None
    result = invoke(
        monkeypatch, {"DATABASE_URL": ledger_url}, "ops", "show", "order-1", "--provider", "acme", "--json"
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["operation_id"] == record.id
    assert (shown["status"], shown["attempts"]) == ("failed", 1)
    assert shown["error"] == {
        "type": "provider_rejected",
        "message": "HTTP 422",
        "status_code": 422,
        "body": {"e": "bad"},
    }
    assert shown["response"] is None
    for stamp in ("created_at", "updated_at", "started_at", "finished_at"):
        assert shown[stamp].endswith("+00:00")
    human = invoke(monkeypatch, {"DATABASE_URL": ledger_url}, "ops", "show", "order-1", "--provider", "acme")
    assert "provider_rejected" in human.output and record.id in human.output


def test_ops_show_of_an_unknown_key_says_so(ledger_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke(monkeypatch, {"DATABASE_URL": ledger_url}, "ops", "show", "nope", "--provider", "acme")
    assert result.exit_code == 1
    assert "'nope'" in result.output and "'acme'" in result.output


def test_dlq_list_shows_failed_and_dead_only(
    ledger: Ledger, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok = started(ledger, "ok-1")
    ledger.finish(ok, OperationStatus.SUCCEEDED, response={"status_code": 200})
    rejected = started(ledger, "rejected-1")
    ledger.finish(
        rejected, OperationStatus.FAILED, error=ErrorInfo(type=ErrorType.PROVIDER_REJECTED, message="no")
    )
    dead = started(ledger, "dead-1", provider="other")
    ledger.finish(
        dead, OperationStatus.DEAD, error=ErrorInfo(type=ErrorType.RETRIES_EXHAUSTED, message="gave up")
    )
    started(ledger, "running-1")

    result = invoke(monkeypatch, {"DATABASE_URL": ledger_url}, "dlq", "list", "--json")
    letters = json.loads(result.output)
    assert {letter["idempotency_key"] for letter in letters} == {"rejected-1", "dead-1"}
    for letter in letters:
        assert set(letter) >= {"operation_id", "provider", "operation", "idempotency_key", "error"}
    only_other = json.loads(
        invoke(
            monkeypatch, {"DATABASE_URL": ledger_url}, "dlq", "list", "--provider", "other", "--json"
        ).output
    )
    assert [letter["operation_id"] for letter in only_other] == [dead.id]
    human = invoke(monkeypatch, {"DATABASE_URL": ledger_url}, "dlq", "list")
    assert "retries_exhausted: gave up" in human.output and "2 dead letter(s)" in human.output


def test_dlq_list_prints_what_the_provider_wrote_as_written(
    ledger: Ledger, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An answer quoted in an error may hold what a terminal library reads as markup.
    message = "HTTP 422: field [bold]amount[/bold] must be [red]positive[/]"
    rejected = started(ledger, "key-[b]-1")
    ledger.finish(
        rejected, OperationStatus.FAILED, error=ErrorInfo(type=ErrorType.PROVIDER_REJECTED, message=message)
    )
    human = invoke(monkeypatch, {"DATABASE_URL": ledger_url}, "dlq", "list").output
    assert f"provider_rejected: {message}" in human and "key=key-[b]-1" in human


def test_ops_show_and_dlq_list_print_a_batchs_items(
    ledger: Ledger, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = started(ledger, "import-1", provider="crm")
    items = [
        {"key": "row-1", "status": "succeeded", "attempts": 1, "response": {"id": "1001"}},
        {"key": "row-2", "status": "succeeded", "attempts": 2, "response": {"id": "1002"}},
        {
            "key": "row-3",
            "status": "failed",
            "attempts": 1,
            "error": {"type": "provider_rejected", "message": "crm.import: item 'row-3': INVALID_EMAIL: bad"},
        },
    ]
    assert ledger.finish(record, OperationStatus.PARTIAL, items=load_items(items)) is not None
    env = {"DATABASE_URL": ledger_url}

    shown = json.loads(invoke(monkeypatch, env, "ops", "show", "import-1", "-p", "crm", "--json").output)
    assert (shown["status"], shown["items"]) == ("partial", items)
    human = invoke(monkeypatch, env, "ops", "show", "import-1", "-p", "crm").output
    assert "items: 1 failed, 2 succeeded" in human
    lines = {line.split()[1]: line for line in human.splitlines() if "row-" in line}
    assert "succeeded" in lines["row-1"] and '{"id": "1001"}' in lines["row-1"]
    assert "failed" in lines["row-3"] and "provider_rejected: crm.import: item 'row-3'" in lines["row-3"]

    letters = json.loads(invoke(monkeypatch, env, "dlq", "list", "--json").output)
    assert [(letter["status"], letter["items"]) for letter in letters] == [
        ("partial", {"failed": 1, "succeeded": 2})
    ]
    listed = invoke(monkeypatch, env, "dlq", "list").output
    assert "items: 1 failed, 2 succeeded" in listed and "row-3: provider_rejected" in listed


def test_dlq_replay_refuses_what_cannot_be_replayed(
    ledger: Ledger, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok = started(ledger, "ok-2")
    ledger.finish(ok, OperationStatus.SUCCEEDED, response={})
    result = invoke(monkeypatch, {"DATABASE_URL": ledger_url}, "dlq", "replay", ok.id)
    assert result.exit_code == 1 and "only failed, dead or partial ones replay" in result.output
    missing = invoke(monkeypatch, {"DATABASE_URL": ledger_url}, "dlq", "replay", "no-such-id")
    assert missing.exit_code == 1 and "no operation 'no-such-id'" in missing.output


@pytest.mark.parametrize(
    ("provider", "operation", "status", "said"),
    [
        (
            "billing",
            "request",
            OperationStatus.DEAD,
            "provider 'billing' is not in the providers file {file} (it has: acme, mail)",
        ),
        (
            "acme",
            "refund",
            OperationStatus.FAILED,
            "provider 'acme' in {file} has no operation 'refund' (its adapter has: request)",
        ),
    ],
)
def test_dlq_replay_refuses_an_operation_no_worker_serves_and_leaves_its_row(
    ledger: Ledger,
    ledger_url: str,
    tmp_path: Path,
    provider: str,
    operation: str,
    status: OperationStatus,
    said: str,
) -> None:
    record = started(ledger, f"{provider}-{operation}", provider=provider, operation=operation)
    error = ErrorInfo(type=ErrorType.RETRIES_EXHAUSTED, message="gave up")
    letter = ledger.finish(record, status, error=error)
    assert letter is not None
    providers = providers_file(tmp_path)
    sent = Published("task-1")
    result = operate(ledger_url, providers, sent, "dlq", "replay", record.id)
    assert result.exit_code == 1 and sent == []
    assert f"operation {record.id} ({provider}.{operation}) was not replayed" in result.output
    assert said.format(file=providers) in result.output
    assert "the row is left as it was" in result.output
    assert ledger.get(record.id) == letter


def test_queues_on_a_broker_that_cannot_list_asks_for_the_known_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu's in-memory transport, like AMQP, answers a passive declare but lists no queues; its
    queues live in this process, so the command run here sees what was sent here."""
    providers = providers_file(tmp_path)
    application = Celery("application", broker="memory://")
    for _ in range(2):
        application.send_task("integrations.mail.send_mail", kwargs={}, queue="integrations.mail")
    env = {"INTEGRATIONS_PROVIDERS_FILE": str(providers), "BROKER_URL": "memory://"}
    shown = json.loads(invoke(monkeypatch, env, "queues", "--json").output)
    assert shown["complete"] is False
    depths = {row["queue"]: row["messages"] for row in shown["queues"]}
    assert depths == {
        "celery": None,
        "integrations.acme": None,
        "integrations.default": None,
        "integrations.mail": 2,
        "integrations.maintenance": None,
    }
    human = invoke(monkeypatch, env, "queues").output
    assert "absent" in human and "This broker cannot list its queues" in human
    application.close()


def test_providers_lists_tasks_and_queues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    providers = tmp_path / "providers.toml"
    providers.write_text('[providers.acme]\nadapter = "http"\nbase_url = "https://api.acme.example"\n')
    result = invoke(monkeypatch, {"INTEGRATIONS_PROVIDERS_FILE": str(providers)}, "providers", "--json")
    [row] = json.loads(result.output)
    assert (row["provider"], row["queue"], row["tasks"]) == (
        "acme",
        "integrations.acme",
        ["integrations.acme.request"],
    )


def test_a_bad_providers_file_is_named_with_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    providers = tmp_path / "providers.toml"
    providers.write_text(
        '[providers.acme]\nadapter = "http"\nbase_url = "https://a.example"\nrate_limit = "fast"\n'
    )
    result = invoke(monkeypatch, {"INTEGRATIONS_PROVIDERS_FILE": str(providers)}, "providers")
    assert result.exit_code == 1
    assert (
        str(providers) in result.output
        and "[providers.acme]" in result.output
        and "rate_limit" in result.output
    )


def test_help_reads_no_settings_and_a_command_reads_them_when_it_runs(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"DATABASE_URL": ledger_url, "INTEGRATIONS_RETENTION_DAYS": "-1"}
    assert invoke(monkeypatch, env, "--help").exit_code == 0
    assert invoke(monkeypatch, env, "dlq", "--help").exit_code == 0
    listed = invoke(monkeypatch, env, "dlq", "list")
    assert listed.exit_code == 1 and "INTEGRATIONS_RETENTION_DAYS" in listed.output


def test_dlq_replay_sends_through_the_publisher_it_is_given(
    ledger: Ledger, ledger_url: str, tmp_path: Path
) -> None:
    record = started(ledger, "dead-3")
    error = ErrorInfo(type=ErrorType.RETRIES_EXHAUSTED, message="gave up")
    assert ledger.finish(record, OperationStatus.DEAD, error=error) is not None
    sent = Published("task-3")
    result = operate(ledger_url, providers_file(tmp_path), sent, "dlq", "replay", record.id)
    assert result.exit_code == 0, result.output
    assert f"operation_id={record.id} as task task-3" in result.output
    [queued] = sent
    assert (queued.id, queued.idempotency_key, queued.request_id) == (record.id, "dead-3", "req-dead-3")
    after = ledger.get(record.id)
    assert after is not None and (after.status, after.replays) == (OperationStatus.QUEUED, 1)


def test_the_console_script_is_installed() -> None:
    binary = Path(sys.executable).with_name("integrations")
    out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("db", "ops", "dlq", "audit", "providers", "demo", "queues"):
        assert command in out


def test_dlq_replay_leaves_the_dead_letter_as_it_was_when_the_broker_is_down(
    ledger: Ledger, ledger_url: str
) -> None:
    record = started(ledger, "dead-2")
    error = ErrorInfo(type=ErrorType.RETRIES_EXHAUSTED, message="gave up")
    assert ledger.finish(record, OperationStatus.DEAD, error=error) is not None
    env = dict(os.environ, DATABASE_URL=ledger_url, BROKER_URL="redis://127.0.0.1:1/0")
    binary = Path(sys.executable).with_name("integrations")
    done = subprocess.run([str(binary), "dlq", "replay", record.id], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert f"could not enqueue operation {record.id}, left as it was" in done.stderr
    after = ledger.get(record.id)
    assert after is not None and (after.status, after.attempts, after.replays) == (OperationStatus.DEAD, 1, 0)
    assert after.error == error.model_dump(mode="json")


def test_limits_set_show_and_reset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    name = f"p-{tmp_path.name[-8:].lower().replace('_', '-')}"
    providers = tmp_path / "providers.toml"
    providers.write_text(
        f'[providers.{name}]\nadapter = "http"\nbase_url = "https://a.example"\nrate_limit = "20/s"\n'
    )
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"  # where the changes are recorded (audit list)
    schema.upgrade(ledger)
    env = {"INTEGRATIONS_PROVIDERS_FILE": str(providers), "REDIS_URL": redis_url, "DATABASE_URL": ledger}
    assert invoke(monkeypatch, env, "limits", "set", name, "5/s", "--burst", "3").exit_code == 0
    [row] = json.loads(invoke(monkeypatch, env, "limits", "show", "--json").output)
    assert (row["effective_rate_per_second"], row["effective_burst"], row["overridden"]) == (5.0, 3, True)
    assert (row["file_rate_limit"], row["file_burst"]) == ("20/s", 20)
    assert invoke(monkeypatch, env, "limits", "reset", name).exit_code == 0
    [row] = json.loads(invoke(monkeypatch, env, "limits", "show", "--json").output)
    assert (row["effective_rate_per_second"], row["overridden"]) == (20.0, False)
    unknown = invoke(monkeypatch, env, "limits", "set", "nope", "5/s")
    assert unknown.exit_code == 1 and "no provider 'nope'" in unknown.output
    bad = invoke(monkeypatch, env, "limits", "set", name, "fast")
    assert bad.exit_code == 1 and "N/s, N/m or N/h" in bad.output


def test_breaker_commands_say_when_redis_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    providers = tmp_path / "providers.toml"
    providers.write_text('[providers.acme]\nadapter = "http"\nbase_url = "https://a.example"\n')
    env = {"INTEGRATIONS_PROVIDERS_FILE": str(providers), "REDIS_URL": "redis://127.0.0.1:1/0"}
    result = invoke(monkeypatch, env, "breaker", "show")
    assert result.exit_code == 1 and "Redis at" in result.output and "cannot be reached" in result.output


def test_ops_sweep_sends_again_what_had_no_delivery_and_says_so(ledger_url: str, tmp_path: Path) -> None:
    an_hour_ago, now = (
        Ledger.connect(ledger_url, clock=Clock(datetime.now(UTC) - timedelta(hours=h))) for h in (1, 0)
    )
    payload = {"method": "POST", "path": "/x"}
    record, _ = an_hour_ago.enqueue(
        NewOperation("acme", "request", "lost-1", "fp", payload, None, "task-lost")
    )
    now.enqueue(NewOperation("acme", "request", "fresh-1", "fp", payload, None, "task-fresh"))  # not due yet
    an_hour_ago.dispose()
    now.dispose()
    resent = Published()

    result = operate(ledger_url, providers_file(tmp_path), resent, "ops", "sweep")

    assert result.exit_code == 0, result.output
    assert (
        f"sent again: acme.request key=lost-1 operation_id={record.id} (queued) as task task-lost"
        in result.output
    )
    assert result.output.strip().endswith("1 operation(s) sent again")
    assert [swept.idempotency_key for swept in resent] == ["lost-1"]
    again = operate(ledger_url, providers_file(tmp_path), resent, "ops", "sweep")
    assert again.output.strip() == "0 operation(s) sent again"  # marked: not again before the grace
