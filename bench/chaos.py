"""`make chaos`: operations enqueued through the ledger while what runs them fails under them.

Each scenario starts from nothing: a private Redis, a private PostgreSQL cluster as the ledger, the provider
simulator, four worker instances (``-c 2``), a maintenance worker and beat sweeping every 2 s. It enqueues
``--operations`` operations at ``--rate`` per second with ``integrations.client.Client``, injects its fault
spread over that time, waits for every operation to end (up to ``--drain-deadline`` seconds after the last
enqueue and the last fault), and reads the outcome from the ledger and the simulator's call log.

Targets: no operation left unended; a provider call with an effect is repeated only where a worker process
died mid-call, at most once per process lost, and always with the operation's own Idempotency-Key; no
worker process left behind. ``python -m bench.chaos [--operations N] [--scenario NAME ...]``
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis
from celery import Celery
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from bench.chaos_fleet import Fleet, Leftover, leftovers
from bench.chaos_postgres import PrivatePostgres
from integrations.adapters.registry import resolve
from integrations.client import Client
from integrations.errors import LedgerUnavailable
from integrations.ledger import schema
from integrations.ledger.models import ENDED_BADLY, Operation, OperationStatus
from integrations.ledger.records import OperationRecord
from integrations.ledger.store import Ledger
from integrations.providers import load_providers, queue_name
from integrations.testing.provider import ProviderSimulator
from integrations.testing.redis_server import RedisServer
from tasks.enqueue import send

ROOT = Path(__file__).resolve().parents[1]
console = Console(width=200)

WORKERS = 4
CONCURRENCY = 2  # pool processes per worker instance (-c 2): eight in all
SWEEP_INTERVAL = 2.0  # seconds, INTEGRATIONS_SWEEP_INTERVAL: beat's period and the sweeper's grace
PROVIDER_DELAY = "0.03"  # seconds the simulator takes per call, so that kills land mid-call
PROVIDER = "chaos"
PATH = "/v1/chaos"
# timeout 2 s: a lease of 3 x 2 + 5 = 11 s, so an operation of a lost worker is called again soon.
PROVIDERS_FILE = f"""
[providers.{PROVIDER}]
adapter = "http"
base_url = "{{url}}"
timeout = 2.0
[providers.{PROVIDER}.retry]
max_attempts = 8
backoff_base = 0.2
backoff_max = 2.0
"""
# Lines of a worker's log that say the worker itself ended a pool process in the middle of a task.
SELF_INFLICTED = {
    "connection-loss terminations": "cannot be acknowledged after a connection loss",
    "hard time limits": "Hard time limit",
}
SOFT_LIMIT = "Soft time limit"


@dataclass
class Setup:
    """One scenario's world, fresh: its Redis, its ledger, the provider, the fleet and the client."""

    folder: Path
    redis_server: RedisServer
    postgres: PrivatePostgres
    simulator: ProviderSimulator
    ledger: Ledger
    client: Client
    fleet: Fleet
    maintenance: Fleet  # one worker on integrations.maintenance, where beat sends the sweeps
    markers: list[str]  # what names this scenario's processes on their command line
    app: Celery  # the application's Celery: what its callers read results through


@dataclass
class Faults:
    """What a scenario did to the system, as it happened."""

    started: float
    pool_processes_killed: int = 0
    events: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        self.events.append(f"{elapsed:5.1f}s {text}")
        console.log(f"  {elapsed:5.1f}s {text}")

    def at(self, offsets: list[float], action: Callable[[int], str]) -> None:
        """Run ``action(i)`` at each offset (seconds since the start), one after the other."""
        for i, offset in enumerate(offsets):
            time.sleep(max(0.0, self.started + offset - time.monotonic()))
            self.note(action(i))


def spread(count: int, window: float) -> list[float]:
    """``count`` moments evenly spread over the middle of ``window`` (10 % to 90 %)."""
    return [window * (0.1 + 0.8 * (i + 0.5) / count) for i in range(count)]


# -- the scenarios ---------------------------------------------------------------------------------


def pool_kills(setup: Setup, window: float, faults: Faults) -> None:
    def kill(i: int) -> str:
        killed = setup.fleet.kill_pool_process()
        faults.pool_processes_killed += killed
        return f"SIGKILL of a pool process ({i + 1}/10)" if killed else "no pool process to kill"

    faults.at(spread(10, window), kill)


def worker_kills(setup: Setup, window: float, faults: Faults) -> None:
    def kill(i: int) -> str:
        pool = setup.fleet.kill_worker()
        faults.pool_processes_killed += pool
        return f"SIGKILL of a worker and its {pool} pool processes, replaced ({i + 1}/10)"

    faults.at(spread(10, window), kill)


def redis_restarts(setup: Setup, window: float, faults: Faults) -> None:
    def restart(i: int) -> str:
        setup.redis_server.restart()
        return f"Redis restarted empty ({i + 1}/2)"

    faults.at(spread(2, window), restart)


def redis_pause(setup: Setup, window: float, faults: Faults) -> None:
    def pause(_: int) -> str:
        client = redis.Redis.from_url(setup.redis_server.url)
        client.execute_command("CLIENT", "PAUSE", "15000", "ALL")  # type: ignore[no-untyped-call]
        client.close()
        return "CLIENT PAUSE 15000 ALL"

    faults.at([window / 2], pause)


def sigterm_half(setup: Setup, window: float, faults: Faults) -> None:
    def terminate(i: int) -> str:
        stopped = setup.fleet.terminate_half()
        return f"SIGTERM of {stopped} workers, replaced; they have exited ({i + 1}/3)"

    faults.at(spread(3, window), terminate)


def ledger_restart(setup: Setup, window: float, faults: Faults) -> None:
    def restart(_: int) -> str:
        setup.postgres.stop()
        faults.note("ledger stopped (pg_ctl stop -m fast)")
        time.sleep(5.0)
        setup.postgres.start()
        return "ledger started again after 5 s"

    faults.at([window / 2], restart)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    inject: Callable[[Setup, float, Faults], None]


SCENARIOS = [
    Scenario("pool-kill", "SIGKILL of a pool process, 10 times", pool_kills),
    Scenario("worker-kill", "SIGKILL of a whole worker, 10 times, replaced", worker_kills),
    Scenario("redis-restart", "Redis restarted empty, twice", redis_restarts),
    Scenario("redis-pause", "Redis paused 15 s (CLIENT PAUSE ALL)", redis_pause),
    Scenario("sigterm-half", "SIGTERM of half the workers, 3 times, replaced", sigterm_half),
    Scenario("ledger-restart", "ledger PostgreSQL stopped (-m fast), 5 s, started", ledger_restart),
]


# -- the world of one scenario -----------------------------------------------------------------------


@contextmanager
def environment(seed: int, keep: Path | None = None) -> Iterator[Setup]:
    """``keep``: a folder to copy the logs into at the end (the workers', beat's, PostgreSQL's)."""
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="integrations-chaos-")))
        if keep is not None:
            stack.callback(_copy_logs, folder, keep)
        redis_server = RedisServer()
        stack.callback(redis_server.remove)
        redis_server.start()
        postgres = PrivatePostgres()
        stack.callback(postgres.remove)
        stack.callback(_copy_logs, postgres.folder, folder / "postgres")
        postgres.start()
        schema.upgrade(postgres.url)
        simulator = stack.enter_context(ProviderSimulator())
        providers = folder / "providers.toml"
        providers.write_text(PROVIDERS_FILE.replace("{url}", simulator.url))
        env = dict(
            os.environ,
            REDIS_URL=redis_server.url,
            DATABASE_URL=postgres.url,
            INTEGRATIONS_PROVIDERS_FILE=str(providers),
            INTEGRATIONS_SWEEP_INTERVAL=f"{SWEEP_INTERVAL:g}",
            PYTHONPATH=str(ROOT),
        )
        env.pop("BROKER_URL", None)
        app = Celery("chaos-application", broker=redis_server.url, backend=redis_server.url)
        app.conf.update(
            accept_content=["json"], result_accept_content=["json"], broker_connection_retry_on_startup=True
        )
        stack.callback(app.close)

        def publish(record: OperationRecord) -> str:
            return send(app, record, record.task_id)

        configured = load_providers(providers)
        ledger = Ledger.connect(postgres.url)
        stack.callback(ledger.engine.dispose)
        client = Client(configured, resolve(configured, str(providers)), ledger, publish)

        schedule = folder / "beat-schedule"
        beat_command = ["celery", "-A", "config.celery_app", "beat", "-s", str(schedule), "-l", "WARNING"]
        beat = subprocess.Popen(
            [sys.executable, "-m", *beat_command],
            env=env,
            cwd=folder,
            stdin=subprocess.DEVNULL,
            stdout=(folder / "beat.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        stack.callback(_stop, beat)
        rng = random.Random(seed)
        maintenance = Fleet(app, env, ["integrations.maintenance"], folder, 1, rng)
        stack.callback(maintenance.close)
        fleet = Fleet(app, env, [queue_name(PROVIDER)], folder, CONCURRENCY, rng)
        stack.callback(fleet.close)
        with ThreadPoolExecutor(1) as starting:
            maintenance_started = starting.submit(maintenance.start)
            fleet.start(WORKERS)
            maintenance_started.result()
        yield Setup(
            folder,
            redis_server,
            postgres,
            simulator,
            ledger,
            client,
            fleet,
            maintenance,
            markers=[*maintenance.nodes, str(schedule), redis_server.folder, str(postgres.folder)],
            app=app,
        )


def _copy_logs(source: Path, target: Path) -> None:
    for log in source.rglob("*.log"):
        copy = target / log.relative_to(source)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(log, copy)


def _stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- running one scenario --------------------------------------------------------------------------


@dataclass
class Row:
    scenario: Scenario
    sent: int = 0
    succeeded: int = 0
    ended_badly: int = 0
    never_ended: int = 0
    repeated_keys: int = 0
    extra_calls: int = 0
    same_key: bool = True
    # Succeeded in the ledger, but reported otherwise to a caller reading AsyncResult: FAILURE always counts;
    # PENDING too, except where Redis lost its data, stored results included (a Redis without persistence).
    wrong_results: int = 0
    processes_lost: int = 0
    drain: float | None = None
    slowest: float = 0.0  # seconds from an operation's enqueue to its end, the longest
    seconds: float = 0.0
    leftovers: list[Leftover] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def missed(self) -> list[str]:
        missed = []
        if self.never_ended:
            missed.append(f"{self.never_ended} never ended")
        if self.extra_calls > self.processes_lost:
            missed.append(f"{self.extra_calls} repeated calls > {self.processes_lost} processes lost")
        if not self.same_key:
            missed.append("a repeat with another Idempotency-Key")
        if self.wrong_results:
            missed.append(f"{self.wrong_results} callers told other than the ledger's success")
        if self.leftovers:
            missed.append(f"{len(self.leftovers)} processes left behind")
        return missed


def enqueue_all(client: Client, count: int, rate: float, run: str, faults: Faults) -> int:
    """Enqueue ``count`` operations at ``rate`` per second, as an application would: a ledger that cannot
    be reached is tried again with the same key (safe: the same key and payload is the same operation)."""
    sent = 0
    for i in range(count):
        time.sleep(max(0.0, faults.started + i / rate - time.monotonic()))
        key = f"{run}-{i}"
        payload = {
            "method": "POST",
            "path": PATH,
            "json": {"order": key},
            "params": {"delay": PROVIDER_DELAY},
        }
        while True:
            try:
                client.enqueue(PROVIDER, "request", payload=payload, idempotency_key=key)
                sent += 1
                break
            except LedgerUnavailable:
                time.sleep(0.2)
    return sent


def unended(ledger: Ledger) -> int:
    query = select(func.count()).where(
        Operation.status.in_([OperationStatus.QUEUED, OperationStatus.RUNNING])
    )
    with ledger.engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def run_scenario(
    scenario: Scenario, count: int, rate: float, drain_deadline: float, seed: int, logs: Path | None = None
) -> Row:
    console.rule(f"{scenario.name}: {scenario.title}")
    row = Row(scenario)
    started = time.monotonic()
    markers: list[str] = []
    with environment(seed, logs / scenario.name if logs else None) as setup:
        markers = setup.fleet.nodes + setup.markers
        window = count / rate
        faults = Faults(time.monotonic())
        injector = threading.Thread(target=scenario.inject, args=(setup, window, faults), daemon=True)
        injector.start()
        row.sent = enqueue_all(setup.client, count, rate, f"{scenario.name}-{seed}", faults)
        last_enqueued = time.monotonic()
        faults.note(f"{row.sent} operations enqueued")
        injector.join()
        quiet = max(last_enqueued, time.monotonic())  # every operation sent, every fault over
        deadline = quiet + drain_deadline
        while time.monotonic() < deadline:
            try:
                if unended(setup.ledger) == 0:
                    row.drain = time.monotonic() - quiet
                    break
            except Exception:  # the ledger is coming back: look again
                pass
            time.sleep(0.2)
        faults.note("drained" if row.drain is not None else f"drain deadline ({drain_deadline:g} s) passed")
        measure(row, setup, faults)
        markers = setup.fleet.nodes + setup.markers
    row.leftovers = leftovers(markers)
    row.seconds = time.monotonic() - started
    return row


def measure(row: Row, setup: Setup, faults: Faults) -> None:
    """The row's figures: outcomes from the ledger, calls from the simulator, self-inflicted process
    deaths from the workers' logs."""
    with setup.ledger.engine.connect() as connection:
        rows = connection.execute(
            select(Operation.status, Operation.waiting, Operation.attempts, Operation.swept_at)
        ).all()
        spans = connection.execute(select(Operation.created_at, Operation.finished_at)).all()
    row.slowest = max(((end - start).total_seconds() for start, end in spans if end is not None), default=0.0)
    statuses = Counter(status for status, *_ in rows)
    row.succeeded = statuses[OperationStatus.SUCCEEDED]
    row.ended_badly = sum(statuses[s] for s in ENDED_BADLY)
    stuck = Counter(
        f"{status} ({waiting or 'no wait'}, {attempts} attempts, {'swept' if swept else 'never swept'})"
        for status, waiting, attempts, swept in rows
        if status in (OperationStatus.QUEUED, OperationStatus.RUNNING)
    )
    row.never_ended = sum(stuck.values())
    if stuck:
        row.notes.append("never ended: " + "; ".join(f"{n} {what}" for what, n in stuck.most_common(4)))
    if row.ended_badly:
        badly = {str(s): n for s, n in statuses.items() if s in ENDED_BADLY}
        row.notes.append("ended badly: " + ", ".join(f"{n} {s}" for s, n in badly.items()))

    by_order: dict[str, list[str]] = defaultdict(list)
    keys_ok = True
    for call in setup.simulator.calls(path=PATH):
        order = (call.json or {}).get("order") if isinstance(call.json, dict) else None
        if order is None:
            continue
        if call.headers.get("idempotency-key") != order:
            keys_ok = False
        if 200 <= call.status < 300:
            by_order[str(order)].append(call.headers.get("idempotency-key", ""))
    repeated = {order: keys for order, keys in by_order.items() if len(keys) > 1}
    row.repeated_keys = len(repeated)
    row.extra_calls = sum(len(keys) - 1 for keys in repeated.values())
    row.same_key = keys_ok
    if repeated:
        row.notes.append(
            "repeated: " + ", ".join(sorted(repeated)[:3]) + (", …" if len(repeated) > 3 else "")
        )
    results = _results_of_succeeded(setup)
    lost_with_redis = {"PENDING"} if row.scenario.name == "redis-restart" else set()
    row.wrong_results = sum(
        n for state, n in results.items() if state != "SUCCESS" and state not in lost_with_redis
    )
    row.notes.append(
        "results callers read: " + ", ".join(f"{n} {state}" for state, n in results.most_common())
    )
    uncalled = row.succeeded - len(by_order)
    if uncalled > 0:
        row.notes.append(f"{uncalled} succeeded without a call")

    logs = "\n".join(path.read_text(errors="replace") for path in setup.fleet.logs if path.exists())
    self_inflicted = {what: logs.count(line) for what, line in SELF_INFLICTED.items()}
    row.processes_lost = faults.pool_processes_killed + sum(self_inflicted.values())
    lost = [f"{faults.pool_processes_killed} SIGKILLed"] + [
        f"{n} {what}" for what, n in self_inflicted.items() if n
    ]
    row.notes.append("processes lost: " + ", ".join(lost))
    soft = logs.count(SOFT_LIMIT)
    if soft:
        row.notes.append(f"{soft} soft time limits")
    sweeper = "\n".join(path.read_text(errors="replace") for path in setup.maintenance.logs if path.exists())
    row.notes.append(f"{sweeper.count(f'swept {PROVIDER}.')} messages sent again by the sweeper")


def _results_of_succeeded(setup: Setup) -> Counter[str]:
    """What a caller's ``AsyncResult(task_id)`` says of each operation the ledger has as succeeded."""
    with setup.ledger.engine.connect() as connection:
        task_ids = connection.execute(
            select(Operation.task_id).where(Operation.status == OperationStatus.SUCCEEDED)
        ).scalars()
        # What AsyncResult(task_id).state reads, asked of the result backend directly: an AsyncResult also
        # registers with the client's result consumer, which after two Redis restarts keeps reconnecting.
        backend = setup.app.backend
        return Counter(str(backend.get_task_meta(task_id)["status"]) for task_id in task_ids if task_id)


# -- the table -------------------------------------------------------------------------------------


def table(rows: list[Row]) -> Table:
    grid = Table(
        "scenario",
        "sent",
        "succeeded",
        "failed or dead",
        "never ended",
        "keys repeated (extra calls)",
        "same key",
        "processes lost",
        "drain s",
        "slowest s",
        "scenario s",
        "target",
        "notes",
        title=f"chaos: {WORKERS} workers x -c {CONCURRENCY}, sweep every {SWEEP_INTERVAL:g} s",
    )
    for row in rows:
        grid.add_row(
            f"{row.scenario.name}: {row.scenario.title}",
            str(row.sent),
            str(row.succeeded),
            str(row.ended_badly),
            str(row.never_ended),
            f"{row.repeated_keys} ({row.extra_calls})",
            "yes" if row.same_key else "NO",
            str(row.processes_lost),
            f"{row.drain:.1f}" if row.drain is not None else "—",
            f"{row.slowest:.1f}",
            f"{row.seconds:.0f}",
            "ok" if not row.missed else "MISSED: " + "; ".join(row.missed),
            "; ".join(row.notes),
        )
    return grid


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=2000, help="operations per scenario (2000)")
    parser.add_argument("--rate", type=float, default=40.0, help="operations enqueued per second (40)")
    parser.add_argument(
        "--drain-deadline",
        type=float,
        default=120.0,
        help="seconds to wait for every operation to end, after the last enqueue and the last fault (120)",
    )
    parser.add_argument("--scenario", action="append", choices=[s.name for s in SCENARIOS], help="only these")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--logs", type=Path, help="copy each scenario's logs into this folder")
    args = parser.parse_args(argv)
    chosen = [s for s in SCENARIOS if not args.scenario or s.name in args.scenario]
    started = time.monotonic()
    rows: list[Row] = []
    for scenario in chosen:
        row = run_scenario(scenario, args.operations, args.rate, args.drain_deadline, args.seed, args.logs)
        rows.append(row)
        console.print(table([row]))
    console.print(table(rows))
    console.print(
        f"{len(rows)} scenarios, {args.operations} operations each, in {time.monotonic() - started:.0f} s"
    )
    return 1 if any(row.missed for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
