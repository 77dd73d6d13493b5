"""Operator commands on the providers: the shared breakers, the live rate limits, the providers file."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from integrations.cli.audit import audited, record_action
from integrations.cli.context import console, current, print_json, user_errors, when
from integrations.ledger.records import AuditAction
from integrations.providers import ProviderSettings, Rate
from integrations.resilience.breaker import BreakerStatus, SharedBreaker
from integrations.resilience.throttle import Limits, Throttle
from integrations.runtime import Runtime


def _runtime() -> Runtime:
    context = current()
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
    with user_errors():
        runtime = _runtime()
        statuses = [b.status() for b in _breakers(runtime, [provider] if provider else [])]
    if as_json:
        print_json([status.to_json() for status in statuses])
        return
    # Plain lines, never a table: an 80-column or piped output shows them whole.
    for status in statuses:
        click.echo(f"{status.provider}: {_state(status)}")
        click.echo(
            f"  failures in a row {status.consecutive_failures}; window: {status.window_failures} failed of "
            f"{status.window_calls} calls"
        )


def _state(status: BreakerStatus) -> str:
    """What admission does now: an operator's forcing first, with when it ends, then the counted state,
    with when it opened and may half-open. Times in UTC."""
    if status.forced:
        until = (
            f"until {when(status.forced_until)} UTC"
            if status.forced_until
            else f"until `integrations breaker close {status.provider}`"
        )
        return f"forced {status.forced} {until} (counted: {status.state.value})"
    state = status.state.value
    if status.opened_at is not None:
        state += f" since {when(status.opened_at)} UTC"
    if status.half_open_at is not None:
        state += f", may half-open at {when(status.half_open_at)} UTC"
    return state + (", probe in flight" if status.probe_in_flight else "")


@breaker.command("open")
@click.argument("provider")
@click.option(
    "--for",
    "seconds",
    type=click.FloatRange(min=1),
    default=None,
    help="End by itself after this many seconds.",
)
@audited()
def breaker_open(provider: str, seconds: float | None, actor: str, reason: str | None) -> None:
    """Force PROVIDER's breaker open (a maintenance window): no calls until `breaker close`."""
    with user_errors():
        [shared] = _breakers(_runtime(), [provider])
        was = shared.status()
        shared.force_open(seconds)
        now = shared.status()
    until = (
        f" for {seconds:g}s (until {when(now.forced_until)} UTC)"
        if seconds is not None
        else f" until `integrations breaker close {provider}`"
    )
    done = f"breaker of {provider} forced open{until}; operations wait, using no attempts"
    click.echo(done)
    details = {
        "was": _breaker_json(was),
        "seconds": seconds,
        "until": now.forced_until.isoformat() if now.forced_until else None,
    }
    record_action(
        done, AuditAction.BREAKER_OPEN, actor=actor, target=provider, reason=reason, details=details
    )


@breaker.command("close")
@click.argument("provider")
@audited()
def breaker_close(provider: str, actor: str, reason: str | None) -> None:
    """End any forcing and close PROVIDER's breaker with fresh counts."""
    with user_errors():
        [shared] = _breakers(_runtime(), [provider])
        was = shared.status()
        shared.close()
    done = f"breaker of {provider} closed"
    click.echo(done)
    details = {"was": _breaker_json(was)}
    record_action(
        done, AuditAction.BREAKER_CLOSE, actor=actor, target=provider, reason=reason, details=details
    )


def _breaker_json(status: BreakerStatus) -> dict[str, Any]:
    """What the audit trail keeps of a breaker: its state and any forcing."""
    return {
        "state": status.state.value,
        "forced": status.forced,
        "forced_until": status.forced_until.isoformat() if status.forced_until else None,
    }


@click.group()
def limits() -> None:
    """Rate limits of each provider, tunable live for every worker (within a second, no restart)."""


@limits.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def limits_show(as_json: bool) -> None:
    """Show each provider's effective rate limit beside the providers file's."""
    with user_errors():
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
        print_json(rows)
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
@audited()
def limits_set(provider: str, rate: str, burst: int | None, actor: str, reason: str | None) -> None:
    """Set PROVIDER's rate limit to RATE (N/s, N/m or N/h) on every running worker."""
    with user_errors():
        runtime = _runtime()
        parsed = Rate.parse(rate)
        throttle = Throttle(runtime.redis, _provider(runtime, provider))
        old = throttle.limits()
        applied = throttle.set_limits(parsed, burst)
    done = f"{provider}: {parsed.text} (burst {applied.burst}) for every worker, until `limits reset`"
    click.echo(done)
    details = {"old": _limits_json(old), "new": _limits_json(applied) | {"rate": parsed.text}}
    record_action(done, AuditAction.LIMITS_SET, actor=actor, target=provider, reason=reason, details=details)


@limits.command("reset")
@click.argument("provider")
@audited()
def limits_reset(provider: str, actor: str, reason: str | None) -> None:
    """Return PROVIDER to the providers file's rate limit."""
    with user_errors():
        runtime = _runtime()
        throttle = Throttle(runtime.redis, _provider(runtime, provider))
        old = throttle.limits()
        effective = throttle.reset_limits()
    shown = f"{effective.rate:g}/s burst {effective.burst}" if effective.rate else "unlimited"
    done = f"{provider}: back to the providers file's limit ({shown}); any pause ended"
    click.echo(done)
    details = {"old": _limits_json(old), "new": _limits_json(effective)}
    record_action(
        done, AuditAction.LIMITS_RESET, actor=actor, target=provider, reason=reason, details=details
    )


def _limits_json(limits: Limits) -> dict[str, Any]:
    return {"rate_per_second": limits.rate, "burst": limits.burst, "overridden": limits.overridden}


@click.command("providers")
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON.")
def providers_command(as_json: bool) -> None:
    """List configured providers with their queue, tasks and limits."""
    context = current()
    with user_errors():
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
        print_json(rows)
        return
    # Plain lines, never a table: queue and task names are what people copy, so no width may cut them.
    click.echo(f"providers in {context.providers_file}:")
    for row in rows:
        limit = f"{row['rate_limit']} (burst {row['burst']})" if row["rate_limit"] else "unlimited"
        click.echo(
            f"\n{row['provider']}  adapter {row['adapter']}, rate limit {limit}, at most {row['max_attempts']} "
            f"attempts\n  queue  {row['queue']}"
        )
        for task in row["tasks"]:
            click.echo(f"  task   {task}")
