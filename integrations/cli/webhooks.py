"""``integrations webhooks serve``: the receiver providers deliver their webhook events to.

Served by uvicorn, the ASGI server the receiver's framework (FastAPI) is built for: production-ready
(graceful shutdown on SIGTERM, keep-alive, the forwarded headers of a proxy in front of it), and one
process, so its counts are one process's and need no more than the worker's multiprocess folder. Run more
receivers behind a load balancer for more: the ledger stores each event once whichever of them gets it.
"""

from __future__ import annotations

import logging

import click

from integrations.cli.context import current, user_errors
from integrations.metrics import metrics_dir
from integrations.providers import load_providers
from integrations.webhooks.store import EventRecord, EventStore


@click.group("webhooks")
def webhooks() -> None:
    """Inbound webhooks: the receiver that verifies providers' events and stores them in the ledger."""


@webhooks.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8085, show_default=True, type=click.IntRange(1, 65535))
def serve(host: str, port: int) -> None:
    """Serve POST /webhooks/<provider> for each provider with a [providers.<name>.webhooks] table, GET
    /healthz and GET /openapi.json. Secrets are resolved at start: one that cannot be had stops it. Each
    new event's handling is sent to the provider's queue. Its counts go to PROMETHEUS_MULTIPROC_DIR,
    which `integrations metrics serve` reads."""
    # Here, not at the top: the other commands need neither the web framework nor the server.
    import uvicorn

    from integrations.webhooks.receiver import Receiver, create_app, endpoints

    context = current()
    with user_errors():
        providers = load_providers(context.providers_file)
        found = endpoints(providers, source=str(context.providers_file))
    # Before the first count, which makes the per-process metrics in the folder the exporter reads.
    metrics_dir()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    publish_event = context.publish_event

    def publish(record: EventRecord) -> None:
        assert publish_event is not None
        publish_event(record.provider, record.id)

    receiver = Receiver(
        found, EventStore.connect(context.database_url), publish=publish if publish_event else None
    )
    click.echo(
        f"receiving webhooks of {', '.join(sorted(found))} on http://{host}:{port}/webhooks/<provider>, "
        f"storing them in the ledger at {receiver.store.where}"
    )
    uvicorn.run(
        create_app(receiver),
        host=host,
        port=port,
        # The receiver logs each delivery itself, in one line, with what was decided.
        access_log=False,
        server_header=False,
        log_level="info",
    )
