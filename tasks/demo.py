"""``make demo``: a provider simulator, a real worker and a mixed workload, then a summary.

It plays the application's side: it enqueues about 200 operations with ``send_task`` (successes,
duplicates, transient failures, a Retry-After, rejections, conflicts, invalid messages and a few that
exhaust their retries), shows progress while the worker runs them, and ends with the tables an operator
would look at. It stops everything it started; the demo's ledger stays in ``demo.sqlite3`` for the CLI.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from celery import Celery
from celery.result import AsyncResult
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from integrations.ledger import schema
from integrations.ledger.store import Ledger
from integrations.providers import queue_name, task_name
from integrations.testing.provider import ProviderSimulator, RecordedRequest
from integrations.testing.redis_server import redis_for
from tasks.worker import running_worker

console = Console()

LEDGER_FILE = Path("demo.sqlite3")
# name -> (path on the simulator, success status the provider answers)
PROVIDERS = {
    "demo-payments": ("/v1/payment_intents", 200),
    "demo-email": ("/v3/mail/send", 202),
    "demo-crm": ("/crm/v3/objects/contacts", 201),
}
# Share of the workload per kind; "ok" takes what is left.
MIX = {
    "transient": 0.12,
    "retry_after": 0.01,
    "duplicate": 0.10,
    "conflict": 0.03,
    "rejected": 0.06,
    "dead": 0.02,
    "invalid": 0.03,
}
EXPECTED = {
    "ok": "succeeded",
    "transient": "succeeded",
    "retry_after": "succeeded",
    "duplicate": "replayed",
    "conflict": "idempotency_conflict",
    "rejected": "provider_rejected",
    "dead": "retries_exhausted",
    "invalid": "invalid_request",
}
LABELS = {
    "ok": "plain",
    "transient": "503/502/drop, then ok",
    "retry_after": "429 Retry-After: 2",
    "duplicate": "duplicate key",
    "conflict": "key reused, new payload",
    "rejected": "4xx rejection",
    "dead": "provider down",
    "invalid": "invalid message",
}
QUEUES = [queue_name(name) for name in PROVIDERS]


@dataclass
class Message:
    kind: str
    provider: str
    kwargs: dict[str, Any]
    wave: int = 1
    result: AsyncResult | None = None
    sent_at: float = 0.0
    done_at: float | None = None
    outcome: str | None = None

    @property
    def key(self) -> str | None:
        key = self.kwargs.get("idempotency_key")
        return key if isinstance(key, str) else None


@dataclass
class Workload:
    messages: list[Message] = field(default_factory=list)

    def wave(self, number: int) -> list[Message]:
        return [m for m in self.messages if m.wave == number]


def plan(total: int, run: str, rng: random.Random) -> Workload:
    """The messages to send: wave 1 at once, wave 2 (conflicts) after wave 1 has ended."""
    counts = kind_counts(total)
    composer = Composer(run, rng, iter(range(1, 10 * total)))
    originals = first_sendings(counts, composer, rng)
    rng.shuffle(originals)
    workload = Workload(list(originals))
    plain = [m for m in originals if m.kind == "ok"]
    add_duplicates(workload, plain, counts["duplicate"])
    add_conflicts(workload, plain, counts["conflict"])
    return workload


def kind_counts(total: int) -> dict[str, int]:
    """How many messages of each kind, by ``MIX``: at least one of each, the plain ones take what is left."""
    counts = {kind: max(1, round(total * share)) for kind, share in MIX.items()}
    counts["ok"] = max(1, total - sum(counts.values()))
    return counts


@dataclass
class Composer:
    """Makes the demo's messages: each to a provider drawn at random, with a numbered payload and key."""

    run: str
    rng: random.Random
    serial: Iterator[int]

    def message(self, kind: str, query: str = "", **extra: Any) -> Message:
        """A POST to the provider's path, asking the simulator for ``query`` on top of its success status."""
        provider = self.rng.choice(list(PROVIDERS))
        path, ok_status = PROVIDERS[provider]
        params = f"ok_status={ok_status}" + (f"&{query}" if query else "")
        number = next(self.serial)
        payload = {
            "method": "POST",
            "path": f"{path}?{params}",
            "json": {"demo_item": number, "amount": number * 100},
        }
        return Message(
            kind, provider, {"payload": payload, "idempotency_key": f"{self.run}-{number:04d}"} | extra
        )


def first_sendings(counts: dict[str, int], composer: Composer, rng: random.Random) -> list[Message]:
    """Every message sent under its own key for the first time, grouped by kind (the caller shuffles them)."""
    originals = [composer.message("ok") for _ in range(counts["ok"])]
    for _ in range(counts["transient"]):
        failure = rng.choice(["fail=1&fail_status=503", "fail=2&fail_status=502", "fail=1&drop=1"])
        originals.append(composer.message("transient", failure))
    for _ in range(counts["retry_after"]):
        originals.append(composer.message("retry_after", "fail=1&fail_status=429&retry_after=2"))
    for _ in range(counts["rejected"]):
        originals.append(composer.message("rejected", f"status={rng.choice([400, 404, 422])}"))
    for _ in range(counts["dead"]):
        originals.append(composer.message("dead", "status=503"))
    originals.extend(invalid_messages(counts["invalid"], composer))
    return originals


def invalid_messages(count: int, composer: Composer) -> list[Message]:
    """Messages the worker must refuse: in turn, no idempotency key, an unknown method, a credential header."""
    messages = []
    for index in range(count):
        bad = composer.message("invalid")
        if index % 3 == 0:
            del bad.kwargs["idempotency_key"]
        elif index % 3 == 1:
            bad.kwargs["payload"] = {"method": "FETCH", "path": bad.kwargs["payload"]["path"]}
        else:
            bad.kwargs["payload"]["headers"] = {"Authorization": "Bearer sk_demo_do_not_send"}
        messages.append(bad)
    return messages


def add_duplicates(workload: Workload, plain: list[Message], count: int) -> None:
    """Copies of plain messages, each sent right behind its original, while that is in flight."""
    for index in range(count):
        original = plain[index % len(plain)]
        position = workload.messages.index(original) + 1
        workload.messages.insert(position, Message("duplicate", original.provider, dict(original.kwargs)))


def add_conflicts(workload: Workload, plain: list[Message], count: int) -> None:
    """Plain messages' keys reused with a new payload, in wave 2, once the originals have ended."""
    for index in range(count):
        original = plain[-1 - index % len(plain)]
        payload = dict(original.kwargs["payload"]) | {"json": {"amount": -1}}
        workload.messages.append(
            Message("conflict", original.provider, original.kwargs | {"payload": payload}, wave=2)
        )


def providers_toml(simulator_url: str) -> str:
    tables = []
    for name in PROVIDERS:
        tables.append(
            f'[providers.{name}]\nadapter = "http"\nbase_url = "{simulator_url}"\ntimeout = 2.0\n'
            f'rate_limit = "50/s"\nburst = 50\n'
            f"[providers.{name}.retry]\nmax_attempts = 4\nbackoff_base = 0.2\nbackoff_max = 2.0\n"
            # The provider-down messages open the breaker; it tries again after 2 s rather than 30.
            f"[providers.{name}.breaker]\nreset_timeout = 2.0\n"
        )
    return "\n".join(tables)


def outcome_of(result: AsyncResult) -> str:
    if result.state == "SUCCESS":
        return "replayed" if result.result.get("replayed") else "succeeded"
    return str(result.result).split(":", 1)[0]


def watch(messages: list[Message], progress: Progress, task: Any) -> None:
    pending = [m for m in messages if m.done_at is None]
    while pending:
        still = []
        states: Counter[str] = Counter()
        for message in pending:
            assert message.result is not None
            state = message.result.state
            if state in ("SUCCESS", "FAILURE"):
                message.done_at = time.monotonic()
                message.outcome = outcome_of(message.result)
                progress.advance(task)
            else:
                still.append(message)
                states[state] += 1
        pending = still
        progress.update(task, description=f"running · {states['RETRY']} waiting to retry")
        if pending:
            time.sleep(0.1)  # polling the result backend, as an application would


def send(app: Celery, messages: list[Message]) -> None:
    for message in messages:
        message.sent_at = time.monotonic()
        message.result = app.send_task(
            task_name(message.provider, "request"), kwargs=message.kwargs, queue=queue_name(message.provider)
        )


def expected(message: Message, duplicated: set[str]) -> bool:
    """Did the message end as planned? Of a key sent several times at once, any one may be the one that ran."""
    if message.key in duplicated and message.kind in ("ok", "duplicate"):
        return message.outcome in ("succeeded", "replayed")
    return message.outcome == EXPECTED[message.kind]


def summary(workload: Workload, simulator: ProviderSimulator, ledger: Ledger, elapsed: float) -> bool:
    """Print the tables an operator would look at; whether all ended as planned and none was accepted twice."""
    calls = simulator.calls()
    table, surprises = outcomes_table(workload.messages, calls)
    console.print(table)
    console.print(ledger_table(ledger))
    successes_by_key = Counter(c.headers.get("idempotency-key") for c in calls if 200 <= c.status < 300)
    twice = sorted(str(key) for key, n in successes_by_key.items() if n > 1)
    console.print(
        f"{len(workload.messages)} messages in {elapsed:.1f}s · {len(calls)} provider calls · "
        f"keys the provider accepted more than once: {len(twice)}"
    )
    for surprise in surprises:
        console.print(f"[red]not as expected:[/] {surprise}")
    console.print(
        f"{len(ledger.dead_letters())} failed or dead operations are dead letters; see them with\n"
        f"  DATABASE_URL=sqlite:///{LEDGER_FILE} .venv/bin/integrations dlq list\n"
        f"  DATABASE_URL=sqlite:///{LEDGER_FILE} .venv/bin/integrations ops show KEY --provider PROVIDER"
    )
    return not surprises and not twice


def outcomes_table(messages: list[Message], calls: list[RecordedRequest]) -> tuple[Table, list[str]]:
    """The outcomes by kind of message, and a line for each message that did not end as planned."""
    by_kind: dict[str, list[Message]] = defaultdict(list)
    for message in messages:
        by_kind[message.kind].append(message)
    duplicated = {m.key for m in by_kind["duplicate"] if m.key}
    calls_by_key = Counter(c.headers.get("idempotency-key") for c in calls)
    table = Table(title="Outcomes by kind of message", title_justify="left")
    for column in ("message", "sent", "expected outcome", "as expected", "calls", "p50"):
        table.add_column(column, justify="left" if column in ("message", "expected outcome") else "right")
    surprises: list[str] = []
    for kind, label in LABELS.items():
        of_kind = by_kind.get(kind, [])
        if not of_kind:
            continue
        good = [m for m in of_kind if expected(m, duplicated)]
        surprises += [f"{kind} {m.key}: {m.outcome}" for m in of_kind if m not in good]
        keys = {m.key for m in of_kind if m.key}
        provider_calls = 0 if kind in ("duplicate", "conflict") else sum(calls_by_key[k] for k in keys)
        latencies = [m.done_at - m.sent_at for m in of_kind if m.done_at]
        mark = "green" if len(good) == len(of_kind) else "red"
        table.add_row(
            label,
            str(len(of_kind)),
            EXPECTED[kind],
            f"[{mark}]{len(good)}/{len(of_kind)}[/]",
            str(provider_calls),
            f"{median(latencies):.2f}s" if latencies else "-",
        )
    return table, surprises


def ledger_table(ledger: Ledger) -> Table:
    """What the ledger recorded for each demo provider: operations by status, and attempts."""
    table = Table(title="Ledger by provider", title_justify="left")
    for column in ("provider", "succeeded", "failed", "dead", "attempts"):
        table.add_column(column, justify="left" if column == "provider" else "right")
    attempts = ledger.attempts_by_provider()
    for name in PROVIDERS:
        counts = ledger.count_by_status(name)
        table.add_row(
            name,
            str(counts.get("succeeded", 0)),
            str(counts.get("failed", 0)),
            str(counts.get("dead", 0)),
            str(attempts.get(name, 0)),
        )
    return table


def run_demo(total: int = 200) -> int:
    """Run the demo end to end and print its summary; 0 when every operation ended as planned, else 1."""
    run = f"demo{time.strftime('%H%M%S')}"
    workload = plan(total, run, random.Random(7))
    with ExitStack() as stack:
        redis_url, private = stack.enter_context(redis_for(os.environ.get("REDIS_URL")))
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="integrations-demo-")))
        simulator = stack.enter_context(ProviderSimulator())
        providers = folder / "providers.toml"
        providers.write_text(providers_toml(simulator.url))
        database_url = fresh_ledger()
        env = worker_env(redis_url, database_url, providers)
        app = Celery("demo-application", broker=redis_url, backend=redis_url)
        app.conf.update(broker_connection_retry_on_startup=True)
        stack.callback(app.close)
        clear_queues(app)
        print_setup(redis_url, private, database_url, simulator)
        worker = stack.enter_context(running_worker(app, env, QUEUES, folder))
        console.print(f"  worker    {' '.join(worker.command)}")
        ledger = Ledger.connect(database_url)
        stack.callback(ledger.engine.dispose)
        started = time.monotonic()
        send_waves(app, workload)
        ok = summary(workload, simulator, ledger, time.monotonic() - started)
    if not ok:
        console.print("[red]some operations did not end as expected[/]")
    return 0 if ok else 1


def fresh_ledger() -> str:
    """The URL of the demo's ledger, made anew in ``LEDGER_FILE`` (it stays there for the CLI)."""
    LEDGER_FILE.unlink(missing_ok=True)
    database_url = f"sqlite:///{LEDGER_FILE.resolve()}"
    schema.upgrade(database_url)
    return database_url


def worker_env(redis_url: str, database_url: str, providers: Path) -> dict[str, str]:
    """The worker's environment: this one, pointed at the demo's Redis, ledger and providers file."""
    env = dict(os.environ, REDIS_URL=redis_url, DATABASE_URL=database_url)
    env["INTEGRATIONS_PROVIDERS_FILE"] = str(providers)
    env.pop("BROKER_URL", None)
    return env


def clear_queues(app: Celery) -> None:
    """Empty the demo's queues: leftovers of an interrupted demo would muddle the figures."""
    with app.connection_for_write() as connection:
        for queue in QUEUES:
            connection.default_channel.client.delete(queue)


def print_setup(redis_url: str, private: bool, database_url: str, simulator: ProviderSimulator) -> None:
    """The demo's opening lines: where its Redis, ledger and provider are."""
    console.print("[bold]integrations demo[/]")
    console.print(
        f"  redis     {redis_url}" + ("  (private redis-server, stopped at the end)" if private else "")
    )
    console.print(f"  ledger    {database_url}")
    console.print(f"  provider  simulator at {simulator.url}, playing {', '.join(PROVIDERS)}")


def send_waves(app: Celery, workload: Workload) -> None:
    """Send each wave and show its progress until all its messages have ended, then the next."""
    with Progress(
        TextColumn("{task.description:<32}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("sending", total=len(workload.messages))
        for wave in (1, 2):
            send(app, workload.wave(wave))
            watch(workload.wave(wave), progress, task)
