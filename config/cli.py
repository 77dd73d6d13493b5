"""The ``integrations`` console script: the core's operator commands wired to the settings and Celery.

The core's commands get their settings and the replay publisher from here, read when a command runs;
``demo`` lives here because it starts a worker and sends messages, which the core never does.
"""

from __future__ import annotations

import sys

import click

from config.settings import Settings
from integrations.cli import OperatorContext, build_cli
from tasks.demo import run_demo
from tasks.enqueue import enqueue


def operator_context() -> OperatorContext:
    """The settings from the environment, and Celery as the publisher of replayed operations."""
    settings = Settings()
    return OperatorContext(
        database_url=settings.database_url,
        redis_url=settings.redis_url,
        providers_file=settings.providers_file,
        retention=settings.retention,
        dead_letter_retention=settings.dead_letter_retention,
        publish=enqueue,
    )


@click.command("demo")
@click.option("--operations", default=200, show_default=True, help="How many operations to enqueue.")
def demo_command(operations: int) -> None:
    """Run the demo: a provider simulator, a worker and a mixed workload, then a summary."""
    sys.exit(run_demo(operations))


main = build_cli(operator_context, demo_command)
