"""Operator commands on the fleet as a whole: ``status`` (the integration catalog) and ``metrics serve``
(the Prometheus exporter)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import click
from rich.text import Text

from integrations.cli.context import console, current, open_ledger, print_json, user_errors
from integrations.fleet import WINDOW, Fleet, FleetCollector, Health, ProviderStatus
from integrations.metrics import metrics_dir
from integrations.providers import load_providers
from integrations.resilience.scripts import redis_client

HEALTH_STYLE = {Health.OPERATIONAL: "green", Health.DEGRADED: "yellow", Health.DOWN: "bold red"}


def _fleet() -> Fleet:
    context = current()
    return Fleet(
        load_providers(context.providers_file),
        redis_client(context.redis_url),
        open_ledger(),
        queue_depths=context.queue_depths,
    )


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def status_command(as_json: bool) -> None:
    """One row per provider: what it is for and who owns it, its queue, limits, breaker, the last five
    minutes' outcomes, dead letters, and its health (operational, degraded or down, with the reason)."""
    with user_errors():
        rows = _fleet().status()
    if as_json:
        print_json([row.to_json() for row in rows])
        return
    # Plain lines, not a table: nothing is cut on an 80-column terminal or in a pipe.
    for row in rows:
        head = Text(f"{row.provider}  ")
        head.append(row.health.value, style=HEALTH_STYLE[row.health])
        if row.reason:
            head.append(f": {row.reason}")
        console.print(head, soft_wrap=True)
        details = [
            f"  {row.description}" if row.description else None,
            f"  owner {row.owner or '-'} · adapter {row.adapter} · queue {row.queue}, {_depth(row)}",
            f"  rate limit {row.rate_limit or 'none'}{_usage(row)} · {_breaker(row)}",
            f"  last {WINDOW.seconds // 60} min: {row.succeeded} succeeded, {row.failed} failed, {row.dead} dead"
            + (f" ({row.success_rate:.0%} succeeded)" if row.success_rate is not None else "")
            + ("" if row.p95_seconds is None else f" · p95 {row.p95_seconds:.2f}s")
            + f" · dead letters {row.dead_letters}",
        ]
        for line in details:
            if line:
                console.print(Text(line), soft_wrap=True)


def _depth(row: ProviderStatus) -> str:
    return "depth unknown" if row.queue_depth is None else f"{row.queue_depth} waiting"


def _usage(row: ProviderStatus) -> str:
    return "" if row.usage is None else f", {row.usage:.0%} used over the last minute"


def _breaker(row: ProviderStatus) -> str:
    text = f"breaker {row.breaker}"
    if row.breaker_until is not None:
        text += f" until {row.breaker_until:%H:%M:%S} UTC"
    if row.paused_until is not None:
        text += f" · paused until {row.paused_until:%H:%M:%S} UTC"
    return text


@click.group("metrics")
def metrics_group() -> None:
    """Prometheus metrics of the workers on this machine and of the fleet."""


@metrics_group.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=9808, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--fleet/--no-fleet",
    default=True,
    show_default=True,
    help="Also serve the fleet-wide gauges (breakers, usage, dead letters, queue depth, overdue); every "
    "exporter serves the same values, so aggregate them with max, or serve them from one exporter only.",
)
def metrics_serve(host: str, port: int, fleet: bool) -> None:
    """Serve /metrics: the counts of this machine's worker processes (read from PROMETHEUS_MULTIPROC_DIR,
    where they write them; give the exporter the same value as the workers) and, with --fleet, the
    fleet-wide gauges read from Redis, the ledger and the broker at each scrape."""
    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.multiprocess import MultiProcessCollector

    folder = metrics_dir()
    registry = CollectorRegistry(auto_describe=True)
    collectors: list[Any] = [MultiProcessCollector(None, path=folder)]  # type: ignore[no-untyped-call]
    if fleet:
        with user_errors():
            collectors.append(FleetCollector(_fleet()))
    registry.register(_Merged(collectors))
    server = make_server(host, port, make_wsgi_app(registry), handler_class=_QuietHandler)
    click.echo(f"serving metrics on http://{host}:{server.server_port}/metrics (from {folder})")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


class _Merged:
    """Several collectors as one, a metric family served by more than one (the rate-limit usage: of our
    limit from the fleet, of the provider's quota from the workers) merged into one family, as the
    exposition format requires."""

    def __init__(self, collectors: list[Any]) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Any]:
        families: dict[str, Any] = {}
        for collector in self.collectors:
            for family in collector.collect():
                if family.name in families:
                    families[family.name].samples.extend(family.samples)
                else:
                    families[family.name] = family
        yield from families.values()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # each scrape would log a line
        return
