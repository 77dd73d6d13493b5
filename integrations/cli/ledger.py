"""Operator commands on the ledger: the schema, operations, and dead letters with their replay."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.table import Table

from integrations import batch
from integrations.cli.context import console, current, open_ledger, print_json, user_errors
from integrations.errors import ConfigError
from integrations.ledger import schema
from integrations.ledger.records import Items, ItemStatus, OperationRecord
from integrations.replay import ServedOperations, reset_for_replay
from integrations.runtime import Runtime
from integrations.sweeper import Sweeper


@click.group()
def db() -> None:
    """The ledger database."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Alembic revision to upgrade to.")
def db_upgrade(revision: str) -> None:
    """Create or migrate the ledger schema at DATABASE_URL."""
    url = current().database_url
    with user_errors():
        schema.upgrade(url, revision)
    click.echo(f"ledger schema at revision {schema.head_revision() if revision == 'head' else revision}")


@click.group()
def ops() -> None:
    """Operations in the ledger."""


@ops.command("show")
@click.argument("idempotency_key")
@click.option("--provider", "-p", required=True, help="Provider the key belongs to (keys are per provider).")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
def ops_show(idempotency_key: str, provider: str, as_json: bool) -> None:
    """Show the ledger record of IDEMPOTENCY_KEY."""
    with user_errors():
        record = open_ledger().find(provider, idempotency_key)
    if record is None:
        raise click.ClickException(
            f"no operation with idempotency key {idempotency_key!r} for provider {provider!r}"
        )
    if as_json:
        print_json(record.to_json())
        return
    table = Table(show_header=False, box=None)
    for name, value in record.to_json().items():
        if name == "items":
            continue
        if name in {"payload", "response", "error"} and value is not None:
            value = json.dumps(value, indent=1, sort_keys=True, default=str)
        table.add_row(f"[bold]{name}[/]", "" if value is None else str(value))
    console.print(table)
    if record.items is not None:
        _print_items(record.items)


def _print_items(states: Items) -> None:
    """A batch's items, one line each: key, status, attempts, and the error or the provider's answer."""
    table = Table(title=f"items: {batch.summary(states)}", title_justify="left")
    for column in ("key", "status", "attempts", "error / response"):
        table.add_column(column, overflow="fold")
    for state in states:
        if state.error is not None:
            detail = f"{state.error.type.value}: {state.error.message}"
        else:
            detail = "" if state.response is None else json.dumps(state.response, sort_keys=True, default=str)
        table.add_row(state.key, state.status.value, str(state.attempts), detail[:300])
    console.print(table)


@ops.command("prune")
def ops_prune() -> None:
    """Delete ended operations past their retention (what the hourly maintenance task does)."""
    context = current()
    with user_errors():
        deleted = open_ledger().prune(
            retention=context.retention, dead_letter_retention=context.dead_letter_retention
        )
    click.echo(f"deleted {deleted} ledger record(s) past retention")


@ops.command("sweep")
def ops_sweep() -> None:
    """Send again the operations whose message the broker dropped (what beat runs every sweep interval)."""
    context = current()
    if context.resend is None:
        raise click.ClickException("this installation has no publisher for swept operations")
    with user_errors():
        served = _served()
        sweeper = Sweeper(open_ledger(), context.resend, set(served.operations), context.sweep_grace)
        swept = sweeper.sweep()
    for each in swept:
        record = each.record
        click.echo(
            f"sent again: {record.where} key={record.idempotency_key} operation_id={record.id} "
            f"({record.status.value}) as task {each.task_id}"
        )
    click.echo(f"{len(swept)} operation(s) sent again")


@click.group()
def dlq() -> None:
    """Dead letters: operations that ended failed or dead, and batches that ended partial."""


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
    } | ({"items": batch.counts(record.items)} if record.items is not None else {})


@dlq.command("list")
@click.option("--provider", "-p", default=None, help="Only this provider's dead letters.")
@click.option("--limit", default=1000, show_default=True, help="At most this many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print them as a JSON list.")
def dlq_list(provider: str | None, limit: int, as_json: bool) -> None:
    """List failed and dead operations, newest first."""
    with user_errors():
        records = open_ledger().dead_letters(provider, limit=limit)
    if as_json:
        print_json([_dead_letter(record) for record in records])
        return
    for record in records:
        error = record.error or {}
        finished = record.finished_at.strftime("%Y-%m-%d %H:%M:%S") if record.finished_at else ""
        console.print(
            f"[bold]{record.id}[/]  {record.status.value}  {record.provider}.{record.operation}  "
            f"key={record.idempotency_key or '-'}  attempts={record.attempts}  {finished}",
            highlight=False,
        )
        if record.items is not None:
            states = record.items
            console.print(f"    items: {batch.summary(states)}", highlight=False)
            failed = [s for s in states if s.error is not None and s.status is ItemStatus.FAILED]
            for state in failed[:3]:
                assert state.error is not None
                console.print(
                    f"    {state.key}: {state.error.type.value}: {state.error.message}",
                    highlight=False,
                    soft_wrap=True,
                )
            continue
        console.print(
            f"    {error.get('type', '?')}: {error.get('message', '')}", highlight=False, soft_wrap=True
        )
    console.print(f"{len(records)} dead letter(s)")


def _served() -> ServedOperations:
    """The providers file's providers and their adapters' operations: what a replayed message may name."""
    context = current()
    runtime = Runtime.load(context.providers_file, context.database_url, context.redis_url)
    operations = {name: tuple(runtime.adapter_classes[name].operations) for name in runtime.providers}
    return ServedOperations(operations, str(context.providers_file))


@dlq.command("replay")
@click.argument("operation_id")
def dlq_replay(operation_id: str) -> None:
    """Enqueue a failed, dead or partial operation again, same key, fresh attempt budget (a batch sends
    again only its items that did not succeed)."""
    ledger = open_ledger()
    with user_errors():
        before, queued = reset_for_replay(ledger, operation_id, _served())
        try:
            task_id = current().publish(queued)
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
