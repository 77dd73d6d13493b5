"""The ``integrations`` command: the ledger, dead letters and providers, for operators."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from config.settings import Settings
from integrations.errors import ConfigError, IntegrationsError
from integrations.ledger import schema
from integrations.ledger.store import Ledger, OperationRecord

console = Console()


@contextmanager
def _user_errors() -> Iterator[None]:
    """Errors a user can fix end the command with their message, not a traceback."""
    try:
        yield
    except (IntegrationsError, LookupError, ValueError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from exc


def _ledger() -> Ledger:
    return Ledger.connect(Settings().database_url)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@click.group()
@click.version_option(package_name="integrations")
def main() -> None:
    """Operate the integrations job queue: ledger, dead letters, providers.

    Settings come from the environment: DATABASE_URL, REDIS_URL, BROKER_URL, INTEGRATIONS_PROVIDERS_FILE.
    """


@main.group()
def db() -> None:
    """The ledger database."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Alembic revision to upgrade to.")
def db_upgrade(revision: str) -> None:
    """Create or migrate the ledger schema at DATABASE_URL."""
    url = Settings().database_url
    with _user_errors():
        schema.upgrade(url, revision)
    click.echo(f"ledger schema at revision {schema.head_revision() if revision == 'head' else revision}")


@main.group()
def ops() -> None:
    """Operations in the ledger."""


@ops.command("show")
@click.argument("idempotency_key")
@click.option("--provider", "-p", required=True, help="Provider the key belongs to (keys are per provider).")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
def ops_show(idempotency_key: str, provider: str, as_json: bool) -> None:
    """Show the ledger record of IDEMPOTENCY_KEY."""
    with _user_errors():
        record = _ledger().find(provider, idempotency_key)
    if record is None:
        raise click.ClickException(
            f"no operation with idempotency key {idempotency_key!r} for provider {provider!r}"
        )
    if as_json:
        _print_json(record.to_json())
        return
    table = Table(show_header=False, box=None)
    for name, value in record.to_json().items():
        if name in {"payload", "response", "error"} and value is not None:
            value = json.dumps(value, indent=1, sort_keys=True, default=str)
        table.add_row(f"[bold]{name}[/]", "" if value is None else str(value))
    console.print(table)


@ops.command("prune")
def ops_prune() -> None:
    """Delete ended operations past their retention (what the hourly maintenance task does)."""
    settings = Settings()
    with _user_errors():
        deleted = _ledger().prune(
            retention=settings.retention, dead_letter_retention=settings.dead_letter_retention
        )
    click.echo(f"deleted {deleted} ledger record(s) past retention")


@main.group()
def dlq() -> None:
    """Dead letters: operations that ended failed or dead."""


def _dead_letter(record: OperationRecord) -> dict[str, Any]:
    return {
        "operation_id": record.id,
        "provider": record.provider,
        "operation": record.operation,
        "idempotency_key": record.idempotency_key,
        "status": record.status.value,
        "attempts": record.attempts,
        "error": record.error,
        "finished_at": record.finished_at.isoformat() if record.finished_at else None,
    }


@dlq.command("list")
@click.option("--provider", "-p", default=None, help="Only this provider's dead letters.")
@click.option("--limit", default=1000, show_default=True, help="At most this many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print them as a JSON list.")
def dlq_list(provider: str | None, limit: int, as_json: bool) -> None:
    """List failed and dead operations, newest first."""
    with _user_errors():
        records = _ledger().dead_letters(provider, limit=limit)
    if as_json:
        _print_json([_dead_letter(record) for record in records])
        return
    for record in records:
        error = record.error or {}
        finished = record.finished_at.strftime("%Y-%m-%d %H:%M:%S") if record.finished_at else ""
        console.print(
            f"[bold]{record.id}[/]  {record.status.value}  {record.provider}.{record.operation}  "
            f"key={record.idempotency_key or '-'}  attempts={record.attempts}  {finished}",
            highlight=False,
        )
        console.print(
            f"    {error.get('type', '?')}: {error.get('message', '')}", highlight=False, soft_wrap=True
        )
    console.print(f"{len(records)} dead letter(s)")


@dlq.command("replay")
@click.argument("operation_id")
def dlq_replay(operation_id: str) -> None:
    """Enqueue a failed or dead operation again, same key, fresh attempt budget."""
    from tasks.enqueue import enqueue  # sending a message needs Celery, which the core never imports

    ledger = _ledger()
    with _user_errors():
        before = ledger.get(operation_id)
        queued = ledger.reset_for_replay(operation_id)
        assert before is not None
        try:
            task_id = enqueue(queued)
        except Exception as exc:
            if ledger.restore(before, queued):
                raise ConfigError(
                    f"could not enqueue operation {operation_id}, left as it was: {exc}"
                ) from exc
            raise ConfigError(
                f"could not enqueue operation {operation_id} ({exc}), and it changed meanwhile: "
                f"see `integrations ops show {queued.idempotency_key} --provider {queued.provider}`"
            ) from exc
    click.echo(
        f"replaying {queued.provider}.{queued.operation} key={queued.idempotency_key} "
        f"operation_id={operation_id} as task {task_id}"
    )


@main.command("providers")
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON.")
def providers_command(as_json: bool) -> None:
    """List configured providers with their queue, tasks and limits."""
    from integrations.runtime import Runtime

    settings = Settings()
    with _user_errors():
        runtime = Runtime.load(settings.providers_file, settings.database_url, settings.redis_url)
    rows: list[dict[str, Any]] = [
        {
            "provider": name,
            "adapter": provider.adapter,
            "queue": provider.queue,
            "tasks": [provider.task_name(op) for op in runtime.adapter_classes[name].operations],
            "base_url": provider.base_url,
            "rate_limit": provider.rate_limit.text if provider.rate_limit else None,
            "burst": provider.burst,
            "max_attempts": provider.retry.max_attempts,
        }
        for name, provider in runtime.providers.items()
    ]
    if as_json:
        _print_json(rows)
        return
    table = Table(
        "provider", "adapter", "queue", "tasks", "rate limit", "attempts", title=str(settings.providers_file)
    )
    for row in rows:
        table.add_row(
            row["provider"],
            row["adapter"],
            row["queue"],
            "\n".join(row["tasks"]),
            f"{row['rate_limit'] or '-'} (burst {row['burst'] or '-'})",
            str(row["max_attempts"]),
        )
    console.print(table)


@main.command("demo")
@click.option("--operations", default=200, show_default=True, help="How many operations to enqueue.")
def demo_command(operations: int) -> None:
    """Run the demo: a provider simulator, a worker and a mixed workload, then a summary."""
    from tasks.demo import run_demo  # the demo sends messages, so it lives beside the Celery glue

    sys.exit(run_demo(operations))
