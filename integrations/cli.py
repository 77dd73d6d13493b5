"""The operator commands of ``integrations``: the ledger, dead letters, breakers, limits and providers.

The core knows neither the settings nor Celery: the wiring layer (``config/cli.py``) builds the command with
:func:`build_cli`, handing it an :class:`OperatorContext` factory, and adds the commands that need Celery.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import click
import redis
from rich.console import Console
from rich.table import Table

from integrations import batch
from integrations.errors import ConfigError, IntegrationsError
from integrations.ledger import schema
from integrations.ledger.records import Items, ItemStatus, OperationRecord
from integrations.ledger.store import Ledger
from integrations.providers import ProviderSettings, Rate
from integrations.replay import reset_for_replay
from integrations.resilience.breaker import SharedBreaker
from integrations.resilience.throttle import Throttle
from integrations.runtime import Runtime

console = Console()


@dataclass(frozen=True)
class OperatorContext:
    """What the operator commands need from the wiring: where state lives, how long ended operations are
    kept, and how to send a replayed operation's message (``publish(record) -> task id``)."""

    database_url: str
    redis_url: str
    providers_file: Path
    retention: timedelta
    dead_letter_retention: timedelta
    publish: Callable[[OperationRecord], str]


def _context() -> OperatorContext:
    """The running command's context, made on first use so settings are read when a command runs."""
    made: Callable[[], OperatorContext] = click.get_current_context().find_root().obj
    return made()


@contextmanager
def _user_errors() -> Iterator[None]:
    """Errors a user can fix end the command with their message, not a traceback."""
    try:
        yield
    except redis.RedisError as exc:
        where = _context().redis_url.rsplit("@", 1)[-1]
        raise click.ClickException(f"Redis at {where} (REDIS_URL) cannot be reached: {exc}") from exc
    except (IntegrationsError, LookupError, ValueError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from exc


def _ledger() -> Ledger:
    return Ledger.connect(_context().database_url)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@click.group()
def db() -> None:
    """The ledger database."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Alembic revision to upgrade to.")
def db_upgrade(revision: str) -> None:
    """Create or migrate the ledger schema at DATABASE_URL."""
    url = _context().database_url
    with _user_errors():
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
    context = _context()
    with _user_errors():
        deleted = _ledger().prune(
            retention=context.retention, dead_letter_retention=context.dead_letter_retention
        )
    click.echo(f"deleted {deleted} ledger record(s) past retention")


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


@dlq.command("replay")
@click.argument("operation_id")
def dlq_replay(operation_id: str) -> None:
    """Enqueue a failed, dead or partial operation again, same key, fresh attempt budget (a batch sends
    again only its items that did not succeed)."""
    ledger = _ledger()
    with _user_errors():
        before, queued = reset_for_replay(ledger, operation_id)
        try:
            task_id = _context().publish(queued)
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


def _runtime() -> Runtime:
    context = _context()
    return Runtime.load(context.providers_file, context.database_url, context.redis_url)


def _provider(runtime: Runtime, name: str) -> ProviderSettings:
    try:
        return runtime.providers[name]
    except KeyError:
        known = ", ".join(sorted(runtime.providers)) or "none"
        raise click.ClickException(f"no provider {name!r} in the providers file (known: {known})") from None


def _breakers(runtime: Runtime, names: list[str]) -> list[SharedBreaker]:
    providers = [_provider(runtime, name) for name in names] or list(runtime.providers.values())
    return [SharedBreaker(runtime.redis, p.name, p.breaker, probe_ttl=p.lease_seconds) for p in providers]


@click.group()
def breaker() -> None:
    """The circuit breaker of each provider, shared by every worker (state in Redis)."""


@breaker.command("show")
@click.argument("provider", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def breaker_show(provider: str | None, as_json: bool) -> None:
    """Show state, counts, when it opened and when it may half-open."""
    with _user_errors():
        runtime = _runtime()
        statuses = [b.status() for b in _breakers(runtime, [provider] if provider else [])]
    if as_json:
        _print_json([status.to_json() for status in statuses])
        return
    table = Table(
        "provider", "state", "failures in a row", "window (failed/calls)", "opened", "may half-open"
    )
    for status in statuses:
        state = status.state + (f" (forced {status.forced})" if status.forced else "")
        if status.probe_in_flight:
            state += ", probe in flight"
        table.add_row(
            status.provider,
            state,
            str(status.consecutive_failures),
            f"{status.window_failures}/{status.window_calls}",
            _when(status.opened_at),
            _when(status.half_open_at),
        )
    console.print(table)


@breaker.command("open")
@click.argument("provider")
@click.option(
    "--for",
    "seconds",
    type=click.FloatRange(min=1),
    default=None,
    help="End by itself after this many seconds.",
)
def breaker_open(provider: str, seconds: float | None) -> None:
    """Force PROVIDER's breaker open (a maintenance window): no calls until `breaker close`."""
    with _user_errors():
        [shared] = _breakers(_runtime(), [provider])
        shared.force_open(seconds)
    until = f" for {seconds:g}s" if seconds is not None else f" until `integrations breaker close {provider}`"
    click.echo(f"breaker of {provider} forced open{until}; operations wait, using no attempts")


@breaker.command("close")
@click.argument("provider")
def breaker_close(provider: str) -> None:
    """End any forcing and close PROVIDER's breaker with fresh counts."""
    with _user_errors():
        [shared] = _breakers(_runtime(), [provider])
        shared.close()
    click.echo(f"breaker of {provider} closed")


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


@click.group()
def limits() -> None:
    """Rate limits of each provider, tunable live for every worker (within a second, no restart)."""


@limits.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def limits_show(as_json: bool) -> None:
    """Show each provider's effective rate limit beside the providers file's."""
    with _user_errors():
        runtime = _runtime()
        rows: list[dict[str, Any]] = []
        for provider in runtime.providers.values():
            throttle = Throttle(runtime.redis, provider)
            current = throttle.limits()
            rows.append(
                {
                    "provider": provider.name,
                    "effective_rate_per_second": current.rate,
                    "effective_burst": current.burst,
                    "overridden": current.overridden,
                    "file_rate_limit": provider.rate_limit.text if provider.rate_limit else None,
                    "file_burst": provider.capacity,
                    "paused_for_seconds": round(throttle.paused_for(), 3),
                }
            )
    if as_json:
        _print_json(rows)
        return
    table = Table("provider", "effective", "file", "paused")
    for row in rows:
        effective = (
            f"{row['effective_rate_per_second']:g}/s burst {row['effective_burst']}"
            if row["effective_rate_per_second"]
            else "unlimited"
        )
        if row["overridden"]:
            effective += " (set live)"
        file_value = (
            f"{row['file_rate_limit']} burst {row['file_burst']}" if row["file_rate_limit"] else "unlimited"
        )
        paused = f"{row['paused_for_seconds']:g}s" if row["paused_for_seconds"] else "-"
        table.add_row(row["provider"], effective, file_value, paused)
    console.print(table)


@limits.command("set")
@click.argument("provider")
@click.argument("rate")
@click.option(
    "--burst", type=click.IntRange(min=1), default=None, help="Bucket size (default: one second's worth)."
)
def limits_set(provider: str, rate: str, burst: int | None) -> None:
    """Set PROVIDER's rate limit to RATE (N/s, N/m or N/h) on every running worker."""
    with _user_errors():
        runtime = _runtime()
        parsed = Rate.parse(rate)
        applied = Throttle(runtime.redis, _provider(runtime, provider)).set_limits(parsed, burst)
    click.echo(f"{provider}: {parsed.text} (burst {applied.burst}) for every worker, until `limits reset`")


@limits.command("reset")
@click.argument("provider")
def limits_reset(provider: str) -> None:
    """Return PROVIDER to the providers file's rate limit."""
    with _user_errors():
        runtime = _runtime()
        effective = Throttle(runtime.redis, _provider(runtime, provider)).reset_limits()
    shown = f"{effective.rate:g}/s burst {effective.burst}" if effective.rate else "unlimited"
    click.echo(f"{provider}: back to the providers file's limit ({shown}); any pause ended")


@click.command("providers")
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON.")
def providers_command(as_json: bool) -> None:
    """List configured providers with their queue, tasks and limits."""
    context = _context()
    with _user_errors():
        runtime = _runtime()
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
        "provider", "adapter", "queue", "tasks", "rate limit", "attempts", title=str(context.providers_file)
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


def build_cli(context: Callable[[], OperatorContext], *extra: click.Command) -> click.Group:
    """The ``integrations`` command: the operator commands, taking settings and the publisher from
    ``context`` (called once, when a command first needs it; ``--help`` reads nothing), and ``extra``."""

    @click.group("integrations", commands=[db, ops, dlq, breaker, limits, providers_command, *extra])
    @click.version_option(package_name="integrations")
    @click.pass_context
    def main(ctx: click.Context) -> None:
        """Operate the integrations job queue: ledger, dead letters, providers.

        Settings come from the environment: DATABASE_URL, REDIS_URL, BROKER_URL, INTEGRATIONS_PROVIDERS_FILE.
        """
        ctx.obj = cache(context)

    return main
