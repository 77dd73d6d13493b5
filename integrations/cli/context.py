"""What every operator command shares: the context the wiring hands in, user errors, output."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click
import redis
from redis.exceptions import RedisClusterException
from rich.console import Console

from integrations.errors import IntegrationsError
from integrations.ledger.records import OperationRecord
from integrations.ledger.store import Ledger

console = Console()


@dataclass(frozen=True)
class OperatorContext:
    """What the operator commands need from the wiring: where state lives, how long ended operations are
    kept, how to send a replayed operation's message as a new task (``publish(record) -> task id``) and
    a swept one's under its own task id (``resend``), and the sweeper's grace."""

    database_url: str
    redis_url: str  # the Redis of the breakers, throttles and shared tokens (INTEGRATIONS_STATE_REDIS_URL)
    providers_file: Path
    retention: timedelta
    dead_letter_retention: timedelta
    publish: Callable[[OperationRecord], str]
    resend: Callable[[OperationRecord], str] | None = None
    sweep_grace: timedelta = timedelta(seconds=30)
    # The broker's depth of each queue (None: absent or unknown); without it, depths are not shown.
    queue_depths: Callable[[], Mapping[str, int | None]] | None = None
    # Sends a stored webhook event's handling message: (provider, the ledger's event id) -> task id.
    publish_event: Callable[[str, str], str] | None = None


def current() -> OperatorContext:
    """The running command's context, made on first use so settings are read when a command runs."""
    made: Callable[[], OperatorContext] = click.get_current_context().find_root().obj
    return made()


@contextmanager
def user_errors() -> Iterator[None]:
    """Errors a user can fix end the command with their message, not a traceback."""
    try:
        yield
    except (redis.RedisError, RedisClusterException) as exc:
        where = current().redis_url.rsplit("@", 1)[-1]
        raise click.ClickException(
            f"Redis at {where} (INTEGRATIONS_STATE_REDIS_URL, else REDIS_URL) cannot be reached: {exc}"
        ) from exc
    except (IntegrationsError, LookupError, ValueError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from exc


def open_ledger() -> Ledger:
    return Ledger.connect(current().database_url)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def one_reference(reference: tuple[str, ...], provider: str | None, usage: str) -> tuple[str | None, str]:
    """``(provider, key)`` from a command's ``ID``, ``KEY --provider P`` or ``P KEY`` arguments (provider
    ``None`` for a bare ID); anything else is a usage error saying ``usage``."""
    if not reference or len(reference) > 2 or (len(reference) == 2 and provider is not None):
        raise click.UsageError(usage)
    if len(reference) == 2:
        return reference[0], reference[1]
    return provider, reference[0]


def when(moment: datetime | None) -> str:
    """A moment as the operator commands print it (UTC), or ``-``."""
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"
