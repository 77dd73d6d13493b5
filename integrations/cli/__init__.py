"""The operator commands of ``integrations``: the ledger, dead letters, breakers, limits and providers.

The core knows neither the settings nor Celery: the wiring layer (``config/cli.py``) builds the command with
:func:`build_cli`, handing it an :class:`OperatorContext` factory, and adds the commands that need Celery.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

import click

from integrations.cli.audit import audit
from integrations.cli.context import OperatorContext
from integrations.cli.events import events
from integrations.cli.fleet import metrics_group, status_command
from integrations.cli.ledger import db, dlq, ops
from integrations.cli.providers import breaker, limits, providers_command
from integrations.cli.webhooks import webhooks

__all__ = ["OperatorContext", "build_cli"]


def build_cli(context: Callable[[], OperatorContext], *extra: click.Command) -> click.Group:
    """The ``integrations`` command: the operator commands, taking settings and the publisher from
    ``context`` (called once, when a command first needs it; ``--help`` reads nothing), and ``extra``."""

    @click.group(
        "integrations",
        commands=[
            db,
            ops,
            dlq,
            breaker,
            limits,
            audit,
            events,
            webhooks,
            providers_command,
            status_command,
            metrics_group,
            *extra,
        ],
    )
    @click.version_option(package_name="integrations")
    @click.pass_context
    def main(ctx: click.Context) -> None:
        """Operate the integrations job queue: ledger, dead letters, providers.

        Settings come from the environment: DATABASE_URL, REDIS_URL, BROKER_URL, INTEGRATIONS_PROVIDERS_FILE.
        """
        ctx.obj = cache(context)

    return main
