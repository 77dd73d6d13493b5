"""The operators' audit trail, written by the commands that change the running system (limits and
breakers in real Redis here; replays and discards in test_cli_operations.py); `breaker show` of a forced
breaker, and `providers` as the console script prints it to a pipe 80 columns wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import delete

from config.cli import main
from integrations.cli.audit import default_actor
from integrations.ledger.engine import create_ledger_engine
from integrations.ledger.models import OperatorAction

Invoke = Callable[..., Result]


@pytest.fixture
def providers(tmp_path: Path, provider_name: str) -> Path:
    path = tmp_path / "providers.toml"
    path.write_text(
        f'[providers.{provider_name}]\nadapter = "http"\nbase_url = "https://a.example"\nrate_limit = "20/s"\n'
    )
    return path


@pytest.fixture
def invoke(
    ledger_url: str, redis_url: str, providers: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Invoke]:
    """The `integrations` console script's command, in this process, on the test ledger and Redis; the
    operators' actions are deleted before and after (a PostgreSQL ledger is shared by the run's tests)."""
    monkeypatch.setenv("DATABASE_URL", ledger_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("INTEGRATIONS_PROVIDERS_FILE", str(providers))
    monkeypatch.delenv("INTEGRATIONS_ACTOR", raising=False)
    engine = create_ledger_engine(ledger_url)
    with engine.begin() as connection:
        connection.execute(delete(OperatorAction))

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    yield run
    with engine.begin() as connection:
        connection.execute(delete(OperatorAction))
    engine.dispose()


def listed(invoke: Invoke, *args: str) -> Any:
    result = invoke("audit", "list", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_limit_and_breaker_changes_are_recorded_with_who_when_why_and_what_changed(
    invoke: Invoke, provider_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    began = datetime.now(UTC)
    steps = [
        ("limits", "set", provider_name, "5/s", "--burst", "3", "--actor", "alice", "--reason", "asked to"),
        ("breaker", "open", provider_name, "--for", "600", "--reason", "provider maintenance"),
        ("breaker", "close", provider_name),
    ]
    for step in steps:
        assert invoke(*step).exit_code == 0
    monkeypatch.setenv("INTEGRATIONS_ACTOR", "deploy-bot")
    assert invoke("limits", "reset", provider_name).exit_code == 0

    actions = listed(invoke)

    assert [(a["action"], a["target"], a["actor"], a["reason"]) for a in actions] == [
        ("limits.reset", provider_name, "deploy-bot", None),
        ("breaker.close", provider_name, default_actor(), None),
        ("breaker.open", provider_name, default_actor(), "provider maintenance"),
        ("limits.set", provider_name, "alice", "asked to"),
    ]
    assert all(began <= datetime.fromisoformat(a["at"]) <= datetime.now(UTC) for a in actions)
    reset, close, opened, limit = (a["details"] for a in actions)
    assert limit["old"] == {"rate_per_second": 20.0, "burst": 20, "overridden": False}
    assert limit["new"] == {"rate_per_second": 5.0, "burst": 3, "overridden": True, "rate": "5/s"}
    assert (reset["old"]["rate_per_second"], reset["new"]["rate_per_second"]) == (5.0, 20.0)
    assert (opened["seconds"], opened["was"]["forced"]) == (600, None)
    until = datetime.fromisoformat(opened["until"])
    assert began + timedelta(seconds=599) <= until <= datetime.now(UTC) + timedelta(seconds=601)
    assert close["was"]["forced"] == "open"
    assert [a["action"] for a in listed(invoke, "--action", "limits.set")] == ["limits.set"]
    assert len(listed(invoke, "--since", "1h")) == 4
    assert listed(invoke, "--since", (datetime.now(UTC) + timedelta(minutes=1)).isoformat()) == []
    human = invoke("audit", "list").output
    assert f"limits.set  {provider_name}" in human and "why: asked to" in human
    assert human.strip().endswith("4 action(s)")


def test_an_actor_that_cannot_be_recorded_is_refused_before_anything_changes(
    invoke: Invoke, provider_name: str
) -> None:
    result = invoke("breaker", "open", provider_name, "--actor", "x" * 300)
    assert result.exit_code == 2 and "--actor" in result.output and "at most 255" in result.output
    [breaker] = json.loads(invoke("breaker", "show", provider_name, "--json").output)
    assert breaker["forced"] is None


def test_a_change_the_audit_trail_cannot_take_stands_and_the_command_says_so(
    invoke: Invoke, provider_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'not-migrated.sqlite3'}")

    result = invoke("limits", "set", provider_name, "5/s")

    assert result.exit_code == 1
    assert f"{provider_name}: 5/s (burst 5) for every worker" in result.output
    assert "but the audit trail could not record it (limits.set" in result.output
    assert "integrations db upgrade" in result.output
    [row] = json.loads(invoke("limits", "show", "--json").output)
    assert (row["effective_rate_per_second"], row["overridden"]) == (5.0, True)
    invoke("limits", "reset", provider_name)


def console_script(*args: str, **env: str) -> str:
    """The installed `integrations` command, its output a pipe (no terminal) 80 columns wide."""
    binary = Path(sys.executable).with_name("integrations")
    environment = os.environ | {"COLUMNS": "80"} | env
    done = subprocess.run([str(binary), *args], env=environment, capture_output=True, text=True, check=True)
    return done.stdout


def test_breaker_show_says_a_forced_breaker_is_open_and_until_when(
    invoke: Invoke, provider_name: str
) -> None:
    assert invoke("breaker", "open", provider_name, "--for", "600").exit_code == 0
    [status] = json.loads(invoke("breaker", "show", provider_name, "--json").output)
    until = datetime.fromisoformat(status["forced_until"]).strftime("%Y-%m-%d %H:%M:%S")

    timed = invoke("breaker", "show", provider_name).output

    assert f"{provider_name}: forced open until {until} UTC (counted: closed)\n" in timed
    assert invoke("breaker", "open", provider_name).exit_code == 0  # until closed by hand
    held = invoke("breaker", "show", provider_name).output
    assert f"{provider_name}: forced open until `integrations breaker close {provider_name}`" in held
    assert invoke("breaker", "close", provider_name).exit_code == 0
    assert invoke("breaker", "show", provider_name).output.startswith(f"{provider_name}: closed\n")


def test_providers_prints_queue_and_task_names_whole_on_80_columns(tmp_path: Path) -> None:
    providers = tmp_path / "providers.toml"
    providers.write_text(
        '[providers.crm-eu-west]\nadapter = "hubspot"\nbase_url = "https://api.hubapi.com"\n'
        '[providers.payments-eu]\nadapter = "stripe"\nbase_url = "https://api.stripe.com"\n'
    )

    out = console_script("providers", INTEGRATIONS_PROVIDERS_FILE=str(providers))

    assert "…" not in out
    for name in (
        "integrations.crm-eu-west",
        "integrations.crm-eu-west.batch_create_contacts",
        "integrations.payments-eu",
    ):
        assert name in out.split()
    tasks = [line.split()[-1] for line in out.splitlines() if line.strip().startswith("task ")]
    assert all(task.startswith(("integrations.crm-eu-west.", "integrations.payments-eu.")) for task in tasks)
