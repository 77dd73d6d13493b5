"""Operator commands on the ledger: the schema, operations (finding them, their attempts, conflicting
messages), and dead letters: list, replay by id or by filter, discard."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from integrations import batch
from integrations.cli.audit import DURATION, SINCE, audited, record_action
from integrations.cli.context import (
    console,
    current,
    one_reference,
    open_ledger,
    print_json,
    user_errors,
    when,
)
from integrations.errors import ConfigError, ErrorType
from integrations.ledger import schema
from integrations.ledger.models import OperationStatus
from integrations.ledger.records import AuditAction, Items, ItemStatus, OperationRecord
from integrations.ledger.rows import HISTORY_LIMIT
from integrations.ledger.store import Ledger
from integrations.replay import (
    DeadLetterFilter,
    Selection,
    ServedOperations,
    discard,
    reset_for_replay,
    select_for_replay,
    why_not_replayable,
)
from integrations.runtime import Runtime
from integrations.sweeper import Sweeper
from integrations.webhooks.store import EventRecord, EventStore

# A replay by filter's audit entry names at most this many operation ids (and always how many went).
MAX_IDS_RECORDED = 1000


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
@click.argument("reference", nargs=-1, required=True, metavar="ID | KEY --provider PROVIDER | PROVIDER KEY")
@click.option("--provider", "-p", default=None, help="Provider the key belongs to (keys are per provider).")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
def ops_show(reference: tuple[str, ...], provider: str | None, as_json: bool) -> None:
    """Show an operation's ledger record, with the history of its attempts and the webhook events that
    confirm or contradict it.

    By operation id or Celery task id (`ops show ID`), or by idempotency key and provider
    (`ops show KEY --provider acme`, or `ops show acme KEY`)."""
    ledger = open_ledger()
    record = _find(ledger, reference, provider)
    with user_errors():
        events = EventStore.sharing(ledger).for_operation(record.id)
    if as_json:
        print_json(record.to_json() | {"events": [event.to_json() for event in events]})
        return
    shown = record.to_json()
    for name in ("items", "history", "last_conflict_at", "discarded_at", "discarded_by", "discard_reason"):
        del shown[name]
    if record.conflicts:
        assert record.last_conflict_at is not None
        shown["conflicts"] = (
            f"{record.conflicts} message(s) reused the key for another operation or payload; last at "
            f"{when(record.last_conflict_at)}"
        )
    table = Table(show_header=False, box=None)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in shown.items():
        if name in {"payload", "response", "error"} and value is not None:
            value = json.dumps(value, indent=1, sort_keys=True, default=str)
        table.add_row(f"[bold]{name}[/]", "" if value is None else str(value))
    if record.discarded_at is not None:
        table.add_row(
            "[bold]discarded[/]",
            f"{when(record.discarded_at)} by {record.discarded_by}: {record.discard_reason}",
        )
    console.print(table)
    _print_history(record)
    if record.items is not None:
        _print_items(record.items)
    _print_events(events)


def _find(ledger: Ledger, reference: tuple[str, ...], provider: str | None) -> OperationRecord:
    """The operation ``ops show`` names: ``(ID,)``, ``(KEY,)`` with ``provider``, or ``(PROVIDER, KEY)``."""
    provider, key = one_reference(
        reference,
        provider,
        "name one operation: `ops show ID` (operation id or Celery task id), `ops show KEY --provider P` "
        "or `ops show P KEY`",
    )
    with user_errors():
        if provider is not None:
            record = ledger.find(provider, key)
            if record is None:
                raise click.ClickException(
                    f"no operation with idempotency key {key!r} for provider {provider!r} in the ledger at "
                    f"{ledger.where}"
                )
            return record
        found = ledger.lookup(key)
    if not found:
        raise click.ClickException(
            f"no operation with operation id or task id {key!r} in the ledger at {ledger.where}; for an "
            f"idempotency key, name its provider: `integrations ops show {key} --provider PROVIDER`"
        )
    if len(found) > 1:
        named = ", ".join(f"{r.id} ({r.where} key={r.idempotency_key})" for r in found)
        raise click.ClickException(f"{key!r} names several operations: {named}; show one by its key")
    return found[0]


def _print_history(record: OperationRecord) -> None:
    """The last attempts, oldest first: when, how long, outcome, status code and error."""
    if not record.history:
        return
    title = (
        f"attempts (the last {len(record.history)})" if len(record.history) >= HISTORY_LIMIT else "attempts"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("started (UTC)", no_wrap=True)
    table.add_column("took", justify="right", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("status")
    table.add_column("error", overflow="fold")
    for entry in record.history:
        started = datetime.fromisoformat(entry["started_at"]) if entry["started_at"] else None
        seconds = entry["seconds"]
        error = f"{entry['error_type']}: {entry['error']}" if entry["error_type"] else ""
        table.add_row(
            str(entry["attempt"]),
            when(started),
            "-" if seconds is None else f"{seconds:.3f}s",
            entry["outcome"],
            "" if entry["status_code"] is None else str(entry["status_code"]),
            error,
        )
    console.print(table)


def _print_events(events: list[EventRecord]) -> None:
    """The webhook events linked to the operation, oldest first, one plain line each (nothing is cut on a
    narrow terminal): when it came, its type, how it stands to the operation, how its handling went, and
    the id `events show` takes."""
    if not events:
        return
    click.echo(f"events ({len(events)}): received (UTC), type, relation to it, status, id")
    for event in events:
        relation = event.relation.value if event.relation else "-"
        click.echo(f"  {when(event.received_at)}  {event.type}  {relation}  {event.status.value}  {event.id}")


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


def _summary(record: OperationRecord) -> dict[str, Any]:
    """An operation in a list: what finds it again, where it stands, and its error's type."""
    stamps = {
        name: moment.isoformat() if moment else None
        for name, moment in (
            ("created_at", record.created_at),
            ("updated_at", record.updated_at),
            ("finished_at", record.finished_at),
            ("next_attempt_at", record.next_attempt_at),
        )
    }
    return {
        "operation_id": record.id,
        "task_id": record.task_id,
        "provider": record.provider,
        "operation": record.operation,
        "idempotency_key": record.idempotency_key,
        "status": record.status.value,
        "waiting": record.waiting,
        "attempts": record.attempts,
        "replays": record.replays,
        "error_type": (record.error or {}).get("type"),
        "conflicts": record.conflicts,
        "discarded": record.discarded,
    } | stamps


@ops.command("list")
@click.option("--provider", "-p", default=None, help="Only this provider's operations.")
@click.option(
    "--status",
    "-s",
    "statuses",
    multiple=True,
    type=click.Choice([status.value for status in OperationStatus]),
    help="Only operations in this status (repeat for several).",
)
@click.option(
    "--older-than",
    type=DURATION,
    default=None,
    help="Only those created longer ago than this: 30s, 10m, 2h, 1d.",
)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print them as a JSON list.")
def ops_list(
    provider: str | None, statuses: tuple[str, ...], older_than: timedelta | None, limit: int, as_json: bool
) -> None:
    """List operations, newest first: to find those stuck queued or running, or a provider's latest."""
    before = datetime.now(UTC) - older_than if older_than is not None else None
    with user_errors():
        records = open_ledger().operations(
            provider=provider,
            statuses=[OperationStatus(status) for status in statuses],
            created_before=before,
            limit=limit,
        )
    if as_json:
        print_json([_summary(record) for record in records])
        return
    for record in records:
        status = record.status.value + (" (discarded)" if record.discarded else "")
        click.echo(
            f"{record.id}  {status}  {record.where}  key={record.idempotency_key or '-'}  "
            f"attempts={record.attempts}  created {when(record.created_at)}"
        )
        if record.error is not None:
            click.echo(f"    {record.error.get('type', '?')}: {record.error.get('message', '')}")
        elif record.waiting is not None:
            click.echo(f"    waiting: {record.waiting} until {when(record.next_attempt_at)}")
    click.echo(
        f"{len(records)} operation(s)" + (f" (at most {limit}: --limit)" if len(records) == limit else "")
    )


@ops.command("conflicts")
@click.option("--provider", "-p", default=None, help="Only this provider's keys.")
@click.option(
    "--since", type=SINCE, default=None, help="Only keys with a conflict since: 2h, 1d, or an ISO time."
)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Latest first.")
@click.option("--json", "as_json", is_flag=True, help="Print them as a JSON list.")
def ops_conflicts(provider: str | None, since: datetime | None, limit: int, as_json: bool) -> None:
    """List the keys that received conflicting messages (the key reused for another operation or payload),
    how often and when last, the latest first."""
    with user_errors():
        records = open_ledger().conflicted(provider=provider, since=since, limit=limit)
    if as_json:
        print_json(
            [
                {
                    "provider": record.provider,
                    "idempotency_key": record.idempotency_key,
                    "conflicts": record.conflicts,
                    "last_conflict_at": record.last_conflict_at.isoformat()
                    if record.last_conflict_at
                    else None,
                    "operation_id": record.id,
                    "operation": record.operation,
                    "status": record.status.value,
                }
                for record in records
            ]
        )
        return
    for record in records:
        click.echo(
            f"{record.provider}  key={record.idempotency_key}  {record.conflicts} conflict(s), last "
            f"{when(record.last_conflict_at)}  held by {record.id} ({record.where}, {record.status.value})"
        )
    click.echo(f"{len(records)} key(s) with conflicts")


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
    """List failed and dead operations (and partial batches), newest first; discarded ones are not listed."""
    with user_errors():
        records = open_ledger().dead_letters(provider, limit=limit)
    if as_json:
        print_json([_dead_letter(record) for record in records])
        return
    # One print of every line: a print per line costs more than the query on a long list. What the
    # provider or the payload wrote is escaped, never read as markup.
    lines: list[str] = []
    for record in records:
        error = record.error or {}
        finished = record.finished_at.strftime("%Y-%m-%d %H:%M:%S") if record.finished_at else ""
        lines.append(
            f"[bold]{record.id}[/]  {record.status.value}  {escape(record.provider)}.{escape(record.operation)}  "
            f"key={escape(record.idempotency_key or '-')}  attempts={record.attempts}  {finished}"
        )
        if record.items is not None:
            states = record.items
            lines.append(f"    items: {escape(batch.summary(states))}")
            failed = [s for s in states if s.error is not None and s.status is ItemStatus.FAILED]
            for state in failed[:3]:
                assert state.error is not None
                lines.append(
                    f"    {escape(state.key)}: {state.error.type.value}: {escape(state.error.message)}"
                )
            continue
        lines.append(f"    {escape(str(error.get('type', '?')))}: {escape(str(error.get('message', '')))}")
    if lines:
        console.print("\n".join(lines), highlight=False, soft_wrap=True)
    console.print(f"{len(records)} dead letter(s)")


def _served() -> ServedOperations:
    """The providers file's providers and their adapters' operations: what a replayed message may name."""
    context = current()
    runtime = Runtime.load(context.providers_file, context.database_url, context.redis_url)
    operations = {name: tuple(runtime.adapter_classes[name].operations) for name in runtime.providers}
    return ServedOperations(operations, str(context.providers_file))


@dlq.command("replay")
@click.argument("operation_id", required=False)
@click.option("--provider", "-p", default=None, help="Replay the dead letters of this provider.")
@click.option(
    "--error-type",
    type=click.Choice([error_type.value for error_type in ErrorType]),
    default=None,
    metavar="TYPE",
    help="Replay the dead letters whose error is of this type, as `dlq list` shows it (a dead one's: retries_exhausted).",
)
@click.option(
    "--since", type=SINCE, default=None, help="Replay those that ended since: 2h, 1d, or an ISO time."
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="At most this many by filter.",
)
@click.option("--dry-run", is_flag=True, help="List what would be replayed; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Replay by filter without asking.")
@audited()
def dlq_replay(
    operation_id: str | None,
    provider: str | None,
    error_type: str | None,
    since: datetime | None,
    limit: int,
    dry_run: bool,
    yes: bool,
    actor: str,
    reason: str | None,
) -> None:
    """Enqueue dead letters again, same key, fresh attempt budget (a batch sends again only its items that
    did not succeed): OPERATION_ID, or those a filter matches (--provider, --error-type, --since; never
    discarded ones) once confirmed (--yes: without asking)."""
    which = DeadLetterFilter(provider, error_type, since)
    if operation_id is not None and not which.empty:
        raise click.UsageError("name an OPERATION_ID or filter (--provider, --error-type, --since), not both")
    if operation_id is None and which.empty:
        raise click.UsageError(
            "name an OPERATION_ID, or filter the dead letters to replay: --provider, --error-type, --since"
        )
    ledger = open_ledger()
    with user_errors():
        served = _served()
        if operation_id is not None:
            _replay_one(ledger, operation_id, served, dry_run, actor, reason)
            return
        selection = select_for_replay(ledger, which, served, limit=limit)
    _replay_selected(ledger, which, selection, served, dry_run=dry_run, yes=yes, actor=actor, reason=reason)


def _replay_one(
    ledger: Ledger, operation_id: str, served: ServedOperations, dry_run: bool, actor: str, reason: str | None
) -> None:
    if dry_run:
        record = ledger.get(operation_id)
        if record is None:
            raise LookupError(f"no operation {operation_id!r} in the ledger at {ledger.where}")
        served.refuse_unserved(record)
        why = why_not_replayable(record)
        if why is not None:
            raise ValueError(f"operation {operation_id} would not be replayed: {why}")
        click.echo(f"would replay {_named(record)}")
        click.echo("dry run: nothing was replayed")
        return
    before, queued = reset_for_replay(ledger, operation_id, served)
    task_id = _publish(ledger, before, queued)
    click.echo(f"replaying {_named(queued)} as task {task_id}")
    if before.discarded:
        click.echo(f"  it had been discarded by {before.discarded_by}: {before.discard_reason}")
    details = {
        "provider": before.provider,
        "operation": before.operation,
        "idempotency_key": before.idempotency_key,
        "task_id": task_id,
        "was": before.status.value,
    }
    if before.discarded:
        details["was_discarded_by"] = before.discarded_by
    record_action(
        f"operation {operation_id} was replayed as task {task_id}",
        AuditAction.DLQ_REPLAY,
        actor=actor,
        target=operation_id,
        reason=reason,
        details=details,
    )


def _replay_selected(
    ledger: Ledger,
    which: DeadLetterFilter,
    selection: Selection,
    served: ServedOperations,
    *,
    dry_run: bool,
    yes: bool,
    actor: str,
    reason: str | None,
) -> None:
    """Replay what a filter selected, once confirmed; one audit entry names how many went."""
    kinds = ", ".join(f"{where} ({count})" for where, count in selection.by_operation().items())
    click.echo(
        f"{len(selection.replayable)} dead letter(s) to replay for {which}" + (f": {kinds}" if kinds else "")
    )
    for record, why in selection.left:
        click.echo(f"  left as they are: {record.id} ({record.where}): {why}")
    if selection.more:
        click.echo(
            f"  more match than --limit {len(selection.replayable) + len(selection.left)}: run it again for the rest"
        )
    if dry_run:
        for record in selection.replayable:
            error_type = (record.error or {}).get("type", "-")
            click.echo(f"would replay {_named(record)} ({record.status.value}: {error_type})")
        click.echo("dry run: nothing was replayed")
        return
    if not selection.replayable:
        click.echo("nothing to replay")
        return
    if not yes:
        click.confirm(f"Replay these {len(selection.replayable)} operation(s)?", abort=True)
    replayed: list[str] = []
    skipped = 0
    failure: ConfigError | None = None
    for record in selection.replayable:
        try:
            before, queued = reset_for_replay(ledger, record.id, served)
        except (LookupError, ValueError) as exc:  # replayed, discarded or pruned since it was selected
            skipped += 1
            click.echo(f"  skipped: {exc}")
            continue
        try:
            task_id = _publish(ledger, before, queued)
        except ConfigError as exc:
            failure = exc
            break
        replayed.append(record.id)
        click.echo(f"replaying {_named(queued)} as task {task_id}")
    if replayed:
        record_action(
            f"{len(replayed)} operation(s) were replayed",
            AuditAction.DLQ_REPLAY,
            actor=actor,
            target=f"filter {which}",
            reason=reason,
            details={
                "filter": which.to_json(),
                "replayed": len(replayed),
                "operation_ids": replayed[:MAX_IDS_RECORDED],
                "skipped": skipped,
            },
        )
    if failure is not None:
        left = len(selection.replayable) - len(replayed) - skipped
        raise click.ClickException(
            f"{failure}; {len(replayed)} operation(s) were replayed before it, the other {left} were not "
            "(run the same replay again once the broker answers)"
        )
    click.echo(f"{len(replayed)} operation(s) replayed" + (f", {skipped} skipped" if skipped else ""))


def _publish(ledger: Ledger, before: OperationRecord, queued: OperationRecord) -> str:
    """Send the replayed operation's message; if it cannot go, put the row back as it was."""
    try:
        return current().publish(queued)
    except Exception as exc:
        if ledger.restore(before, queued):
            raise ConfigError(f"could not enqueue operation {queued.id}, left as it was: {exc}") from exc
        raise ConfigError(
            f"could not enqueue operation {queued.id} ({exc}), and it changed meanwhile: "
            f"see `integrations ops show {queued.id}`"
        ) from exc


def _named(record: OperationRecord) -> str:
    return f"{record.where} key={record.idempotency_key} operation_id={record.id}"


@dlq.command("discard")
@click.argument("operation_id")
@audited(reason_required=True)
def dlq_discard(operation_id: str, actor: str, reason: str) -> None:
    """Settle a dead letter for good: it leaves `dlq list` and is never replayed by a filter. Its row
    stays, and its key stays taken: a message sent again with the key gets the stored failure, and no
    call is made. `ops show` says who discarded it and why; `dlq replay OPERATION_ID` still can."""
    with user_errors():
        record, _action = discard(open_ledger(), operation_id, actor=actor, reason=reason)
    error_type = (record.error or {}).get("type", "-")
    click.echo(
        f"discarded {_named(record)} ({record.status.value}: {error_type}) by {actor}: {reason}\n"
        "It stays in the ledger and keeps its key: a message sent again with the key gets the stored "
        "failure, without a call."
    )
