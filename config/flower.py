"""``integrations flower``: Flower for this project's Celery app, behind a login.

It runs Flower as ``celery -A config.celery_app flower`` does, in this process, with these differences:

- it refuses to start without a login (``FLOWER_BASIC_AUTH``, or Flower's OAuth options), since Flower shows
  every task of every provider and lets whoever reaches it revoke tasks and resize pools;
- it listens on 127.0.0.1 unless ``--address`` (or ``FLOWER_ADDRESS``) says otherwise;
- ``--port 5599`` works as well as ``--port=5599`` (Flower's option parser, tornado's, takes only the latter),
  and so does ``--name value`` for Flower's other options;
- it drops the args and kwargs of ``task-sent`` events: they are what the sender wrote in the message's
  ``kwargsrepr`` header, the whole payload for an application's ``send_task``. The workers' ``task-received``
  event says what the task is (``tasks.operations.Summary``);
- ``/api/task/result/<id>`` and ``/api/task/apply/<name>``, which read a task's result from the result
  backend (an operation's result holds the provider's answer), answer 403.

``/healthcheck`` and ``/metrics`` (task names, counts and run times, no arguments) answer without a login, as
Flower has them, for load balancers and Prometheus.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
from collections.abc import Iterator, Sequence
from typing import Any

import click
from flower.app import Flower  # type: ignore[import-untyped]
from flower.command import (  # type: ignore[import-untyped]
    apply_env_options,
    apply_options,
    extract_settings,
    print_banner,
    setup_logging,
    sigterm_handler,
)
from flower.events import Events  # type: ignore[import-untyped]
from flower.urls import settings as flower_settings  # type: ignore[import-untyped]
from tornado.ioloop import IOLoop
from tornado.options import Error as OptionError
from tornado.options import OptionParser, options
from tornado.web import RequestHandler

from config.settings import Settings
from integrations.cli.context import user_errors

DEFAULT_ADDRESS = "127.0.0.1"

NO_LOGIN = (
    "Flower not started: no login is configured, and Flower shows every task of every provider and lets "
    "whoever reaches it revoke tasks and resize pools. Set FLOWER_BASIC_AUTH=user:password (several: "
    "user1:password1,user2:password2; or pass --basic-auth=user:password), or Flower's OAuth options: "
    "FLOWER_AUTH (a regular expression of the e-mail addresses let in), FLOWER_AUTH_PROVIDER (e.g. "
    "flower.views.auth.GithubLoginHandler), FLOWER_OAUTH2_KEY, FLOWER_OAUTH2_SECRET and "
    "FLOWER_OAUTH2_REDIRECT_URI (or --auth=..., --auth_provider=..., --oauth2_key=..., ...)."
)

WITHHELD = (
    "A task's result is not shown here: an operation's result holds the provider's answer. The caller reads "
    "it with AsyncResult(task_id).get(); operators with `integrations ops show <idempotency_key> --provider "
    "<provider>`.\n"
)


@click.command("flower", context_settings={"ignore_unknown_options": True})
@click.option("--port", type=click.IntRange(0, 65535), help="Port to listen on (default 5555).")
@click.option("--address", help=f"Address to listen on (default {DEFAULT_ADDRESS}).")
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
def flower_command(port: int | None, address: str | None, flower_args: tuple[str, ...]) -> None:
    """Start Flower for this project's workers, behind a login.

    Set FLOWER_BASIC_AUTH=user:password (or Flower's OAuth options) first. Flower's other options may follow,
    e.g. `integrations flower --port=5555 --max-tasks=20000`; its FLOWER_* variables and flowerconfig.py
    are read as Flower reads them.
    """
    argv = tornado_argv(port, address, flower_args)
    with user_errors():
        try:
            flower_options(argv)
        except OptionError as exc:
            raise click.UsageError(f"{exc} (Flower's options: `celery flower --help`)") from exc
        problem = login_problem(options)
        if problem is not None:
            raise click.ClickException(problem)
        from config.celery_app import app  # loads the providers file: only once the options are right

        run_flower(app)


def tornado_argv(port: int | None, address: str | None, flower_args: Sequence[str]) -> list[str]:
    """Flower's command line as tornado's option parser takes it: ``--name=value``; an unknown option is
    a ``click.UsageError`` naming it (Flower itself would drop it silently)."""
    argv = [f"--port={port}"] if port is not None else []
    if address is not None:
        argv.append(f"--address={address}")
    return argv + list(_joined(flower_args))


def _joined(args: Sequence[str]) -> Iterator[str]:
    """``args`` with ``--name value`` joined into ``--name=value`` for Flower's options that take a value."""
    known = options._options  # name (dashes) -> option, as tornado keeps them
    rest = iter(args)
    for arg in rest:
        if arg == "--":
            continue
        name, equals, _ = arg.lstrip("-").partition("=")
        option = known.get(name.replace("_", "-"))
        if not arg.startswith("--") or option is None:
            raise click.UsageError(f"{arg!r} is not one of Flower's options (see `celery flower --help`)")
        if equals or option.type is bool:
            yield arg
            continue
        value = next(rest, None)
        if value is None:
            raise click.UsageError(f"Flower's option {arg} needs a value: {arg}=...")
        yield f"{arg}={value}"


def flower_options(argv: Sequence[str]) -> OptionParser:
    """Flower's options from its FLOWER_* variables, its config file (``--conf``, by default
    ``flowerconfig.py`` when there is one) and ``argv``, read as Flower reads them."""
    apply_env_options()
    apply_options("integrations flower", list(argv))
    if not options.address and not options.unix_socket:
        options.address = DEFAULT_ADDRESS
    return options


def login_problem(flower: OptionParser) -> str | None:
    """Why Flower must not start with these options (no login, or a basic auth entry no one can use);
    ``None`` when a login is configured."""
    if flower.auth:
        return None  # OAuth: Flower lets in the e-mail addresses this pattern matches
    entries = list(flower.basic_auth or [])
    if not entries:
        return NO_LOGIN
    unusable = sum(1 for entry in entries if not all(entry.partition(":")[::2]))
    if unusable:
        return (
            f"Flower not started: {unusable} of the {len(entries)} entries of FLOWER_BASIC_AUTH (or "
            "--basic-auth) are not of the form user:password with both parts non-empty; entries are "
            "separated by commas."
        )
    return None


class SummaryEvents(Events):  # type: ignore[misc]
    """Flower's capture of task events, without the args and kwargs of ``task-sent`` events."""

    def on_event(self, event: dict[str, Any]) -> None:
        if event.get("type") == "task-sent":
            event = {key: value for key, value in event.items() if key not in ("args", "kwargs")}
        super().on_event(event)


class ResultWithheld(RequestHandler):
    def prepare(self) -> None:
        self.set_status(403)
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(WITHHELD)


def run_flower(app: Any) -> None:
    """Serve Flower for ``app`` with the parsed ``options`` until SIGTERM or Ctrl-C, as Flower's own
    command does."""
    extract_settings()
    setup_logging()
    if Settings().log_format == "json":
        from tasks.logs import JsonFormatter

        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    io_loop = IOLoop.current()
    events = SummaryEvents(
        app,
        io_loop=io_loop,
        db=options.db,
        persistent=options.persistent,
        state_save_interval=options.state_save_interval,
        enable_events=options.enable_events,
        max_workers_in_memory=options.max_workers,
        max_tasks_in_memory=options.max_tasks,
    )
    flower = Flower(capp=app, options=options, events=events, io_loop=io_loop, **flower_settings)
    prefix = "/" + options.url_prefix.strip("/") if options.url_prefix else ""
    flower.add_handlers(r".*", [(rf"{prefix}/api/task/(?:result|apply)/.*", ResultWithheld)])
    atexit.register(flower.stop)
    signal.signal(signal.SIGTERM, sigterm_handler)
    port = flower.start_http_server()
    if options.enable_events:
        # Workers send task events when asked (INTEGRATIONS_TASK_EVENTS off), and Flower asks every 5 s;
        # asked now, with their answers awaited, the running ones send them before Flower says it is up.
        answers = app.control.enable_events(reply=True, timeout=1.0)
        logging.getLogger("integrations.flower").info("task events on at %d running workers", len(answers))
    print_banner(app, "ssl_options" in flower_settings, port)
    with contextlib.suppress(KeyboardInterrupt, SystemExit):  # SIGTERM and Ctrl-C end the loop
        flower.start()
