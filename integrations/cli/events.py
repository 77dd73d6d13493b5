"""Operator commands on inbound webhook events: what came from which provider, whether it was handled,
and the operation it confirms or contradicts; and handling an ended one again (``events replay``). Plain lines, so nothing is cut on a narrow terminal or in
a pipe; the body, as received, only in ``events show``."""

from __future__ import annotations

import json
from datetime import datetime

import click

from integrations.cli.audit import SINCE, audited, record_action
from integrations.cli.context import current, one_reference, print_json, user_errors, when
from integrations.ledger.records import AuditAction
from integrations.webhooks.handling import reset_for_replay
from integrations.webhooks.store import EventRecord, EventStatus, EventStore, body_text

# The audit trail's name of an event replay (dlq.replay's until the trail has its own).


@click.group()
def events() -> None:
    """Inbound webhook events: stored once per provider and event id, and how their handling went."""


def _store() -> EventStore:
    return EventStore.connect(current().database_url)


def _outcome_lines(record: EventRecord) -> list[str]:
    """The operation the event stands for, and its last error, as indented lines."""
    lines = []
    if record.operation_id is not None and record.relation is not None:
        lines.append(f"    {record.relation.value} operation {record.operation_id}")
    if record.error is not None:
        lines.append(f"    {record.error.get('type', '?')}: {record.error.get('message', '')}")
    return lines


@events.command("list")
@click.option("--provider", "-p", default=None, help="Only this provider's events.")
@click.option("--type", "-t", "event_type", default=None, help="Only events of this type.")
@click.option(
    "--status",
    "-s",
    type=click.Choice([status.value for status in EventStatus]),
    default=None,
    help="Only events whose handling stands so.",
)
@click.option("--since", type=SINCE, default=None, help="Only those received since: 2h, 1d, or an ISO time.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print them as a JSON list (without bodies).")
def events_list(
    provider: str | None,
    event_type: str | None,
    status: str | None,
    since: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """List webhook events, newest first, with how their handling went (bodies: `events show`)."""
    with user_errors():
        records = _store().list(
            provider=provider,
            type=event_type,
            status=EventStatus(status) if status is not None else None,
            since=since,
            limit=limit,
        )
    if as_json:
        print_json([record.to_json() for record in records])
        return
    for record in records:
        click.echo(
            f"{record.id}  {record.status.value}  {record.provider}  {record.type}  "
            f"event={record.event_id}  attempts={record.attempts}  received {when(record.received_at)}"
        )
        for line in _outcome_lines(record):
            click.echo(line)
    click.echo(f"{len(records)} event(s)" + (f" (at most {limit}: --limit)" if len(records) == limit else ""))


@events.command("show")
@click.argument("reference", nargs=-1, required=True, metavar="ID | EVENT_ID --provider PROVIDER")
@click.option(
    "--provider", "-p", default=None, help="Provider the event id belongs to (ids are per provider)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the event as JSON, its body included.")
def events_show(reference: tuple[str, ...], provider: str | None, as_json: bool) -> None:
    """Show a webhook event and its body as received: by the id `events list` shows, or by the
    provider's event id (`events show evt_123 --provider stripe`, or `events show stripe evt_123`)."""
    record = _find(reference, provider)
    if as_json:
        print_json(record.to_json(with_body=True))
        return
    for name, value in record.to_json().items():
        if name == "error" and value is not None:
            value = json.dumps(value, sort_keys=True, default=str)
        click.echo(f"{name}: {'-' if value is None else value}")
    body = record.body or b""
    text = body_text(body)
    if text is None:
        click.echo(f"body ({len(body)} bytes, not UTF-8; `--json` gives it as base64)")
        return
    click.echo(f"body ({len(body)} bytes, as received):")
    click.echo(text)


def _find(reference: tuple[str, ...], provider: str | None) -> EventRecord:
    """The event ``events show`` names: ``(ID,)``, ``(EVENT_ID,)`` with ``provider``, or
    ``(PROVIDER, EVENT_ID)``."""
    provider, key = one_reference(
        reference,
        provider,
        "name one event: `events show ID` (as `events list` shows it), `events show EVENT_ID "
        "--provider P` or `events show P EVENT_ID`",
    )
    store = _store()
    with user_errors():
        record = store.get(key) if provider is None else store.find(provider, key)
    if record is not None:
        return record
    if provider is not None:
        raise click.ClickException(
            f"no event {key!r} of provider {provider!r} in the ledger at {store.where} (events are kept "
            "for their retention only)"
        )
    raise click.ClickException(
        f"no event with id {key!r} in the ledger at {store.where}; for a provider's event id, name the "
        f"provider: `integrations events show {key} --provider PROVIDER`"
    )


@events.command("replay")
@click.argument("event_id", metavar="ID")
@audited()
def events_replay(event_id: str, actor: str, reason: str | None) -> None:
    """Handle an event again whose handling ended (dead, failed, unhandled or handled): back to received
    with a fresh attempt count, its handling sent to its provider's queue. ID as `events list` shows it."""
    publish = current().publish_event
    if publish is None:
        raise click.ClickException("this installation cannot send messages: replaying needs the queue")
    store = _store()
    with user_errors():
        before, after = reset_for_replay(store, event_id)
    try:
        task_id = publish(after.provider, after.id)
    except Exception as exc:
        raise click.ClickException(
            f"event {event_id} is received again, but its handling message could not be sent "
            f"({type(exc).__name__}: {exc}); the sweeper sends it once the broker answers"
        ) from exc
    click.echo(
        f"replaying event {event_id} ({after.provider} {after.type} {after.event_id}) as task {task_id}"
    )
    record_action(
        f"event {event_id} was replayed as task {task_id}",
        AuditAction.EVENTS_REPLAY,
        actor=actor,
        target=event_id,
        reason=reason,
        details={
            "kind": "webhook_event",
            "provider": before.provider,
            "type": before.type,
            "event_id": before.event_id,
            "task_id": task_id,
            "was": before.status.value,
            "attempts": before.attempts,
        },
    )
