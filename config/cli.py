"""The ``integrations`` console script: the core's operator commands wired to the settings and Celery.

The core's commands get their settings and the replay publisher from here, read when a command runs;
``demo`` and ``queues`` live here because they start a worker, send messages or read the broker, which the
core never does.
"""

from __future__ import annotations

import sys

import click
from celery import Celery
from rich.table import Table
from rich.text import Text

from config.celery_settings import celery_config
from config.flower import flower_command
from config.settings import Settings
from integrations.cli import OperatorContext, build_cli
from integrations.cli.context import console, print_json, user_errors
from integrations.providers import load_providers
from tasks.demo import run_demo
from tasks.enqueue import enqueue, publish_event, resend
from tasks.queues import BrokerQueues, QueueKind, QueueNames, inspect_broker


def operator_context() -> OperatorContext:
    """The settings from the environment, and Celery as the publisher of replayed operations and of
    webhook events' handling."""
    settings = Settings()
    return OperatorContext(
        database_url=settings.database_url,
        redis_url=settings.state_redis_url,
        providers_file=settings.providers_file,
        retention=settings.retention,
        dead_letter_retention=settings.dead_letter_retention,
        publish=enqueue,
        resend=resend,
        sweep_grace=settings.sweep_interval,
        queue_depths=lambda: {row.queue: row.messages for row in inspect_queues(settings).queues},
        publish_event=publish_event,
    )


def inspect_queues(settings: Settings) -> BrokerQueues:
    """The broker's integrations.* queues (and Celery's default one) with their depth."""
    config = celery_config(settings)
    names = QueueNames.of(
        load_providers(settings.providers_file), settings.providers_file, config["task_default_queue"]
    )
    app = Celery("integrations-queues", set_as_current=False)
    app.conf.update(config)
    try:
        with app.connection_for_read() as connection:
            return inspect_broker(connection, names)
    finally:
        app.close()


@click.command("demo")
@click.option("--operations", default=200, show_default=True, help="How many operations to enqueue.")
def demo_command(operations: int) -> None:
    """Run the demo: a provider simulator, a worker and a mixed workload, then a summary."""
    sys.exit(run_demo(operations))


@click.command("queues")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def queues_command(as_json: bool) -> None:
    """List the broker's integrations.* queues with their depth; flag those no provider serves, and
    messages on Celery's default queue."""
    with user_errors():
        found = inspect_queues(Settings())
    if as_json:
        print_json(found.to_json())
        return
    _print_queues(found)


_SERVED_BY = {
    QueueKind.PROJECT: "this project",
    QueueKind.CELERY_DEFAULT: "-",
    QueueKind.UNSERVED: "no provider",
}


def _print_queues(found: BrokerQueues) -> None:
    table = Table("queue", "messages", "served by", "flag", title=found.broker)
    for row in found.queues:
        served_by = row.provider or _SERVED_BY.get(row.kind, "-")
        messages = "absent" if row.messages is None else str(row.messages)
        table.add_row(row.queue, messages, served_by, Text(row.flag or "", style="bold red"))
    console.print(table)
    for row in found.queues:
        if row.problem:
            console.print(Text(f"{row.queue}: {row.problem}"), soft_wrap=True)
    if not found.complete:
        console.print(
            "This broker cannot list its queues: shown are the providers' queues, the project's own and "
            "celery; another integrations.* queue, served by no provider, would not appear.",
            highlight=False,
        )


main = build_cli(operator_context, demo_command, queues_command, flower_command)
