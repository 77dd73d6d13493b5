"""The audit trail of operator actions (``integrations audit list``), and what the commands that change
the running system share to write it: who acts (``--actor``), why (``--reason``), and time filters.

An action is recorded after it took effect, so the trail says what was done. Breakers and limits live in
Redis: when the ledger's database cannot take the entry, the change stands and the command fails saying
so, rather than refusing a maintenance window because the database is down.
"""

from __future__ import annotations

import getpass
import re
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click

from integrations.cli.context import open_ledger, print_json, user_errors
from integrations.errors import IntegrationsError
from integrations.ledger.models import MAX_KEY_LENGTH
from integrations.ledger.records import ActionRecord, AuditAction

MAX_REASON = 2000
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

F = TypeVar("F", bound=Callable[..., Any])


class Duration(click.ParamType[timedelta]):
    """``30s``, ``10m``, ``2h``, ``1d``: a number and a unit."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        matched = _DURATION.fullmatch(str(value))
        if matched is None:
            self.fail(f"{value!r} is not a duration: give a number and a unit, as in 30s, 10m, 2h or 1d")
        return timedelta(seconds=float(matched[1]) * _UNITS[matched[2]])


class Since(click.ParamType[datetime]):
    """A moment: a duration before now (``2h``), or an ISO 8601 date or time (UTC unless it says)."""

    name = "since"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        if _DURATION.fullmatch(text):
            return datetime.now(UTC) - Duration().convert(text, param, ctx)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{value!r} is neither a duration (30s, 10m, 2h, 1d) nor an ISO 8601 date or time "
                "(2026-12-01 or 2026-12-01T09:30:00+01:00)"
            )
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


DURATION = Duration()
SINCE = Since()


def default_actor() -> str:
    """``user@host`` of the operating-system account running the command."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name: a container running as an arbitrary uid
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _actor(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    actor = (value or "").strip() or default_actor()
    if len(actor) > MAX_KEY_LENGTH or not actor.isprintable():
        raise click.BadParameter(
            f"at most {MAX_KEY_LENGTH} printable characters (it was {len(actor)}): a name, such as an e-mail "
            "address or alice@ops-laptop",
            ctx,
            param,
        )
    return actor


def _reason(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    reason = (value or "").strip() or None
    if param.required and reason is None:
        raise click.BadParameter("say why, in a few words: the audit trail keeps it", ctx, param)
    if reason is not None and len(reason) > MAX_REASON:
        raise click.BadParameter(f"at most {MAX_REASON} characters (it was {len(reason)})", ctx, param)
    return reason


def audited(*, reason_required: bool = False) -> Callable[[F], F]:
    """The ``--actor`` and ``--reason`` options of a command that the audit trail records."""

    def decorate(command: F) -> F:
        command = click.option(
            "--reason",
            required=reason_required,
            callback=_reason,
            help="Why, for the audit trail" + (" (required)." if reason_required else "."),
        )(command)
        return click.option(
            "--actor",
            envvar="INTEGRATIONS_ACTOR",
            callback=_actor,
            help="Who acts, for the audit trail (default: $INTEGRATIONS_ACTOR, else user@host).",
        )(command)

    return decorate


def record_action(
    done: str,
    action: AuditAction,
    *,
    actor: str,
    target: str,
    reason: str | None,
    details: dict[str, Any],
) -> ActionRecord:
    """Record ``action``, which took effect (``done`` says what it did); the command fails, saying the
    change stands, when the trail cannot take it."""
    try:
        return open_ledger().record_action(action, actor=actor, target=target, reason=reason, details=details)
    except IntegrationsError as exc:
        raise click.ClickException(
            f"{done}; but the audit trail could not record it ({action.value} {target} by {actor}): {exc}"
        ) from exc


@click.group()
def audit() -> None:
    """Operator actions: who set limits, forced breakers, replayed or discarded dead letters, when and why."""


@audit.command("list")
@click.option("--since", type=SINCE, default=None, help="Only since then: 2h, 1d, or an ISO 8601 time.")
@click.option(
    "--action",
    type=click.Choice([action.value for action in AuditAction]),
    default=None,
    help="Only this action.",
)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print them as a JSON list.")
def audit_list(since: datetime | None, action: str | None, limit: int, as_json: bool) -> None:
    """List recorded operator actions, newest first."""
    with user_errors():
        entries = open_ledger().actions(since=since, action=action, limit=limit)
    if as_json:
        print_json([entry.to_json() for entry in entries])
        return
    for entry in entries:
        click.echo(f"{entry.at:%Y-%m-%d %H:%M:%S}  {entry.actor}  {entry.action}  {entry.target}")
        click.echo(f"    why: {entry.reason or '-'}")
        if entry.details:
            click.echo("    " + ", ".join(f"{name}={_shown(value)}" for name, value in entry.details.items()))
    click.echo(f"{len(entries)} action(s)")


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shown(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return f"[{len(value)}]" if len(value) > 3 else "[" + ", ".join(_shown(v) for v in value) + "]"
    return "-" if value is None else str(value)
